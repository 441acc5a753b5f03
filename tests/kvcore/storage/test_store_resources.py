"""Descriptors and maps a store holds stay bounded however many segments it has
(docs/storage.md, "Resources"): a sealed segment is read through its map (compiled) or a
small descriptor cache (twin), and the active segment's map follows its reservation."""
import os

import pytest


def _fds_under(path):
    """Descriptors of this process open on files under path."""
    path = os.path.realpath(path)
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(path + os.sep):
            n += 1
    return n


def _maps_under(path):
    """(count, total bytes) of this process's mappings of files under path."""
    path = os.path.realpath(path)
    n = total = 0
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].strip().startswith(path + os.sep):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                n += 1
                total += hi - lo
    return n, total


def _fill(s, n, size=200, prefix=b"k"):
    for i in range(n):
        s.put(prefix + b"%05d" % i, bytes([i % 251]) * size)


@pytest.mark.parametrize("reopen", [False, True])
def test_descriptors_do_not_grow_with_segments(open_store, impl, tmp_path, reopen):
    path = tmp_path / "store"
    s = open_store(path, max_segment_bytes=4096)
    _fill(s, 400)                                   # ~20 segments of 4 KiB
    assert s.stats()["segments"] >= 15
    if reopen:
        s.close()
        s = open_store(path, max_segment_bytes=4096)
    # every value is read back (sealed segments read through maps / the cache)
    assert all(s.get(b"k%05d" % i) == bytes([i % 251]) * 200 for i in range(400))
    # the lock and the active segment, plus the twin's few cached read descriptors
    limit = 2 + (impl.FD_CACHE if hasattr(impl, "FD_CACHE") else 0)
    assert _fds_under(path) <= limit
    s.merge()
    assert all(s.get(b"k%05d" % i) == bytes([i % 251]) * 200 for i in range(400))
    assert _fds_under(path) <= limit
    s.close()
    assert _fds_under(path) == 0


def test_sealed_segments_stay_readable_while_a_sync_runs(open_store, tmp_path):
    """A seal closes the old descriptor under the store's I/O lock: a sync from another
    thread never fdatasyncs a closed (or reused) descriptor."""
    import threading
    s = open_store(tmp_path / "store", max_segment_bytes=4096, fsync="interval")
    stop = threading.Event()
    errors = []

    def syncer():
        while not stop.is_set():
            try:
                s.sync()
            except Exception as exc:        # (a failure here would make the store read-only)
                errors.append(exc)
                return

    t = threading.Thread(target=syncer)
    t.start()
    try:
        _fill(s, 2000, size=100)
    finally:
        stop.set()
        t.join()
    assert errors == [] and s.failed is None
    assert all(s.get(b"k%05d" % i) == bytes([i % 251]) * 100 for i in range(2000))


def test_active_map_follows_the_reservation(tmp_path):
    """Compiled store: an active segment maps what it reserved (64 KiB first), not the
    largest size a segment or a value may reach; the map grows (and may move) as the
    segment fills, and every record stays readable."""
    from kvcore.storage import store
    path = tmp_path / "store"
    s = store.LogStore(path, fsync="never", max_segment_bytes=64 << 20,
                       max_value_bytes=32 << 20)
    try:
        s.put(b"a", b"x" * 100)
        n, total = _maps_under(path)
        assert n == 1 and total <= 64 << 10          # not 64 MiB
        vals = [os.urandom(1000) for _ in range(3000)]   # (incompressible)
        for i, v in enumerate(vals):                 # ~3 MiB: the map grows (and may move)
            s.put(b"k%05d" % i, v)
        n, total = _maps_under(path)
        assert n == 1 and (3 << 20) <= total <= 8 << 20
        assert all(s.get(b"k%05d" % i) == v for i, v in enumerate(vals))
        big = os.urandom(5 << 20)                   # one record larger than a reservation step
        s.put(b"big", big)
        assert s.get(b"big") == big and s.get(b"a") == b"x" * 100
    finally:
        s.close()
    s = store.LogStore(path, fsync="never")
    try:
        assert s.get(b"big") == big and len(s) == 3002
    finally:
        s.close()
