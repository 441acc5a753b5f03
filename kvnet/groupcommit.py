"""Group commit: when a node's writes become durable, and what waits for that.

Writes are stored by the replica (kvnet/replica.py) and by the compiled door and lane
(kvnet/localdoor.pyx), each reporting them here (`written`); a write acknowledged under
fsync=always waits for the round that covers it (`after_write`, `when_durable`, `durable`);
fsync=interval runs a round every sync interval. A round syncs every store written since the
round before it: by the journal's one fdatasync, one syncfs of the data directory's file
system, or an fdatasync per store (docs/storage.md, "Durability" and "The journal").
"""
import asyncio
import errno as E
import logging
import os

from kvcore.storage import journal as JR
from kvcore.storage import syncfs as SF
from kvcore.errors import StoreClosed
from kvcore.storage.journal import Journal
from kvnet.errors import DiskError
from kvnet.errors import os_cause as _cause
from kvnet.executor import ThreadExecutor
from kvnet.stepping import ReplyFuture, reject, resolve

SYNC_METHODS = ("auto", "journal", "syncfs", "fdatasync")   # how a group commit syncs
# (docs/storage.md); auto: the journal with fsync=always, else syncfs where it reports errors
JOURNAL_CHECKPOINT_BYTES = 64 << 20    # a checkpoint cuts the journal past this size
COMMIT_ROUNDS = 2             # group commit rounds syncing at once (docs/storage.md, "Durability")
log = logging.getLogger("kvnet.replica")


class GroupCommit:
    """The durability of one replica's writes (`replica`: its LocalReplica, whose partitions
    and write_error it uses)."""

    def __init__(self, replica, data_dir, node, *, fsync="interval", sync_interval_ms=1000,
                 executor=None, sync_method="auto",
                 journal_checkpoint_bytes=JOURNAL_CHECKPOINT_BYTES):
        self.replica = replica
        self.node = node
        self.fsync = fsync
        self.sync_interval = sync_interval_ms / 1000.0
        # rounds' syncs, off the loop: up to COMMIT_ROUNDS rounds at once, each covering
        # every store dirtied since the round before it started (and a journal checkpoint's
        # store syncs beside them)
        self.executor = executor or ThreadExecutor(COMMIT_ROUNDS + 1, "ringkv-sync")
        # syncfs: one descriptor per round syncing at once (a writeback error is reported once
        # per open file: each round's call must see every error since its descriptor's last)
        self.sync_method = _sync_method(sync_method, node, fsync)
        self._fs = ([SF.FileSystemSync(data_dir) for _ in range(COMMIT_ROUNDS)]
                    if self.sync_method == "syncfs" else None)
        # journal: every partition store appends a copy of its records to one journal, and a
        # round fdatasyncs that one file (docs/storage.md, "The journal"); opening it reads
        # what a crash left, replayed into each partition as it opens
        # (a node started without the journal after a crash with it still replays it)
        jdir = os.path.join(data_dir, "journal")
        self.journal = Journal(jdir) if self.sync_method == "journal" else None
        self.replay = (self.journal.replay if self.journal is not None
                       else JR.read_journal(jdir) if os.path.isdir(jdir) else JR.Replay())
        self.journal_checkpoint_bytes = journal_checkpoint_bytes
        self.checkpoints = 0         # journal checkpoints done
        self._since_checkpoint = set()   # partitions written since the journal's last cut
        self._checkpoint_task = None
        self._journal_keep = False       # a checkpoint failed after its cut: retire nothing
        self._closing = False
        self.commits = 0             # rounds that synced something
        self.commit_syncs = 0        # system calls they made (syncfs: one per round)
        self.durable_writes = 0      # writes that asked to be durable (durable_write)
        self._failures = 0           # partitions made read-only so far (after_write)
        self._dirty = set()
        self._write_gen = 0          # writes stored so far
        self._synced_gen = 0         # writes known durable
        self._rounds = []            # [(write gen covered, its task)] syncing, oldest first
        self._waiters = []           # [(write gen, partition, callback)]: when_durable
        self._drain_task = None
        self._interval_task = None

    def written(self, part, count=1):
        """`count` writes stored in part: the next round covers them. The replica's write
        methods call it, and so do the compiled door and lane (kvnet/localdoor.pyx), which
        store through kvcore/replicawrite.pyx themselves."""
        self._dirty.add(part)
        self._write_gen += count

    async def commit_all(self):
        """One write more (a record outside every partition: the journal's DROP) and a commit
        that covers it."""
        self._write_gen += 1
        await self.commit()

    def forget(self, part):
        """A partition dropped: no round syncs it any more (its store is closed)."""
        self._dirty.discard(part)
        self._since_checkpoint.discard(part)

    def failed(self, part):
        """A partition turned read-only (Partition.on_fail): waiters check theirs."""
        self._failures += 1

    def stats(self):
        """Group commit counters (INFO): the sync method, rounds that synced something, the
        sync system calls they made (syncfs: one per round), and the writes that asked to be
        durable (DURABLE k) and waited for a round here."""
        out = {"sync_method": self.sync_method, "group_commits": self.commits,
               "group_commit_syncs": self.commit_syncs,
               "durable_write_waits": self.durable_writes}
        if self.journal is not None:
            out.update(journal_bytes=self.journal.size, journal_checkpoints=self.checkpoints,
                       journal_replayed_records=self.replica.replayed_records)
        return out

    # state, read-only (tests wait on it; nothing outside changes it)

    @property
    def write_gen(self):
        """Writes stored so far (each mint, merge, delete or emptied partition counts one)."""
        return self._write_gen

    @property
    def synced_gen(self):
        """How many of them are known durable (equal to write_gen: nothing waits for a sync)."""
        return self._synced_gen

    def dirty_partitions(self):
        """The partitions written since the last round took them, sorted."""
        return sorted(part.p for part in self._dirty)

    @property
    def syncing_rounds(self):
        """Rounds syncing now (at most COMMIT_ROUNDS)."""
        return len(self._rounds)

    @property
    def checkpointing(self):
        """True while a journal checkpoint runs."""
        return self._checkpoint_task is not None

    @property
    def journal_kept(self):
        """True once a checkpoint failed after its cut: no journal file is retired since."""
        return self._journal_keep

    # ---- rounds ------------------------------------------------------------------------

    async def commit(self):
        """Group commit: make every write so far durable; concurrent callers share rounds.

        A round covers the writes stored before it started. Up to COMMIT_ROUNDS rounds sync
        at once, so a write stored while a round is syncing starts the next round at once
        instead of waiting for the running one to end first (half a sync less of latency,
        and the disk sees the two flushes together); rounds still end in the order they
        started (_commit_once), so a write is reported durable only once every round before
        its own has ended too."""
        target = self._write_gen
        while self._synced_gen < target:
            rounds = self._rounds
            task = next((t for gen, t in rounds if gen >= target), None)
            if task is None:
                if len(rounds) < COMMIT_ROUNDS:
                    task = self._start_round()
                else:
                    task = rounds[0][1]         # the oldest frees a slot first
            await asyncio.shield(task)

    def _start_round(self):
        gen, dirty, self._dirty = self._write_gen, self._dirty, set()
        batch = None
        if self.journal is not None:
            batch = self.journal.take()     # (rounds take in the order they start)
            self._since_checkpoint |= dirty
        prev = self._rounds[-1][1] if self._rounds else None
        task = asyncio.ensure_future(self._commit_once(gen, dirty, prev, batch))
        self._rounds.append((gen, task))
        return task

    async def _commit_once(self, gen, dirty, prev=None, batch=None):
        """One round: make every dirty store durable in a worker thread: by writing the
        journal frames taken at its start (`batch`) and fdatasyncing the journal (sync_method
        "journal"), by one syncfs of the data directory's file system ("syncfs") or by an
        fdatasync per store ("fdatasync"). A failed journal write or fdatasync is the
        journal's for good (`Journal.failed`): this round's partitions and every one written
        after turn read-only, as after a failed syncfs. A store whose sync fails is never synced again as if its writes had
        reached the disk (the store refuses it): its partition turns read-only and leaves
        the round; the others are durable. A failed syncfs names no file: every partition of
        the round turns read-only, and so does every one written since the round began (its
        pages may have been among those the kernel could not write; the error is reported
        once, so the next syncfs would succeed). `prev`: the round started before this one,
        whose end this one's report waits for (and whose failure it shares)."""
        fs = None
        journal = self.journal
        what = "syncfs" if journal is None else "the journal's write or fdatasync"
        try:
            result = ([], None)
            if journal is not None:
                if journal.failed is not None:
                    result = [], journal.failed
                elif batch is not None:
                    try:
                        await self.executor.run(batch.write_sync)
                    except OSError as exc:
                        journal.failed = exc    # (never written again as if it had worked)
                        log.error("node %s: the journal %s: %s: every partition written since "
                                  "turns read-only", self.node, batch.file.path,
                                  _cause(exc))
                        result = [], exc
                    self.commits += 1
                    self.commit_syncs += 1
            elif dirty:
                parts = list(dirty)
                if self._fs is not None:
                    fs = self._fs.pop()
                    result = await self.executor.run(_syncfs_all, fs, parts)
                else:
                    result = await self.executor.run(_sync_all, parts), None
                self.commits += 1
                self.commit_syncs += 1 if fs is not None else len(parts)
            if prev is not None:
                await asyncio.shield(prev)          # (its failure is this round's too)
            failed, fs_error = result
            if fs_error is None and journal is not None and journal.failed is not None:
                # a round before this one failed: its file range is a hole the replay stops
                # at, so nothing after it is durable either, this round's frames included
                fs_error = journal.failed
            for part, exc in failed:
                self.replica.write_error(part, exc)         # read-only, logged, distrusted
            if fs_error is not None:
                for part in dirty | self._dirty:
                    part.fail(fs_error, what)
            self._synced_gen = max(self._synced_gen, gen)
            if (journal is not None and journal.size >= self.journal_checkpoint_bytes
                    and self._checkpoint_task is None and journal.failed is None
                    and not self._closing and not self._journal_keep):
                self._checkpoint_task = asyncio.ensure_future(self._checkpoint())
        except BaseException:
            self._dirty |= dirty
            if batch is not None and journal.failed is None:
                # its frames are taken and their file space claimed: a later round's frames
                # would follow a hole the replay stops at
                journal.failed = OSError(E.EIO, "a journal write was abandoned")
            raise
        finally:
            if fs is not None:
                self._fs.append(fs)
            self._rounds = [r for r in self._rounds if r[1] is not asyncio.current_task()]

    async def _checkpoint(self):
        """Cut the journal: later frames go to a new file; once the rounds writing into the
        old one have ended, every store written since the last cut is synced (in a worker
        thread) and the old file deleted. The files left must stay a contiguous run of the
        newest (a replay applies them in order over the stores): so if anything fails after
        the cut (a store's sync, the delete), no file is deleted any more until the node
        restarts and replays them all."""
        journal = self.journal
        try:
            new = await self.executor.run(journal.new_file)
        except Exception as exc:
            log.error("node %s: a journal checkpoint could not start the next file: %s",
                      self.node, _cause(exc) if isinstance(exc, OSError) else exc)
            await asyncio.sleep(1.0)            # (not again at once, every round)
            self._checkpoint_task = None
            return
        try:
            old = journal.switch(new)
            parts, self._since_checkpoint = self._since_checkpoint, set()
            for _, task in list(self._rounds):
                try:
                    await asyncio.shield(task)
                except Exception:
                    pass
            live = [part for part in parts if self.replica.partitions.get(part.p) is part]
            failed = await self.executor.run(_sync_all, live) if live else []
            for part, exc in failed:
                self.replica.write_error(part, exc)
            if failed or journal.failed is not None or self._journal_keep:
                raise OSError(E.EIO, "a partition's sync failed" if failed else
                              "the journal failed")
            if self._closing:
                return                          # (close syncs every store, then deletes all)
            await self.executor.run(journal.retire, [old])
            self.checkpoints += 1
        except Exception as exc:
            self._journal_keep = True
            log.error("node %s: a journal checkpoint failed (%s): the journal keeps its files "
                      "until a restart replays them", self.node,
                      _cause(exc) if isinstance(exc, OSError) else exc)
        finally:
            self._checkpoint_task = None

    async def after_write(self, parts=None):
        """What a write awaits before it is acknowledged, by the fsync policy. With
        fsync=always: the group commit, then a DiskError if the partition written (`parts`: a
        partition number or several; None: any partition) turned read-only meanwhile, its
        sync having failed: that write is not acknowledged."""
        if self.fsync == "always":
            await self._commit_acked(parts)

    async def durable_write(self, parts=None):
        """What a write asked to be durable (`KV.PUT ... DURABLE k`, docs/storage.md, "A
        durable write") awaits before it is acknowledged, whatever the fsync policy: the
        group commit that covers it, then after_write's DiskError if a partition written
        turned read-only meanwhile. With fsync=never no round runs on its own: such a write
        starts one; writes waiting at once share it, as under fsync=always."""
        self.durable_writes += 1
        await self._commit_acked(parts)

    async def _commit_acked(self, parts):
        failures = self._failures
        await self.commit()
        if self._failures != failures or (self._failures and parts is not None):
            err = self._unacked(parts)
            if err is not None:
                raise err

    def _unacked(self, parts):
        """The DiskError for a write to `parts` (see after_write) if one of them is read-only:
        a write stored before its partition's sync failed is never acknowledged, whenever
        its waiter came."""
        if parts is None:
            bad = [p for p, part in self.replica.partitions.items() if part.read_only is not None]
        else:
            ps = (parts,) if isinstance(parts, int) else parts
            bad = [p for p in ps if self.replica.partitions.get(p) is not None
                   and self.replica.partitions[p].read_only is not None]
        if not bad:
            return None
        part = self.replica.partitions[bad[0]]
        return DiskError(f"node {self.node}: partition {part.p} is read-only: "
                         f"{part.read_only}; the write is not acknowledged")

    def when_durable(self, p, callback):
        """after_write(p) without a coroutine or a task per write: callback(None) once every
        write stored so far is durable, callback(exc) if it cannot be acknowledged (its
        partition's sync failed: DiskError; or the commit raised). Called on the loop, from
        one task that drives the group commit for all such waiters."""
        self._waiters.append((self._write_gen, p, callback))
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self):
        try:
            while self._waiters:
                error = None
                try:
                    await self.commit()         # covers every waiter there is now
                except Exception as exc:
                    error = exc
                synced = self._synced_gen
                waiters = self._waiters
                done = [w for w in waiters if w[0] <= synced or error is not None]
                self._waiters = [w for w in waiters if w[0] > synced and error is None]
                for _, p, callback in done:
                    exc = error
                    if exc is None and self._failures:
                        exc = self._unacked(p)
                    try:
                        callback(exc)
                    except Exception:
                        log.exception("node %s: a durability callback failed", self.node)
        finally:
            self._drain_task = None

    def durable(self, fut, p):
        """A ReplyFuture of `fut`'s result (a direct-lane write's replicas, kvnet/coordinator/
        driver.py put_direct) settled only once this node's own copy in partition p is durable
        too (fsync=always): the first error of either rejects it."""
        out = ReplyFuture(loop=fut.get_loop())
        both = _Both(out)
        fut.on_settled = both.remote
        if fut.done():
            both.remote(fut)
        self.when_durable(p, both.local)
        return out

    def start(self):
        if self.fsync == "interval" and self._interval_task is None:
            self._interval_task = asyncio.get_running_loop().create_task(self._interval_loop())

    async def _interval_loop(self):
        while True:
            await asyncio.sleep(self.sync_interval)
            try:
                await self.commit()
            except Exception:
                log.exception("node %s: an interval commit failed", self.node)

    async def close(self):
        """Stop the interval loop and wait for every round, drain and checkpoint under way
        (the replica then closes its stores, and the journal with them)."""
        self._closing = True                # (no new checkpoint: close syncs every store)
        if self._interval_task is not None:
            self._interval_task.cancel()
            try:
                await self._interval_task
            except asyncio.CancelledError:
                pass
            self._interval_task = None
        for task in [t for _, t in self._rounds] + [self._drain_task, self._checkpoint_task]:
            if task is None:
                continue
            try:                    # (the drain settles its waiters: none is left hanging)
                await asyncio.shield(task)
            except Exception:
                pass
        if self._checkpoint_task is not None:       # (one a last round started meanwhile)
            try:
                await asyncio.shield(self._checkpoint_task)
            except Exception:
                pass

    def shutdown(self):
        """After close() and the stores' own close: the worker threads and syncfs handles."""
        self.executor.shutdown()
        for fs in self._fs or ():
            fs.close()


class _Both:
    """Settles `out` with the remote future's result once it and the local sync are done."""

    __slots__ = ("out", "left", "value")

    def __init__(self, out):
        self.out, self.left, self.value = out, 2, None

    def remote(self, fut):
        if fut.cancelled():
            exc = asyncio.CancelledError()
        else:
            exc = fut.exception()
        if self.out.done():
            return
        if exc is not None:
            reject(self.out, exc)
            return
        self.value = fut.result()
        self._one()

    def local(self, exc):
        if self.out.done():
            return
        if exc is not None:
            reject(self.out, exc)
            return
        self._one()

    def _one(self):
        self.left -= 1
        if self.left == 0:
            resolve(self.out, self.value)


def _sync_method(method, node, fsync="always"):
    """The method a group commit uses. "auto" is the journal with fsync=always (one
    fdatasync of one file per round), else syncfs where the kernel reports its errors (Linux
    5.8 and later), else fdatasync; "syncfs" refuses to start where it cannot be trusted.
    fsync=never syncs nothing: no journal then either."""
    if method not in SYNC_METHODS:
        raise ValueError(f"sync_method: {method!r} must be one of {', '.join(SYNC_METHODS)}")
    if method == "journal" or (method == "auto" and fsync == "always"):
        if fsync != "never":
            return "journal"
        method = "auto"
    if method == "fdatasync":
        return method
    why = SF.unsupported()
    if why is not None:
        if method == "syncfs":
            raise DiskError(f"node {node}: sync_method syncfs cannot be used here: {why}; "
                            "use sync_method fdatasync (or auto)")
        log.info("node %s: group commits fdatasync each partition: %s", node, why)
        return "fdatasync"
    return "syncfs"


def _syncfs_all(fs, parts):
    """Make each partition's writes durable by one syncfs (in a worker thread): ([(partition,
    OSError)] of stores that refused or failed, the syncfs's own OSError or None). Each
    store's extent is taken before the call, so what is recorded synced was written before
    it; a store closed meanwhile (a dropped partition) has nothing left to sync."""
    marks, failed = [], []
    for part in parts:
        try:
            marks.append((part, part.store.sync_begin()))
        except StoreClosed:
            pass
        except OSError as exc:
            failed.append((part, exc))
    if not marks:
        return failed, None
    try:
        fs.sync()
    except OSError as exc:
        return failed, exc
    for part, mark in marks:
        try:
            part.store.sync_end(mark)
        except StoreClosed:
            pass
        except OSError as exc:
            failed.append((part, exc))
    return failed, None


def _sync_all(parts):
    """Sync each partition's store (in a worker thread): [(partition, OSError)] of those that
    failed. A partition dropped meanwhile (its store closed) has nothing left to sync."""
    failed = []
    for part in parts:
        try:
            part.store.sync()
        except StoreClosed:
            pass
        except OSError as exc:
            failed.append((part, exc))
    return failed
