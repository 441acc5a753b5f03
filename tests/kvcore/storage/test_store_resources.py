"""Descriptors and maps a store holds stay bounded however many segments it has
(docs/storage.md, "Resources"): a sealed segment is read through the map cache (compiled:
at most map_cache sealed segments mapped, the least recently read unmapped on a miss) or a
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


# ---- the map cache: sealed segments are mapped on demand, at most map_cache at once --------

def _values(n, seed=3):
    import random
    rnd = random.Random(seed)
    return {b"k%05d" % i: rnd.randbytes(150 + i % 50) for i in range(n)}


def _cached(s, impl):
    """What the cache holds now: mappings of files in the store's directory (compiled) or
    open descriptors (twin), less the active segment's and (twin) the lock's."""
    if impl.__name__.endswith("store_py"):
        return _fds_under(s.path) - 2
    return _maps_under(s.path)[0] - 1


@pytest.mark.parametrize("cache", [1, 3])
@pytest.mark.parametrize("reopen", [False, True])
def test_maps_stay_bounded_while_every_key_is_read(open_store, impl, tmp_path, cache, reopen):
    """Many small sealed segments, read in random order (and again after a reopen and a
    merge): every value is right, and no more than `cache` sealed segments are mapped (or, in
    the twin, open) at any time besides the active one."""
    import random
    path = tmp_path / "store"
    vals = _values(1500)
    s = open_store(path, max_segment_bytes=4096, map_cache=cache)
    for k, v in vals.items():
        s.put(k, v)
    assert s.stats()["segments"] >= 60
    if reopen:
        s.close()
        s = open_store(path, max_segment_bytes=4096, map_cache=cache)
        assert 0 <= _cached(s, impl) <= cache          # (the open maps one segment at a time)
    for step in range(2):
        keys = list(vals)
        random.Random(step).shuffle(keys)
        misses = s.stats()["map_misses"]
        for n, k in enumerate(keys):
            assert s.get(k) == vals[k]
            if n % 97 == 0:
                assert 0 <= _cached(s, impl) <= cache
                assert s.stats()["mapped_segments"] <= cache
        assert s.stats()["map_misses"] - misses > len(keys) // 2     # (it did evict)
        assert sorted(s.keys()) == sorted(vals)
        assert dict(s.items()) == vals
        assert 0 <= _cached(s, impl) <= cache
        s.merge()
    s.close()
    assert _maps_under(path) == (0, 0) and _fds_under(path) == 0


def test_map_cache_is_checked(impl, tmp_path):
    for bad in (0, -1, 1.5, True, 1 << 20, "8"):
        with pytest.raises(ValueError, match="map_cache"):
            impl.LogStore(tmp_path / "s", fsync="never", map_cache=bad)


def test_snapshots_and_leaf_keys_read_through_the_cache(open_store, impl, tmp_path):
    """A fold over a snapshot, its reads and leaf_keys touch every segment with a cache of 1;
    compressible values go through the fold's pinned path."""
    from kvcore import merkle
    vals = _values(600)
    for i, k in enumerate(list(vals)[::3]):
        vals[k] = bytes([i % 7]) * 700               # compressed records
    s = open_store(tmp_path / "store", max_segment_bytes=4096, map_cache=1,
                   compress_min_bytes=128)
    for k, v in vals.items():
        s.put(k, v)
    snap = s.snapshot()
    end, pairs = s.read_snapshot(snap, 0, len(snap))
    assert end == len(snap) and dict(pairs) == vals
    tree = merkle.MerkleTree()
    assert s.fold_snapshot(snap, 0, len(snap), tree) == len(snap)
    want = merkle.MerkleTree()
    for k, v in vals.items():
        want.update(k, None, v)
    assert tree.root() == want.root()
    leaves = s.leaf_keys(range(1 << 6), leaf_bits=6)
    assert sorted(k for ks in leaves.values() for k in ks) == sorted(vals)
    assert _cached(s, impl) <= 1


def test_a_merge_in_a_thread_while_reads_evict(open_store, impl, tmp_path):
    """A merge's run() and install() go on in a worker thread while the owner reads every key
    (evicting maps, cache 2) and writes: no crash, every value right before and after the
    swap, and the cache stays bounded (plus the one map the merge reads its input through).
    Each round checks the count once, so maps may come and go between checks."""
    import random
    import threading
    vals = _values(1200)
    s = open_store(tmp_path / "store", max_segment_bytes=4096, map_cache=2)
    for k, v in vals.items():
        s.put(k, v)
    job = s.begin_merge()
    errors = []

    def work():
        try:
            job.run()
            job.install()
        except BaseException as exc:        # (reported below)
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    rnd = random.Random(9)
    keys = list(vals)
    try:
        rounds = 0
        while t.is_alive() or rounds < 2:
            rnd.shuffle(keys)
            for n, k in enumerate(keys):
                assert s.get(k) == vals[k]
                if n % 10 == 0:                     # writes go on during the merge
                    vals[k] = rnd.randbytes(120)
                    s.put(k, vals[k])
            # (+ what the merge reads its input through, and the twin's output descriptor)
            assert _cached(s, impl) <= 2 + 2
            rounds += 1
    finally:
        t.join(timeout=60)
    assert not t.is_alive() and errors == []
    s.finish_merge(job, cleanup=False)
    job.cleanup()
    assert s.stats()["merges"] == 1
    rnd.shuffle(keys)
    assert all(s.get(k) == vals[k] for k in keys)
    assert dict(s.items()) == vals
    assert _cached(s, impl) <= 2


def test_a_failed_map_is_an_error_of_that_read(open_store, impl, tmp_path):
    """An mmap (or, in the twin, the descriptor's open) failing on a miss raises OSError from
    that read alone; the store keeps serving, and the read succeeds once the cause is gone."""
    import errno
    vals = _values(300)
    s = open_store(tmp_path / "store", max_segment_bytes=4096, map_cache=1)
    for k, v in vals.items():
        s.put(k, v)
    first, last = list(vals)[0], list(vals)[-20]     # (in different sealed segments)
    assert s.get(first) == vals[first]                # its segment is the one mapped now
    for err in (errno.ENOMEM, errno.EMFILE):
        s._fail_next("mmap", err)
        with pytest.raises(OSError) as exc_info:
            s.get(last)
        assert exc_info.value.errno == err
        assert s.get(first) == vals[first]           # (a hit: no map needed)
        assert s.get(last) == vals[last]             # (the fault was one call)
        assert s.get(first) == vals[first]
    s._fail_next("mmap", errno.ENOMEM, times=3)
    for k in (last, list(vals)[100], list(vals)[200]):  # misses (cache 1: first's), refused
        with pytest.raises(OSError):
            s.get(k)
    assert s.get(first) == vals[first]
    assert dict(s.items()) == vals
    s.put(b"new", b"v")
    assert s.get(b"new") == b"v" and not s.stats()["read_only"]


def test_a_map_failing_for_lack_of_descriptors(open_store, impl, tmp_path):
    """A real EMFILE: with RLIMIT_NOFILE at the lowest free descriptor, a miss cannot open its
    segment file; the read raises OSError(EMFILE) and works again once the limit is back."""
    import errno
    import resource
    vals = _values(300)
    s = open_store(tmp_path / "store", max_segment_bytes=4096, map_cache=1)
    for k, v in vals.items():
        s.put(k, v)
    first, last = list(vals)[0], list(vals)[-20]
    assert s.get(first) == vals[first]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest = os.open(os.devnull, os.O_RDONLY)       # the descriptor the next open would get
    os.close(lowest)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
    try:
        with pytest.raises(OSError) as exc_info:
            s.get(last)
        assert exc_info.value.errno == errno.EMFILE
        assert s.get(first) == vals[first]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert s.get(last) == vals[last]
    assert dict(s.items()) == vals


def test_a_write_whose_old_record_cannot_be_mapped_is_refused(tmp_path):
    """Compiled store: a put or a delete of a key whose old record lies in an unmapped sealed
    segment maps it before writing: when that fails the write is refused and nothing
    changed. put_many indexes a chunk after writing it: the pairs from the one whose map
    failed on are taken back (zeroed, so no reopen brings them back), those before it stay.
    (The twin's writes never read a segment.)"""
    import errno
    from kvcore.storage import store
    vals = _values(300)
    path = tmp_path / "store"
    s = store.LogStore(path, fsync="never", max_segment_bytes=4096, map_cache=1)
    try:
        for k, v in vals.items():
            s.put(k, v)
        first, last = list(vals)[0], list(vals)[-20]
        for write in (lambda: s.put(first, b"x"), lambda: s.delete(first),
                      lambda: s.put_many([(first, b"x"), (b"n", b"1")])):
            s.get(last)                             # (first's segment is not mapped now)
            before = s.stats()
            s._fail_next("mmap", errno.ENOMEM)
            with pytest.raises(OSError) as exc_info:
                write()
            assert exc_info.value.errno == errno.ENOMEM
            s._fail_next(None)
            after = s.stats()
            assert (after["keys"], after["active_offset"], after["live_bytes"]) == \
                (before["keys"], before["active_offset"], before["live_bytes"])
        assert s.get(first) == vals[first] and s.get(b"n") is None
        s.get(last)
        s._fail_next("mmap", errno.ENOMEM)
        with pytest.raises(OSError):
            s.put_many([(b"n", b"1"), (first, b"x"), (b"m", b"2")])
        s._fail_next(None)
        assert (s.get(b"n"), s.get(first), s.get(b"m")) == (b"1", vals[first], None)
        s.put(b"after", b"3")                       # (written over the taken-back records)
        s._abandon()                                # a crash: the open scans the active segment
        s = store.LogStore(path, fsync="never", max_segment_bytes=4096, map_cache=1)
        assert (s.get(b"n"), s.get(first), s.get(b"m"), s.get(b"after")) == \
            (b"1", vals[first], None, b"3")
        assert s.recovery["corrupt_records"] == 0
        s.put_many([(k, v + b"!") for k, v in vals.items()])
        assert all(s.get(k) == v + b"!" for k, v in vals.items())
        assert _maps_under(s.path)[0] <= 1 + 1
    finally:
        s.close()
    s = store.LogStore(path, fsync="never", map_cache=1)
    try:
        assert all(s.get(k) == v + b"!" for k, v in vals.items()) and len(s) == len(vals) + 2
    finally:
        s.close()


def test_seals_on_the_syncer_thread_while_reads_evict(tmp_path):
    """Compiled store, seal_later=True: the syncer thread seals each rolled-out segment and
    hands its map to the cache (which may unmap another) while the owner reads older keys
    through a cache of 1 and writes: every value right, the cache bounded once sealed."""
    import random
    from kvcore.storage import store
    s = store.LogStore(tmp_path / "store", fsync="interval", sync_interval_ms=1,
                       max_segment_bytes=4096, map_cache=1, seal_later=True)
    try:
        vals = {}
        rnd = random.Random(4)
        for i in range(3000):
            k = b"k%05d" % i
            vals[k] = rnd.randbytes(100)
            s.put(k, vals[k])
            for k2 in rnd.sample(sorted(vals), min(3, len(vals))):
                assert s.get(k2) == vals[k2]
        s.seal_pending()
        assert s.stats()["sealing_segments"] == 0 and s.stats()["segments"] > 50
        assert _maps_under(s.path)[0] <= 1 + 1
        assert dict(s.items()) == vals
    finally:
        s.close()
