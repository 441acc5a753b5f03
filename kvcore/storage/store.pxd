# LogStore: one directory of numbered segments, a C keydir, hint files, merge.
# docs/storage.md explains the design ("Code layout": its parts); format.pxi owns the bytes.
from kvcore.storage.durability cimport Durability
from kvcore.storage.index cimport Index
from kvcore.storage.segments cimport SegmentTable
from kvcore.storage.writes cimport Writer


cdef class LogStore:
    cdef readonly object path
    cdef readonly dict recovery         # what open() found: clean, corrupt, torn tail, scanned
    cdef object _opts                   # StoreOptions
    cdef object _lock                   # DirLock
    cdef SegmentTable tab               # segments, their maps, faults (segments.pyx)
    cdef Index ix                       # the keydir, reads through it (index.pyx)
    cdef Durability dur                 # the active segment, seals, syncs (durability.pyx)
    cdef Writer wr                      # writes and the journal copy (writes.pyx)
    cdef size_t max_key
    cdef size_t max_value
    cdef long long merges
    cdef object merge_job               # the merge begun and not finished (merge.pyx)
    cdef public object on_corrupt       # called (segment id, offset) per record dropped as corrupt
    cdef object __weakref__             # the interval syncer holds stores weakly

    # a read-modify-write with one lookup: slot_of (-1: absent), value_in, then put_in with
    # that slot and no other write between (kvcore/replicawrite.pyx)
    cdef Py_ssize_t slot_of(self, object key) except -2
    cdef object value_in(self, Py_ssize_t slot, object key)
    cdef int put_in(self, Py_ssize_t slot, object key, object value) except -1
