# The byte-level SET for other extensions (kvnet/localdoor.pyx): `overwrite` without a Python
# call between them.
from kvcore.merkle cimport MerkleTree
from kvcore.storage.store cimport LogStore


cdef object overwrite_c(LogStore store, MerkleTree tree, bytes key, object value, bytes own,
                        object trusted_from, object ts, object new_epoch)
