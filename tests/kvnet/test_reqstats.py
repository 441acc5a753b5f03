"""kvnet/reqstats.pyx, the front door's request counts in C, against its pure-Python twin."""
import pytest
from hypothesis import given, strategies as st

from kvcore._native import NO_EXTENSIONS
from kvnet import reqstats_py

IMPLS = [reqstats_py] if NO_EXTENSIONS else [reqstats_py, pytest.importorskip("kvnet.reqstats")]


@pytest.mark.parametrize("mod", IMPLS, ids=lambda m: m.__name__)
def test_bucket_bounds_are_log_spaced_four_per_power_of_two(mod):
    b = mod.BOUNDS_NS
    assert len(b) == 94 and b[0] == 1024 and b[-1] is None and b[-2] == 1 << 33
    assert b[1:5] == [1280, 1536, 1792, 2048]
    for lo, hi in zip(b[:-2], b[1:-1]):
        assert 1.1 < hi / lo <= 1.25
    # a latency goes to the least bound >= it
    for i, bound in enumerate(b[:-1]):
        assert mod.bucket_of(bound) == i
        assert mod.bucket_of(bound + 1) == i + 1
    assert mod.bucket_of(0) == 0
    assert mod.bucket_of(1 << 40) == 93


@given(st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_the_c_buckets_are_the_twins(ns):
    for mod in IMPLS:
        assert mod.bucket_of(ns) == reqstats_py.bucket_of(ns)


@pytest.mark.parametrize("mod", IMPLS, ids=lambda m: m.__name__)
def test_slots_count_sum_and_share_one_overflow_slot(mod):
    rs = mod.ReqStats()
    s = rs.slot("set", "w=2")
    assert rs.slot("set", "w=2") == s and rs.slot("get", "r=2") != s
    rs.add_ns(s, 5000)
    rs.add_ns(s, 5000)
    rs.add_ns(s, 3 << 30)
    start = rs.now()
    rs.record(s, start)
    buckets, total = rs.buckets(s)
    assert sum(buckets) == 4 and buckets[mod.bucket_of(5000)] == 2
    assert total >= 10000 + (3 << 30)
    assert [(c, q, sum(b)) for c, q, b, _ in rs.snapshot()] == [("set", "w=2", 4)]
    # labels stay bounded whatever clients send
    slots = {rs.slot("kv.get", f"r={i}") for i in range(300)}
    assert len(rs.keys) == 128 and rs.keys[-1] == ("other", "other")
    assert len(slots) == 127 - 2 + 1
    with pytest.raises(IndexError):
        rs.buckets(128)
