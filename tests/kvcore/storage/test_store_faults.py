"""Disk faults are errors, never crashes (docs/storage.md, "Faults"): a failed segment roll, a
failed write, a failed fdatasync, the free-space watermark, a full file system, too many open
files, a data directory of another format version; and records failing their CRC dropped as
missing data, reported once. Injected faults (LogStore._fail_next) run everywhere; the
small-filesystem tests mount a tmpfs and skip, saying why, where that is not allowed."""
import errno
import os
import subprocess
import sys
import textwrap

import pytest

from kvcore.errors import MergeError, StoreFormatError, StoreFull, StoreReadOnly
from kvcore.storage import layout as L
from kvnet.testing import rewrite_segment_version

SEG = 4096                                         # the smallest segment: rolls come often


def _value(i):
    return b"value-%04d" % i * 3


def _fill_to_roll(s, prefix=b"k"):
    """Put keys until the next put of the same size needs a new segment; the keys put."""
    keys = []
    seg = s.stats()["active_segment"]
    i = 0
    while True:
        st = s.stats()
        if st["active_offset"] + 24 + 5 + 30 > SEG:
            return keys
        s.put(prefix + b"%04d" % i, _value(i))
        keys.append(prefix + b"%04d" % i)
        assert s.stats()["active_segment"] == seg
        i += 1


def _check(s, keys):
    assert len(s) == len(keys)
    for i, k in enumerate(keys):
        assert s.get(k) == _value(int(k[-4:])), k


# ---- a failed segment roll ------------------------------------------------------------------

@pytest.mark.parametrize("op, err", [("open", errno.EMFILE), ("open", errno.ENOSPC),
                                     ("write", errno.ENOSPC), ("write", errno.EIO),
                                     ("fdatasync", errno.EIO), ("ftruncate", errno.EIO)])
def test_a_failed_roll_refuses_the_put_and_leaves_the_active_segment_writable(open_store, op, err,
                                                                             tmp_path):
    """The bug: the old active segment was sealed (its map made read-only) before the next one
    was opened; a failed open left it active, and the next put died of SIGSEGV. (The first
    fdatasync of a roll is the new segment's header: a failed roll, nothing lost.)"""
    s = open_store(max_segment_bytes=SEG)
    keys = _fill_to_roll(s)
    before = s.stats()
    s._fail_next(op, err)
    with pytest.raises(OSError) as info:
        s.put(b"roll0000", _value(0))
    assert info.value.errno == err and not isinstance(info.value, StoreReadOnly)
    after = s.stats()
    assert (after["active_segment"], after["active_offset"], after["keys"]) == \
        (before["active_segment"], before["active_offset"], before["keys"])
    assert len(L.segment_ids(str(tmp_path / "store"))) == 1     # no half-made segment left
    assert s.get(b"roll0000") is None and not after["read_only"]
    _check(s, keys)
    assert SEG - after["active_offset"] >= 24 + 1
    s.put(b"t", b"")                                # fits the old segment: SIGSEGV before the fix
    assert s.get(b"t") == b"" and s.stats()["active_segment"] == before["active_segment"]
    s.delete(b"t")
    s.put(b"roll0000", _value(0))                   # the fault is spent: the roll succeeds
    assert s.stats()["active_segment"] != before["active_segment"]
    keys.append(b"roll0000")
    s.put(keys[0], _value(0))                       # and the old segment is sealed: read-only
    _check(s, keys)
    s.close()
    s = open_store(max_segment_bytes=SEG)
    assert s.recovery["clean"] and s.recovery["corrupt_records"] == 0
    _check(s, keys)


@pytest.mark.parametrize("op", ["write", "ftruncate"])
@pytest.mark.parametrize("many", [False, True], ids=["put", "put_many"])
def test_a_failed_put_changes_nothing_and_writes_resume(open_store, op, many):
    s = open_store(compress_min_bytes=1 << 30)
    s.put(b"a", b"1")
    big = b"2" * 100_000                            # past the first reservation: one is made
    s._fail_next(op, errno.EIO)
    with pytest.raises(OSError) as info:
        if many:
            s.put_many([(b"b", big), (b"c", b"3")])
        else:
            s.put(b"b", big)
    assert info.value.errno == errno.EIO
    assert len(s) == 1 and s.get(b"b") is None and s.stats()["active_offset"] == 32 + 26
    s.put(b"b", big)
    assert s.get(b"a") == b"1" and s.get(b"b") == big


def test_a_failed_fdatasync_at_a_roll_makes_the_store_read_only(open_store, tmp_path):
    s = open_store(max_segment_bytes=SEG)
    keys = _fill_to_roll(s)
    s._fail_next("fdatasync", errno.EIO, after=1)   # the new header syncs; the sealed one fails
    with pytest.raises(StoreReadOnly) as info:
        s.put(b"roll0000", _value(0))
    assert info.value.errno == errno.EIO and "EIO" in str(info.value)
    assert "read-only" in str(info.value)
    assert s.failed == errno.EIO and s.stats()["read_only"]
    assert len(L.segment_ids(str(tmp_path / "store"))) == 1     # the new segment is gone again
    _check(s, keys)                                 # reads go on
    for write in (lambda: s.put(b"x", b"y"), lambda: s.delete(keys[0]), s.sync,
                  lambda: s.put_many([(b"x", b"y")]), s.merge):
        with pytest.raises(StoreReadOnly):          # never written or synced again
            write()
    s.close()                                       # closed as after a crash: no CLEAN
    s = open_store(max_segment_bytes=SEG)
    assert not s.recovery["clean"]
    _check(s, keys)                                 # (the page cache kept them here)


@pytest.mark.parametrize("fsync", ["never", "always"])
def test_a_failed_fdatasync_is_never_retried_as_if_it_succeeded(open_store, fsync):
    s = open_store(fsync=fsync)
    s.put(b"a", b"1")
    s.sync()
    s._fail_next("fdatasync", errno.EIO)
    if fsync == "always":
        with pytest.raises(StoreReadOnly):          # not acknowledged
            s.put(b"b", b"2")
    else:
        s.put(b"b", b"2")
        with pytest.raises(StoreReadOnly):
            s.sync()
    with pytest.raises(StoreReadOnly):              # the second sync would "succeed": refused
        s.sync()
    assert s._sync_due() is None                    # the interval syncer leaves it alone
    assert s.get(b"a") == b"1"
    with pytest.raises(StoreReadOnly):
        s.put(b"c", b"3")


def test_a_failed_fdatasync_at_close_raises_and_leaves_no_clean_marker(open_store, impl, tmp_path):
    s = impl.LogStore(tmp_path / "s", fsync="never")
    s.put(b"a", b"1")
    s._fail_next("fdatasync", errno.EIO)
    with pytest.raises(StoreReadOnly):
        s.close()
    assert not os.path.exists(tmp_path / "s" / L.CLEAN_NAME)
    s = open_store(tmp_path / "s")                  # the lock was released
    assert not s.recovery["clean"] and s.get(b"a") == b"1"


def test_a_hint_file_that_cannot_be_written_costs_a_scan_not_a_failure(open_store, tmp_path):
    s = open_store(max_segment_bytes=SEG)
    keys = _fill_to_roll(s)
    s.put(b"roll0000", _value(0))                   # a roll
    keys.append(b"roll0000")
    s._fail_next("write", errno.ENOSPC)             # the close's hint file cannot be written
    s.close()
    s = open_store(max_segment_bytes=SEG)
    assert s.recovery["clean"] and s.recovery["scanned_segments"] == 1
    _check(s, keys)


# ---- the free-space watermark ----------------------------------------------------------------

class _FakeStatvfs:
    def __init__(self, free_fraction, total_blocks=1 << 20):
        self.f_frsize = self.f_bsize = 4096
        self.f_blocks = total_blocks
        self.f_bavail = self.f_bfree = int(total_blocks * free_fraction)


def test_the_free_space_watermark_refuses_writes_and_they_resume(open_store, monkeypatch):
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: _FakeStatvfs(0.03))
    s = open_store(max_segment_bytes=SEG, min_free_percent=5)
    with pytest.raises(StoreFull) as info:
        s.put(b"a", b"1")
    e = info.value
    assert e.errno == errno.ENOSPC and isinstance(e, OSError)
    assert "3.0 %" in str(e) and "min_free_percent=5" in str(e)
    assert len(s) == 0 and s.stats()["active_offset"] == 32
    monkeypatch.setattr(os, "statvfs", lambda p: _FakeStatvfs(0.5))
    keys = _fill_to_roll(s)                         # space freed: writes resume
    monkeypatch.setattr(os, "statvfs", lambda p: _FakeStatvfs(0.01))
    with pytest.raises(StoreFull):                  # a roll takes space: refused
        s.put(b"roll0000", _value(0))
    _check(s, keys)
    monkeypatch.setattr(os, "statvfs", real)
    s.put(b"roll0000", _value(0))


def test_min_free_percent_is_checked():
    from kvcore.storage.options import check_options

    for bad in (-1, 51, "5", True):
        with pytest.raises(ValueError, match="min_free_percent"):
            check_options(min_free_percent=bad)


def test_a_full_file_system_refuses_writes_below_the_watermark_before_enospc(small_fs, impl):
    s = impl.LogStore(os.path.join(small_fs, "s"), fsync="never", min_free_percent=25,
                      compress_min_bytes=1 << 30)
    n = 0
    with pytest.raises(StoreFull):
        for n in range(2000):
            s.put(b"k%05d" % n, os.urandom(1000))
    st = os.statvfs(small_fs)
    assert st.f_bavail * 100 >= 15 * st.f_blocks   # refused with space left, not at ENOSPC
    assert 300 < n < 1000 and len(s) == n
    s.close()


def test_a_full_file_system_fails_the_roll_cleanly_and_writes_resume(small_fs, impl):
    """A real ENOSPC where the bug struck: opening (or writing the header of) the next
    segment on a full tmpfs. Every put is an error, none a crash; freeing space lets the roll
    happen, and every acknowledged write is there after a reopen."""
    path = os.path.join(small_fs, "s")
    ballast = os.path.join(small_fs, "ballast")
    s = impl.LogStore(path, fsync="never", max_segment_bytes=SEG, compress_min_bytes=1 << 30)
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)     # fill the file system to the brim
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    acked, errors = [], []
    for i in range(200):
        try:
            s.put(b"k%05d" % i, b"v" * 100)
            acked.append(i)
        except OSError as exc:
            errors.append(exc.errno)
    assert errors and set(errors) == {errno.ENOSPC}
    os.unlink(ballast)
    for i in range(200, 400):                       # space freed: rolls and puts work again
        s.put(b"k%05d" % i, b"v" * 100)
        acked.append(i)
    s.close()
    s = impl.LogStore(path, fsync="never", max_segment_bytes=SEG)
    try:
        assert s.recovery["clean"] and len(s) == len(acked)
        assert all(s.get(b"k%05d" % i) == b"v" * 100 for i in acked)
    finally:
        s.close()


_EMFILE_CHILD = textwrap.dedent(r"""
    import errno, os, resource, sys
    from kvcore.storage import LogStore
    s = LogStore(sys.argv[1], fsync="never", max_segment_bytes=4096)
    top = max(int(x) for x in os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
    spare = []
    try:
        while True:
            spare.append(os.open("/dev/null", os.O_RDONLY))   # fill every gap below the limit
    except OSError:
        pass
    acked, failed, small = [], 0, 0
    for i in range(300):
        try:
            s.put(b"k%05d" % i, b"v" * 100)
            acked.append(i)
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
            failed += 1
            try:        # one that fits the old segment: SIGSEGV before the fix
                s.put(b"small%03d" % small, b"")
                small += 1
            except OSError as exc:
                assert exc.errno == errno.EMFILE, exc
    assert failed > 0 and small > 0, (failed, small)
    assert all(s.get(b"small%03d" % j) == b"" for j in range(small))
    for fd in spare:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))    # files closed: rolls work again
    for i in range(300, 400):
        s.put(b"k%05d" % i, b"v" * 100)
        acked.append(i)
    assert all(s.get(b"k%05d" % i) == b"v" * 100 for i in acked)
    print("ok", len(acked), failed)
""")


@pytest.mark.parametrize("twin", [False, True], ids=["cython", "python"])
def test_too_many_open_files_at_a_roll_is_an_error_not_sigsegv(tmp_path, twin):
    """The issue's reproduction, for real: RLIMIT_NOFILE reached when the next segment is
    opened (exit 139 before the fix), in a child process."""
    env = dict(os.environ)
    env.pop("RINGKV_NO_EXTENSIONS", None)
    if twin:
        env["RINGKV_NO_EXTENSIONS"] = "1"
    r = subprocess.run([sys.executable, "-c", _EMFILE_CHILD, str(tmp_path / "s")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.startswith("ok")


# ---- another format version ------------------------------------------------------------------

def test_a_segment_of_another_format_version_is_refused_naming_it(open_store, impl, tmp_path):
    s = open_store(max_segment_bytes=SEG)
    _fill_to_roll(s)
    s.put(b"more", b"data")
    s.close()
    first = os.path.join(tmp_path / "store", L.segment_name(L.segment_ids(str(tmp_path / "store"))[0]))
    rewrite_segment_version(first, 2)
    with pytest.raises(StoreFormatError) as info:
        impl.LogStore(tmp_path / "store", fsync="never")
    msg = str(info.value)
    assert "format version 2" in msg and "version 1" in msg and first in msg
    assert impl.LogStore is not None
    rewrite_segment_version(first, 1)                  # nothing was changed by the refusal
    s = open_store(max_segment_bytes=SEG)
    assert s.recovery["clean"] and s.get(b"more") == b"data"


def test_a_damaged_segment_header_is_corruption_not_another_format(open_store, tmp_path):
    s = open_store(max_segment_bytes=SEG)
    keys = _fill_to_roll(s)
    s.put(b"more", b"data")
    s.close()
    first = os.path.join(tmp_path / "store", L.segment_name(L.segment_ids(str(tmp_path / "store"))[0]))
    with open(first, "r+b") as f:
        f.seek(8)
        f.write(b"\x07\x00")                        # version 7, CRC not fixed: damage
    os.unlink(os.path.join(tmp_path / "store", L.hint_name(L.segment_ids(str(tmp_path / "store"))[0])))
    s = open_store(max_segment_bytes=SEG)
    assert s.recovery["corrupt_records"] == 1
    _check_keys = [k for k in keys]
    assert all(s.get(k) is not None for k in _check_keys) and s.get(b"more") == b"data"


# ---- corruption is missing data: snapshots ---------------------------------------------------

def test_a_snapshot_reads_back_the_store_as_it_was(open_store):
    s = open_store(max_segment_bytes=SEG, compress_min_bytes=64)
    for i in range(300):
        s.put(b"k%04d" % i, _value(i) * (1 + i % 5))
    snap = s.snapshot()
    assert len(snap) == 300
    for i in range(0, 300, 2):                      # written after the snapshot
        s.put(b"k%04d" % i, b"new")
    s.delete(b"k0001")
    s.put(b"extra", b"x")
    got, start = [], 0
    while start < len(snap):
        start, pairs = s.read_snapshot(snap, start, 64)
        got.extend(pairs)
    assert sorted(got) == sorted((b"k%04d" % i, _value(i) * (1 + i % 5)) for i in range(300))
    s.merge()
    with pytest.raises(MergeError):                 # a merge moved the records
        s.read_snapshot(snap, 0, 10)
    assert len(s.snapshot()) == 300


@pytest.mark.parametrize("skip", [0, 8])
def test_a_corrupt_record_found_through_a_snapshot_is_dropped_once(open_store, tmp_path, skip):
    s = open_store(max_segment_bytes=SEG, index_skip_bits=skip)
    keys = _fill_to_roll(s)
    s.put(b"roll0000", _value(0))
    s.close()
    first = os.path.join(tmp_path / "store", L.segment_name(L.segment_ids(str(tmp_path / "store"))[0]))
    with open(first, "r+b") as f:                   # record 5's value, and record 9's key
        f.seek(32 + 5 * (24 + 5 + 30) + 40)
        f.write(b"\xff")
        f.seek(32 + 9 * (24 + 5 + 30) + 26)
        f.write(b"\xff")
    s = open_store(max_segment_bytes=SEG, index_skip_bits=skip)
    seen = []
    s.on_corrupt = lambda seg_id, off: seen.append(off)
    snap = s.snapshot()
    _, pairs = s.read_snapshot(snap, 0, len(snap))
    assert sorted(seen) == [32 + 5 * (24 + 5 + 30), 32 + 9 * (24 + 5 + 30)]
    assert len(pairs) == len(keys) - 1 and len(s) == len(keys) - 1
    assert {k for k, _ in pairs} == set(keys + [b"roll0000"]) - {keys[5], keys[9]}
    assert s.stats()["corrupt_records"] == 2
    assert s.get(keys[5]) is None and len(seen) == 2
    assert s.get(keys[9]) is None and keys[9] not in s
    assert all(k is not None for k in s.keys())


def test_records_the_open_scan_skips_are_listed_with_their_segment_and_offset(open_store, tmp_path):
    s = open_store()
    for i in range(30):
        s.put(b"k%04d" % i, _value(i))
    st = s.stats()
    s._abandon()                                    # no hint file: the open scans
    data = bytearray(open(st["active_segment"], "rb").read())
    for i in (4, 11):
        data[32 + i * (24 + 5 + 30) + 30] ^= 0x40
    open(st["active_segment"], "wb").write(data)
    seg_id = L.segment_ids(str(tmp_path / "store"))[-1]
    s = open_store()
    assert s.recovery["corrupt_at"] == [(seg_id, 32 + 4 * (24 + 5 + 30)),
                                        (seg_id, 32 + 11 * (24 + 5 + 30))]
    assert s.recovery["corrupt_records"] == 2 and len(s) == 28


@pytest.mark.parametrize("skip", [0, 8])
def test_fold_snapshot_is_the_tree_of_read_snapshot_and_drops_corrupt_records(open_store, tmp_path,
                                                                              skip):
    """fold_snapshot(snap, i, n, tree) folds what read_snapshot(snap, i, n) reads (compressed
    values decompressed) into a Merkle tree in chunks, leaves out and drops a corrupt record
    as read_snapshot does, and refuses a snapshot a merge made stale."""
    from kvcore import merkle as M
    s = open_store(max_segment_bytes=SEG, index_skip_bits=skip, compress_min_bytes=64)
    keys = _fill_to_roll(s)
    for i in range(0, 40):
        s.put(b"big%d" % i, _value(i) * 10)         # compressed
    s.close()
    first = os.path.join(tmp_path / "store", L.segment_name(L.segment_ids(str(tmp_path / "store"))[0]))
    with open(first, "r+b") as f:                   # record 5's value
        f.seek(32 + 5 * (24 + 5 + 30) + 40)
        f.write(b"\xff")
    s = open_store(max_segment_bytes=SEG, index_skip_bits=skip, compress_min_bytes=64)
    seen = []
    s.on_corrupt = lambda seg_id, off: seen.append(off)
    snap = s.snapshot()
    tree, i = M.MerkleTree(), 0
    while i < len(snap):
        i = s.fold_snapshot(snap, i, 7, tree)
    assert i == len(snap) and s.fold_snapshot(snap, i, 7, tree) == i
    assert seen == [32 + 5 * (24 + 5 + 30)] and s.get(keys[5]) is None
    assert tree == M.MerkleTree().rebuild(s.items()) and tree.count == len(s)
    s.merge()
    with pytest.raises(MergeError):
        s.fold_snapshot(snap, 0, 10, M.MerkleTree())
