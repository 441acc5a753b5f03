"""Rolling without waiting (seal_later) and a merge's file work off the caller's thread
(docs/storage.md, "Rolling without waiting"): what a node's event loop calls makes no
fdatasync, and what the worker thread does later leaves the store as an inline seal or
merge would. Compiled store (the twin seals and merges inline; its tests are elsewhere)."""
import errno
import os
import threading
import time

import pytest

from kvcore.errors import StoreReadOnly
from kvcore.storage import layout as L
from kvcore.storage.store import LogStore
from kvnet.testing import records_of


def _fds_under(path):
    path = os.path.realpath(path)
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(path + os.sep):
                n += 1
        except OSError:
            pass
    return n


@pytest.fixture
def store(tmp_path):
    opened = []

    def _open(**kw):
        kw.setdefault("fsync", "never")
        kw.setdefault("seal_later", "manual")
        s = LogStore(tmp_path / "s", **kw)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()


def _fill(s, n, start=0):
    for i in range(start, start + n):
        s.put(b"k%05d" % i, os.urandom(100))


def _hinted(s):
    return sorted(L.segment_ids(s.path)) and [
        os.path.exists(os.path.join(s.path, L.hint_name(i))) for i in L.segment_ids(s.path)]


def test_a_roll_makes_no_fdatasync_and_the_seal_does(store):
    s = store()
    _fill(s, 50)
    s._fail_next("fdatasync", errno.EIO)
    s.roll()                                    # (an inline seal would fail here)
    st = s.stats()
    assert st["sealing_segments"] == 1 and not st["read_only"]
    assert _hinted(s) == [False, False]         # (the rolled-out one, the new active one)
    assert _fds_under(s.path) == 3              # lock, new active, the one to seal
    s.put(b"after", b"x")                       # writes go on into the new segment
    with pytest.raises(StoreReadOnly, match="fdatasync of segment"):
        s.seal_pending()
    assert s.stats()["read_only"]
    with pytest.raises(StoreReadOnly):
        s.put(b"more", b"y")


def test_seal_pending_leaves_what_an_inline_seal_leaves(store):
    s = store()
    _fill(s, 50)
    s.roll()
    _fill(s, 50, 50)
    s.roll()
    st = s.stats()
    assert st["sealing_segments"] == 2 and st["sealing_reserved_bytes"] > 0
    s.seal_pending()
    st = s.stats()
    assert st["sealing_segments"] == 0 and st["sealing_reserved_bytes"] == 0
    ids = L.segment_ids(s.path)
    assert _hinted(s) == [True, True, False]
    for seg_id in ids[:2]:                      # truncated to their data: no zero tail
        path = os.path.join(s.path, L.segment_name(seg_id))
        off, size = records_of(path)[-1][:2]
        assert os.path.getsize(path) == off + size
    assert _fds_under(s.path) == 2
    assert all(s.get(b"k%05d" % i) is not None for i in range(100))


def test_a_sync_and_a_close_seal_first(store, tmp_path):
    s = store()
    _fill(s, 50)
    s.roll()
    s.sync()
    assert s.stats()["sealing_segments"] == 0
    _fill(s, 50, 50)
    s.roll()
    s.close()
    s = store()
    rec = s.recovery
    assert rec["clean"] and rec["scanned_segments"] == 0     # every segment had its hints
    assert len(s) == 100


def test_a_kill_with_segments_unsealed_loses_nothing(store):
    s = store()
    values = {}
    for r in range(4):
        for i in range(30):
            k = b"k%05d" % (r * 30 + i)
            values[k] = os.urandom(100)
            s.put(k, values[k])
        s.roll()
    assert s.stats()["sealing_segments"] == 4
    s._abandon()
    s = store()
    assert not s.recovery["clean"] and s.recovery["corrupt_records"] == 0
    assert {k: s.get(k) for k in values} == values


def test_the_syncer_thread_seals_in_the_background(store):
    s = store(seal_later=True)
    _fill(s, 50)
    s.roll()
    deadline = time.monotonic() + 10
    while s.stats()["sealing_segments"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.stats()["sealing_segments"] == 0 and _hinted(s) == [True, False]


def test_a_merge_leaves_unsealed_segments_out_until_sealed(store):
    s = store()
    for _ in range(3):
        _fill(s, 50)                            # the same keys: two of three copies dead
        s.roll()
    job = s.begin_merge(roll=False)
    job.run()
    s.finish_merge(job)
    assert len(L.segment_ids(s.path)) == 4      # nothing sealed: nothing merged
    s.seal_pending()
    job = s.begin_merge(roll=False)
    job.run()
    s.finish_merge(job)
    assert len(L.segment_ids(s.path)) == 2      # one output and the active segment
    assert len(s) == 50


def test_the_merge_steps_split_between_the_loop_and_a_worker(store):
    """kvnet/compaction.py's order: roll, seal_pending (worker), begin_merge (loop), run and
    install (worker), finish_merge without cleanup (loop), cleanup (worker). Writes go on
    between the steps; the inputs stay on disk until cleanup."""
    s = store()
    for _ in range(3):
        _fill(s, 100)
    s.roll()
    t = threading.Thread(target=s.seal_pending)
    t.start()
    t.join()
    job = s.begin_merge(roll=False)
    s.put(b"k00001", b"newer")                  # written during the merge: keeps this record
    worker = threading.Thread(target=lambda: (job.run(), job.install()))
    worker.start()
    worker.join()
    before = set(L.segment_ids(s.path))
    s.finish_merge(job, cleanup=False)
    assert set(L.segment_ids(s.path)) == before             # inputs still there
    assert s.get(b"k00001") == b"newer" and len(s) == 100
    s.put(b"k00002", b"during cleanup")
    worker = threading.Thread(target=job.cleanup)
    worker.start()
    worker.join()
    assert len(L.segment_ids(s.path)) < len(before)
    assert s.get(b"k00002") == b"during cleanup" and len(s) == 100
    assert _fds_under(s.path) == 2
    s.close()
    s = store()
    assert len(s) == 100 and s.get(b"k00001") == b"newer"


def test_a_close_between_install_and_finish_discards_the_outputs(store):
    s = store()
    for _ in range(3):
        _fill(s, 100)
    job = s.begin_merge()
    job.run()
    job.install()                               # outputs renamed in, beside the inputs
    s.close()                                   # (the merge is discarded: outputs removed)
    s = store()
    assert s.recovery["clean"] and len(s) == 100
    assert all(s.get(b"k%05d" % i) is not None for i in range(100))
