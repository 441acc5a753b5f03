# A LogStore's writes: records encoded into the active segment, indexed once they are there,
# and copied to the node's journal (docs/storage.md, "Code layout").
from libc.stdint cimport uint32_t, uint64_t

from kvcore.storage.durability cimport Durability
from kvcore.storage.index cimport Index
from kvcore.storage.jbuffer cimport JournalBuffer
from kvcore.storage.segments cimport Buffer, SegmentTable


cdef class Writer:
    cdef SegmentTable tab
    cdef Index ix
    cdef Durability dur
    cdef Buffer rec                     # put_many's chunk of encoded records
    cdef size_t compress_min
    cdef JournalBuffer journal          # the node's journal: a copy of every record written
    cdef uint32_t journal_id            # ... under this store id (kvcore/storage/journal.py)

    cdef object stored(self, object value, int *flags)                  # lz4 when it pays
    cdef int write_one(self, object key, object stored, int flags, Py_ssize_t slot=*) except -1
    cdef int put_many(self, list pairs) except -1                       # checked pairs
    cdef int index_chunk(self, uint64_t base_off) except -1
