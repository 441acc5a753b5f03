import importlib
import os
import random
import time

import numpy as np
import pytest
from hypothesis import given, strategies as st

from kvcore import hashing_py

IMPLS = [pytest.param("kvcore.merkle", id="cython"), pytest.param("kvcore.merkle_py", id="python")]


@pytest.fixture(params=IMPLS)
def impl(request):
    return importlib.import_module(request.param)


def both():
    return [importlib.import_module(p.values[0]) for p in IMPLS]


def test_compiled_module_loaded():
    # Fails if the build silently fell back to the twin.
    import kvcore.merkle

    assert kvcore.merkle.__file__.endswith((".so", ".pyd"))


keys_st = st.binary(min_size=0, max_size=40)
versions_st = st.binary(min_size=0, max_size=24)
shapes_st = st.sampled_from([(2, 1), (4, 3), (16, 2), (128, 2)])


# --- mapping and hashing ---


def test_defaults_and_sizes(impl):
    t = impl.MerkleTree()
    assert (t.width, t.depth, t.leaves, t.count, t.root()) == (128, 2, 16384, 0, 0)
    assert t.nbytes == 8 * (1 + 128 + 16384)
    assert len(t.level(0)) == 8 and len(t.level(1)) == 1024 and len(t.level(2)) == 131072
    assert len(t.branch(0, 0)) == 1024 and len(t.branch(1, 127)) == 1024


@given(keys_st, versions_st)
def test_segment_is_low_bits_of_token_and_hash_is_defined_once(key, version):
    tok = hashing_py.token(key)
    expect_h = hashing_py.token(len(key).to_bytes(4, "little") + key + version)
    for m in both():
        t = m.MerkleTree()
        assert t.segment_of(key) == tok % 16384 == tok & 0x3FFF == t.segment_of_token(tok)
        assert list(t.segments_of([key, key])) == [tok & 0x3FFF] * 2
        assert m.entry_hash(key, version) == expect_h


def test_length_prefix_separates_key_from_version(impl):
    assert impl.entry_hash(b"ab", b"c") != impl.entry_hash(b"a", b"bc")


def test_bad_shapes_and_arguments(impl):
    for width, depth in [(3, 2), (1, 2), (128, 0), (128, 9), (1 << 17, 1), (256, 4), ("128", 2)]:
        with pytest.raises(ValueError):
            impl.MerkleTree(width, depth)
    t = impl.MerkleTree(4, 2)
    with pytest.raises(TypeError):
        t.update(5, None, b"v")  # bytes(5) would be five zero bytes: refused
    with pytest.raises(TypeError):
        t.update("key", None, b"v")
    with pytest.raises(IndexError):
        t.level(3)
    with pytest.raises(IndexError):
        t.branch(2, 0)
    with pytest.raises(IndexError):
        t.branch(1, 4)
    with pytest.raises(ValueError):
        t.diff_level(1, b"\0" * 8)
    with pytest.raises(ValueError):
        t.update_many([b"a", b"b"], None, [b"v"])
    for bad in (-1, 1 << 64):
        with pytest.raises(OverflowError):
            t.segment_of_token(bad)
        with pytest.raises(OverflowError):
            t.update_hash(0, bad, 0)


def test_buffers_accepted_like_bytes(impl):
    a, b = impl.MerkleTree(), impl.MerkleTree()
    a.update(b"key", None, b"v1")
    b.update(bytearray(b"key"), None, memoryview(b"v1"))
    assert a == b and a.count == 1


# --- properties ---


@st.composite
def histories(draw):
    """A shape and a list of (key, old, new) updates consistent with a dict store."""
    shape = draw(shapes_st)
    store = {}
    ops = []
    for key, version in draw(st.lists(st.tuples(st.binary(max_size=6), st.none() | versions_st), max_size=60)):
        old = store.get(key)
        if version is None:
            store.pop(key, None)
        else:
            store[key] = version
        ops.append((key, old, version))
    return shape, ops, store


@given(histories(), st.randoms())
def test_incremental_equals_rebuilt_and_order_independent(history, rnd):
    (width, depth), ops, store = history
    trees = []
    for m in both():
        inc = m.MerkleTree(width, depth)
        for key, old, new in ops:
            inc.update(key, old, new)
        built = m.MerkleTree.from_items(store.items(), width, depth)
        assert inc == built and inc.check() and inc.count == len(store)
        shuffled = list(store.items())
        rnd.shuffle(shuffled)
        assert m.MerkleTree(width, depth).rebuild(shuffled) == built
        batch = m.MerkleTree(width, depth)
        batch.update_many([o[0] for o in ops], [o[1] for o in ops], [o[2] for o in ops])
        assert batch == built
        trees.append(built)
    c, p = trees
    assert c.to_bytes() == p.to_bytes()
    assert all(c.level(i) == p.level(i) for i in range(depth + 1))


@given(st.lists(st.tuples(keys_st, versions_st), max_size=30), st.randoms())
def test_insert_order_independent(pairs, rnd):
    for m in both():
        a = m.MerkleTree(16, 2)
        for k, v in pairs:
            a.update(k, None, v)
        shuffled = list(pairs)
        rnd.shuffle(shuffled)
        b = m.MerkleTree(16, 2)
        for k, v in shuffled:
            b.update(k, None, v)
        assert a == b


@given(st.lists(st.tuples(keys_st, versions_st), max_size=30), keys_st, st.none() | versions_st,
       st.none() | versions_st)
def test_update_then_revert_restores_root(pairs, key, old, new):
    for m in both():
        t = m.MerkleTree.from_items(pairs, 16, 2)
        before = t.to_bytes()
        t.update(key, old, new)
        t.update(key, new, old)
        assert t.to_bytes() == before and t.check()


@given(shapes_st, st.lists(st.tuples(st.binary(min_size=1, max_size=8), versions_st), max_size=40,
                           unique_by=lambda p: p[0]),
       st.lists(st.tuples(st.binary(min_size=1, max_size=8), st.none() | versions_st), max_size=8))
def test_diff_finds_exactly_the_changed_segments(shape, pairs, changes):
    store_a = dict(pairs)
    store_b = dict(store_a)
    for key, version in changes:
        if version is None:
            store_b.pop(key, None)
        else:
            store_b[key] = version
    for m in both():
        a = m.MerkleTree.from_items(store_a.items(), *shape)
        b = m.MerkleTree.from_items(store_b.items(), *shape)
        changed = {k for k in store_a.keys() | store_b.keys() if store_a.get(k) != store_b.get(k)}
        # a segment cancels out only if its changes XOR to 0: probability ~2**-64
        expect = sorted({a.segment_of(k) for k in changed})
        assert a.diff(b) == expect == b.diff(a)
        report = m.exchange(a, b, _lister(a, store_a), _lister(b, store_b))
        assert report.segments == expect
        assert report.keys == sorted(changed)


@given(shapes_st, st.lists(st.tuples(keys_st, versions_st), max_size=30))
def test_serialization_roundtrip(shape, pairs):
    blobs = []
    for m in both():
        t = m.MerkleTree.from_items(pairs, *shape)
        data = t.to_bytes()
        back = m.MerkleTree.from_bytes(data)
        assert back == t and back.check() and back.root() == t.root() and back.count == t.count
        blobs.append(data)
    assert blobs[0] == blobs[1]
    assert len(blobs[0]) == 16 + 8 * shape[0] ** shape[1] + 4


@given(st.lists(st.tuples(keys_st, versions_st), min_size=1, max_size=10), st.data())
def test_corrupt_bytes_rejected(pairs, data):
    for m in both():
        good = m.MerkleTree.from_items(pairs, 4, 2).to_bytes()
        pos = data.draw(st.integers(0, len(good) - 1), label="pos")
        flip = data.draw(st.integers(1, 255), label="flip")
        bad = bytearray(good)
        bad[pos] ^= flip
        with pytest.raises(ValueError):
            m.MerkleTree.from_bytes(bytes(bad))
        cut = data.draw(st.integers(0, len(good) - 1), label="cut")
        with pytest.raises(ValueError):
            m.MerkleTree.from_bytes(good[:cut])
        with pytest.raises(ValueError):
            m.MerkleTree.from_bytes(good + b"\0")


@pytest.mark.parametrize("garbage", [b"", b"RKMT", b"x" * 1000, b"RKMT\x02\x00\x02\x02" + b"\0" * 140])
def test_garbage_rejected_with_clear_message(impl, garbage):
    with pytest.raises(ValueError, match="merkle tree"):
        impl.MerkleTree.from_bytes(garbage)


def test_compare_api_walk_by_hand(impl):
    a = impl.MerkleTree.from_items([(b"k%d" % i, b"v") for i in range(1000)])
    b = a.copy()
    b.update(b"k7", b"v", b"w")
    seg = a.segment_of(b"k7")
    assert a.root() != b.root()
    assert a.diff_level(0, b.level(0)) == [0]
    assert a.diff_level(1, b.level(1)) == [seg >> 7]
    assert a.diff_branch(0, 0, b.branch(0, 0)) == [seg >> 7]
    assert a.diff_branch(1, seg >> 7, b.branch(1, seg >> 7)) == [seg]
    assert a.diff_level(2, b.level(2)) == [seg]
    assert a.branch(0, 0) == a.level(1)
    assert a.branch(1, 3) == a.level(2)[3 * 1024:4 * 1024]
    leaves = np.frombuffer(a.branch(1, 1), dtype="<u8")
    assert int(np.bitwise_xor.reduce(leaves)) == int.from_bytes(a.level(1)[8:16], "little")
    # update_hash with precomputed hashes is the same XOR
    c = a.copy()
    c.update_hash(hashing_py.token(b"k7"), impl.entry_hash(b"k7", b"v"), impl.entry_hash(b"k7", b"w"))
    assert c.level(2) == b.level(2) and c.root() == b.root()


def test_level_bytes_are_xor_of_children(impl):
    t = impl.MerkleTree.from_items([(os.urandom(8), b"v") for _ in range(300)], 8, 3)
    for lvl in range(3):
        parents = np.frombuffer(t.level(lvl), dtype="<u8")
        children = np.frombuffer(t.level(lvl + 1), dtype="<u8").reshape(-1, 8)
        assert (np.bitwise_xor.reduce(children, axis=1) == parents).all()
    assert t.check()


# --- the exchange test ---


def _lister(tree, store):
    by_segment = {}
    for k, v in store.items():
        by_segment.setdefault(tree.segment_of(k), []).append((k, v))
    return lambda s: by_segment.get(s, [])


def _two_replicas(m, n, rnd):
    """Replicas over n 16-byte keys that differ in 10: 6 newer versions, 2 missing each side."""
    blob = rnd.randbytes(16 * n)
    keys = [blob[i:i + 16] for i in range(0, 16 * n, 16)]
    v1, v2 = b"\x01clock-v1", b"\x01clock-v2"
    vers_a = [v1] * n
    vers_b = [v1] * n
    picked = rnd.sample(range(n), 10)
    for i in picked[:6]:
        vers_b[i] = v2
    for i in picked[6:8]:
        vers_a[i] = None  # only on b
    for i in picked[8:]:
        vers_b[i] = None  # only on a
    a, b = m.MerkleTree(), m.MerkleTree()
    a.update_many(keys, None, vers_a)
    b.update_many(keys, None, vers_b)
    segs = np.frombuffer(a.segments_of(keys), dtype=np.uint32)

    def lister(vers):
        def keys_of(segment):
            return [(keys[i], vers[i]) for i in np.flatnonzero(segs == segment) if vers[i] is not None]
        return keys_of

    changed = sorted(keys[i] for i in picked)
    return a, b, lister(vers_a), lister(vers_b), changed, n


@pytest.mark.parametrize("name, n", [
    pytest.param("kvcore.merkle", 1_000_000, id="cython-1M"),  # 0.3-0.6 s
    pytest.param("kvcore.merkle_py", 50_000, id="python-50k", marks=pytest.mark.slow),  # 1.5-3.5 s
])
def test_exchange_ten_differences_in_a_million(name, n, capsys):
    m = importlib.import_module(name)
    start = time.perf_counter()
    a, b, keys_a, keys_b, changed, n = _two_replicas(m, n, random.Random(4))
    assert a.count == b.count == n - 2
    report = m.exchange(a, b, keys_a, keys_b)
    elapsed = time.perf_counter() - start
    expect_segments = sorted({a.segment_of(k) for k in changed})
    assert report.segments == expect_segments == a.diff(b)
    assert report.keys == changed
    total = report.a_to_b + report.b_to_a
    with capsys.disabled():
        print(f"\n{name} over {n:,} keys, 10 differ ({elapsed:.2f} s):")
        for step, items, up, down in report.steps:
            print(f"  {step:8} {items:3} node(s)/segment(s)  a->b {up:7,} B  b->a {down:7,} B")
        print(f"  total {total:,} B = {total / 1024:.1f} KiB")
    # docs/algorithms.md, section 4: about 2 KiB + d x (2 KiB + 2 x (K / 16,384) x 24 B),
    # ~51 KiB at d=10, K=1M
    per_segment = 2 * (n / 16384) * 24
    assert total <= 16 + 2048 + 10 * (2048 + 1.5 * per_segment)
    if n == 1_000_000:
        assert total <= 64 * 1024


def test_equal_trees_exchange_only_roots(impl):
    t = impl.MerkleTree.from_items([(b"a", b"1")])
    report = impl.exchange(t, t.copy(), lambda s: [], lambda s: [])
    assert (report.segments, report.keys, report.a_to_b, report.b_to_a) == ([], [], 8, 8)


# --- rebase: a rebuild while writes go on (kvnet/replica.py, docs/antientropy.md) ---


@given(st.data())
def test_rebase_replays_the_writes_since_the_base_onto_a_rebuilt_tree(data):
    """A tree that went wrong (entries it never XORed out), a snapshot of the store, writes
    going on meanwhile: rebase(fold of the snapshot, copy at the snapshot) is the fold of the
    store now, whatever the writes were."""
    for mod in both():
        shape = data.draw(shapes_st, label="shape")
        store = data.draw(st.dictionaries(keys_st, versions_st, max_size=20), label="store")
        lost = data.draw(st.dictionaries(keys_st, versions_st, max_size=4), label="lost")
        live = mod.MerkleTree(*shape).rebuild(list(store.items()) + list(lost.items()))
        base = live.copy()
        built = mod.MerkleTree(*shape).rebuild(store.items())   # the snapshot, folded
        now = dict(store)
        for k, v in data.draw(st.lists(st.tuples(keys_st, st.none() | versions_st), max_size=20),
                              label="writes"):
            old = now.get(k)
            if old is None and v is None:
                continue
            live.update(k, old, v)          # what the store held is XORed out (None if absent)
            if v is None:
                now.pop(k)
            else:
                now[k] = v
        live.rebase(built, base)
        assert live == mod.MerkleTree(*shape).rebuild(now.items())
        live.check()


def test_rebase_refuses_another_shape(impl):
    t = impl.MerkleTree(4, 3)
    with pytest.raises(ValueError):
        t.rebase(impl.MerkleTree(16, 2), impl.MerkleTree(4, 3))
