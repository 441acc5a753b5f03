"""kvnet/testing/checks.py: the checker on synthetic records, and the offline replica checks
judged by a given ring. Fast: no node processes."""
from kvcore import versions as V
from kvcore.ring import Ring
from kvnet.testing import PutRecord, check, covers, divergent_keys, missing_replicas, new_dots


A, B = ("node1", 7, 1), ("node2", 9, 1)


def ctx(**pairs):
    actors = {"a": A, "b": B}
    return V.encode_context(tuple(sorted((actors[k], n) for k, n in pairs.items())))


def reader(contents):
    return lambda key: contents[key]


def test_new_dots_is_the_reply_minus_the_context():
    assert new_dots(ctx(a=1), ctx(a=2)) == [(A, 2)]
    assert new_dots(b"", ctx(a=1, b=3)) == [(A, 1), (B, 3)]
    assert covers({A: 2, B: 3}, [(A, 2), (B, 3)]) and not covers({A: 2}, [(A, 2), (B, 3)])


def test_lost_set_is_reported_and_present_set_is_not():
    v = check(reader({b"k1": [b"v1"], b"k2": []}), sets={b"k1": b"v1", b"k2": b"v2"})
    assert len(v) == 1 and "k2" in v[0] and "lost" in v[0]
    assert check(reader({b"k1": [b"other", b"v1"]}), sets={b"k1": b"v1"}) == []


def test_superseded_value_is_not_a_loss():
    w1 = PutRecord(b"k", b"w1", b"", ctx(a=1), "x")
    w2 = PutRecord(b"k", b"w2", ctx(a=1), ctx(a=2), "y")       # read w1, replaced it
    assert check(reader({b"k": [b"w2"]}), puts=[w1, w2]) == []


def test_value_replaced_only_by_an_unacknowledged_write_is_not_a_loss():
    w1 = PutRecord(b"k", b"w1", b"", ctx(a=1), "x")
    w2 = PutRecord(b"k", b"w2", ctx(a=1), None, "y", "TimeoutError")
    assert check(reader({b"k": [b"w2"]}), puts=[w1, w2]) == []


def test_lost_acknowledged_value_is_reported():
    w1 = PutRecord(b"k", b"w1", b"", ctx(a=1), "x")
    w2 = PutRecord(b"k", b"w2", b"", ctx(b=1), "y")             # concurrent: both must stay
    v = check(reader({b"k": [b"w2"]}), puts=[w1, w2])
    assert len(v) == 1 and "w1" in v[0] and "lost" in v[0]


def test_a_write_that_had_not_seen_the_dot_does_not_excuse_its_loss():
    w1 = PutRecord(b"k", b"w1", ctx(a=1), ctx(a=2, b=1), "x")   # dots (a,2) or (b,1)
    w2 = PutRecord(b"k", b"w2", ctx(a=2), ctx(a=3), "y")        # saw (a,2) but not (b,1)
    v = check(reader({b"k": [b"w2"]}), puts=[w1, w2])
    assert len(v) == 1 and "w1" in v[0]
    w3 = PutRecord(b"k", b"w3", ctx(a=2, b=1), ctx(a=3, b=1), "y")
    assert check(reader({b"k": [b"w3"]}), puts=[w1, w3]) == []


def test_replaced_value_that_comes_back_and_unknown_values_are_reported():
    w1 = PutRecord(b"k", b"w1", b"", ctx(a=1), "x")
    w2 = PutRecord(b"k", b"w2", ctx(a=1), ctx(a=2), "y")
    v = check(reader({b"k": [b"w2", b"w1", b"ghost"]}), puts=[w1, w2])
    assert any("came back" in x and "w1" in x for x in v)
    assert any("never written" in x and "ghost" in x for x in v)
    assert len(v) == 2


def test_unreadable_key_is_a_violation():
    def read(key):
        raise ConnectionError("down")

    v = check(read, sets={b"k": b"v"})
    assert len(v) == 1 and "unreadable" in v[0]


class _Stopped:
    """Enough of a LocalCluster for the offline checks given `held` and a ring."""
    n, ring_size = 3, 64
    names = ["node1", "node2", "node3", "node4"]


def test_missing_replicas_and_divergent_keys_judge_by_the_given_ring():
    ring = Ring.create(["node1", "node2", "node3"], q=64, n=3).with_node("node4")
    keys = [f"k{i}".encode() for i in range(40)]
    clock = V.encode(V.update(V.new(V.sibling(b"v", 1)), None, A))
    held = {n: {} for n in _Stopped.names}
    for k in keys:
        p = ring.partition_of(k)
        for node in ring.preference_list(p):
            held[node][k] = (p, clock)
    assert missing_replicas(_Stopped(), keys, held=held, ring=ring) == {}
    assert divergent_keys(_Stopped(), held=held, ring=ring) == {}
    a, b = keys[0], keys[1]
    pa, pb = ring.preference_list(ring.partition_of(a)), ring.preference_list(ring.partition_of(b))
    del held[pa[1]][a]                           # one primary lacks a
    for node in pb:                              # b is held only off its preference list
        del held[node][b]
    off = next(n for n in _Stopped.names if n not in pb)
    held[off][b] = (ring.partition_of(b), clock)
    missing = missing_replicas(_Stopped(), keys + [b"never"], held=held, ring=ring)
    assert missing[a] == [pa[1]] and missing[b] == list(pb)
    assert missing[b"never"] == list(ring.preference_list(ring.partition_of(b"never")))
    assert set(missing) == {a, b, b"never"}
    # divergent_keys compares primaries only: b, on no primary at all, looks converged to it
    assert set(divergent_keys(_Stopped(), held=held, ring=ring)) == {a}
