"""A LogStore's open and its hint files (docs/storage.md, "Recovery", "Hint files" and "Code
layout"): index every segment from its hint file, or by a scan of its records (a torn tail
cut off, a corrupt record skipped and counted), and write the hint files a later open reads."""
import os
import struct

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free

from kvcore.storage import layout as L
from kvcore.storage.options import check_format, injected

from kvcore.hashing cimport kv_crc32c
from kvcore.storage.index cimport Index, key_hash
from kvcore.storage.record cimport check_record, load16, load32, load64, record_size, resync
from kvcore.storage.segments cimport (F_OPEN, Buffer, SegmentTable, buf_reserve, pwrite_full,
                                      seg_addr)

include "format.pxi"

_HINT_HEAD = struct.Struct("<QHHIQQ")


def _crc32c(data):
    cdef bytes b = bytes(data)
    return kv_crc32c(0, <const char *>b, len(b))


cdef bint _segment_header_ok(const char *p, size_t size, uint64_t seg_id) noexcept nogil:
    return (size >= SEG_HEADER_SIZE and load64(p) == <uint64_t>SEG_MAGIC and load16(p + 8) == FORMAT_VERSION
            and load16(p + 10) == SEG_HEADER_SIZE and load64(p + 16) == seg_id
            and load32(p + 28) == kv_crc32c(0, p, 28))


cdef size_t _nonzero_end(const char *p, size_t start, size_t end) noexcept nogil:
    """One past the last nonzero byte of p[start:end], or start if they are all zero."""
    while end > start and p[end - 1] == 0:
        end -= 1
    return end


def hint_file(uint64_t seg_id, bytes entries, uint64_t count):
    """A whole hint file: header, entries, trailer (format.pxi)."""
    body = _HINT_HEAD.pack(L.HINT_MAGIC, FORMAT_VERSION, HINT_HEADER_SIZE, 0, seg_id, count) + entries
    crc = kv_crc32c(0, <const char *>body, len(body))
    return body + struct.pack("<II", crc, HINT_TRAILER_MAGIC)


# ---- hint files of sealed segments ----------------------------------------------------------

cdef int seal_hints(SegmentTable tab, Index ix, Py_ssize_t i) except -1:
    """Write the hint file of a segment this store wrote, read back from its map and
    streamed out 1 MiB at a time: no per-key hint memory, then or between seals. Segment
    i is pinned (active, or rolled out and not yet sealed) until its hints are written."""
    cdef const char *base = seg_addr(tab, i)
    cdef size_t end = tab.segs[i].size, off = SEG_HEADER_SIZE, size
    cdef uint64_t count = 0, seg_id = tab.segs[i].id
    cdef uint32_t crc
    cdef int err
    while off < end:
        count += 1
        size = record_size(base + off)
        if size < REC_HEADER_SIZE or off + size > end:
            return 0    # the data is not what this store wrote: no hints, the open scans
        off += size
    head = _HINT_HEAD.pack(L.HINT_MAGIC, FORMAT_VERSION, HINT_HEADER_SIZE, 0, seg_id, count)
    crc = kv_crc32c(0, <const char *>head, len(head))
    path = os.path.join(tab.path, L.hint_name(seg_id))
    tmp = path + L.MERGING_SUFFIX
    # A hint file only saves a scan at the next open: failing to write one (a full disk)
    # is not an error of the seal or close that writes it.
    try:
        err = tab.injected(F_OPEN)
        if err:
            raise injected(err, "opening a hint file")
        _write_hint_file(tab, ix, i, tmp, head, crc)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return 0


cdef int _write_hint_file(SegmentTable tab, Index ix, Py_ssize_t i, tmp, bytes head,
                          uint32_t crc) except -1:
    # (its own buffer: a sealer thread may write one while the owner's thread runs;
    # segment i is pinned, so base stays mapped while the GIL is released)
    cdef const char *base = seg_addr(tab, i)
    cdef size_t end = tab.segs[i].size, off = SEG_HEADER_SIZE, size, klen
    cdef Buffer b
    b.data = NULL
    b.len = b.cap = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        tab.pwrite_all(fd, <const char *>head, len(head), 0)
        pos = len(head)
        while off < end:
            size = record_size(base + off)
            klen = load16(base + off + REC_OFF_KEYLEN)
            buf_reserve(&b, HINT_ENTRY_SIZE + klen)
            put_hint(&b, key_hash(ix, base + off + REC_HEADER_SIZE, klen), off, size,
                     <uint8_t>base[off + REC_OFF_FLAGS], base + off + REC_HEADER_SIZE, klen)
            off += size
            if b.len >= (1 << 20) or off >= end:
                crc = kv_crc32c(crc, b.data, b.len)
                tab.pwrite_all(fd, b.data, b.len, pos)
                pos += b.len
                b.len = 0
        trailer = struct.pack("<II", crc, HINT_TRAILER_MAGIC)
        tab.pwrite_all(fd, <const char *>trailer, len(trailer), pos)
        os.fdatasync(fd)
    finally:
        free(b.data)
        os.close(fd)
    return 0


# ---- the open ----------------------------------------------------------------------------------

cdef class Recovery:
    """The open of one store: its segments indexed, what it found counted."""

    def __cinit__(self, SegmentTable tab not None, Index ix not None):
        self.tab = tab
        self.ix = ix
        self.hints.data = NULL
        self.hints.len = self.hints.cap = 0
        self.corrupt_at = []

    def __dealloc__(self):
        free(self.hints.data)

    def open(self):
        """Index the directory's segments, oldest first; (what the open found, the id of the
        next segment to start)."""
        cdef Py_ssize_t i
        path = self.tab.path
        check_format(path, L.segment_ids(path), _crc32c, L)
        for name in os.listdir(path):
            if name.endswith(L.MERGING_SUFFIX):
                os.unlink(os.path.join(path, name))
        clean_path = os.path.join(path, L.CLEAN_NAME)
        clean = os.path.exists(clean_path)
        if clean:
            os.unlink(clean_path)
        ids = L.segment_ids(path)
        self.ix.kd.bulk = True          # (the index grows in larger steps while it loads)
        for n, seg_id in enumerate(ids):
            i = self.load_segment(seg_id, n == len(ids) - 1)
            # sealed now: its descriptor is closed and its map is one of the cache's, so
            # an open holds map_cache + 1 maps and 1 segment descriptor at any time
            self.tab.close_fd(i)
            self.tab.unpin(i)
        self.ix.kd.fit()
        free(self.hints.data)           # (the scans' hint buffer: not needed again)
        self.hints.data = NULL
        self.hints.len = self.hints.cap = 0
        next_seq = (ids[len(ids) - 1] >> L.SEQ_SHIFT) + 1 if ids else 1
        found = {"clean": clean, "corrupt_records": self.ix.corrupt,
                 "torn_tail_bytes": self.torn_tail, "zero_tail_bytes": self.zero_tail,
                 "scanned_segments": self.scanned, "corrupt_at": self.corrupt_at}
        return found, next_seq << L.SEQ_SHIFT

    def load_segment(self, uint64_t seg_id, bint last):
        """Index segment i (pinned: created so by open_segment) from its hints, or by a
        scan; returns its index."""
        cdef Py_ssize_t i = self.tab.open_segment(seg_id, False)
        self.tab.map_segment(i, self.tab.segs[i].size, False)
        hint_path = os.path.join(self.tab.path, L.hint_name(seg_id))
        if os.path.exists(hint_path):
            with open(hint_path, "rb") as f:
                data = f.read()
            if self.load_hints(i, data):
                return i
        self.scan_segment(i, last)
        self.write_hints(seg_id)
        return i

    cdef bint load_hints(self, Py_ssize_t i, bytes data) except -1:
        """Index a segment from its hint file; False (nothing indexed) if the file is bad."""
        cdef const char *p = PyBytes_AS_STRING(data)
        cdef size_t n = PyBytes_GET_SIZE(data), pos, end, klen
        cdef uint64_t count, k, off, size
        cdef uint64_t seg_size = self.tab.segs[i].size
        if n < HINT_HEADER_SIZE + HINT_TRAILER_SIZE:
            return False
        end = n - HINT_TRAILER_SIZE
        if (load32(p + end + 4) != HINT_TRAILER_MAGIC or load32(p + end) != kv_crc32c(0, p, end)
                or load64(p) != <uint64_t>HINT_MAGIC or load16(p + 8) != FORMAT_VERSION
                or load16(p + 10) != HINT_HEADER_SIZE or load64(p + 16) != self.tab.segs[i].id):
            return False
        count = load64(p + 24)
        # validate every entry before indexing any
        pos = HINT_HEADER_SIZE
        for k in range(count):
            if pos + HINT_ENTRY_SIZE > end:
                return False
            off = load64(p + pos + 8)
            size = load32(p + pos + 16)
            klen = load16(p + pos + 22)
            if off < SEG_HEADER_SIZE or off + size > seg_size or size < REC_HEADER_SIZE + klen:
                return False
            pos += HINT_ENTRY_SIZE + klen
        if pos != end:
            return False
        with nogil:
            self.index_hints(i, p, count)
        return True

    cdef int index_hints(self, Py_ssize_t i, const char *p, uint64_t count) except -1 nogil:
        """Index the `count` checked entries of hint file data p (of segment i)."""
        cdef size_t pos = HINT_HEADER_SIZE, klen
        cdef uint64_t k
        for k in range(count):
            klen = load16(p + pos + 22)
            self.ix.index(load64(p + pos), p + pos + HINT_ENTRY_SIZE, klen, i, load64(p + pos + 8),
                          load32(p + pos + 16), <uint8_t>p[pos + 20])
            pos += HINT_ENTRY_SIZE + klen
        return 0

    def scan_segment(self, Py_ssize_t i, bint last):
        cdef const char *base = self.tab.seg_map(i)     # (pinned while loaded; NULL if empty)
        cdef size_t end = self.tab.segs[i].size, off = SEG_HEADER_SIZE, nxt, data_end
        self.scanned += 1
        self.hints.len = 0
        # its hints are smaller than its records (a hint entry is no longer than a record's
        # header and key): one allocation (address space; pages as they are written), no
        # copies as the buffer grows
        buf_reserve(&self.hints, end if end < (256 << 20) else (256 << 20))
        if base == NULL or not _segment_header_ok(base, end, self.tab.segs[i].id):
            if last and end <= SEG_HEADER_SIZE:          # died while creating it
                self.torn_tail += end
                os.ftruncate(self.tab.segs[i].fd, 0)
                self.tab.segs[i].size = 0
                return
            self.scan_corrupt(i, 0)
        while off < end:
            with nogil:
                self.scan_valid(i, &off)
            if off >= end:
                break
            nxt = resync(base, off, end)
            if nxt == 0:
                # No valid record follows. Zeros to the end are space reserved ahead
                # by a store that did not close cleanly: the end of the data, in any
                # segment. Other bytes before them are a torn record (of the newest
                # segment; elsewhere, one corrupt record).
                data_end = _nonzero_end(base, off, end)
                if data_end > off and not last:
                    self.scan_corrupt(i, off)
                    return
                self.torn_tail += data_end - off
                self.zero_tail += end - data_end
                self.truncate_recovered(i, off)
                return
            self.scan_corrupt(i, off)
            off = nxt

    cdef int scan_valid(self, Py_ssize_t i, size_t *off) except -1 nogil:
        """Index the valid records of segment i from off on (and append their hints), up to
        its end or the first record that fails its check; off is left there. Segment i is
        pinned (being loaded): base stays valid while index() maps other segments."""
        cdef const char *base = self.tab.seg_map(i)
        cdef size_t end = self.tab.segs[i].size, o = off[0], size, klen
        cdef uint64_t h
        while o < end:
            size = check_record(base + o, end - o)
            if not size:
                break
            klen = load16(base + o + REC_OFF_KEYLEN)
            h = key_hash(self.ix, base + o + REC_HEADER_SIZE, klen)
            buf_reserve(&self.hints, HINT_ENTRY_SIZE + klen)
            put_hint(&self.hints, h, o, size, <uint8_t>base[o + REC_OFF_FLAGS],
                     base + o + REC_HEADER_SIZE, klen)
            self.ix.index(h, base + o + REC_HEADER_SIZE, klen, i, o, size,
                          <uint8_t>base[o + REC_OFF_FLAGS])
            o += size
        off[0] = o
        return 0

    def scan_corrupt(self, Py_ssize_t i, uint64_t off):
        """A bad record the scan skips: counted, and listed in recovery["corrupt_at"]."""
        self.ix.corrupt += 1
        if len(self.corrupt_at) < 10_000:
            self.corrupt_at.append((self.tab.segs[i].id, off))

    def truncate_recovered(self, Py_ssize_t i, uint64_t off):
        os.ftruncate(self.tab.segs[i].fd, off)
        os.fsync(self.tab.segs[i].fd)
        self.tab.segs[i].size = self.tab.segs[i].reserved = off

    def write_hints(self, uint64_t seg_id):
        """Write the hint file of the segment just scanned straight from the hint buffer
        (no copy of it), then empty the buffer. Best effort (a missing hint file costs a
        scan, see seal_hints), and not synced: the open checks a hint file's CRC and rescans
        its segment if it is bad. (An open after kill -9 writes one per partition, 200 MB at
        5M keys: its copies and syncs were a third of the time the node took to serve.)"""
        cdef uint64_t count = 0
        cdef size_t pos = 0
        cdef uint32_t crc
        cdef int fd = -1
        while pos < self.hints.len:
            pos += HINT_ENTRY_SIZE + load16(self.hints.data + pos + 22)
            count += 1
        head = _HINT_HEAD.pack(L.HINT_MAGIC, FORMAT_VERSION, HINT_HEADER_SIZE, 0, seg_id, count)
        crc = kv_crc32c(0, <const char *>head, len(head))
        crc = kv_crc32c(crc, self.hints.data, self.hints.len)
        trailer = struct.pack("<II", crc, HINT_TRAILER_MAGIC)
        path = os.path.join(self.tab.path, L.hint_name(seg_id))
        tmp = path + L.MERGING_SUFFIX
        what = "writing a hint file"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                pwrite_full(fd, <const char *>head, len(head), 0, what)
                pwrite_full(fd, self.hints.data, self.hints.len, len(head), what)
                pwrite_full(fd, <const char *>trailer, len(trailer), len(head) + self.hints.len,
                            what)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        self.hints.len = 0
        if self.hints.cap > (1 << 20):              # give the memory back between seals
            free(self.hints.data)
            self.hints.data = NULL
            self.hints.cap = 0
