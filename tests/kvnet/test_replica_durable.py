"""Group commit with one sync per round (issue 17 G; docs/storage.md, "Durability"): a round
over many partitions makes one syncfs, an acknowledgement waits for its sync, a failed sync is
never taken for a good one, and overlapping rounds end in order."""
import asyncio
import errno
import threading

import pytest

from kvcore import versions as V
from kvcore.storage import syncfs as SF
from kvnet import groupcommit as R
from kvnet.errors import DiskError
from kvnet.executor import Executor, InlineExecutor
from kvnet.replica import LocalReplica
from kvnet.stepping import ReplyFuture, reject, resolve


def S(v, ts=1):
    return V.sibling(v, ts)


class Calls:
    """A stand-in for syncfs(2): counts the calls; `gate` (a threading.Event) holds each call
    until set; `fail` (an errno) makes the next `fail_times` calls fail (each descriptor
    reports an error once: two rounds syncing at once both see it)."""

    def __init__(self, gate=None):
        self.count = 0
        self.gate = gate
        self.fail = None
        self.fail_times = 1
        self.started = threading.Event()

    def __call__(self, fd):
        self.count += 1
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.fail is not None:
            err = self.fail
            self.fail_times -= 1
            if self.fail_times <= 0:
                self.fail = None
            raise OSError(err, "injected", "syncfs")


@pytest.fixture
def fake_syncfs(monkeypatch):
    """syncfs trusted here (whatever the kernel) and replaced by a Calls."""
    calls = Calls()
    monkeypatch.setattr(SF, "unsupported", lambda *a: None)
    monkeypatch.setattr(SF, "syncfs", calls)
    return calls


def _rep(path, **kw):
    kw.setdefault("fsync", "always")
    kw.setdefault("sync_method", "syncfs")
    return LocalReplica(str(path), "n1", **kw)


def test_one_syncfs_per_round_however_many_partitions(tmp_path, fake_syncfs):
    async def main():
        rep = _rep(tmp_path)
        for p in range(20):
            rep.mint(p, b"k", S(b"v"), overwrite=True)
        await asyncio.gather(*(rep.after_write(p) for p in range(20)))
        assert fake_syncfs.count == 1 and rep.group.commits == 1 and rep.group.commit_syncs == 1
        for p in range(20):                 # each store knows what the sync covered
            st = rep.partition(p).store.stats()
            assert st["synced_offset"] == st["active_offset"]
        await rep.close()

    asyncio.run(main())


def test_per_partition_fdatasync_is_still_there_and_counted(tmp_path, fake_syncfs):
    async def main():
        rep = _rep(tmp_path, sync_method="fdatasync")
        for p in range(5):
            rep.mint(p, b"k", S(b"v"), overwrite=True)
        await rep.after_write()
        assert fake_syncfs.count == 0 and rep.group.commits == 1 and rep.group.commit_syncs == 5
        await rep.close()

    asyncio.run(main())


def test_auto_falls_back_and_syncfs_is_refused_where_the_kernel_hides_errors(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr(SF, "unsupported", lambda *a: "Linux 5.4 is older than 5.8: ...")
    rep = _rep(tmp_path, sync_method="auto", fsync="interval")
    assert rep.sync_method == "fdatasync" and rep.group._fs is None
    asyncio.run(rep.close())
    rep = _rep(tmp_path, sync_method="auto")        # fsync=always: the journal, any kernel
    assert rep.sync_method == "journal" and rep.journal is not None
    asyncio.run(rep.close())
    with pytest.raises(DiskError) as info:
        _rep(tmp_path, sync_method="syncfs")
    assert "older than 5.8" in str(info.value) and "fdatasync" in str(info.value)
    with pytest.raises(ValueError):
        _rep(tmp_path, sync_method="fsync")


def test_auto_is_syncfs_where_the_kernel_reports_errors(tmp_path, fake_syncfs):
    rep = _rep(tmp_path, sync_method="auto", fsync="interval")
    assert rep.sync_method == "syncfs" and len(rep.group._fs) == R.COMMIT_ROUNDS
    asyncio.run(rep.close())
    rep = _rep(tmp_path, sync_method="auto", fsync="never")    # (no rounds: no journal)
    assert rep.sync_method == "syncfs" and rep.journal is None
    asyncio.run(rep.close())


@pytest.mark.parametrize("method", ["syncfs", "fdatasync", "journal"])
def test_a_slow_sync_holds_the_acknowledgement(tmp_path, fake_syncfs, method):
    """An acknowledgement waits for its sync: while the sync is held, neither after_write nor
    when_durable nor durable() settles; once it ends, all of them do."""
    gate = threading.Event()
    fake_syncfs.gate = gate

    class Held(Executor):               # holds every fdatasync round the same way
        async def run(self, fn, *args):
            return await asyncio.to_thread(lambda: (gate.wait(30), fn(*args))[1])

    async def main():
        rep = _rep(tmp_path, sync_method=method,
                   executor=None if method == "syncfs" else Held())
        rep.mint(3, b"k", S(b"v"), overwrite=True)
        waiter = asyncio.ensure_future(rep.after_write(3))
        called = []
        rep.group.when_durable(3, called.append)
        remote = ReplyFuture()
        out = rep.durable(remote, 3)
        resolve(remote, b"raw")                 # the replicas have acked
        await asyncio.sleep(0.3)
        assert not waiter.done() and called == [] and not out.done()
        gate.set()
        await asyncio.wait_for(waiter, 10)
        assert called == [None] and await asyncio.wait_for(out, 10) == b"raw"
        await rep.close()

    asyncio.run(main())


def test_durable_rejects_on_the_replicas_error_or_a_failed_local_sync(tmp_path, fake_syncfs):
    async def main():
        rep = _rep(tmp_path)
        rep.mint(1, b"k", S(b"v"), overwrite=True)
        remote = ReplyFuture()
        out = rep.durable(remote, 1)
        reject(remote, RuntimeError("quorum failed"))
        with pytest.raises(RuntimeError, match="quorum failed"):
            await out
        rep.mint(1, b"k2", S(b"v"), overwrite=True)
        fake_syncfs.fail = errno.EIO
        remote = ReplyFuture()
        resolve(remote, b"raw")                 # already settled when handed over
        with pytest.raises(DiskError, match="partition 1 is read-only"):
            await rep.durable(remote, 1)
        await rep.close()

    asyncio.run(main())


def test_a_failed_syncfs_is_never_taken_for_a_good_one(tmp_path, fake_syncfs):
    """A failed syncfs names no file: every partition of the round turns read-only with its
    trusted-from raised, the writes are not acknowledged, and the next (good) syncfs does not
    make them durable after all."""
    async def main():
        rep = _rep(tmp_path)
        for p in (1, 2, 3):
            rep.mint(p, b"a", S(b"1"), overwrite=True)
        await rep.after_write()
        trusted = {p: rep.partition(p).trusted_from for p in (1, 2, 3)}
        rep.mint(1, b"b", S(b"2"), overwrite=True)
        rep.mint(2, b"b", S(b"2"), overwrite=True)
        fake_syncfs.fail = errno.EIO
        waits = await asyncio.gather(rep.after_write(1), rep.after_write(2),
                                     return_exceptions=True)
        for w in waits:
            assert isinstance(w, DiskError) and "syncfs failed" in str(w) and "EIO" in str(w)
        for p in (1, 2):
            part = rep.partition(p)
            assert part.read_only is not None and part.trusted_from > trusted[p]
            assert part.store.failed == errno.EIO
            with pytest.raises(DiskError, match="read-only"):
                rep.mint(p, b"c", S(b"3"), overwrite=True)
        assert rep.partition(3).read_only is None       # not written in that round
        rep.mint(3, b"c", S(b"3"), overwrite=True)
        await rep.after_write(3)                        # the next round is a good one
        assert rep.partition(1).read_only is not None
        await rep.close()

    asyncio.run(main())


def test_writes_stored_while_a_syncfs_fails_are_not_acknowledged_either(tmp_path, fake_syncfs,
                                                                        monkeypatch):
    """Pages written after the round began may have been in the failed writeback (the error
    is reported once, so the next syncfs succeeds): their partitions turn read-only too.
    (One round at a time here, so the second write waits for a round of its own.)"""
    monkeypatch.setattr(R, "COMMIT_ROUNDS", 1)
    gate = threading.Event()
    fake_syncfs.gate = gate
    fake_syncfs.fail = errno.EIO

    async def main():
        rep = _rep(tmp_path)
        rep.mint(1, b"a", S(b"1"), overwrite=True)
        first = asyncio.ensure_future(rep.after_write(1))
        await asyncio.to_thread(fake_syncfs.started.wait, 10)
        rep.mint(2, b"a", S(b"1"), overwrite=True)     # while the failing sync runs
        second = asyncio.ensure_future(rep.after_write(2))
        gate.set()
        with pytest.raises(DiskError):
            await first
        with pytest.raises(DiskError, match="partition 2 is read-only"):
            await second
        with pytest.raises(DiskError, match="partition 2 is read-only"):
            await rep.after_write(2)        # (a waiter coming later is refused too)
        await rep.close()

    asyncio.run(main())


def test_an_injected_store_fault_fails_only_that_partition(tmp_path, fake_syncfs):
    async def main():
        rep = _rep(tmp_path)
        for p in (1, 2):
            rep.mint(p, b"a", S(b"1"), overwrite=True)
        rep.partition(1).store._fail_next("fdatasync", errno.EIO)
        waits = await asyncio.gather(rep.after_write(1), rep.after_write(2),
                                     return_exceptions=True)
        assert isinstance(waits[0], DiskError) and waits[1] is None
        assert rep.partition(2).read_only is None
        await rep.close()

    asyncio.run(main())


def test_overlapping_rounds_end_in_order(tmp_path, fake_syncfs, monkeypatch):
    """A write stored while a round syncs starts the next round at once (two syncs at
    once), but is acknowledged only after the earlier round has ended too."""
    gates = [threading.Event(), threading.Event()]
    started = []

    def held(fd):
        i = len(started)
        started.append(fd)
        assert gates[i].wait(30)

    async def main():
        rep = _rep(tmp_path)
        fds = {fs.fd for fs in rep.group._fs}
        monkeypatch.setattr(SF, "syncfs", held)
        rep.mint(1, b"a", S(b"1"), overwrite=True)
        first = asyncio.ensure_future(rep.after_write(1))
        await asyncio.sleep(0.1)
        rep.mint(2, b"a", S(b"1"), overwrite=True)
        second = asyncio.ensure_future(rep.after_write(2))
        for _ in range(100):
            if len(started) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(started) == 2 and set(started) == fds     # two at once, a descriptor each
        gates[1].set()                                        # the later one ends first
        await asyncio.sleep(0.2)
        assert not first.done() and not second.done()
        gates[0].set()
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        await rep.close()

    asyncio.run(main())


def test_fsync_interval_syncs_by_one_syncfs_too(tmp_path, fake_syncfs):
    async def main():
        rep = _rep(tmp_path, fsync="interval", sync_interval_ms=30)
        rep.start()
        for p in range(10):
            rep.mint(p, b"k", S(b"v"), overwrite=True)
        for _ in range(200):
            if rep.group.synced_gen == rep.group.write_gen:
                break
            await asyncio.sleep(0.01)
        assert rep.group.synced_gen == rep.group.write_gen and fake_syncfs.count == 1
        await rep.close()

    asyncio.run(main())


def test_an_inline_executor_runs_the_round_on_the_caller(tmp_path, fake_syncfs):
    async def main():
        rep = _rep(tmp_path, executor=InlineExecutor())
        rep.mint(1, b"k", S(b"v"), overwrite=True)
        await rep.after_write(1)
        assert fake_syncfs.count == 1
        await rep.close()

    asyncio.run(main())
