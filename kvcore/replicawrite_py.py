"""Reference twin of kvcore.replicawrite: the same two writes through LogStore.get and put.

A test oracle; used at run time only with RINGKV_NO_EXTENSIONS=1.
"""
from kvcore._native import select

_codec = select("kvcore.clockcodec", "kvcore.clockcodec_py")

MISS, SAME, STORED = 0, 1, 2


def overwrite(store, tree, key, value, own, trusted_from, ts, new_epoch):
    old = store.get(key)
    if old is not None:
        raw = _codec.bump_own(old, own, trusted_from, value, ts)
    elif _codec.fresh(own, 0, value, ts) is None:
        return None     # (the twin codec mints nothing: no epoch is taken for no clock)
    else:
        raw = _codec.fresh(own, new_epoch(), value, ts)
    if raw is None:
        return None
    store.put(key, raw)
    tree.update(key, old, raw)
    return raw


def merge_superseding(store, tree, key, raw):
    old = store.get(key)
    if old == raw:
        return SAME
    if not _codec.supersedes(old, raw):
        return MISS
    store.put(key, raw)
    tree.update(key, old, raw)
    return STORED
