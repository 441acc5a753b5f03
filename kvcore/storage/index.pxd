# A LogStore's index: the C keydir over the segment table, and reading a record through it
# (docs/storage.md, "Code layout").
from libc.stdint cimport uint64_t

from kvcore.hashing cimport token_of
from kvcore.storage.keydir cimport Keydir
from kvcore.storage.segments cimport SegmentTable


cdef class Index:
    cdef SegmentTable tab
    cdef Keydir kd
    cdef uint64_t hash_mask             # all ones; tests narrow it to force collisions
    cdef long long live_bytes
    cdef long long corrupt              # records dropped as corrupt (reads, the open, merges)
    cdef object owner                   # a weak reference to the LogStore (its on_corrupt)

    cdef Py_ssize_t lookup(self, uint64_t h, const char *key, size_t klen) except -3 nogil
    cdef int index(self, uint64_t h, const char *key, size_t klen, uint64_t seg, uint64_t off,
                   size_t size, int flags, Py_ssize_t i=*) except -1 nogil
    cdef object key_at(self, uint64_t loc)
    cdef object value_at(self, Py_ssize_t slot)     # None: dropped as corrupt
    cdef int drop_slot(self, Py_ssize_t slot) except -1
    cdef int report_corrupt(self, list dropped) except -1


cdef inline uint64_t key_hash(Index ix, const char *key, size_t klen) noexcept nogil:
    """A key's token as the index holds it (inline: every get and put hashes its key)."""
    return token_of(key, klen) & ix.hash_mask
