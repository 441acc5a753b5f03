"""SCAN's pure parts (kvnet/coordinator/scan.py): the plan, a node's scan of its partitions,
the check of its answer and the coordinator's merge, on a model keyspace of ints and bytes."""
import bisect

import pytest
from hypothesis import given, strategies as st

from kvnet.coordinator import scan as S
from kvnet.errors import CommandError, Unavailable


class Keyspace:
    """Stored keys (live or tombstones) of a ring of 2**qbits partitions, by token."""

    def __init__(self, qbits, parts, done_at_end=True):
        self.qbits, self.q = qbits, 1 << qbits
        self.free = 64 - qbits
        self.rows = {}                  # p -> sorted [(token, key, live)]
        for p, offsets in parts.items():
            base = S.first_token(p, qbits)
            self.rows[p] = sorted((base | off, b"%d:%d" % (p, off), live) for off, live in offsets)
        self.done_at_end = done_at_end

    def all_live(self):
        return [k for p in sorted(self.rows) for _, k, live in self.rows[p] if live]

    def between(self, lo, hi):
        """(live keys, stored keys) with lo <= token < hi (hi 0: to the end), in order."""
        rows = [r for p in sorted(self.rows) for r in self.rows[p]
                if r[0] >= lo and (hi == 0 or r[0] < hi)]
        return [k for _, k, live in rows if live], len(rows)

    def scan_one(self, p, cursor, budget, room):
        """What ReplicaHandlers.scan_one does, one key at a time."""
        assert S.partition_of(cursor, self.qbits) == p and budget >= 1 and room >= 1
        rows = self.rows.get(p, [])
        i = bisect.bisect_left(rows, (cursor,))
        keys, examined, size = [], 0, 0
        while i < len(rows) and examined < budget and size < room:
            token, key, live = rows[i]
            examined += 1
            if live:
                keys.append(key)
                size += len(key)
            i += 1
        # after its last key a store gives 0, or last + 1 when that key filled the batch
        nxt = rows[i - 1][0] + 1 if examined else 0
        if i == len(rows) and (self.done_at_end or examined < budget) \
                or nxt >> self.free != p:                 # (the partition's last token)
            nxt = 0
        return keys, examined, nxt


@st.composite
def keyspaces(draw):
    qbits = draw(st.integers(0, 4))
    free = 64 - qbits
    offset = st.integers(0, 40) | st.integers(0, (1 << free) - 1) | st.just((1 << free) - 1)
    parts = {}
    for p in range(1 << qbits):
        offs = draw(st.lists(offset, unique=True, max_size=6))
        parts[p] = [(o, draw(st.booleans() | st.just(True))) for o in offs]
    return Keyspace(qbits, parts, draw(st.booleans()))


def one_call(ks, cursor, count, replicas, cut=None, max_bytes=S.REPLY_BYTES):
    """A call as Node.scan makes it: plan, each node's answer (cut: a node answers only a
    prefix of it), checked, merged. -> (next cursor, keys, the answers)."""
    p0 = S.partition_of(cursor, ks.qbits)
    walk = range(p0, ks.q)
    plan, none = S.assign(walk, lambda p: replicas[p])
    assert none == []
    answers = {}
    for node, ps in plan.items():
        start = cursor if ps[0] == p0 else S.first_token(ps[0], ks.qbits)
        answer = S.scan_partitions(ps, start, count, ks.scan_one, ks.qbits, max_bytes)
        if cut is not None:
            answer = answer[:max(1, cut(node, len(answer)))]
        answers[node] = S.check_answer(answer, ps, start, ks.qbits)
    nxt, keys = S.merge(walk, plan, answers, count, ks.q, ks.qbits)
    return nxt, keys, answers


def owners(draw, q):
    """A random replica layout: (nodes, each partition's replicas in preference order)."""
    nodes = draw(st.integers(1, 5))
    n = draw(st.integers(1, nodes))
    return nodes, [draw(st.permutations(range(nodes)))[:n] for _ in range(q)]


@given(ks=keyspaces(), data=st.data())
def test_one_call_returns_exactly_the_keys_before_its_cursor_and_fills_count(ks, data):
    nodes, replicas = owners(data.draw, ks.q)
    cursor = data.draw(st.sampled_from([0] + [r[0] + d for rows in ks.rows.values()
                                              for r in rows for d in (0, 1) if r[0] + d < 1 << 64]))
    count = data.draw(st.integers(1, 12))
    nxt, keys, answers = one_call(ks, cursor, count, replicas)
    live, examined = ks.between(cursor, nxt)
    assert keys == live                              # none skipped, none twice, in token order
    assert nxt == 0 or nxt > cursor
    assert examined >= count or nxt == 0             # COUNT filled unless the ring ended
    assert examined <= 2 * count - 1                 # (no two keys share a token here)
    assert len(answers) <= nodes                     # one request per node


@given(ks=keyspaces(), data=st.data())
def test_a_node_that_answers_any_prefix_never_makes_the_walk_skip(ks, data):
    """Nodes that stop early (their reply's byte budget, or any prefix of their list) make
    the call shorter, never wrong, and every call still makes progress."""
    nodes, replicas = owners(data.draw, ks.q)
    max_bytes = data.draw(st.sampled_from([1, 3, 8, 20, S.REPLY_BYTES]))
    cut = data.draw(st.sampled_from([None, lambda node, n: 1, lambda node, n: n // 2,
                                     lambda node, n: n - node]))
    seen, cursor, calls = [], 0, 0
    while True:
        count = data.draw(st.integers(1, 9))
        nxt, keys, _ = one_call(ks, cursor, count, replicas, cut, max_bytes)
        assert keys == ks.between(cursor, nxt)[0]
        assert nxt == 0 or nxt > cursor
        seen += keys
        calls += 1
        if nxt == 0:
            break
        cursor = nxt
    assert seen == ks.all_live()
    assert calls <= sum(len(r) for r in ks.rows.values()) + ks.q + 1


@given(ks=keyspaces(), data=st.data())
def test_a_full_iteration_returns_every_key_once(ks, data):
    nodes, replicas = owners(data.draw, ks.q)
    seen, cursor, calls = [], 0, 0
    while True:
        count = data.draw(st.integers(1, 20))
        cursor, keys, _ = one_call(ks, cursor, count, replicas)
        seen += keys
        calls += 1
        if cursor == 0:
            break
    assert seen == ks.all_live()
    stored = sum(len(r) for r in ks.rows.values())
    assert calls <= stored + 1                        # each call but the last examines >= 1


def test_a_small_keyspace_is_one_call():
    ks = Keyspace(8, {3: [(5, True)], 77: [(1, True), (9, False)], 200: [(0, True)]})
    nxt, keys, answers = one_call(ks, 0, 10, [[p % 3] for p in range(256)])
    assert nxt == 0 and keys == [b"3:5", b"77:1", b"200:0"] and len(answers) == 3


def test_assign_asks_few_nodes_and_lists_partitions_without_a_replica():
    choices = {0: ["a", "b"], 1: ["b", "a"], 2: [], 3: ["c", "a"], 4: ["me"], 5: ["c", "b"]}
    plan, none = S.assign(range(6), lambda p: choices[p])
    assert plan == {"a": [0, 1, 3], "me": [4], "c": [5]} and none == [2]


def test_merge_raises_only_for_a_partition_the_walk_reaches():
    ks = Keyspace(2, {0: [(i, True) for i in range(5)], 1: [], 2: [(1, True)], 3: [(1, True)]})
    plan = {"a": [0, 1], "b": [3]}             # partition 2: no replica reachable
    ans_a = S.check_answer(S.scan_partitions([0, 1], 0, 3, ks.scan_one, 2), [0, 1], 0, 2)
    # the walk stops inside partition 0: partition 2 is never reached
    nxt, keys = S.merge(range(4), plan, {"a": ans_a, "b": OSError("down")}, 3, 4, 2)
    assert keys == [b"0:0", b"0:1", b"0:2"] and nxt == 3
    ans_a = S.check_answer(S.scan_partitions([0, 1], 0, 10, ks.scan_one, 2), [0, 1], 0, 2)
    with pytest.raises(Unavailable, match="no replica of partition 2 is reachable for SCAN"):
        S.merge(range(4), plan, {"a": ans_a}, 10, 4, 2)
    plan = {"a": [0, 1], "b": [2, 3]}
    with pytest.raises(OSError, match="down"):
        S.merge(range(4), plan, {"a": ans_a, "b": OSError("down")}, 10, 4, 2)


def test_scan_partitions_stops_at_count_or_bytes():
    ks = Keyspace(2, {0: [(1, True), (2, True), (3, True)], 1: [(1, True)], 2: [(1, True)], 3: []})
    got = S.scan_partitions([0, 1, 2, 3], 0, 4, ks.scan_one, 2)
    assert [e[0] for e in got] == [0, 1] and sum(e[2] for e in got) == 4
    got = S.scan_partitions([0, 1, 2, 3], 0, 100, ks.scan_one, 2, max_bytes=4)
    assert [e[0] for e in got] == [0] and got[0][3] != 0        # cut inside partition 0
    got = S.scan_partitions([2, 3], S.first_token(2, 2), 100, ks.scan_one, 2)
    assert got == [[2, [b"2:1"], 1, 0], [3, [], 0, 0]]


@pytest.mark.parametrize("answer, why", [
    ({}, "not a list"), ([], "not a list"), ([[0, [], 0, 0]] * 3, "not a list"),
    ([[1, [], 0, 0]], "partition 0"), ([[0, [b"k"], 0, 0]], "partition 0"),
    ([[0, ["k"], 1, 0]], "partition 0"), ([[0, [], True, 0]], "partition 0"),
    ([[0, [], 1, 5]], "partition 0"),                       # not past the start
    ([[0, [], 1, 1 << 62]], "partition 0"),                 # in partition 1
    ([[0, [], 1, -1]], "partition 0"), ([[0, [], 1]], "partition 0"),
    ([[0, [], 0, 0], [1, [], 0, 1 << 64]], "partition 1"),
])
def test_check_answer_refuses_malformed_answers(answer, why):
    with pytest.raises(CommandError, match=why):
        S.check_answer(answer, [0, 1], 5, 2)


def test_check_answer_takes_a_prefix():
    assert S.check_answer([[0, [b"k"], 2, 6]], [0, 1], 5, 2) == [(0, [b"k"], 2, 6)]
