"""Merge: live bytes only, concurrent writes win, tombstones kept while needed."""
import os
import random
import threading

from kvcore.storage import layout as L


def test_merge_reaches_live_size(open_store):
    s = open_store(max_segment_bytes=1 << 16)
    rnd = random.Random(1)
    keys = [b"key%05d" % i for i in range(2000)]
    model = {}
    for _ in range(5):
        for k in keys:
            v = rnd.randbytes(100)
            s.put(k, v)
            model[k] = v
    for k in keys[::4]:
        s.delete(k)
        del model[k]
    before = s.stats()
    s.merge()
    after = s.stats()
    assert after["data_bytes"] <= 1.1 * after["live_bytes"], after
    assert after["data_bytes"] < before["data_bytes"] / 4
    assert after["live_bytes"] == before["live_bytes"] and after["keys"] == len(model)
    for k in keys:
        assert s.get(k) == model.get(k)
    s.close()
    s = open_store(max_segment_bytes=1 << 16)
    assert s.recovery["scanned_segments"] == 0
    assert dict(s.items()) == model


def test_write_during_merge_wins(open_store):
    s = open_store(max_segment_bytes=1 << 14)
    for i in range(3000):
        s.put(b"k%d" % i, b"old%d" % i)
    s.delete(b"k5")
    job = s.begin_merge()
    t = threading.Thread(target=job.run)
    t.start()
    # the owner thread goes on while the merge copies
    for i in range(0, 3000, 2):
        s.put(b"k%d" % i, b"new%d" % i)
    s.delete(b"k1")
    s.put(b"k5", b"back")
    t.join(60)
    assert not t.is_alive()
    s.finish_merge(job)
    for i in range(3000):
        expect = b"new%d" % i if i % 2 == 0 else b"old%d" % i
        if i == 1:
            expect = None
        if i == 5:
            expect = b"back"
        assert s.get(b"k%d" % i) == expect, i
    s.close()
    s = open_store(max_segment_bytes=1 << 14)
    assert s.get(b"k1") is None and s.get(b"k2") == b"new2" and s.get(b"k3") == b"old3"
    assert s.get(b"k5") == b"back" and len(s) == 2999


def test_deleted_key_does_not_come_back_after_merge_and_reopen(open_store):
    s = open_store(max_segment_bytes=4096)
    s.put(b"gone", b"v1")
    for i in range(200):
        s.put(b"fill%d" % i, b"x" * 40)
    s.delete(b"gone")
    s.merge()
    s.close()
    s = open_store(max_segment_bytes=4096)
    assert s.get(b"gone") is None
    s.merge()
    s.close()
    s = open_store(max_segment_bytes=4096)
    assert s.get(b"gone") is None and len(s) == 200


def test_crash_between_merge_deletes_keeps_deletes(open_store, tmp_path):
    """A crash after the outputs are in place but before every input is gone."""
    path = str(tmp_path / "store")
    s = open_store(max_segment_bytes=4096)
    s.put(b"gone", b"v1")
    for i in range(100):
        s.put(b"fill%d" % i, b"x" * 40)
    s.delete(b"gone")
    ids_before = L.segment_ids(path)
    saved = {i: open(os.path.join(path, L.segment_name(i)), "rb").read() for i in ids_before}
    s.merge()
    s.close()
    # put back the newest input (holding the tombstone) as if its deletion never happened;
    # inputs are deleted oldest first, so a crash can leave only a suffix of them
    newest_input = max(i for i in ids_before if i in saved and saved[i][32:])
    with open(os.path.join(path, L.segment_name(newest_input)), "wb") as f:
        f.write(saved[newest_input])
    s = open_store(max_segment_bytes=4096)
    assert s.get(b"gone") is None and len(s) == 100


def test_merge_job_refuses_misuse(open_store, impl):
    import pytest
    from kvcore.errors import MergeError

    s = open_store()
    s.put(b"a", b"1")
    job = s.begin_merge()
    with pytest.raises(MergeError):
        s.begin_merge()
    with pytest.raises(MergeError):
        s.finish_merge(job)        # not run yet
    s.merge()                      # a new merge may start after the failed finish
    assert s.get(b"a") == b"1"


def test_close_waits_for_running_merge(open_store):
    s = open_store(max_segment_bytes=1 << 14)
    for i in range(2000):
        s.put(b"k%d" % i, b"v" * 50)
    job = s.begin_merge()
    ended = []                  # the run finished before close(), or close() cancelled it

    def run():
        try:
            job.run()
            ended.append("ran")
        except Exception as exc:
            ended.append(type(exc).__name__)

    t = threading.Thread(target=run)
    t.start()
    s.close()
    t.join(60)
    assert ended in (["ran"], ["MergeError"])
    s = open_store(max_segment_bytes=1 << 14)
    assert len(s) == 2000 and s.get(b"k1999") == b"v" * 50


def test_sizes_are_the_data_and_live_bytes_of_stats(open_store):
    s = open_store(max_segment_bytes=1 << 14)
    for i in range(500):
        s.put(b"k%d" % (i % 50), b"v" * 100)
    st = s.stats()
    assert s.sizes() == (st["data_bytes"], st["live_bytes"])
    assert st["data_bytes"] > 5 * st["live_bytes"]                 # mostly dead: overwrites
    s.merge()
    data, live = s.sizes()
    assert data <= 1.1 * live + 64 and live == st["live_bytes"]


def test_a_throttled_merge_keeps_to_its_rate(open_store):
    import time

    s = open_store(max_segment_bytes=1 << 20, compress_min_bytes=1 << 30)
    for i in range(3000):
        s.put(b"k%05d" % i, os.urandom(1000))                       # ~3 MB live, sealed below
    job = s.begin_merge()
    t0 = time.monotonic()
    job.run(max_bytes_per_s=2 << 20)                                # 2 MiB/s
    took = time.monotonic() - t0
    s.finish_merge(job)
    # about 3 MB at 2 MiB/s: the last step's sleep is not owed, so at least ~1 s
    assert took >= 0.9, took
    assert len(s) == 3000 and s.get(b"k00007") is not None


def test_cancel_stops_a_run_and_close_cancels_it(open_store, impl):
    import pytest

    from kvcore.errors import MergeError

    s = open_store(max_segment_bytes=1 << 20, compress_min_bytes=1 << 30)
    for i in range(3000):
        s.put(b"k%05d" % i, os.urandom(1000))
    job = s.begin_merge()
    job.cancel()
    with pytest.raises(MergeError, match="cancelled"):
        job.run()
    with pytest.raises(MergeError):
        s.finish_merge(job)
    assert len(s) == 3000                                           # nothing lost
    job = s.begin_merge()                                           # (a new one may start)
    t = threading.Thread(target=lambda: _swallow(job.run, 1 << 20))  # ~3 s at 1 MiB/s
    t.start()
    import time
    time.sleep(0.3)
    t0 = time.monotonic()
    s.close()                                                       # cancels, then waits
    assert time.monotonic() - t0 < 2.0
    t.join(5)
    s2 = impl.LogStore(s.path, fsync="never")
    try:
        assert len(s2) == 3000 and not [n for n in os.listdir(s.path) if n.endswith(L.MERGING_SUFFIX)]
    finally:
        s2.close()


def _swallow(fn, *args):
    try:
        fn(*args)
    except Exception:
        pass
