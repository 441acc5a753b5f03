"""kvcore.replicawrite (one store lookup per SET or superseding merge) against its twin, which
does the same through LogStore.get/put and MerkleTree.update: the same answers, stores, trees
and store statistics after random sequences, and after a reopen."""
import itertools
import os

import pytest
from hypothesis import given, settings, strategies as st

from kvcore import NO_EXTENSIONS
from kvcore import merkle as M
from kvcore import versions as V
from kvcore import replicawrite_py as twin
from kvcore.storage import LogStore

if NO_EXTENSIONS:
    pytest.skip("compares the compiled module with its twin", allow_module_level=True)
from kvcore import replicawrite as native  # noqa: E402

OWN = V.actor_prefix("n1", 7)
OTHER = V.actor_prefix("n2", 9)
KEYS = [b"a", b"b", b"key-c"]

ops = st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), st.one_of(st.none(), st.binary(max_size=300)),
              st.integers(0, 2**40)),
    # a replicated clock: another node's fresh or bumped write, an earlier stored clock of any
    # key (older, or the same bytes), or damaged bytes
    st.tuples(st.just("merge"), st.sampled_from(KEYS),
              st.sampled_from(["other", "other-bump", "earlier", "same", "damaged"]),
              st.integers(0, 2**40)),
), max_size=40)


class Side:
    def __init__(self, path, impl):
        self.store = LogStore(path, fsync="never", max_segment_bytes=4096)
        self.tree = M.MerkleTree(width=4, depth=2)
        self.impl = impl
        self.epochs = itertools.count(1)

    def new_epoch(self):
        return next(self.epochs)

    def state(self):
        stats = self.store.stats()
        return (sorted(self.store.items()), self.tree.to_bytes(),
                stats["keys"], stats["live_bytes"])


def _replicated(kind, key, ts, store, seen, n):
    old = store.get(key)
    if kind == "other":
        return V.fresh_raw(OTHER, n, b"v%d" % n, ts)
    if kind == "other-bump" and old is not None:
        bumped = V.bump_own_raw(old, OTHER, 0, b"w%d" % n, ts)
        if bumped is not None:
            return bumped
    if kind == "earlier" and seen:
        return seen[n % len(seen)]
    if kind == "same" and old is not None:
        return old
    return (old or b"\x93\x01\x91") + b"\xc1"


@settings(max_examples=60, deadline=None)
@given(ops=ops, trusted_from=st.sampled_from([0, 1, 3]))
def test_fused_writes_match_the_twin(tmp_path_factory, ops, trusted_from):
    base = tmp_path_factory.mktemp("rw")
    sides = [Side(os.path.join(base, "native"), native), Side(os.path.join(base, "twin"), twin)]
    seen = []
    try:
        for n, (op, key, arg, ts) in enumerate(ops):
            if op == "set":
                got = [s.impl.overwrite(s.store, s.tree, key, arg, OWN, trusted_from, ts,
                                        s.new_epoch) for s in sides]
                if got[0] is not None:
                    seen.append(got[0])
            else:
                raw = _replicated(arg, key, ts, sides[1].store, seen, n)
                got = [s.impl.merge_superseding(s.store, s.tree, key, raw) for s in sides]
            assert got[0] == got[1]
            assert sides[0].state() == sides[1].state()
        # the tree tracks exactly what is stored
        assert sides[0].tree.to_bytes() == M.MerkleTree.from_items(
            sides[0].store.items(), width=4, depth=2).to_bytes()
        for s in sides:
            s.store.close()
        reopened = [LogStore(s.store.path, fsync="never") for s in sides]
        assert sorted(reopened[0].items()) == sorted(reopened[1].items())
        for st_ in reopened:
            st_.close()
    finally:
        for s in sides:
            s.store.close()


def test_overwrite_refuses_other_shapes_and_leaves_the_store(tmp_path):
    s = Side(str(tmp_path / "s"), native)
    foreign = V.fresh_raw(OTHER, 1, b"x", 5)
    s.store.put(b"k", foreign)
    s.tree.update(b"k", None, foreign)
    before = s.state()
    assert native.overwrite(s.store, s.tree, b"k", b"y", OWN, 0, 6, s.new_epoch) is None
    assert s.state() == before
    mine = native.overwrite(s.store, s.tree, b"new", b"y", OWN, 0, 6, s.new_epoch)
    assert V.decode(mine) == V.decode(V.fresh_raw(OWN, 1, b"y", 6))
    # a clock minted below trusted_from is not extended
    assert native.overwrite(s.store, s.tree, b"new", b"z", OWN, 2, 7, s.new_epoch) is None
    assert native.merge_superseding(s.store, s.tree, b"new", mine) == native.SAME
    assert native.merge_superseding(s.store, s.tree, b"new", b"junk") == native.MISS
    with pytest.raises(TypeError):
        native.overwrite(s.store, s.tree, "str key", b"v", OWN, 0, 1, s.new_epoch)
    s.store.close()


@pytest.mark.parametrize("impl", [native, twin], ids=["cython", "python"])
def test_a_stored_clock_failing_its_crc_is_written_over_as_absent(tmp_path, impl):
    """Corruption is missing data: the read finds the record bad, the store drops it, and the
    write goes on as over an absent key (a fresh epoch for a SET; a replicated clock stored as
    it came), in a slot of its own (the dropped record's slot is no longer the key's)."""
    store = LogStore(tmp_path / "s", fsync="never")
    for i in range(20):
        store.put(b"k%02d" % i, V.fresh_raw(OWN, 1, b"v%d" % i, 5))
    store.close()
    seg = [n for n in os.listdir(tmp_path / "s") if n.endswith(".data")][0]
    rec = len(V.fresh_raw(OWN, 1, b"v0", 5)) + 24 + 3
    with open(tmp_path / "s" / seg, "r+b") as f:
        for i in (4, 9):
            f.seek(32 + i * rec + rec - 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x20]))
    store = LogStore(tmp_path / "s", fsync="never")
    seen = []
    store.on_corrupt = lambda seg_id, off: seen.append(off)
    tree = M.MerkleTree(width=4, depth=2)
    raw = impl.overwrite(store, tree, b"k04", b"new", OWN, 0, 9, lambda: 77)
    assert raw == V.fresh_raw(OWN, 77, b"new", 9) and store.get(b"k04") == raw
    other = V.fresh_raw(OTHER, 3, b"x", 9)
    assert impl.merge_superseding(store, tree, b"k09", other) == impl.STORED
    assert store.get(b"k09") == other and len(seen) == 2 and len(store) == 20
    assert all(store.get(b"k%02d" % i) is not None for i in range(20))
    store.close()


def test_the_twin_takes_no_epoch_for_a_clock_its_codec_does_not_make(tmp_path, monkeypatch):
    """With the pure codec (RINGKV_NO_EXTENSIONS=1), which makes no clock as bytes, a SET over
    nothing is left to the general path without using up an epoch: the general path's mint then
    takes the same epoch whichever lane tried first (tests/kvnet/test_set_paths.py)."""
    from kvcore import clockcodec_py
    monkeypatch.setattr(twin, "_codec", clockcodec_py)
    s = Side(str(tmp_path / "s"), twin)
    try:
        assert twin.overwrite(s.store, s.tree, b"k", b"v", OWN, 0, 5, s.new_epoch) is None
        assert s.new_epoch() == 1 and s.store.get(b"k") is None
    finally:
        s.store.close()
