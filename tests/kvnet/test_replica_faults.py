"""The local replica under disk faults (docs/storage.md, "Faults"; docs/antientropy.md,
"Corrupt records"): a write the disk refuses is a DiskError naming the node, the partition and
the cause; a failed fdatasync makes the partition read-only and raises its trusted-from epoch;
a record failing its CRC is missing data: the partition opens and serves, raises trusted-from
before its next write, and rebuilds its tree in the background (out of exchanges meanwhile)."""
import asyncio
import errno
import os

import pytest

from kvcore import merkle as M
from kvcore import versions as V
from kvnet.errors import DiskError
from kvnet.replica import LocalReplica
from kvnet.testing import corrupt_records


def S(v, ts=1):
    return V.sibling(v, ts)


def _theirs():
    """A clock another node minted (what replication brings)."""
    return V.update(V.new(S(b"x")), None, ("n2", 9, 1))


def _rep(path, **kw):
    kw.setdefault("fsync", "never")
    kw.setdefault("index_skip_bits", 8)     # as a node of Q=256 opens its partition stores
    return LocalReplica(str(path), "n1", **kw)


def _fill(rep, p, n, prefix=b"k"):
    for i in range(n):
        rep.mint(p, prefix + b"%04d" % i, S(b"value-%04d" % i * 4), overwrite=True)


def _fold(part):
    return M.MerkleTree().rebuild(part.store.items())


def _crash(rep):
    """Stop as a kill would: no sync, no hints, no CLEAN, no TREE."""
    for part in rep.partitions.values():
        part.store._abandon()
    rep.partitions = {}


def _pdir(path, p):
    return os.path.join(str(path), "partitions", f"{p:05d}")


# ---- corruption is missing data ---------------------------------------------------------------

def test_a_corrupt_record_in_a_sealed_segment_then_a_crash_still_opens(tmp_path):
    """The issue's reproduction: a flipped byte in a sealed segment (indexed from its hint
    file), a crash, and the reopen's tree fold raised CorruptRecord: the partition never opened
    again. Now the fold leaves the record out, trusted-from is raised, and the partition serves."""
    rep = _rep(tmp_path, max_segment_bytes=4096)
    _fill(rep, 3, 200)
    rep.partition(3).store.seal_pending()   # (the syncer thread's work: every roll sealed)
    old_trusted = rep.partition(3).trusted_from
    _crash(rep)
    hit = corrupt_records(_pdir(tmp_path, 3), per_segment=2)
    assert len(hit) > 6
    rep = _rep(tmp_path, max_segment_bytes=4096)
    part = rep.partition(3)
    assert part.tree_built and part.trusted_from > old_trusted
    assert part.corrupt_records == len(hit)
    for i in range(200):
        key = b"k%04d" % i
        assert (rep.read(3, key) is None) == (key in hit), key
    assert part.tree == _fold(part)                 # the fold left them out
    assert rep.fault_stats()["corrupt_records"] == len(hit)
    asyncio.run(rep.close())


def test_a_corrupt_record_found_at_a_read_is_dropped_distrusted_and_folded_out(tmp_path):
    """After a clean stop the saved tree still holds the record: the read that finds it bad
    drops it, raises trusted-from before the next write, and rebuilds the tree without it."""
    rep = _rep(tmp_path, max_segment_bytes=4096)
    _fill(rep, 3, 100)
    asyncio.run(rep.close())
    hit = corrupt_records(_pdir(tmp_path, 3), per_segment=1)
    bad = sorted(hit)[0]
    rep = _rep(tmp_path, max_segment_bytes=4096)
    part = rep.partition(3)
    good = next(b"k%04d" % i for i in range(100) if b"k%04d" % i not in hit)
    own_epoch = max(e[0][2] for e in rep.read(3, good).entries)
    trusted = part.trusted_from
    assert part.store.recovery["clean"] and part.tree_built
    assert rep.read(3, bad) is None                 # missing, not an exception
    assert part.trusted_from > max(trusted, own_epoch)
    assert part.tree_built and part.rebuilds == 1   # no loop here: rebuilt at once
    assert part.tree == _fold(part)
    # the next write over a key this node minted before does not extend the old epoch
    clock = rep.mint(3, good, S(b"after"), overwrite=True)
    assert max(e[0][2] for e in clock.entries) > part.trusted_from
    rep.mint(3, bad, S(b"healed"), overwrite=True)  # a repair writes it again
    assert V.values(rep.read(3, bad))[0].value == b"healed"
    assert part.tree == _fold(part)
    asyncio.run(rep.close())


def test_the_background_rebuild_is_right_under_writes_and_more_corruption(tmp_path, monkeypatch):
    """The rebuild folds a snapshot in chunks, yielding to the loop, while writes (of corrupt,
    folded and not yet folded keys) and another corrupt read come in between; the tree it
    leaves equals a fold of the store, and the partition stays out of exchanges until then."""
    import kvnet.replica as R

    monkeypatch.setattr(R, "REBUILD_CHUNK", 16)
    rep = _rep(tmp_path, max_segment_bytes=4096)
    _fill(rep, 5, 400)
    asyncio.run(rep.close())
    hit = sorted(corrupt_records(_pdir(tmp_path, 5), per_segment=2))
    assert len(hit) >= 8

    async def main():
        rep = _rep(tmp_path, max_segment_bytes=4096)
        part = rep.partition(5)
        rebuilt = []
        rep.on_tree_rebuilt = rebuilt.append
        assert rep.read(5, hit[0]) is None          # found: the rebuild starts
        assert not part.tree_built and part._rebuild_task is not None
        steps = 0
        while not part.tree_built:
            steps += 1
            i = steps % 400
            rep.mint(5, b"k%04d" % i, S(b"during-%d" % steps), overwrite=True)
            rep.mint(5, b"new%04d" % steps, S(b"x"), overwrite=True)
            if steps == 3:
                assert rep.read(5, hit[1]) is None  # another one, found by a read: fold again
            if steps == 5:
                rep.mint(5, hit[2], S(b"rewritten"), overwrite=True)   # corrupt: absent
            if steps % 7 == 0:
                rep.delete_if(5, b"new%04d" % (steps - 1), rep.read_raw(5, b"new%04d" % (steps - 1)))
            await asyncio.sleep(0)
            assert steps < 10_000
        assert steps > 10                           # it did yield, many times
        assert part.corrupt_records == len(hit)     # the rest found by the rebuild's own reads
        assert part.tree == _fold(part)
        assert rebuilt == [5] and part.rebuilds == 1
        for k in hit[3:]:
            assert rep.read(5, k) is None
        assert part.corrupt_records == len(hit) and part.tree == _fold(part)
        await rep.close()

    asyncio.run(main())


def test_a_merge_during_the_rebuild_makes_it_start_again(tmp_path, monkeypatch):
    import kvnet.replica as R

    monkeypatch.setattr(R, "REBUILD_CHUNK", 8)
    rep = _rep(tmp_path, max_segment_bytes=4096)
    _fill(rep, 1, 150)
    asyncio.run(rep.close())
    hit = sorted(corrupt_records(_pdir(tmp_path, 1), per_segment=1))

    async def main():
        rep = _rep(tmp_path, max_segment_bytes=4096)
        part = rep.partition(1)
        assert rep.read(1, hit[0]) is None
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        part.store.merge()                          # moves every record the snapshot points at
        while not part.tree_built:
            rep.mint(1, b"m", S(b"x"), overwrite=True)
            await asyncio.sleep(0)
        assert part.tree == _fold(part) and part.rebuilds == 1
        await rep.close()

    asyncio.run(main())


def test_a_tree_being_rebuilt_is_not_saved_at_close(tmp_path, monkeypatch):
    import kvnet.replica as R

    monkeypatch.setattr(R, "REBUILD_CHUNK", 4)
    rep = _rep(tmp_path, max_segment_bytes=4096)
    _fill(rep, 2, 100)
    asyncio.run(rep.close())
    hit = sorted(corrupt_records(_pdir(tmp_path, 2), per_segment=1))

    async def main():
        rep = _rep(tmp_path, max_segment_bytes=4096)
        assert rep.read(2, hit[0]) is None
        assert not rep.partition(2).tree_built
        await rep.close()                           # mid-rebuild: no TREE file written

    asyncio.run(main())
    assert not os.path.exists(os.path.join(_pdir(tmp_path, 2), "TREE"))
    rep = _rep(tmp_path, max_segment_bytes=4096)
    part = rep.partition(2)
    assert part.tree == _fold(part) and rep.read(2, hit[0]) is None
    asyncio.run(rep.close())


# ---- writes the disk refuses ------------------------------------------------------------------

def test_a_refused_write_names_node_partition_and_cause_and_writes_resume(tmp_path):
    rep = _rep(tmp_path)
    rep.mint(7, b"a", S(b"1"), overwrite=True)
    part = rep.partition(7)
    for op, err, name in [("write", errno.ENOSPC, "ENOSPC"), ("write", errno.EIO, "EIO")]:
        part.store._fail_next(op, err)
        for write in (lambda: rep.mint(7, b"b", S(b"2"), overwrite=True),
                      lambda: rep.merge(7, b"b", _theirs())):
            part.store._fail_next(op, err)
            with pytest.raises(DiskError) as info:
                write()
            msg = info.value.resp()
            assert msg.startswith("IOERR node n1: partition 7: write refused") and name in msg
        part.store._fail_next(None)
    assert part.read_only is None and rep.read(7, b"b") is None
    assert part.tree == _fold(part)                 # nothing of the refused writes in the tree
    rep.mint(7, b"b", S(b"2"), overwrite=True)      # writes resume
    assert V.values(rep.read(7, b"b"))[0].value == b"2"
    asyncio.run(rep.close())


def test_a_failed_fdatasync_makes_the_partition_read_only_and_distrusted(tmp_path):
    async def main():
        rep = _rep(tmp_path, fsync="interval", sync_interval_ms=50)
        rep.start()
        for p in (1, 2):
            rep.mint(p, b"a", S(b"1"), overwrite=True)
        await rep.group.commit()
        bad = rep.partition(1)
        trusted = bad.trusted_from
        rep.mint(1, b"b", S(b"2"), overwrite=True)
        rep.mint(2, b"b", S(b"2"), overwrite=True)
        bad.store._fail_next("fdatasync", errno.EIO)
        await rep.group.commit()                          # the round goes on: partition 2 is synced
        assert bad.read_only is not None and bad.trusted_from > trusted
        assert rep.partition(2).read_only is None and rep.fault_stats()["read_only_partitions"] == 1
        with pytest.raises(DiskError) as info:
            rep.mint(1, b"c", S(b"3"), overwrite=True)
        msg = info.value.resp()
        assert msg.startswith("IOERR node n1: partition 1 is read-only") and "EIO" in msg
        with pytest.raises(DiskError):
            rep.merge(1, b"c", _theirs())
        assert V.values(rep.read(1, b"b"))[0].value == b"2"     # reads go on
        rep.mint(2, b"c", S(b"3"), overwrite=True)  # other partitions too
        await rep.group.commit()
        await asyncio.sleep(0.12)                   # the interval loop: never retried
        assert bad.store.failed == errno.EIO
        await rep.close()

    asyncio.run(main())
    rep = _rep(tmp_path)                            # closed as after a crash: recovered
    part = rep.partition(1)
    assert not part.store.recovery["clean"] and V.values(rep.read(1, b"b"))[0].value == b"2"
    rep.mint(1, b"c", S(b"3"), overwrite=True)      # writable again after the restart
    asyncio.run(rep.close())


def test_fsync_always_does_not_acknowledge_a_write_whose_sync_failed(tmp_path):
    async def main():
        rep = _rep(tmp_path, fsync="always", sync_method="fdatasync")   # (a store's own sync)
        rep.mint(1, b"a", S(b"1"), overwrite=True)
        rep.mint(2, b"a", S(b"1"), overwrite=True)
        await rep.after_write({1, 2})
        rep.mint(1, b"b", S(b"2"), overwrite=True)
        rep.mint(2, b"b", S(b"2"), overwrite=True)
        rep.partition(1).store._fail_next("fdatasync", errno.EIO)
        waits = await asyncio.gather(rep.after_write(1), rep.after_write(2), rep.after_write(),
                                     return_exceptions=True)
        assert isinstance(waits[0], DiskError) and "partition 1 is read-only" in str(waits[0])
        assert waits[1] is None                     # its sync in the same round succeeded
        assert isinstance(waits[2], DiskError)      # (a write of unknown partitions: refused)
        await rep.after_write(2)
        await rep.close()

    asyncio.run(main())


def test_the_free_space_watermark_reaches_the_replica_as_a_disk_error(tmp_path, monkeypatch):
    class Fake:
        f_frsize = f_bsize = 4096
        f_blocks = 1 << 20
        f_bavail = f_bfree = (1 << 20) // 50       # 2 % free

    rep = _rep(tmp_path, min_free_percent=5)
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: Fake())
    with pytest.raises(DiskError) as info:
        rep.mint(4, b"a", S(b"1"), overwrite=True)
    msg = str(info.value)
    assert "node n1: partition 4: write refused" in msg and "min_free_percent=5" in msg
    assert "2.0 %" in msg
    monkeypatch.setattr(os, "statvfs", real)
    rep.mint(4, b"a", S(b"1"), overwrite=True)
    asyncio.run(rep.close())


@pytest.mark.parametrize("in_loop", [False, True], ids=["no-loop", "loop"])
def test_a_corrupt_record_found_by_a_merge_is_folded_out_too(tmp_path, in_loop):
    rep = _rep(tmp_path, max_segment_bytes=4096)
    _fill(rep, 6, 150)
    asyncio.run(rep.close())
    hit = sorted(corrupt_records(_pdir(tmp_path, 6), per_segment=1))

    async def main():
        rep = _rep(tmp_path, max_segment_bytes=4096)
        part = rep.partition(6)
        trusted = part.trusted_from
        part.store.merge()                          # the copy finds them: dropped, reported
        assert part.corrupt_records == len(hit) and part.trusted_from > trusted
        while not part.tree_built:
            await asyncio.sleep(0)
        assert part.tree == _fold(part) and all(rep.read(6, k) is None for k in hit)
        assert len(part.store) == 150 - len(hit)
        await rep.close()

    if in_loop:
        asyncio.run(main())
    else:
        rep = _rep(tmp_path, max_segment_bytes=4096)
        part = rep.partition(6)
        part.store.merge()
        assert part.tree_built and part.tree == _fold(part) and part.corrupt_records == len(hit)
        asyncio.run(rep.close())
