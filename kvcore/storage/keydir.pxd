# The keydir: key hash -> record location, in C memory (docs/storage.md, "Index").
# A Robin Hood table kept sorted by hash in probe order: lookups stop early,
# SCAN cursors are hashes (stable across growth), and the table grows by 1.5x
# so it stays between 60 % and 90 % full: 16-byte slots, <= 27 bytes per key.
from libc.stdint cimport uint64_t

cdef struct Slot:
    uint64_t hash       # murmur3 token of the key (the key itself lives on disk)
    uint64_t loc        # segment index << LOC_SHIFT | offset in the segment; 0 = empty

cdef enum:
    LOC_SHIFT = 44                       # offsets below 16 TiB, 2**20 segment indexes
    MIN_CAPACITY = 1024

cdef inline uint64_t make_loc(uint64_t seg, uint64_t off) noexcept nogil:
    return (seg << LOC_SHIFT) | off

cdef inline uint64_t loc_seg(uint64_t loc) noexcept nogil:
    return loc >> LOC_SHIFT

cdef inline uint64_t loc_off(uint64_t loc) noexcept nogil:
    return loc & ((<uint64_t>1 << LOC_SHIFT) - 1)


cdef class Keydir:
    cdef Slot *slots            # capacity slots, one allocation
    cdef size_t capacity
    cdef size_t count           # occupied slots
    cdef size_t grow_at         # count that triggers growth (90 % of capacity)
    cdef int rot                # index order: token rotated left by rot bits (index_skip_bits)
    cdef bint bulk              # an open's load: grow 4x (fewer resizes), then fit()

    cdef inline uint64_t order(self, uint64_t h) noexcept nogil:
        if self.rot == 0:
            return h
        return (h << self.rot) | (h >> (64 - self.rot))

    cdef size_t home(self, uint64_t h) noexcept nogil
    cdef size_t dist(self, size_t i) noexcept nogil                 # probe distance of slot i
    cdef void _place(self, uint64_t h, uint64_t loc) noexcept nogil # Robin Hood insert, no growth
    # first, next_same, insert and find_loc take tokens; slots and scan cursors hold order(token)
    cdef Py_ssize_t first(self, uint64_t h) noexcept nogil          # first slot with hash h, or -1
    cdef Py_ssize_t next_same(self, Py_ssize_t i, uint64_t h) noexcept nogil   # next slot with h after i, or -1
    cdef int insert(self, uint64_t h, uint64_t loc) except -1 nogil # a new entry (grows if needed)
    cdef void remove_at(self, Py_ssize_t i) noexcept nogil          # backward-shift delete
    cdef int resize(self, size_t capacity) except -1 nogil          # (MemoryError: takes the GIL)
    cdef int fit(self) except -1 nogil      # after a bulk load: back to about 75 % full
    cdef Py_ssize_t find_loc(self, uint64_t h, uint64_t loc) noexcept nogil   # slot holding exactly (h, loc)
    cdef list scan(self, uint64_t cursor, Py_ssize_t count, uint64_t *next_cursor)
