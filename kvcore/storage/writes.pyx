"""A LogStore's writes (docs/storage.md, "Writes", "The journal" and "Code layout"): one record
encoded straight into the active segment's map, many copied in chunks with one pwrite, each
indexed once it is there and copied to the node's journal; a journal replay's records written
again. The store checks keys, values and its state first; the durability part rolls full
segments and syncs after."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free
from libc.string cimport memset

from kvcore.storage.options import injected, maybe_compress

from kvcore.storage.durability cimport Durability
from kvcore.storage.index cimport Index, key_hash
from kvcore.storage.keydir cimport loc_seg
from kvcore.storage.record cimport check_record, load16, record_size, write_record
from kvcore.storage.segments cimport (F_WRITE, Segment, SegmentTable, buf_reserve, now_us,
                                      seg_addr)

include "format.pxi"

cdef enum:
    J_RECORDS = 1                   # kvcore/storage/journal.py RECORDS

cdef size_t CHUNK = 1 << 20         # put_many copies at most this much per step


cdef class Writer:
    """The writes of one store."""

    def __cinit__(self, SegmentTable tab not None, Index ix not None, Durability dur not None,
                  size_t compress_min):
        self.tab = tab
        self.ix = ix
        self.dur = dur
        self.compress_min = compress_min
        self.rec.data = NULL
        self.rec.len = self.rec.cap = 0

    def __dealloc__(self):
        free(self.rec.data)

    cdef object stored(self, object value, int *flags):
        """The bytes to store for value (lz4 when it pays) and its flags."""
        flags[0] = 0
        if <size_t>PyBytes_GET_SIZE(value) < self.compress_min:
            return value
        stored, packed = maybe_compress(value, self.compress_min)
        if packed:
            flags[0] = FLAG_COMPRESSED
        return stored

    cdef int write_one(self, object key, object stored, int flags, Py_ssize_t slot=-2) except -1:
        cdef SegmentTable tab = self.tab
        cdef size_t klen = PyBytes_GET_SIZE(key), vlen = PyBytes_GET_SIZE(stored)
        cdef size_t size = REC_HEADER_SIZE + klen + vlen
        cdef Py_ssize_t act = self.dur.active
        cdef Segment *seg = &tab.segs[act]
        cdef uint64_t off, h
        cdef int err
        if seg.size + size > tab.max_segment and seg.size > SEG_HEADER_SIZE:
            self.dur.seal_active()
            act = self.dur.active
            seg = &tab.segs[act]
        off = seg.size
        tab.reserve(act, off + size)
        if tab.fault_op == F_WRITE:
            err = tab.injected(F_WRITE)
            if err:
                raise injected(err, "writing a record")
        # the key's slot, and its old record mapped, before anything is written: a failed
        # map then refuses the write (nothing maps between here and index())
        h = key_hash(self.ix, PyBytes_AS_STRING(key), klen)
        if slot == -2:
            slot = self.ix.lookup(h, PyBytes_AS_STRING(key), klen)
        elif slot >= 0:
            seg_addr(tab, loc_seg(self.ix.kd.slots[slot].loc))
        seg = &tab.segs[act]                # (the same segment, as reserve left it)
        # encoded in place: the map is the page cache, so once this returns the record
        # survives a kill of the process (CRC written last: a kill mid-copy leaves a torn tail)
        write_record(seg.map + off, PyBytes_AS_STRING(key), klen, PyBytes_AS_STRING(stored), vlen,
                     <uint8_t>flags, now_us())
        seg.size = off + size
        self.ix.index(h, PyBytes_AS_STRING(key), klen, act, off, size, flags, slot)
        if self.journal is not None:
            self.journal.append(self.journal_id, J_RECORDS, seg.map + off, size)
        return 0

    cdef int put_many(self, list pairs) except -1:
        """Write checked (key, value) pairs, a chunk of records at a time."""
        cdef SegmentTable tab = self.tab
        cdef Py_ssize_t n = len(pairs), j = 0, start
        cdef int flags
        cdef size_t size, klen, vlen
        cdef Segment *seg
        cdef uint64_t base_off
        while j < n:
            # encode a chunk of records into self.rec, bounded by CHUNK and the segment size
            seg = &tab.segs[self.dur.active]
            self.rec.len = 0
            start = j
            while j < n:
                key, value = <tuple>pairs[j]
                stored = self.stored(value, &flags)
                klen = PyBytes_GET_SIZE(key)
                vlen = PyBytes_GET_SIZE(stored)
                size = REC_HEADER_SIZE + klen + vlen
                if self.rec.len == 0:
                    if seg.size + size > tab.max_segment and seg.size > SEG_HEADER_SIZE:
                        self.dur.seal_active()
                        seg = &tab.segs[self.dur.active]
                elif self.rec.len + size > CHUNK or seg.size + self.rec.len + size > tab.max_segment:
                    break
                buf_reserve(&self.rec, size)
                write_record(self.rec.data + self.rec.len, PyBytes_AS_STRING(key), klen,
                             PyBytes_AS_STRING(stored), vlen, <uint8_t>flags, now_us())
                self.rec.len += size
                j += 1
            base_off = seg.size
            # one pwrite into reserved space: for a chunk of many pages it is cheaper than
            # taking a page fault per page through the map (the same page cache either way)
            tab.reserve(self.dur.active, base_off + self.rec.len)
            tab.pwrite_all(seg.fd, self.rec.data, self.rec.len, base_off)
            seg.size = base_off + self.rec.len
            # index the chunk now that it is on disk (a later duplicate wins)
            self.index_chunk(base_off)
        return 0

    cdef int index_chunk(self, uint64_t base_off) except -1:
        """Index the records of put_many's chunk (self.rec), just written at base_off of the
        active segment. A lookup may need to map a sealed segment (the key's old record):
        when that fails, the records not indexed yet are taken back (zeroed in the reserved
        space they were written to, which an open reads as the end of the data, and the
        segment's data end moved back before them) and the OSError raised: those pairs were
        not written, the ones before them were."""
        cdef size_t pos = 0, size, klen
        cdef uint64_t h
        cdef const char *p
        cdef Segment *seg
        cdef Py_ssize_t act = self.dur.active
        try:
            while pos < self.rec.len:
                p = self.rec.data + pos
                klen = load16(p + REC_OFF_KEYLEN)
                size = record_size(p)
                h = key_hash(self.ix, p + REC_HEADER_SIZE, klen)
                self.ix.index(h, p + REC_HEADER_SIZE, klen, act, base_off + pos, size,
                              <uint8_t>p[REC_OFF_FLAGS])
                pos += size
        except OSError:
            seg = &self.tab.segs[self.dur.active]
            memset(seg.map + base_off + pos, 0, self.rec.len - pos)
            seg.size = base_off + pos
            if self.journal is not None and pos:    # (the pairs before it were written)
                self.journal.append(self.journal_id, J_RECORDS, self.rec.data, pos)
            raise
        if self.journal is not None:
            self.journal.append(self.journal_id, J_RECORDS, self.rec.data, self.rec.len)
        return 0

    def apply_records(self, payloads):
        """LogStore.apply_records: (records written, payloads cut short), not journaled."""
        cdef const char *p
        cdef size_t n, pos, size, klen
        cdef int flags
        cdef long long written = 0, bad = 0
        journal, self.journal = self.journal, None
        try:
            for payload in payloads:
                data = bytes(payload)
                p = PyBytes_AS_STRING(data)
                n = PyBytes_GET_SIZE(data)
                pos = 0
                while pos < n:
                    size = check_record(p + pos, n - pos)
                    if size == 0:
                        bad += 1
                        break
                    klen = load16(p + pos + REC_OFF_KEYLEN)
                    flags = <uint8_t>p[pos + REC_OFF_FLAGS]
                    key = PyBytes_FromStringAndSize(p + pos + REC_HEADER_SIZE, klen)
                    if flags & FLAG_TOMBSTONE:
                        if self.ix.lookup(key_hash(self.ix, p + pos + REC_HEADER_SIZE, klen),
                                          p + pos + REC_HEADER_SIZE, klen) >= 0:
                            self.write_one(key, b"", FLAG_TOMBSTONE)
                            written += 1
                    else:
                        self.write_one(key, PyBytes_FromStringAndSize(
                            p + pos + REC_HEADER_SIZE + klen, size - REC_HEADER_SIZE - klen),
                            flags)
                        written += 1
                    pos += size
        finally:
            self.journal = journal
        if written:
            self.dur.after_write()
        return written, bad
