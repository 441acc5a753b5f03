"""Claim properties (docs/algorithms.md, section 3) over random join/leave sequences
(docs/ring.md)."""
import os
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from kvcore import claim, claim_sim
from kvcore.errors import RingError
from kvcore.ring import Ring

# RINGKV_CLAIM_EXAMPLES=1000 for a longer hunt; the default keeps each test to a few seconds.
EXAMPLES = int(os.environ.get("RINGKV_CLAIM_EXAMPLES", "40"))


def windows_with_repeats(owners, n):
    """Independent of claim.violations: start indices of wrapping windows of n that repeat."""
    q = len(owners)
    ring2 = list(owners) + list(owners[:n - 1])
    return [i for i in range(q) if len(set(ring2[i:i + n])) < n]


def assert_properties(ring):
    q, n, s = ring.q, ring.n, len(ring.nodes)
    counts = Counter(ring.owners)
    # 1. balance
    assert set(counts) == set(ring.nodes)
    assert min(counts.values()) >= q // s and max(counts.values()) <= -(-q // s), counts
    # 2. distinct replicas
    for p in range(q):
        pl = ring.preference_list(p)
        assert len(pl) == len(set(pl)) == min(n, s)
    # 3. spacing, wrap-around included
    bad = windows_with_repeats(ring.owners, n) if s >= n else []
    if s > n:
        assert bad == [], bad
    elif s == n:
        assert len(bad) <= n - 1 and all(i > q - n for i in bad), bad
        if q % n == 0:
            assert bad == []


def step(ring, op, pick):
    """Apply one join (op True) or leave; check movement; return the new ring."""
    q, n = ring.q, ring.n
    before = Counter(ring.owners)
    if op:
        new = f"j{ring.epoch:04d}"
        got = claim.join(ring, new)
        after = Ring(ring.members + ((new, None),), got.owners, n, ring.epoch + 1)
        moves = claim.diff(ring, after)
        s1 = len(after.nodes)
        if s1 > n:
            # 4. minimal movement: only to the new node, exactly what balance needs
            lo, hi = claim.balance_bounds(q, s1)
            assert not got.fallback
            assert all(to == new for _, _, to in moves)
            assert len(moves) == max(lo, sum(max(0, c - hi) for c in before.values()))
    else:
        gone = ring.nodes[pick % len(ring.nodes)]
        got = claim.leave(ring, gone)
        after = Ring(tuple(m for m in ring.members if m[0] != gone), got.owners, n, ring.epoch + 1)
        moves = claim.diff(ring, after)
        s1 = len(after.nodes)
        if s1 > n:
            # 4. the leaver's partitions move, plus what spacing forces: more moves only when no
            # placement of the leaver's partitions alone keeps the spacing, and even then a
            # bounded number (S = n + 1 is the tightest case: it may need most of a re-striping)
            assert {p for p, _, _ in moves} >= set(ring.partitions_of(gone))
            if len(moves) > before[gone]:
                assert claim._give(list(ring.owners), gone, list(after.nodes), n) is None
                if s1 > n + 1:
                    assert len(moves) - before[gone] <= q // 4
    assert_properties(after)
    return after


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    start=st.integers(1, 64),
    q=st.sampled_from([64, 256]),
    n=st.integers(1, 4),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 63)), max_size=14),
)
def test_claim_properties_over_random_sequences(start, q, n, ops):
    ring = Ring.create([f"s{i:02d}" for i in range(min(start, q))], q=q, n=n)
    assert_properties(ring)
    for join, pick in ops:
        s = len(ring.nodes)
        if (join and s < 64) or s == 1:
            ring = step(ring, True, pick)
        else:
            ring = step(ring, False, pick)


@settings(max_examples=max(1, EXAMPLES // 3), deadline=None)
@given(n=st.integers(2, 4), ops=st.lists(st.tuples(st.booleans(), st.integers(0, 63)), max_size=12))
def test_small_clusters_around_n(n, ops):
    # S near n is where spacing is hardest (and where re-striping may be needed).
    ring = Ring.create(["a"], q=256, n=n)
    for join, pick in ops:
        s = len(ring.nodes)
        ring = step(ring, (join and s < 2 * n + 2) or s == 1, pick)


def test_initial_layouts_are_valid():
    for q in (8, 64, 256):
        for n in (1, 2, 3, 5):
            for s in sorted({*range(1, 13), 16, 31, 32, 33, 63, 64} & set(range(1, q + 1))):
                ids = [f"n{i:02d}" for i in range(s)]
                owners = claim.initial(ids, q, n)
                assert claim.check(owners, ids, n) == [], (q, n, s)
                if claim.spacing_possible(q, s, n):
                    assert windows_with_repeats(owners, n) == []


def test_wrap_is_checked():
    # 256 = 3 * 85 + 1: a plain 3-stripe repeats the owner across the wrap.
    owners = tuple("abc"[p % 3] for p in range(256))
    assert claim.violations(owners, 3) == [254, 255]
    assert claim.check(owners, list("abc"), 3) == []
    assert claim.check(owners + (), list("abcd"), 3) != []  # unbalanced and badly spaced for S=4
    # joining a fourth node must remove the repeat at the wrap
    ring = Ring(list("abc"), owners, 3)
    assert windows_with_repeats(ring.with_node("d").owners, 3) == []


def test_restripe_keeps_what_it_can():
    ids = [f"n{i}" for i in range(10)]
    owners = claim.initial(ids, 256, 3)
    again = claim.restripe(owners, ids, 256, 3)
    assert again == owners


def test_diff_lists_transfers():
    a = Ring.create(["a", "b", "c", "d"], q=16, n=2)
    b = a.with_node("e")
    moves = claim.diff(a, b)
    assert moves and all(a.owner(p) == frm and b.owner(p) == to for p, frm, to in moves)
    assert [p for p, _, _ in moves] == sorted(p for p in range(16) if a.owner(p) != b.owner(p))
    assert claim.diff(a, a) == []
    with pytest.raises(RingError):
        claim.diff(a, Ring.create(["a"], q=32))


def test_errors():
    ring = Ring.create(["a", "b"], q=2, n=1)
    with pytest.raises(RingError):
        ring.with_node("c")  # 3 nodes cannot share 2 partitions
    with pytest.raises(RingError):
        claim.leave(ring, "zz")
    with pytest.raises(RingError):
        claim.initial([], 8, 3)


def test_simulated_sequence_meets_the_movement_target():
    rows, totals = claim_sim.simulate(claim_sim.grow_then_shrink(3, 64), q=256, n=3)
    assert totals["moved"] <= 1.1 * totals["ideal"], totals
    assert all(r["violations"] == 0 for r in rows if r["nodes"] > 3)
    assert all(r["max"] - r["min"] <= 1 for r in rows)


def test_initial_is_remembered_for_its_input():
    """Every node of a new cluster computes the initial layout for itself; in one process
    (the simulator's hundreds of nodes) it is computed once per (nodes, q, n)."""
    ids = [f"n{i:02d}" for i in range(40)]
    claim._initial.cache_clear()
    first = claim.initial(ids, 512, 3)
    again = claim.initial(list(ids), 512, 3)
    info = claim._initial.cache_info()
    assert (info.misses, info.hits) == (1, 1) and again is first
    assert type(first) is tuple and first == claim._initial.__wrapped__(tuple(ids), 512, 3)
    ids.append("n40")                                  # (the caller's list is not the key)
    assert claim.initial(ids[:40], 512, 3) is first
    assert claim.initial(ids, 512, 3) != first         # another input: its own layout
    assert claim.initial(ids[:40], 512, 2) == claim._initial.__wrapped__(tuple(ids[:40]), 512, 2)
    for _ in range(2):                                 # (a refusal is not remembered)
        with pytest.raises(RingError):
            claim.initial(ids, 16, 3)
