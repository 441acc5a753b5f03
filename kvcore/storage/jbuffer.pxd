# JournalBuffer: the node-wide journal's frames not yet written (kvcore/storage/journal.py).
# A store with a journal attached appends every record it writes here, in C.
from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef class JournalBuffer:
    cdef char *data
    cdef size_t len
    cdef size_t cap
    cdef readonly uint64_t frames           # frames appended since creation

    cdef int append(self, uint32_t sid, uint8_t kind, const char *p, size_t n) except -1
