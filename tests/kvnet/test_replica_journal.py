"""The node-wide journal under a replica (issue 17 G; docs/storage.md, "The journal"): one
fdatasync per round, a crash that lost every unsynced page of the stores loses no
acknowledged write, a drop or a FLUSHDB is never undone by the replay, checkpoints cut the
journal, and a failed journal write is never taken for a good one."""
import asyncio
import errno
import glob
import os
import threading

import pytest

from kvcore import versions as V
from kvcore.storage import journal as J
from kvnet.errors import DiskError
from kvnet.replica import LocalReplica


def S(v, ts=1):
    return V.sibling(v, ts)


def _rep(path, **kw):
    kw.setdefault("fsync", "always")
    kw.setdefault("sync_method", "journal")
    return LocalReplica(str(path), "n1", **kw)


def _crash(rep):
    """Stop as a kill would: no store sync, no hints, no CLEAN, no TREE; the journal's file
    left as it is."""
    for part in rep.partitions.values():
        part.store._abandon()
    rep.partitions = {}
    rep.journal.file.close()
    rep.journal._dirlock.release()      # (a killed process's lock goes with it)
    rep.group.executor.shutdown()


def _lose_unsynced(path):
    """What a power cut may do to pages the stores never synced, at its worst: every segment
    back to its header, every hint file gone (no checkpoint ran: all of it was unsynced)."""
    for seg in glob.glob(os.path.join(str(path), "partitions", "*", "*.data")):
        os.truncate(seg, 32)
    for hint in glob.glob(os.path.join(str(path), "partitions", "*", "*.hint")):
        os.unlink(hint)


class _Reopened:
    """`async with _Reopened(path, **kw) as rep2`: the replica started again on the data a
    crash left (open_existing: the replay), closed after the block."""

    def __init__(self, path, **kw):
        self.path, self.kw = path, kw

    async def __aenter__(self):
        self.rep = _rep(self.path, **self.kw)
        self.rep.open_existing()
        return self.rep

    async def __aexit__(self, *exc):
        await self.rep.close()


def _journal_files(path):
    return sorted(f for f in os.listdir(os.path.join(str(path), "journal")) if f.endswith(".jnl"))


def _write_some(rep, parts=range(8), n=20):
    for p in parts:
        for i in range(n):
            rep.mint(p, b"k%02d-%03d" % (p, i), S(b"v%03d" % i * 30), overwrite=True)
        rep.mint(p, b"k%02d-%03d" % (p, 0), S(b"again"), overwrite=True)
        assert rep.delete_if(p, b"k%02d-%03d" % (p, 1), rep.read_raw(p, b"k%02d-%03d" % (p, 1)))


def _contents(rep, parts=range(8)):
    return {p: dict(rep.partition(p).store.items()) for p in parts}


def test_a_crash_that_lost_the_stores_pages_loses_no_acknowledged_write(tmp_path):
    async def main():
        rep = _rep(tmp_path)
        rep.open_existing()
        _write_some(rep)
        await rep.after_write()
        want = _contents(rep)
        info = rep.group.stats()
        assert info["sync_method"] == "journal" and info["group_commit_syncs"] == info["group_commits"]
        _crash(rep)
        _lose_unsynced(tmp_path)
        async with _Reopened(tmp_path) as rep2:
            assert _contents(rep2) == want
            assert rep2.replayed_records > 0
            assert _journal_files(tmp_path) == [J.file_name(2)]     # the replayed one retired
            for p in range(8):                                      # an unclean start still
                assert rep2.partition(p).trusted_from > 0           # raises trusted-from
                assert not rep2.partition(p).tree_built             # (folded later)
        assert _journal_files(tmp_path) == []                       # a clean close: none left
        rep3 = _rep(tmp_path)
        rep3.open_existing()
        assert rep3.replayed_records == 0 and _contents(rep3) == want
        await rep3.close()

    asyncio.run(main())


def test_a_dropped_partition_never_gets_its_old_records_back(tmp_path):
    """Write, drop (the partition handed off), the same partition created again and written,
    kill: the replay writes only what came after the drop."""
    async def main():
        rep = _rep(tmp_path)
        rep.mint(3, b"old", S(b"gone"), overwrite=True)
        rep.mint(4, b"kept", S(b"here"), overwrite=True)
        await rep.after_write()
        assert await rep.drop(3) and not os.path.exists(os.path.join(tmp_path, "partitions", "00003"))
        rep.mint(3, b"new", S(b"fresh"), overwrite=True)
        await rep.after_write()
        _crash(rep)
        _lose_unsynced(tmp_path)
        async with _Reopened(tmp_path) as rep2:
            assert rep2.read_raw(3, b"old") is None
            assert V.decode(rep2.read_raw(3, b"new")) is not None
            assert rep2.read_raw(4, b"kept") is not None

    asyncio.run(main())


def test_a_drop_then_a_kill_leaves_the_key_absent(tmp_path):
    async def main():
        rep = _rep(tmp_path)
        rep.mint(5, b"k", S(b"v"), overwrite=True)
        await rep.after_write()
        assert await rep.drop(5)
        _crash(rep)
        async with _Reopened(tmp_path) as rep2:
            assert 5 not in rep2.partitions and rep2.read_raw(5, b"k") is None

    asyncio.run(main())


def test_a_flushdb_then_a_kill_leaves_the_keys_absent(tmp_path):
    async def main():
        rep = _rep(tmp_path)
        _write_some(rep, parts=[2])
        await rep.after_write()
        rep.empty_partition(2)
        await rep.after_write()
        _crash(rep)
        _lose_unsynced(tmp_path)
        async with _Reopened(tmp_path) as rep2:
            assert _contents(rep2, [2]) == {2: {}}

    asyncio.run(main())


def test_checkpoints_cut_the_journal_and_lose_nothing(tmp_path):
    async def main():
        rep = _rep(tmp_path, journal_checkpoint_bytes=8 << 10)
        rep.open_existing()
        for round_ in range(12):
            _write_some(rep, n=10)
            await rep.after_write()
            while rep.group.checkpointing:
                await asyncio.sleep(0.01)
            assert len(_journal_files(tmp_path)) <= 2
        assert rep.group.checkpoints >= 5
        want = _contents(rep)
        _crash(rep)                 # (no page lost: the checkpoints synced the stores)
        async with _Reopened(tmp_path) as rep2:
            assert _contents(rep2) == want

    asyncio.run(main())


def test_a_store_sync_failing_in_a_checkpoint_keeps_the_journal(tmp_path):
    async def main():
        rep = _rep(tmp_path, journal_checkpoint_bytes=4 << 10)
        rep.open_existing()
        _write_some(rep, parts=[1, 2])
        rep.partition(2).store._fail_next("fdatasync", errno.EIO)
        await rep.after_write()
        while rep.group.checkpointing:
            await asyncio.sleep(0.01)
        assert rep.partition(2).read_only is not None and rep.partition(1).read_only is None
        kept = _journal_files(tmp_path)
        assert len(kept) == 2                           # the cut file stays for a replay
        await rep.close()
        assert _journal_files(tmp_path) == kept         # (a close keeps them too)
        async with _Reopened(tmp_path) as rep2:
            assert rep2.replayed_records > 0 and rep2.read_raw(2, b"k02-005") is not None

    asyncio.run(main())


@pytest.mark.parametrize("op", ["write", "fdatasync"])
def test_a_failed_journal_write_is_never_taken_for_a_good_one(tmp_path, op):
    """The round's partitions turn read-only and their writes are not acknowledged; a write
    to another partition after it is refused too (the journal failed for good)."""
    async def main():
        rep = _rep(tmp_path)
        rep.mint(1, b"a", S(b"1"), overwrite=True)
        await rep.after_write(1)
        rep.journal._fail_next(op, errno.EIO)
        rep.mint(1, b"b", S(b"2"), overwrite=True)
        with pytest.raises(DiskError) as info:
            await rep.after_write(1)
        assert "partition 1" in str(info.value) and "read-only" in str(info.value)
        rep.mint(6, b"c", S(b"3"), overwrite=True)      # the journal's failure is for good
        with pytest.raises(DiskError):
            await rep.after_write(6)
        assert rep.partition(6).read_only is not None
        assert "journal" in rep.partition(6).read_only
        await rep.close()
        assert len(_journal_files(tmp_path)) == 1       # kept: the next start replays it

    asyncio.run(main())


def test_a_slow_journal_fdatasync_holds_the_acknowledgement(tmp_path):
    gate = threading.Event()
    started = threading.Event()

    def held():
        started.set()
        assert gate.wait(30)

    async def main():
        rep = _rep(tmp_path)
        rep.journal.before_sync = held
        rep.mint(3, b"k", S(b"v"), overwrite=True)
        waiter = asyncio.ensure_future(rep.after_write(3))
        called = []
        rep.group.when_durable(3, called.append)
        for _ in range(300):
            if started.is_set():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert started.is_set() and not waiter.done() and called == []
        gate.set()
        await asyncio.wait_for(waiter, 10)
        assert called == [None]
        await rep.close()

    try:
        asyncio.run(main())
    finally:
        gate.set()


def test_a_start_without_the_journal_still_replays_what_a_crash_left(tmp_path):
    """Killed under fsync=always, started again with fsync=interval: the journal's files are
    replayed all the same (they hold acknowledged writes), then deleted."""
    async def main():
        rep = _rep(tmp_path)
        rep.open_existing()
        _write_some(rep, parts=[1, 9])
        await rep.after_write()
        want = _contents(rep, [1, 9])
        _crash(rep)
        _lose_unsynced(tmp_path)
        async with _Reopened(tmp_path, fsync="interval", sync_method="fdatasync") as rep2:
            assert rep2.journal is None and rep2.replayed_records > 0
            assert _contents(rep2, [1, 9]) == want
            assert _journal_files(tmp_path) == []

    asyncio.run(main())


def test_a_round_after_a_failed_one_is_not_acknowledged_either(tmp_path, monkeypatch):
    """Two rounds in flight; the first one's journal write fails, the second's succeeds: the
    first's range is a hole the replay stops at, so the second's writes are refused too."""
    gate = threading.Event()
    write_sync = J.Batch.write_sync
    first = []

    def held(batch):
        first.append(batch.offset) if not first else None
        assert gate.wait(30)
        if batch.offset == first[0]:
            raise OSError(errno.EIO, "injected: the first round's write")
        write_sync(batch)

    monkeypatch.setattr(J.Batch, "write_sync", held)

    async def main():
        rep = _rep(tmp_path)
        rep.mint(1, b"a", S(b"1"), overwrite=True)
        w1 = asyncio.ensure_future(rep.after_write(1))
        await asyncio.sleep(0.05)
        rep.mint(2, b"b", S(b"2"), overwrite=True)
        w2 = asyncio.ensure_future(rep.after_write(2))
        await asyncio.sleep(0.05)
        assert rep.group.syncing_rounds == 2
        gate.set()
        for w in (w1, w2):
            with pytest.raises(DiskError):
                await w
        assert rep.partition(2).read_only is not None
        await rep.close()

    try:
        asyncio.run(main())
    finally:
        gate.set()


def test_a_checkpoint_whose_delete_fails_keeps_every_later_file(tmp_path, monkeypatch):
    """The files left must be a contiguous run of the newest: one not deleted means none
    after it is, so a replay never puts an old value over a newer one."""
    calls = []
    retire = J.Journal.retire

    def failing_once(journal, files):
        calls.append(list(files))
        if len(calls) == 1:
            raise OSError(errno.EIO, "injected: unlink")
        retire(journal, files)

    monkeypatch.setattr(J.Journal, "retire", failing_once)

    async def main():
        rep = _rep(tmp_path, journal_checkpoint_bytes=2 << 10)
        rep.open_existing()

        async def write(key, value):
            rep.mint(3, key, S(value + b"x" * 200), overwrite=True)
            await rep.after_write()
            while rep.group.checkpointing:
                await asyncio.sleep(0.01)

        i = 0
        while not calls:                        # k = A, until the first cut (its delete fails)
            await write(b"k", b"A")
            i += 1
            assert i < 100
        await write(b"k", b"B")                 # the newest k: in the file after the cut
        for i in range(40):                     # then only other keys: more cuts would come
            await write(b"f%d" % i, b"filler")
        assert len(calls) == 1 and rep.group.journal_kept
        assert _journal_files(tmp_path)[0] == J.file_name(1)        # nothing deleted after
        want = rep.read_raw(3, b"k")
        _crash(rep)
        async with _Reopened(tmp_path) as rep2:
            assert rep2.read_raw(3, b"k") == want       # B, not the older A of file 1

    asyncio.run(main())


def test_a_write_while_a_drop_waits_for_its_sync_goes_to_a_fresh_partition(tmp_path):
    async def main():
        rep = _rep(tmp_path)
        rep.mint(4, b"old", S(b"gone"), overwrite=True)
        await rep.after_write()
        dropping = asyncio.ensure_future(rep.drop(4))
        await asyncio.sleep(0)                  # (the drop waits for its round now)
        rep.mint(4, b"new", S(b"fresh"), overwrite=True)
        assert rep.read_raw(4, b"old") is None
        assert await dropping
        await rep.after_write()
        _crash(rep)
        async with _Reopened(tmp_path) as rep2:
            assert rep2.read_raw(4, b"old") is None and rep2.read_raw(4, b"new") is not None

    asyncio.run(main())


def test_a_close_right_after_a_checkpoint_starts_loses_nothing(tmp_path):
    async def main():
        rep = _rep(tmp_path, journal_checkpoint_bytes=1 << 10)
        rep.open_existing()
        _write_some(rep, parts=[1, 2], n=15)
        await rep.after_write()
        want = _contents(rep, [1, 2])
        await rep.close()                   # (a checkpoint may be under way)
        assert _journal_files(tmp_path) == []
        async with _Reopened(tmp_path) as rep2:
            assert rep2.replayed_records == 0 and _contents(rep2, [1, 2]) == want

    asyncio.run(main())


def test_a_journal_of_another_format_version_is_refused(tmp_path):
    from kvcore.errors import StoreFormatError
    d = tmp_path / "journal"
    d.mkdir()
    head = bytearray(J.file_header(1))
    head[8:10] = (9).to_bytes(2, "little")
    (d / J.file_name(1)).write_bytes(bytes(head) + b"frames")
    with pytest.raises(StoreFormatError) as info:
        _rep(tmp_path)
    assert "version 9" in str(info.value)


def test_a_damaged_header_keeps_the_file_aside(tmp_path):
    d = tmp_path / "journal"
    d.mkdir()
    (d / J.file_name(1)).write_bytes(b"\xff" * 32 + b"frames we cannot trust")
    rep = _rep(tmp_path)
    assert os.path.exists(d / (J.file_name(1) + ".damaged"))
    asyncio.run(rep.close())
    assert os.path.exists(d / (J.file_name(1) + ".damaged"))
