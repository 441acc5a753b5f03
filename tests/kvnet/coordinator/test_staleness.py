"""The staleness comparison (kvnet/coordinator/staleness.py) on hand-built clocks: a read's
answer against the sync of every reply its replicas gave."""
from kvcore import versions as V
from kvnet.coordinator.staleness import fractions, is_stale, new_counts

X, Y = ("x", 1, 1), ("y", 1, 1)


def _write(value, ts, over=None, actor=X):
    return V.update(V.new(V.sibling(value, ts)), over, actor)


def test_an_answer_older_than_the_merge_is_stale():
    old = _write(b"v1", 10)
    new = _write(b"v2", 20, old)                 # old's successor
    merged = V.sync_all([old, new])
    assert merged == new
    assert is_stale(old, merged)


def test_an_answer_equal_to_the_merge_is_not():
    a = _write(b"v1", 10)
    assert not is_stale(a, V.sync_all([a, a, a]))
    # equal histories held as different objects, anonymous values in another order
    left = V.Clock(a.entries, (V.sibling(b"p", 1), V.sibling(b"q", 2)))
    right = V.Clock(a.entries, (V.sibling(b"q", 2), V.sibling(b"p", 1)))
    assert not is_stale(left, right)


def test_an_answer_that_dominates_the_merge_is_not():
    old = _write(b"v1", 10)
    new = _write(b"v2", 20, old)
    assert not is_stale(new, old)                # (a reply set that missed the answer's)


def test_not_found_is_stale_only_when_some_replica_held_a_clock():
    assert not is_stale(V.EMPTY, V.sync_all([]))
    assert is_stale(V.EMPTY, _write(b"v1", 10))
    # a tombstone counts: the clock is what is compared, not the value a GET shows
    dead = V.update(V.new(V.tombstone(30)), _write(b"v1", 10), X)
    assert is_stale(V.EMPTY, dead)


def test_concurrent_siblings_answer_only_one_side_is_stale():
    a = _write(b"a", 10, actor=X)
    b = _write(b"b", 20, actor=Y)                # concurrent with a
    both = V.sync(a, b)
    assert V.sibling_count(both) == 2
    assert is_stale(a, both) and is_stale(b, both)
    assert not is_stale(both, both)
    # concurrent with the merge itself (neither contains the other): stale too
    assert is_stale(a, b) and is_stale(b, a)


def test_fractions_per_r():
    # (the driver counts into {r: [checked, stale]}: tests/kvnet/coordinator/test_driver.py)
    counts = {1: [4, 1], 2: [1, 0]}
    assert fractions(counts) == {1: {"checked": 4, "stale": 1, "fraction": 0.25},
                                 2: {"checked": 1, "stale": 0, "fraction": 0.0}}
    assert fractions(new_counts()) == {}
