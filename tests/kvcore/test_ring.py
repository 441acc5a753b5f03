"""Ring semantics, run against the compiled module and its twin (docs/ring.md)."""
import importlib
import inspect
import os
import pickle
import random
import struct

import pytest
from hypothesis import given, settings, strategies as st

from kvcore import claim, hashing_py
from kvcore.errors import KVError, RingError

IMPLS = [pytest.param("kvcore.ring", id="cython"), pytest.param("kvcore.ring_py", id="python")]


@pytest.fixture(params=IMPLS)
def impl(request):
    return importlib.import_module(request.param)


def nodes(k, prefix="n"):
    return [f"{prefix}{i:02d}" for i in range(k)]


def test_compiled_module_loaded():
    # Fails if the build silently fell back to the twin.
    import kvcore.ring

    assert kvcore.ring.__file__.endswith((".so", ".pyd"))
    assert not inspect.isfunction(kvcore.ring.Ring.preference_list)  # a C method, not Python


def test_create_basics(impl):
    ring = impl.Ring.create(["c", "a", "b"])
    assert ring.q == 256 and ring.n == 3 and ring.epoch == 1
    assert ring.nodes == ("a", "b", "c")
    assert ring.members == (("a", None), ("b", None), ("c", None))
    assert len(ring.owners) == 256
    assert ring.owners[:6] == ("a", "b", "c", "a", "b", "c")
    assert ring.owner(0) == "a" and ring.owner(255) == ring.owners[255]
    assert not claim.check(ring.owners, ring.nodes, 3)
    # create does not depend on the order the nodes are given in
    assert ring == impl.Ring.create(["b", "c", "a"])


def test_partition_of_is_top_bits(impl):
    ring = impl.Ring.create(nodes(4), q=1024)
    rnd = random.Random(3)
    for _ in range(200):
        key = rnd.randbytes(rnd.randrange(40))
        assert ring.partition_of(key) == hashing_py.token(key) >> (64 - 10)
    assert impl.Ring.create(["a"], q=1).partition_of(b"x") == 0


def test_preference_list_semantics(impl):
    ring = impl.Ring.create(nodes(5), q=64, n=3)
    for p in range(64):
        pl = ring.preference_list(p)
        assert pl[0] == ring.owner(p)
        assert len(pl) == len(set(pl)) == 3
        # the owner, then clockwise, skipping nodes already chosen
        walk = []
        for k in range(64):
            x = ring.owners[(p + k) % 64]
            if x not in walk:
                walk.append(x)
        assert pl == tuple(walk[:3])
        assert ring.extended_preference_list(p) == tuple(walk)
    key = b"some key"
    assert ring.preference_list(key) == ring.preference_list(ring.partition_of(key))
    assert ring.preference_list(bytearray(key)) == ring.preference_list(key)
    assert ring.preference_list(memoryview(key)) == ring.preference_list(key)


def test_preference_list_when_fewer_nodes_than_n(impl):
    ring = impl.Ring.create(["a", "b"], q=16, n=3)
    for p in range(16):
        assert sorted(ring.preference_list(p)) == ["a", "b"]
        assert ring.extended_preference_list(p) == ring.preference_list(p)
    one = impl.Ring.create(["a"], q=8, n=3)
    assert one.preference_list(b"k") == ("a",)


def test_lookup_errors(impl):
    ring = impl.Ring.create(nodes(3), q=16)
    with pytest.raises(IndexError):
        ring.preference_list(16)
    with pytest.raises(IndexError):
        ring.preference_list(-1)
    with pytest.raises(IndexError):
        ring.owner(16)
    with pytest.raises(TypeError):
        ring.preference_list("text key")
    with pytest.raises(TypeError):
        ring.owner(b"key")
    with pytest.raises(TypeError):
        ring.partition_of(3)


def test_zones_distinct_first(impl):
    members = [("a1", "z1"), ("a2", "z1"), ("a3", "z1"), ("b1", "z2"), ("b2", "z2"), ("c1", "z3")]
    ring = impl.Ring.create(members, q=64, n=3)
    zone = dict(members)
    for p in range(64):
        pl = ring.preference_list(p)
        assert pl[0] == ring.owner(p)
        assert len(set(pl)) == 3
        assert {zone[x] for x in pl} == {"z1", "z2", "z3"}
    # two zones for n = 3: both zones first, then the nearest other node
    two = impl.Ring.create([("a", "x"), ("b", "x"), ("c", "y"), ("d", "x")], q=32, n=3)
    zone2 = dict(two.members)
    for p in range(32):
        pl = two.preference_list(p)
        assert len(set(pl)) == 3 and {zone2[x] for x in pl[:2]} == {"x", "y"}


def test_zones_survive_changes_and_bytes(impl):
    ring = impl.Ring.create([("a", "z1"), ("b", "z2"), "c", ("d", "z1")], q=32)
    ring = ring.with_node(("e", "z2"))
    assert dict(ring.members) == {"a": "z1", "b": "z2", "c": None, "d": "z1", "e": "z2"}
    assert impl.Ring.from_bytes(ring.to_bytes()) == ring


def test_with_and_without_node(impl):
    ring = impl.Ring.create(nodes(8))
    bigger = ring.with_node("n99")
    assert bigger.epoch == 2 and "n99" in bigger.nodes
    moves = impl.diff(ring, bigger)
    assert all(to == "n99" for _, _, to in moves)
    assert len(moves) == len(bigger.partitions_of("n99")) == 256 // 9
    smaller = bigger.without_node("n01")
    assert smaller.epoch == 3 and "n01" not in smaller.nodes
    moves = impl.diff(bigger, smaller)
    assert {p for p, frm, _ in moves} == set(bigger.partitions_of("n01"))
    with pytest.raises(RingError):
        ring.with_node("n01")
    with pytest.raises(RingError):
        ring.without_node("nope")
    with pytest.raises(RingError):
        impl.Ring.create(["a"]).without_node("a")


def test_rings_are_immutable_values(impl):
    a = impl.Ring.create(nodes(3))
    b = impl.Ring.create(nodes(3))
    assert a == b and hash(a) == hash(b) and a is not b
    assert a != a.with_node("x") and a != impl.Ring.create(nodes(3), epoch=2)
    assert a != impl.Ring.create(nodes(3), n=2)
    assert {a, b} == {a}
    with pytest.raises(AttributeError):
        a.epoch = 5
    assert pickle.loads(pickle.dumps(a)) == a


def test_uninitialised_ring_does_not_crash():
    import kvcore.ring

    bare = kvcore.ring.Ring.__new__(kvcore.ring.Ring)
    for call in (bare.preference_list, bare.extended_preference_list, bare.owner):
        with pytest.raises((RingError, TypeError)):
            call(0)


def test_bad_arguments(impl):
    for bad in ([], ["a", "a"], [""], [3], [("a", 3)], [("a", "z", "w")]):
        with pytest.raises(RingError):
            impl.Ring.create(bad)
    for q in (0, 3, 100, 1 << 17, 2.0):
        with pytest.raises(RingError):
            impl.Ring.create(["a"], q=q)
    for n in (0, 256, "3"):
        with pytest.raises(RingError):
            impl.Ring.create(["a"], n=n)
    with pytest.raises(RingError):
        impl.Ring.create(nodes(9), q=8)
    with pytest.raises(RingError):
        impl.Ring(["a"], ["a", "b"])
    assert issubclass(RingError, KVError)


def test_bytes_roundtrip(impl):
    ring = impl.Ring.create(nodes(7) + [("zoned", "eu-1"), ("ünï", None)], q=128, n=2, epoch=41)
    data = ring.to_bytes()
    back = impl.Ring.from_bytes(data)
    assert back == ring and back.to_bytes() == data and back.epoch == 41
    assert impl.Ring.from_bytes(bytearray(data)) == ring
    assert impl.Ring.from_bytes(memoryview(data)) == ring


@pytest.mark.parametrize("mangle", [
    lambda d: b"",
    lambda d: b"garbage",
    lambda d: os.urandom(600),
    lambda d: d[:-1],
    lambda d: d + b"\0",
    lambda d: b"XKVR" + d[4:],
    lambda d: d[:4] + b"\x09" + d[5:],
    lambda d: d[:40] + bytes([d[40] ^ 1]) + d[41:],
    lambda d: d[:-5] + bytes([d[-5] ^ 0x80]) + d[-4:],
])
def test_from_bytes_rejects_garbage(impl, mangle):
    data = impl.Ring.create(nodes(5), q=64).to_bytes()
    with pytest.raises(RingError):
        impl.Ring.from_bytes(mangle(data))


def test_from_bytes_rejects_well_checksummed_nonsense(impl):
    from kvcore.hashing_py import crc32c

    def sealed(body):
        return body + struct.pack("<I", crc32c(body))

    data = impl.Ring.create(["a", "b"], q=4).to_bytes()
    body = data[:-4]
    with pytest.raises(RingError):  # owner index past the member list
        impl.Ring.from_bytes(sealed(body[:-2] + b"\x07\x00"))
    with pytest.raises(RingError):  # owner table too short
        impl.Ring.from_bytes(sealed(body[:-2]))
    with pytest.raises(RingError):  # flags set
        impl.Ring.from_bytes(sealed(body[:7] + b"\x01" + body[8:]))


def test_twins_agree(impl):
    import kvcore.ring as c
    import kvcore.ring_py as py

    for k, q, n in ((1, 8, 3), (3, 256, 3), (5, 64, 2), (13, 256, 3), (64, 256, 4)):
        a = c.Ring.create(nodes(k), q=q, n=n)
        b = py.Ring.create(nodes(k), q=q, n=n)
        assert a.owners == b.owners and a.to_bytes() == b.to_bytes() and hash(a) == hash(b)
        assert all(a.preference_list(p) == b.preference_list(p) for p in range(q))
        a2, b2 = a.with_node("new"), b.with_node("new")
        assert a2.owners == b2.owners
        assert c.Ring.from_bytes(b2.to_bytes()).to_bytes() == b2.to_bytes()


@settings(max_examples=30)
@given(st.lists(st.binary(max_size=40), max_size=60), st.sampled_from([1, 16, 256, 4096]))
def test_lookup_many_matches_partition_of(keys, q):
    import kvcore.ring as c
    import kvcore.ring_py as py

    for mod in (c, py):
        ring = mod.Ring.create(["a"], q=q)
        got = ring.lookup_many(keys)
        assert got.dtype.kind == "i" and got.shape == (len(keys),)
        assert got.tolist() == [ring.partition_of(k) for k in keys]


def test_lookup_many_inputs(impl):
    ring = impl.Ring.create(nodes(3))
    keys = [os.urandom(i % 30) for i in range(500)]
    expect = [ring.partition_of(k) for k in keys]
    assert ring.lookup_many(keys).tolist() == expect
    assert ring.lookup_many(tuple(keys)).tolist() == expect
    assert ring.lookup_many(iter(keys)).tolist() == expect
    assert ring.lookup_many([bytearray(k) for k in keys]).tolist() == expect
    assert ring.lookup_many([]).tolist() == []
    with pytest.raises(TypeError):
        ring.lookup_many([b"a", "str"])
