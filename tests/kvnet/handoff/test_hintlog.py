"""HintLog: durable hints per target (kvnet/handoff/hintlog.py, docs/handoff.md)."""
import os

import pytest

from kvcore import versions as V
from kvcore.storage import StoreLocked
from kvcore.storage import store as store_c
from kvcore.storage import store_py
from kvnet.handoff import hintlog as H
from kvnet.handoff import BadHint, BadTarget, HintError, HintLog


def vmerge(a, b):
    return V.encode(V.sync(V.decode(a), V.decode(b)))


def write(value, actor, local=None, context=None):
    """Encoded clock of a write of `value` minted by `actor` over `local` (a Clock or None)."""
    client = V.new(V.sibling(value, 1)) if context is None else V.new(context, V.sibling(value, 1))
    return V.encode(V.update(client, local, actor))


def vals(clock_bytes):
    return sorted(s.value for s in V.values(V.decode(clock_bytes)))


@pytest.fixture(params=["cython", "python"])
def store_cls(request, monkeypatch):
    cls = store_c.LogStore if request.param == "cython" else store_py.LogStore
    monkeypatch.setattr(H, "LogStore", cls)
    return cls


@pytest.fixture
def open_log(tmp_path, store_cls):
    logs = []

    def opener(**kw):
        kw.setdefault("fsync", "never")
        log = HintLog(tmp_path / "hints", vmerge, **kw)
        logs.append(log)
        return log

    yield opener
    for log in logs:
        log.close()


def test_add_batch_ack_round_trip(open_log):
    log = open_log()
    c1, c2 = write(b"v1", "a"), write(b"v2", "a")
    assert log.targets() == [] and log.pending("n2") == 0 and log.batch("n2") == []
    assert log.add("n2", 7, b"k1", c1) == c1
    log.add("n2", 65535, b"k2", c2)
    log.add("n3", 0, b"k1", c1)
    assert log.targets() == ["n2", "n3"]
    assert log.pending("n2") == 2 and log.pending("n3") == 1
    got = log.batch("n2", max_items=10)
    assert sorted(got) == sorted([(7, b"k1", c1), (65535, b"k2", c2)])
    assert log.get("n2", 7, b"k1") == c1 and log.holders(0, b"k1") == ["n3"]
    for p, k, c in got:
        assert log.ack("n2", p, k, c) is True
    assert log.ack("n2", 7, b"k1", c1) is False           # already gone
    assert log.pending("n2") == 0 and log.targets() == ["n3"]
    assert log.batch("n2") == []
    assert log.items("n3") == [(0, b"k1", c1)]


def test_record_key_encoding():
    assert H.encode_hint_key(258, b"key") == b"\x01\x02key"
    assert H.decode_hint_key(b"\x01\x02key") == (258, b"key")
    with pytest.raises(BadHint):
        H.decode_hint_key(b"\x00\x01")


def test_merge_keeps_both_siblings(open_log):
    log = open_log()
    ca, cb = write(b"from-a", "a"), write(b"from-b", "b")   # concurrent writes, different actors
    log.add("n2", 1, b"k", ca)
    merged = log.add("n2", 1, b"k", cb)
    assert vals(merged) == [b"from-a", b"from-b"]
    assert log.get("n2", 1, b"k") == merged and log.pending("n2") == 1
    # a write that has seen from-a replaces it, and from-b stays a sibling
    local_a = V.decode(ca)
    newer = write(b"a2", "a", local_a, context=V.join(local_a))
    assert vals(log.add("n2", 1, b"k", newer)) == [b"a2", b"from-b"]
    # adding the same clock again changes nothing
    before = log.get("n2", 1, b"k")
    assert log.add("n2", 1, b"k", newer) == before


def test_ack_with_stale_clock_keeps_hint(open_log):
    log = open_log()
    c1 = write(b"v1", "a")
    log.add("n2", 3, b"k", c1)
    [(p, k, sent)] = log.batch("n2")
    merged = log.add("n2", 3, b"k", write(b"v2", "b"))     # a newer write lands during replay
    assert log.ack("n2", p, k, sent) is False
    assert log.get("n2", 3, b"k") == merged and vals(merged) == [b"v1", b"v2"]
    assert log.ack("n2", 3, b"k", merged) is True
    assert log.pending("n2") == 0
    assert log.ack("nobody", 3, b"k", merged) is False


def test_batch_limits_and_resume(open_log):
    log = open_log()
    expected = {}
    for i in range(50):
        c = write(b"x" * (i % 7), "a")
        log.add("t", i % 5, b"key%d" % i, c)
        expected[(i % 5, b"key%d" % i)] = c
    seen = []
    for _ in range(10):
        b = log.batch("t", max_items=7)
        assert 1 <= len(b) <= 7
        seen.extend(b)
        if len(seen) >= 50:
            break
    assert len(seen) == 50 and {(p, k): c for p, k, c in seen} == expected   # one pass, no repeat
    # the next call starts a new pass: unacknowledged hints come round again
    assert log.batch("t", max_items=100) and log.pending("t") == 50
    # byte limit: at least one hint, never more than max_bytes beyond the first
    one = log.batch("t", max_items=100, max_bytes=1)
    assert len(one) == 1
    log.rewind("t")
    b = log.batch("t", max_items=100, max_bytes=200)
    assert sum(len(c) for _, _, c in b) <= 200
    # acknowledging everything, batch by batch, empties the target
    while True:
        b = log.batch("t", max_items=9)
        if not b:
            break
        for p, k, c in b:
            assert log.ack("t", p, k, c)
    assert log.pending("t") == 0 and log.targets() == []


def test_batch_wraps_after_acks_past_cursor(open_log):
    log = open_log()
    clocks = {b"k%d" % i: write(b"v", "a") for i in range(20)}
    for k, c in clocks.items():
        log.add("t", 0, k, c)
    first = log.batch("t", max_items=10)
    rest = log.batch("t", max_items=10)
    for p, k, c in rest:                      # everything after the cursor is acknowledged
        log.ack("t", p, k, c)
    again = log.batch("t", max_items=100)     # wraps to the start instead of answering []
    assert sorted(again) == sorted(first)


def test_reopen_keeps_hints(open_log):
    log = open_log()
    c1, c2 = write(b"v1", "a"), write(b"v2", "b")
    log.add("n2", 9, b"k", c1)
    log.add("n2", 9, b"k", c2)
    log.add("n-3.x_y", 10, b"other", c1)
    merged = log.get("n2", 9, b"k")
    log.close()
    log.close()                                   # idempotent
    with pytest.raises(HintError):
        log.pending("n2")
    log = open_log()
    assert log.targets() == ["n-3.x_y", "n2"]
    assert log.items("n2") == [(9, b"k", merged)] and vals(merged) == [b"v1", b"v2"]
    assert log.items("n-3.x_y") == [(10, b"other", c1)]


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_crash_keeps_synced_hints(open_log, fsync):
    log = open_log(fsync=fsync, sync_interval_ms=10)
    c1 = write(b"v1", "a")
    log.add("n2", 1, b"k1", c1)
    log.add("n2", 2, b"k2", c1)
    log.ack("n2", 2, b"k2", c1)
    log.sync()
    log._abandon()                                # a killed process: no close, no final sync
    log = open_log()
    assert log.items("n2") == [(1, b"k1", c1)]


def test_reassign_merges_into_new_owners(open_log):
    log = open_log()
    ca, cb, cc = write(b"a", "a"), write(b"b", "b"), write(b"c", "c")
    log.add("gone", 1, b"k", ca)
    log.add("gone", 2, b"k", cb)
    log.add("gone", 3, b"j", cc)
    log.add("n5", 1, b"k", cb)                   # the new owner already has a hint for it
    owners = {1: "n5", 2: "n6", 3: "n5"}
    assert log.reassign("gone", owners.__getitem__) == {"n5": 2, "n6": 1}
    assert log.targets() == ["n5", "n6"] and log.pending("gone") == 0
    assert not os.path.exists(os.path.join(log.directory, "gone"))
    assert vals(log.get("n5", 1, b"k")) == [b"a", b"b"]
    assert log.get("n6", 2, b"k") == cb and log.get("n5", 3, b"j") == cc
    assert log.reassign("gone", owners.__getitem__) == {}
    log.close()
    log = open_log()
    assert log.targets() == ["n5", "n6"] and log.pending("n5") == 2


def test_reassign_failure_keeps_target(open_log):
    log = open_log()
    for p in range(4):
        log.add("gone", p, b"k", write(b"v", "a"))

    def owner(p):
        if p == 2:
            raise LookupError("no owner yet")
        return "n1"

    with pytest.raises(LookupError):
        log.reassign("gone", owner)
    assert log.pending("gone") == 4
    with pytest.raises(BadTarget):
        log.reassign("gone", lambda p: "gone")
    with pytest.raises(BadTarget):
        log.reassign("gone", lambda p: "../x")
    assert log.pending("gone") == 4
    assert log.reassign("gone", lambda p: "n1") == {"n1": 4}
    assert log.pending("n1") == 4


def test_interrupted_drop_is_finished_on_open(open_log, tmp_path):
    log = open_log()
    log.close()
    os.makedirs(tmp_path / "hints" / "~dropped-old" / "x")
    log = open_log()
    assert log.targets() == [] and not os.path.exists(tmp_path / "hints" / "~dropped-old")


@pytest.mark.parametrize("target", ["", ".", "..", "a/b", "a b", "é", "x" * 129, "a\n", None, b"n1",
                                    "~dropped-x"])
def test_bad_target(open_log, target):
    log = open_log()
    c = write(b"v", "a")
    for call in (lambda: log.add(target, 0, b"k", c), lambda: log.pending(target),
                 lambda: log.batch(target), lambda: log.ack(target, 0, b"k", c),
                 lambda: log.reassign(target, lambda p: "n1")):
        with pytest.raises(BadTarget, match="target"):
            call()
    assert os.listdir(log.directory) == ["~LOCK"]


def test_bad_hints(open_log):
    log = open_log(max_key_bytes=10, max_clock_bytes=1000)
    c = write(b"v", "a")
    cases = [
        ((-1, b"k", c), "partition"), ((65536, b"k", c), "partition"), ((True, b"k", c), "partition"),
        (("1", b"k", c), "partition"), ((0, b"", c), "empty"), ((0, "k", c), "bytes"),
        ((0, b"k" * 11, c), "over the limit"), ((0, b"k", b""), "empty"),
        ((0, b"k", b"x" * 1001), "over the limit"), ((0, b"k", "clock"), "bytes"),
    ]
    for args, msg in cases:
        with pytest.raises(BadHint, match=msg):
            log.add("n1", *args)
    assert log.pending("n1") == 0
    with pytest.raises(ValueError, match="max_items"):
        log.batch("n1", max_items=0)
    with pytest.raises(ValueError, match="max_key_bytes"):
        HintLog(log.directory + "2", vmerge, max_key_bytes=65534)
    with pytest.raises(TypeError, match="merge"):
        HintLog(log.directory + "2", None)


def test_merge_result_must_be_bytes(open_log):
    log = HintLog(open_log().directory + "-bad", lambda a, b: None, fsync="never")
    try:
        log.add("n1", 0, b"k", b"one")
        with pytest.raises(BadHint, match="bytes"):
            log.add("n1", 0, b"k", b"two")
        assert log.get("n1", 0, b"k") == b"one"
    finally:
        log.close()


def test_second_open_is_refused(open_log):
    log = open_log()
    with pytest.raises(StoreLocked):              # even before any target store exists
        HintLog(log.directory, vmerge)
    log.add("n1", 0, b"k", write(b"v", "a"))
    with pytest.raises(StoreLocked):
        HintLog(log.directory, vmerge)
    assert log.pending("n1") == 1


def test_compact_and_stats(open_log):
    log = open_log()
    c = write(b"v", "a")
    for i in range(30):
        log.add("n1", 0, b"k%d" % i, c)
    for i in range(20):
        log.ack("n1", 0, b"k%d" % i, c)
    log.compact()
    st = log.stats()
    assert st["n1"]["pending"] == 10 and "fsync" in st["n1"]["store"]
    assert len(log.items("n1")) == 10


def test_dvv_merge_helper():
    ca, cb = write(b"a", "a"), write(b"b", "b")
    assert H.dvv_merge(ca, cb) == vmerge(ca, cb) == vmerge(cb, ca)
