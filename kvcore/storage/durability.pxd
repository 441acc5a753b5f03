# A LogStore's active segment and its durability: starting, rolling and sealing segments,
# syncs (the interval syncer's, a whole file system's), and the read-only state a failed
# sync leaves (docs/storage.md, "Code layout").
from libc.stdint cimport uint64_t
from cpython.pythread cimport PyThread_type_lock

from kvcore.storage.index cimport Index
from kvcore.storage.segments cimport SegmentTable


cdef class Durability:
    cdef SegmentTable tab
    cdef Index ix
    cdef object opts                    # StoreOptions
    cdef Py_ssize_t active              # index of the active segment
    cdef int fsync_mode                 # 0 never, 1 interval, 2 always
    cdef double dirty_since             # monotonic seconds of the first unsynced write, < 0 if none
    cdef uint64_t synced_offset
    cdef object failed_info             # None, or (errno, what): a failed fdatasync, read-only
    cdef bint seal_later                # a roll only switches segments; seal_pending() seals
    cdef bint seal_by_syncer            # ... and the syncer thread calls it (seal_later=True)
    cdef list sealing                   # segment indexes rolled out, not yet sealed (oldest first)
    cdef bint dir_unsynced              # a segment was created and its directory not yet synced
    cdef PyThread_type_lock seal_lock   # one sealer at a time (the syncer, a commit, close)

    cdef Py_ssize_t create_segment(self, uint64_t seg_id) except -1
    cdef int end_active(self, Py_ssize_t i, bint locked) except -1
    cdef int seal_one(self, Py_ssize_t i) except -1
    cdef int after_write(self) except -1
    cdef int check_writable(self) except -1
