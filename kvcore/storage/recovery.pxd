# A LogStore's open (recovery: hint files, scans, torn tails) and the hint files it reads,
# written when a segment is sealed (docs/storage.md, "Code layout").
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from kvcore.storage.index cimport Index
from kvcore.storage.record cimport store16, store32, store64
from kvcore.storage.segments cimport Buffer, SegmentTable

cdef enum:
    HINT_ENTRY_BYTES = 24           # format.pxi HINT_ENTRY_SIZE


cdef inline void put_hint(Buffer *b, uint64_t h, uint64_t off, size_t size, uint8_t flags,
                          const char *key, size_t klen) noexcept nogil:
    """Append one hint entry (format.pxi); the caller reserved room for it."""
    cdef char *p = b.data + b.len
    store64(p, h)
    store64(p + 8, off)
    store32(p + 16, <uint32_t>size)
    p[20] = <char>flags
    p[21] = 0
    store16(p + 22, <uint16_t>klen)
    memcpy(p + HINT_ENTRY_BYTES, key, klen)
    b.len += HINT_ENTRY_BYTES + klen


cdef int seal_hints(SegmentTable tab, Index ix, Py_ssize_t i) except -1


cdef class Recovery:
    cdef SegmentTable tab
    cdef Index ix
    cdef Buffer hints                   # hint entries of the segment being scanned
    cdef long long torn_tail
    cdef long long zero_tail
    cdef long long scanned
    cdef list corrupt_at                # (segment id, offset) of records the scan skipped

    cdef bint load_hints(self, Py_ssize_t i, bytes data) except -1    # False: bad file
    cdef int index_hints(self, Py_ssize_t i, const char *p, uint64_t count) except -1 nogil
    cdef int scan_valid(self, Py_ssize_t i, size_t *off) except -1 nogil
