"""A LogStore's index (docs/storage.md, "Index" and "Code layout"): key token -> record
location in the C keydir, a key's slot found by comparing the key stored on disk, and a
record's value read back through the segment table (a corrupt one dropped)."""
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcmp

from kvcore.storage.options import decompress

from kvcore.storage.keydir cimport Keydir, loc_off, loc_seg, make_loc
from kvcore.storage.record cimport check_record, load16, load32, record_size
from kvcore.storage.segments cimport Segment, SegmentTable, seg_addr

include "format.pxi"


cdef class Index:
    """The keydir of one store, over its segment table."""

    def __cinit__(self, SegmentTable tab not None, int rot, uint64_t hash_mask, owner):
        self.tab = tab
        self.kd = Keydir()
        self.kd.rot = rot
        self.hash_mask = hash_mask
        self.owner = owner

    cdef Py_ssize_t lookup(self, uint64_t h, const char *key, size_t klen) except -3 nogil:
        """The slot of key, or -1: probe by hash, then compare the key stored on disk (OSError
        when a segment cannot be mapped). The segment of the slot found is the one mapped
        last (a candidate after it is not read)."""
        cdef Py_ssize_t i = self.kd.first(h)
        cdef uint64_t loc
        cdef const char *p
        while i >= 0:
            loc = self.kd.slots[i].loc
            p = seg_addr(self.tab, loc_seg(loc)) + loc_off(loc)
            if load16(p + REC_OFF_KEYLEN) == klen and memcmp(p + REC_HEADER_SIZE, key, klen) == 0 \
                    and loc_off(loc) + REC_HEADER_SIZE + klen <= self.tab.segs[loc_seg(loc)].size:
                return i
            i = self.kd.next_same(i, h)
        return -1

    cdef int index(self, uint64_t h, const char *key, size_t klen, uint64_t seg, uint64_t off,
                   size_t size, int flags, Py_ssize_t i=-2) except -1 nogil:
        """Point key's slot at the record just written. i: its slot from lookup() (-1:
        absent), or -2 to look it up."""
        cdef uint64_t loc
        cdef size_t old
        if i == -2:
            i = self.lookup(h, key, klen)
        if i >= 0:
            loc = self.kd.slots[i].loc
            old = record_size(seg_addr(self.tab, loc_seg(loc)) + loc_off(loc))
            if loc_off(loc) + old <= self.tab.segs[loc_seg(loc)].size:  # (not a corrupt header)
                self.live_bytes -= old
        if flags & FLAG_TOMBSTONE:
            if i >= 0:
                self.kd.remove_at(i)
            return 0
        if i >= 0:
            self.kd.slots[i].loc = make_loc(seg, off)
        else:
            self.kd.insert(h, make_loc(seg, off))
        self.live_bytes += size
        return 0

    cdef object key_at(self, uint64_t loc):
        """The key stored at loc, or None when the record's header is visibly damaged (its
        CRC is checked where its value is read)."""
        cdef const char *p = seg_addr(self.tab, loc_seg(loc)) + loc_off(loc)
        cdef size_t klen = load16(p + REC_OFF_KEYLEN)
        if load32(p) != REC_MAGIC or klen == 0 \
                or loc_off(loc) + REC_HEADER_SIZE + klen > self.tab.segs[loc_seg(loc)].size:
            return None
        return PyBytes_FromStringAndSize(p + REC_HEADER_SIZE, klen)

    cdef object value_at(self, Py_ssize_t slot):
        """The value of the record keydir slot `slot` points at; None, having dropped it, when
        that record fails its CRC (corruption is missing data: docs/storage.md, "Faults")."""
        cdef uint64_t loc = self.kd.slots[slot].loc
        cdef uint64_t off = loc_off(loc)
        cdef const char *p = seg_addr(self.tab, loc_seg(loc)) + off
        cdef size_t size = check_record(p, self.tab.segs[loc_seg(loc)].size - off)
        cdef size_t klen
        if size == 0:
            self.drop_slot(slot)
            return None
        klen = load16(p + REC_OFF_KEYLEN)
        value = PyBytes_FromStringAndSize(p + REC_HEADER_SIZE + klen, size - REC_HEADER_SIZE - klen)
        if (<uint8_t>p[REC_OFF_FLAGS]) & FLAG_COMPRESSED:
            return decompress(value)
        return value

    cdef int drop_slot(self, Py_ssize_t slot) except -1:
        """Drop the corrupt record keydir slot `slot` points at: out of the index, counted, and
        reported once to the store's on_corrupt(segment id, offset)."""
        cdef uint64_t loc = self.kd.slots[slot].loc
        cdef Segment *seg = &self.tab.segs[loc_seg(loc)]
        cdef uint64_t off = loc_off(loc), seg_id = seg.id
        cdef size_t size = record_size(seg_addr(self.tab, loc_seg(loc)) + off)  # (its header
        if size >= REC_HEADER_SIZE and off + size <= seg.size:          # may be the bad part)
            self.live_bytes -= size
        self.kd.remove_at(slot)
        self.corrupt += 1
        self.report_corrupt([(seg_id, off)])
        return 0

    cdef int report_corrupt(self, list dropped) except -1:
        """Call the store's on_corrupt(segment id, offset) for each record dropped."""
        store = self.owner()
        cb = None if store is None else store.on_corrupt
        if cb is not None:
            for seg_id, off in dropped:
                cb(seg_id, off)
        return 0
