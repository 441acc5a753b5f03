"""syncfs(2) (kvcore/storage/syncfs.py) and the stores' hooks around a file system sync
(sync_begin / sync_end, both twins): docs/storage.md, "Durability"."""
import errno

import pytest

from kvcore.errors import StoreClosed, StoreReadOnly
from kvcore.storage import syncfs as SF


def test_kernel_versions_are_read_from_the_release_string():
    assert SF.kernel_version("6.18.44-fc-v1272") == (6, 18)
    assert SF.kernel_version("5.8.0") == (5, 8)
    assert SF.kernel_version("4.19.0-25-amd64") == (4, 19)
    assert SF.kernel_version("weird") is None


def test_syncfs_is_refused_where_its_errors_are_not_reported():
    assert "older than 5.8" in SF.unsupported("linux", "5.7.19")
    assert "older than 5.8" in SF.unsupported("linux", "4.19.0-25-amd64")
    assert "Linux only" in SF.unsupported("darwin", "23.1.0")
    assert "cannot be read" in SF.unsupported("linux", "weird")
    assert SF.unsupported("linux", "5.8.0") is None
    assert SF.unsupported("linux", "6.1.0-18-amd64") is None


@pytest.mark.skipif(SF.unsupported() is not None, reason=str(SF.unsupported()))
def test_syncfs_flushes_and_reports_errors(tmp_path):
    fs = SF.FileSystemSync(str(tmp_path))
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * 100)
    fs.sync()                               # succeeds on a healthy file system
    fs.close()
    with pytest.raises(OSError) as info:    # a closed descriptor: an error, never a success
        fs.sync()
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError) as info:
        SF.syncfs(-1)                       # the kernel's errno comes through
    assert info.value.errno == errno.EBADF


def test_a_store_synced_by_the_file_system_records_what_it_covered(open_store):
    s = open_store()
    s.put(b"a", b"1" * 50)
    mark = s.sync_begin()
    s.put(b"b", b"2" * 50)                  # after the mark: not covered by this sync
    s.sync_end(mark)                        # (the replica syncs the file system between)
    st = s.stats()
    assert st["synced_offset"] == mark[1] < st["active_offset"]
    s.sync_end(s.sync_begin())
    st = s.stats()
    assert st["synced_offset"] == st["active_offset"]


def test_an_injected_fdatasync_fault_fails_the_store_at_sync_end(open_store):
    """A round synced by syncfs still fails a store whose sync a test made fail: read-only
    for good, never "synced" again."""
    s = open_store()
    s.put(b"a", b"1")
    s._fail_next("fdatasync", errno.EIO)
    mark = s.sync_begin()
    with pytest.raises(StoreReadOnly) as info:
        s.sync_end(mark)
    assert "EIO" in str(info.value) and "syncfs" in str(info.value)
    assert s.failed == errno.EIO
    with pytest.raises(StoreReadOnly):
        s.sync_begin()
    with pytest.raises(StoreReadOnly):
        s.put(b"b", b"2")


def test_a_closed_store_has_nothing_to_sync(open_store):
    s = open_store()
    s.put(b"a", b"1")
    mark = s.sync_begin()
    s.close()
    s.sync_end(mark)                        # closed meanwhile (a dropped partition): nothing
    with pytest.raises(StoreClosed):
        s.sync_begin()
