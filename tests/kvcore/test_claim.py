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


# -- zones (docs/algorithms.md, section 3, "Zones") ---------------------------------------------

ZONE_IMPLS = [pytest.param("kvcore.ring", id="cython"), pytest.param("kvcore.ring_py", id="python")]


def zone_span_problems(ring):
    """Partitions whose preference list spans fewer than min(N, Z) zones (Z: zones of the
    members owning partitions; a member without a zone is a zone of its own)."""
    key = {x: claim.zone_key(x, z) for x, z in ring.members}
    z = len({key[x] for x in set(ring.owners)})
    return [p for p in range(ring.q)
            if len({key[x] for x in ring.preference_list(p)}) != min(ring.n, z)]


def assert_zone_properties(ring):
    """Balance and zone-distinct preference lists always; zone spacing (every window of N
    partitions in N zones, the wrap's N - 1 windows excepted for Z = N) when the claim asks it
    and says it kept it."""
    q, s = ring.q, len(ring.nodes)
    counts = Counter(ring.owners)
    assert set(counts) == set(ring.nodes)
    assert min(counts.values()) >= q // s and max(counts.values()) <= -(-q // s), counts
    assert zone_span_problems(ring) == []
    for p in range(q):
        pl = ring.preference_list(p)
        assert len(pl) == len(set(pl)) == min(ring.n, s)


members_st = st.lists(st.sampled_from([None, "za", "zb", "zc", "zd", "ze"]), min_size=1, max_size=24)


@pytest.mark.parametrize("mod", ZONE_IMPLS)
@settings(max_examples=EXAMPLES, deadline=None)
@given(zones=members_st, q=st.sampled_from([32, 64, 256]), n=st.integers(1, 4),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 63),
                              st.sampled_from([None, "za", "zb", "zc", "zd"])), max_size=6))
def test_preference_lists_span_min_n_zones(mod, zones, q, n, ops):
    """The property: for random member sets with zones (and joins and leaves after), every
    preference list spans min(N, Z) distinct zones, ownership stays balanced, and where the
    zones allow it the initial layout is zone-spaced."""
    impl = __import__(mod, fromlist=["Ring"])
    members = [(f"m{i:02d}", z) for i, z in enumerate(zones)]
    ring = impl.Ring.create(members, q=q, n=n)
    assert_zone_properties(ring)
    lab = claim.zone_labels(ring.members, q, n)
    if lab is not None:
        assert claim.check(ring.owners, ring.nodes, n, lab) == []
    for i, (join, pick, zone) in enumerate(ops):
        s = len(ring.nodes)
        if (join and s < 24) or s == 1:
            ring = ring.with_node((f"j{i:02d}", zone))
        else:
            ring = ring.without_node(ring.nodes[pick % s])
        assert_zone_properties(ring)


def test_zone_labels_when_spacing_is_asked():
    six = [(f"n{i}", f"z{i % 3}") for i in range(6)]
    assert claim.zone_labels(six, 256, 3) is not None and claim.tight(claim.zone_labels(six, 256, 3), 3)
    assert claim.zone_labels([(x, None) for x, _ in six], 256, 3) is None      # no zones
    assert claim.zone_labels(six[:5], 256, 3) is None                          # 2 + 2 + 1 nodes: unequal
    eight = [(f"n{i}", f"z{i % 4}") for i in range(8)]
    assert claim.zone_labels(eight, 64, 3) is not None and not claim.tight(claim.zone_labels(eight, 64, 3), 3)
    lopsided = [(f"n{i}", "big" if i < 5 else f"z{i}") for i in range(9)]
    assert claim.zone_labels(lopsided, 256, 3) is None                         # 'big' owns > Q/3


@pytest.mark.parametrize("q", [64, 256])
def test_six_nodes_three_zones_layout(q):
    members = [(f"n{i}", f"z{i % 3}") for i in range(6)]
    ring = Ring.create(members, q=q, n=3)
    zone = dict(members)
    # every window of 3 partitions holds 3 zones but for the 2 at the wrap (3 does not divide Q)
    bad = windows_with_repeats([zone[x] for x in ring.owners], 3)
    assert all(i > q - 3 for i in bad) and windows_with_repeats(ring.owners, 3) == []
    assert zone_span_problems(ring) == []
    # each node then holds a replica of 3 x its share of the partitions
    held = Counter(x for p in range(q) for x in ring.preference_list(p))
    assert all(abs(held[x] - 3 * ring.owners.count(x)) <= 2 for x in ring.nodes), held
    # the names-only layout with the same zones: lists skip ahead, replica load is uneven
    plain = Ring(members, claim.initial([x for x, _ in members], q, 3), 3)
    assert windows_with_repeats([zone[x] for x in plain.owners], 3)
    held_plain = Counter(x for p in range(q) for x in plain.preference_list(p))
    assert max(held_plain.values()) - min(held_plain.values()) > max(held.values()) - min(held.values()) + 4
    # a zone's nodes are not strictly alternated, so a leave finds room for (nearly) only the
    # leaver's partitions (with a regular alternation their neighbours cover every other node)
    for gone in ring.nodes:
        moves = claim.diff(ring, ring.without_node(gone))
        assert {p for p, _, _ in moves} >= set(ring.partitions_of(gone))
        assert len(moves) - ring.owners.count(gone) <= q // 16, (gone, len(moves))


def test_zone_spacing_and_minimal_moves_on_joins_and_leaves():
    """A join of a new zone keeps zone spacing with minimal moves; a join into a zone already
    there, or a leave, of a ring packed with zones cannot keep it without extra moves, and keeps
    minimal movement instead (node spacing, balance, lists in 3 zones: properties 1-4)."""
    members = [(f"n{i}", f"z{i % 4}") for i in range(8)]
    ring = Ring.create(members, q=256, n=3)
    assert claim.check(ring.owners, ring.nodes, 3, claim.zone_labels(ring.members, 256, 3)) == []
    bigger = ring.with_node(("n8", "z4"))
    assert claim.check(bigger.owners, bigger.nodes, 3, claim.zone_labels(bigger.members, 256, 3)) == []
    moves = claim.diff(ring, bigger)
    assert {to for _, _, to in moves} == {"n8"} and len(moves) == 256 // 9
    same_zone = ring.with_node(("n8", "z0"))
    moves = claim.diff(ring, same_zone)
    assert {to for _, _, to in moves} == {"n8"} and len(moves) == 256 // 9
    assert claim.check(same_zone.owners, same_zone.nodes, 3) == [] and zone_span_problems(same_zone) == []
    smaller = bigger.without_node("n3")
    assert {p for p, _, _ in claim.diff(bigger, smaller)} >= set(bigger.partitions_of("n3"))
    assert claim.check(smaller.owners, smaller.nodes, 3) == [] and zone_span_problems(smaller) == []


@pytest.mark.parametrize("mod", ZONE_IMPLS)
def test_with_zones_respaces_a_names_only_ring(mod):
    impl = __import__(mod, fromlist=["Ring"])
    names = [f"n{i}" for i in range(6)]
    plain = impl.Ring.create(names, q=64, n=3)
    zones = {x: f"z{i % 3}" for i, x in enumerate(names)}
    zoned = plain.with_zones(zones)
    assert zoned.epoch == plain.epoch + 1 and dict(zoned.members) == zones
    assert zone_span_problems(zoned) == []
    assert claim.check(zoned.owners, zoned.nodes, 3, claim.zone_labels(zoned.members, 64, 3)) == []
    assert zoned.owners == impl.Ring.create(list(zones.items()), q=64, n=3).owners or \
        claim.diff(plain, zoned)                                  # (some owners move)
    # labels that ask no spacing (two zones for N = 3) change no owner, only the walk
    two = plain.with_zones({x: "a" if i < 3 else "b" for i, x in enumerate(names)})
    assert two.owners == plain.owners and zone_span_problems(two) == []
    assert zoned.with_zones(zones).owners == zoned.owners           # unchanged zones: no move
    with pytest.raises(RingError):
        plain.with_zones({"stranger": "z1"})
    with pytest.raises(RingError):
        plain.with_zones({"n0": 5})


def test_node_spaced_changes_prefer_spreading_zones(monkeypatch):
    """Where a join or leave cannot keep zone spacing with minimal moves, its node-spaced
    choices still prefer partitions away from the zone's others (claim._soft): fewer windows
    repeat a zone than when it ignores zones, and every list spans min(N, Z) zones either way
    (claim_sim --zones: 3 -> 15 -> 3 nodes in 3 zones, leaves newest first)."""
    def run():
        rows, totals = claim_sim.simulate(claim_sim.grow_then_shrink(3, 15, 1, "newest"), 256, 3, 3)
        assert totals["short"] == 0 and totals["violations"] == 0
        asked = [r for r in rows if r["zviol"] is not None]
        return sum(r["zviol"] for r in asked), max(r["skew"] for r in asked)

    zviol, skew = run()
    monkeypatch.setattr(claim, "_soft", lambda zones: None)
    zviol_blind, skew_blind = run()
    assert zviol < 0.75 * zviol_blind and skew < skew_blind, (zviol, zviol_blind, skew, skew_blind)
