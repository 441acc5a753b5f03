"""A replica's two byte-level writes, each with one store lookup and its tree kept in step.

A plain SET (overwrite) and a replicated write that supersedes the stored clock
(merge_superseding) read the key's stored clock, decide the new bytes from it without decoding
(kvcore/clockcodec.pyx), store them and XOR the change into the partition's Merkle tree. Done
through LogStore.get and put that is two keydir probes (each a cache miss on a large store) and
the calls between them; here the slot found by the first probe takes the write
(LogStore.slot_of / put_in). The twin (replicawrite_py.py) does the same through the public
API: the two agree byte for byte (tests/kvcore/test_replicawrite.py).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from kvcore.merkle cimport MerkleTree
from kvcore.storage.store cimport LogStore

from kvcore._native import select

_codec = select("kvcore.clockcodec", "kvcore.clockcodec_py")
_fresh = _codec.fresh
_bump_own = _codec.bump_own
_supersedes = _codec.supersedes

# merge_superseding's answers
MISS = MISS_C      # nothing done: the caller decodes and merges
SAME = SAME_C      # the store holds these bytes already: nothing written
STORED = STORED_C


cdef inline int _tree_update(MerkleTree tree, bytes key, object old, bytes new) except -1:
    if old is None:
        return tree.update_c(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), NULL, -1,
                             PyBytes_AS_STRING(new), PyBytes_GET_SIZE(new))
    return tree.update_c(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                         PyBytes_AS_STRING(<bytes>old), PyBytes_GET_SIZE(<bytes>old),
                         PyBytes_AS_STRING(new), PyBytes_GET_SIZE(new))


def overwrite(LogStore store, MerkleTree tree, bytes key not None, value, bytes own,
              trusted_from, ts, new_epoch):
    """A Redis SET of `value` at `ts` over what the store holds, as the bytes the general path
    mints (clockcodec.fresh over nothing, with the epoch new_epoch() gives; bump_own over
    this node's own one-entry clock), stored and XORed into the tree. The stored bytes, or
    None, having done nothing, for a stored clock of another shape."""
    return overwrite_c(store, tree, key, value, own, trusted_from, ts, new_epoch)


cdef object overwrite_c(LogStore store, MerkleTree tree, bytes key, object value, bytes own,
                        object trusted_from, object ts, object new_epoch):
    cdef Py_ssize_t slot = store.slot_of(key)
    cdef object old = None
    if slot >= 0:
        old = store.value_in(slot, key)
        if old is None:         # its record failed its CRC and was dropped: absent now
            slot = -1
    if slot >= 0:
        raw = _bump_own(old, own, trusted_from, value, ts)
    else:
        raw = _fresh(own, new_epoch(), value, ts)
    if raw is None:
        return None
    store.put_in(slot, key, raw)
    _tree_update(tree, key, old, raw)
    return raw


def merge_superseding(LogStore store, MerkleTree tree, bytes key not None, bytes raw not None):
    """A replicated clock `raw` stored as it is when it supersedes what the store holds
    (clockcodec.supersedes): STORED; SAME when the store holds these bytes; else MISS,
    having done nothing."""
    return merge_superseding_c(store, tree, key, raw)


cdef int merge_superseding_c(LogStore store, MerkleTree tree, bytes key, bytes raw) except -1:
    cdef Py_ssize_t slot = store.slot_of(key)
    cdef object old = None
    if slot >= 0:
        old = store.value_in(slot, key)
        if old is None:         # its record failed its CRC and was dropped: absent now
            slot = -1
        elif old == raw:
            return SAME_C
    if not _supersedes(old, raw):
        return MISS_C
    store.put_in(slot, key, raw)
    _tree_update(tree, key, old, raw)
    return STORED_C
