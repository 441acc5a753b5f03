"""Preference lists with member health: fallbacks, strict mode, write routing (docs/quorum.md)."""
import pytest
from hypothesis import given, strategies as st

from kvcore import ring_py
from kvcore import ring as ring_native
from kvnet.coordinator.preflist import Preflist, Target, preflist_for, write_route

NODES = ["n1", "n2", "n3", "n4", "n5"]


@pytest.fixture(params=[ring_native, ring_py], ids=["native", "python"], scope="module")
def Ring(request):
    return request.param.Ring


def make(Ring, nodes=NODES, n=3, q=64):
    return Ring.create(nodes, q=q, n=n)


def check(ring, p, down, pl, strict=False):
    """The reference statement of preflist_for, written independently."""
    prefs = ring.preference_list(p)
    ext = ring.extended_preference_list(p)
    assert pl.primaries == prefs
    assert pl.partition == p and pl.n == ring.n and pl.strict == strict
    nodes = pl.nodes
    assert len(set(nodes)) == len(nodes), "targets are distinct nodes"
    assert not set(nodes) & set(down), "no target is down"
    assert pl.up_primaries == tuple(x for x in prefs if x not in down)
    assert pl.down == tuple(x for x in prefs if x in down)
    spares = [x for x in ext[len(prefs):] if x not in down]
    if strict:
        assert pl.fallbacks == ()
        assert pl.uncovered == pl.down
        return
    # The i-th down primary (in preference order) gets the i-th up non-primary of the extended list.
    want = list(zip(pl.down, spares))
    assert [(f.hint_for, f.node) for f in pl.fallbacks] == want
    assert pl.uncovered == pl.down[len(want):]
    # Fallbacks appear in ring (extended-list) order, and in their primary's slot.
    idx = [ext.index(f.node) for f in pl.fallbacks]
    assert idx == sorted(idx) and all(i >= len(prefs) for i in idx)
    slots = [t.hint_for or t.node for t in pl.targets]
    assert slots == [x for x in prefs if x not in pl.uncovered]
    assert len(pl.targets) == min(len(prefs), len(prefs) - len(pl.down) + len(spares))


def test_all_up_targets_are_the_preference_list(Ring):
    ring = make(Ring)
    for p in range(ring.q):
        pl = preflist_for(ring, p, lambda x: True)
        assert pl.targets == tuple(Target(x) for x in ring.preference_list(p))
        assert pl.down == pl.uncovered == pl.fallbacks == ()
        assert all(t.is_primary and not t.is_fallback for t in pl.targets)


def test_one_down_primary_gets_the_next_up_node(Ring):
    ring = make(Ring)
    prefs = ring.preference_list(5)
    ext = ring.extended_preference_list(5)
    down = {prefs[1]}
    pl = preflist_for(ring, 5, lambda x: x not in down)
    assert pl.targets == (Target(prefs[0]), Target(ext[3], prefs[1]), Target(prefs[2]))
    assert pl.fallbacks[0].is_fallback and pl.target(ext[3]).hint_for == prefs[1]
    assert pl.target("nobody") is None
    check(ring, 5, down, pl)


def test_key_and_partition_agree(Ring):
    ring = make(Ring)
    key = b"user:42"
    down = {"n2"}
    a = preflist_for(ring, key, lambda x: x not in down)
    b = preflist_for(ring, ring.partition_of(key), lambda x: x not in down)
    assert a == b
    with pytest.raises(IndexError):
        preflist_for(ring, ring.q, lambda x: True)


@given(st.sets(st.sampled_from(NODES)), st.integers(0, 63), st.booleans())
def test_fallbacks_distinct_in_ring_order(down, p, strict):
    for mod in (ring_native, ring_py):
        ring = mod.Ring.create(NODES, q=64, n=3)
        pl = preflist_for(ring, p, lambda x: x not in down, strict=strict)
        check(ring, p, down, pl, strict)


@given(st.integers(1, 3), st.sets(st.sampled_from(NODES[:3])), st.integers(0, 31))
def test_no_fallbacks_when_s_at_most_n(s, down, p):
    ring = ring_native.Ring.create(NODES[:s], q=32, n=3)
    pl = preflist_for(ring, p, lambda x: x not in down)
    assert pl.fallbacks == ()
    assert len(pl.primaries) == s
    assert pl.nodes == tuple(x for x in ring.preference_list(p) if x not in down)
    assert pl.uncovered == pl.down


def test_strict_mode_uses_primaries_only(Ring):
    ring = make(Ring)
    prefs = ring.preference_list(0)
    pl = preflist_for(ring, 0, lambda x: x != prefs[0], strict=True)
    assert pl.targets == (Target(prefs[1]), Target(prefs[2]))
    assert pl.uncovered == pl.down == (prefs[0],)


def test_every_node_down(Ring):
    ring = make(Ring)
    pl = preflist_for(ring, 3, lambda x: False)
    assert pl.targets == () and pl.down == pl.uncovered == ring.preference_list(3)


def test_smaller_n_makes_the_rest_fallbacks(Ring):
    ring = make(Ring)
    prefs = ring.preference_list(7)
    ext = ring.extended_preference_list(7)
    pl = preflist_for(ring, 7, lambda x: x != prefs[0], n=2)
    assert pl.primaries == prefs[:2] and pl.n == 2
    assert pl.targets == (Target(ext[2], prefs[0]), Target(prefs[1]))
    for bad in (0, 4, "2"):
        with pytest.raises(ValueError):
            preflist_for(ring, 7, lambda x: True, n=bad)


def test_preflist_is_an_immutable_value(Ring):
    pl = preflist_for(make(Ring), 1, lambda x: True)
    assert isinstance(pl, Preflist)
    with pytest.raises(AttributeError):
        pl.targets = ()
    assert hash(pl) == hash(preflist_for(make(Ring), 1, lambda x: True))


# ---- who coordinates a write -----------------------------------------------------------------

def test_a_primary_coordinates_its_writes(Ring):
    ring = make(Ring)
    prefs = ring.preference_list(9)
    for local in prefs:
        route = write_route(ring, 9, lambda x: True, local)
        assert route.coordinate_locally and route.forward_to is None
        assert route.local_is_primary and route.first_reachable == prefs[0]


def test_a_non_replica_forwards_to_the_first_reachable_primary(Ring):
    ring = make(Ring)
    prefs = ring.preference_list(9)
    ext = ring.extended_preference_list(9)
    other = ext[3]
    route = write_route(ring, 9, lambda x: x != prefs[0], other)
    assert not route.local_is_primary and not route.coordinate_locally
    assert route.coordinator == route.forward_to == route.first_reachable == prefs[1]


def test_a_fallback_coordinates_only_when_every_primary_is_down(Ring):
    ring = make(Ring)
    prefs = ring.preference_list(9)
    ext = ring.extended_preference_list(9)
    down = set(prefs)
    # The first spare in ring order coordinates; another spare forwards to it.
    first = write_route(ring, 9, lambda x: x not in down, ext[3])
    assert first.coordinate_locally and first.coordinator == ext[3]
    second = write_route(ring, 9, lambda x: x not in down, ext[4])
    assert second.forward_to == ext[3]
    strict = write_route(ring, 9, lambda x: x not in down, ext[3], strict=True)
    assert strict.coordinator is None and strict.forward_to is None
    assert not strict.coordinate_locally and strict.first_reachable == ext[3]


def test_local_counts_as_up(Ring):
    ring = make(Ring)
    prefs = ring.preference_list(2)
    route = write_route(ring, 2, lambda x: False, prefs[2])
    assert route.coordinate_locally
    outsider = write_route(ring, 2, lambda x: False, "client-only")
    assert outsider.first_reachable is None and outsider.coordinator is None


@given(st.sets(st.sampled_from(NODES)), st.integers(0, 63), st.sampled_from(NODES))
def test_route_property(down, p, local):
    ring = ring_native.Ring.create(NODES, q=64, n=3)
    prefs = ring.preference_list(p)
    ext = ring.extended_preference_list(p)
    route = write_route(ring, p, lambda x: x not in down, local)
    up = [x for x in ext if x == local or x not in down]
    assert route.first_reachable == up[0]          # local is always up, so never None here
    assert route.local_is_primary == (local in prefs)
    if local in prefs:
        assert route.coordinator == local
    else:
        assert route.coordinator == up[0]
        if any(x in up for x in prefs):
            assert route.coordinator in prefs      # a primary whenever one is up
