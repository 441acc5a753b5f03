# The byte-level SET for other extensions (kvnet/localdoor.pyx): `overwrite` without a Python
# call between them.
from kvcore.merkle cimport MerkleTree
from kvcore.storage.store cimport LogStore


cdef object overwrite_c(LogStore store, MerkleTree tree, bytes key, object value, bytes own,
                        object trusted_from, object ts, object new_epoch)


# merge_superseding's answers, and the call itself for kvnet/localdoor.pyx's replica batches
cdef enum:
    MISS_C = 0
    SAME_C = 1
    STORED_C = 2

cdef int merge_superseding_c(LogStore store, MerkleTree tree, bytes key, bytes raw) except -1
