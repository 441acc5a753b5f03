"""The active segment's reserved space: growth, truncation on close, zero tails after a
crash, torn records before zeros, a full disk, and a real SIGKILL (docs/storage.md)."""
import errno
import os

import pytest

from kvcore.storage import layout as L

REC = 24 + 5                                        # record header + key of _fill


def _fill(s, n, prefix=b"k"):
    for i in range(n):
        s.put(prefix + b"%04d" % i, b"value-%04d" % i * 3)


def _value(i):
    return b"value-%04d" % i * 3


def test_torn_record_followed_by_zeros_is_torn_and_truncated(open_store):
    s = open_store()
    _fill(s, 50)
    st = s.stats()
    s._abandon()
    path = st["active_segment"]
    with open(path, "r+b") as f:
        f.truncate(st["active_offset"] - 7)         # the last record loses its end...
        f.truncate(st["active_offset"] - 7 + 10000)  # ...and zeros follow (reserved space)
    s = open_store()
    rec = s.recovery
    assert rec["torn_tail_bytes"] == REC + 30 - 7 and rec["zero_tail_bytes"] == 10000
    assert rec["corrupt_records"] == 0 and not rec["clean"]
    assert os.path.getsize(path) == st["active_offset"] - (REC + 30)
    assert s.get(b"k0049") is None and len(s) == 49
    assert all(s.get(b"k%04d" % i) == _value(i) for i in range(49))


def test_zero_tail_is_the_end_of_data_not_a_torn_record(open_store, impl):
    s = open_store()
    _fill(s, 50)
    st = s.stats()
    s._abandon()
    path = st["active_segment"]
    left = os.path.getsize(path)
    if impl.__name__.endswith("store"):             # compiled: a kill leaves the reservation
        assert left > st["active_offset"] and st["reserved_bytes"] == left - st["active_offset"]
        assert open(path, "rb").read()[st["active_offset"]:].count(0) == left - st["active_offset"]
    else:                                           # the twin writes with pwrite: add zeros
        with open(path, "r+b") as f:
            f.truncate(left + 5000)
        left += 5000
    s = open_store()
    rec = s.recovery
    assert rec["torn_tail_bytes"] == 0 and rec["corrupt_records"] == 0 and not rec["clean"]
    assert rec["zero_tail_bytes"] == left - st["active_offset"]
    assert os.path.getsize(path) == st["active_offset"]
    assert len(s) == 50 and all(s.get(b"k%04d" % i) == _value(i) for i in range(50))


@pytest.mark.parametrize("order", ["cython-then-python", "python-then-cython"])
def test_twins_open_each_others_crashed_stores(tmp_path, order):
    from kvcore.storage import store, store_py

    a, b = (store, store_py) if order == "cython-then-python" else (store_py, store)
    s = a.LogStore(tmp_path / "s", fsync="never", max_segment_bytes=1 << 16)
    _fill(s, 3000)                                  # several sealed segments and an active one
    s.delete(b"k0005")
    s._abandon()
    s = b.LogStore(tmp_path / "s", fsync="never", max_segment_bytes=1 << 16)
    try:
        assert s.recovery["torn_tail_bytes"] == 0 and s.recovery["corrupt_records"] == 0
        assert len(s) == 2999 and s.get(b"k0005") is None and s.get(b"k2999") == _value(2999)
    finally:
        s.close()


def test_reservation_grows_in_steps_and_close_truncates(tmp_path):
    from kvcore.storage import store

    s = store.LogStore(tmp_path / "s", fsync="never", max_segment_bytes=64 << 20,
                       compress_min_bytes=1 << 30)
    path = s.stats()["active_segment"]
    assert os.path.getsize(path) == 32              # nothing reserved before the first write
    sizes = set()
    vals = []
    for i in range(120):                            # 12 MiB: past the doubling (4 MiB) steps
        v = os.urandom(100_000)                     # larger than the first step (64 KiB)
        vals.append(v)
        s.put(b"v%03d" % i, v)
        st = s.stats()
        size = os.path.getsize(path)
        assert st["active_offset"] + st["reserved_bytes"] == size
        assert st["data_bytes"] == st["active_offset"]      # stats count data, not reservation
        assert size <= max(64 << 10, 2 * st["active_offset"] + 4096,
                           st["active_offset"] + (4 << 20) + 4096)
        sizes.add(size)
    assert 5 <= len(sizes) < 40                     # grew in steps, not per put
    end = s.stats()["active_offset"]
    s.close()
    assert os.path.getsize(path) == end             # close gives the reservation back
    s = store.LogStore(tmp_path / "s", fsync="never")
    assert s.recovery["clean"] and s.recovery["scanned_segments"] == 0
    assert all(s.get(b"v%03d" % i) == v for i, v in enumerate(vals))
    s.close()


def test_reservation_never_passes_the_segment_limit(tmp_path):
    from kvcore.storage import store

    s = store.LogStore(tmp_path / "s", fsync="never", max_segment_bytes=20000)
    for i in range(400):
        s.put(b"k%04d" % i, os.urandom(300))
        st = s.stats()
        assert os.path.getsize(st["active_segment"]) <= 20000
    s.put(b"big", os.urandom(50000))                # one record over the limit gets its room
    st = s.stats()
    assert os.path.getsize(st["active_segment"]) == st["active_offset"] + st["reserved_bytes"]
    s.put_many([(b"m%d" % i, os.urandom(1000)) for i in range(100)])
    s.close()
    dirpath = tmp_path / "s"
    for seg_id in L.segment_ids(str(dirpath)):     # sealed segments hold data only
        assert os.path.getsize(dirpath / L.segment_name(seg_id)) <= 50000 + 32 + 24 + 3
    s = store.LogStore(dirpath, fsync="never")
    assert s.recovery["clean"] and len(s) == 501
    s.close()


def test_full_disk_gives_oserror_not_sigbus(small_fs, impl):
    path = os.path.join(small_fs, "s")
    ballast = os.path.join(small_fs, "ballast")     # freed before close, which writes hints
    with open(ballast, "wb") as f:
        f.write(b"x" * (64 << 10))
    acked = []
    s = impl.LogStore(path, fsync="never", compress_min_bytes=1 << 30)
    with pytest.raises(OSError) as info:
        for i in range(10000):
            s.put(b"k%05d" % i, os.urandom(1000))
            acked.append(i)
    assert info.value.errno == errno.ENOSPC
    assert 700 < len(acked) < 1000                # filled to near the end, not a step short
    st = s.stats()
    assert st["keys"] == len(acked) and st["active_offset"] == 32 + len(acked) * (24 + 6 + 1000)
    assert s.get(b"k%05d" % acked[-1]) is not None
    with pytest.raises(OSError):                    # still full: still a clean error
        s.put(b"again", os.urandom(100_000))
    os.unlink(ballast)
    s.close()
    s = impl.LogStore(path, fsync="never")
    try:
        assert s.recovery["clean"] and len(s) == len(acked)
        assert all(s.get(b"k%05d" % i) is not None for i in acked)
    finally:
        s.close()


@pytest.mark.slow
@pytest.mark.parametrize("twin", [False, True], ids=["cython", "python"])
def test_sigkill_with_fsync_never_loses_no_acknowledged_put(tmp_path, twin, killed_writer):
    """No sync at all: an acknowledged put is in the page cache (through the map, or
    pwrite for the twin), which outlives the process; the reserved zeros are a tail."""
    from kvcore.storage import store, store_py

    acked = killed_writer(tmp_path / "s", 3000, twin, fsync="never")
    seg = os.path.join(tmp_path / "s", L.segment_name(L.segment_ids(str(tmp_path / "s"))[-1]))
    raw = open(seg, "rb").read()
    if not twin:
        assert raw.endswith(b"\0" * 1000)           # killed with reserved space at the tail
    mod = store_py if twin else store
    s = mod.LogStore(tmp_path / "s", fsync="never")
    try:
        rec = s.recovery
        assert not rec["clean"] and rec["corrupt_records"] == 0
        assert rec["zero_tail_bytes"] > 0 or twin
        # a kill in the middle of a put may leave that (unacknowledged) record torn
        assert rec["torn_tail_bytes"] <= 24 + 10 + 70   # at most that one whole record
        for i in range(acked + 1):
            key = b"key-%06d" % i
            assert s.get(key) == key * 7, i
    finally:
        s.close()
