"""Compaction in a running node: Bitcask's merge policy per partition, merges in worker
threads (docs/storage.md, "Merge policy").

A partition is merged once its dead bytes (overwritten or deleted records) are at least
`merge_dead_fraction` of its data and at least `merge_min_dead_bytes`; the merge seals the
active segment first, so a small hot key set cannot pin a full segment. At most
`merge_concurrency` merges run at once; each copies at most `merge_max_mb_s`. The event
loop only does a merge's memory work: rolling the active segment out (a new file, no sync),
planning (one pass over the keydir) and swapping the result in (segment table and keydir);
every system call that waits for the disk runs in the executor: sealing the rolled-out
segment, the copy, renaming and mapping the outputs, deleting the inputs. Writes and reads
go on meanwhile: a key written during a merge keeps its newer record.
"""
import asyncio
import logging
import time

from kvcore.errors import MergeError, StoreClosed, StoreReadOnly
from kvnet.executor import ThreadExecutor
from kvnet.periodic import Periodic

log = logging.getLogger("kvnet.compaction")

CHECK_INTERVAL = 1.0         # seconds between two looks at every partition's sizes


def due(data_bytes, live_bytes, dead_fraction, min_dead_bytes):
    """Whether a partition of these sizes is worth merging by the policy."""
    dead = data_bytes - live_bytes
    return dead > 0 and dead >= min_dead_bytes and dead >= dead_fraction * data_bytes


class Compactor(Periodic):
    """`node.add_service(Compactor(node))`: merges the node's partitions by the policy, and
    on demand (`compact`, for `kvctl compact`). `stats` counts merges and bytes reclaimed."""

    def __init__(self, node, executor=None, check_interval=CHECK_INTERVAL):
        self.node = node
        cfg = node.cfg
        self.dead_fraction = cfg.merge_dead_fraction
        self.min_dead_bytes = cfg.merge_min_dead_bytes
        self.concurrency = cfg.merge_concurrency
        self.max_bytes_per_s = cfg.merge_max_mb_s * 1_000_000
        self.executor = executor or ThreadExecutor(max(1, self.concurrency), "ringkv-merge")
        self.period = check_interval
        self.stats = {"merges": 0, "merge_failures": 0, "bytes_reclaimed": 0,
                      "merge_seconds": 0.0, "hint_compactions": 0}
        self._running = {}           # partition -> its merge task
        self._jobs = {}              # partition -> its MergeJob while the copy runs

    def runs(self):
        return self.concurrency > 0

    async def stop(self):
        await super().stop()
        for p in list(self._running):
            await self.release(p)
        self.executor.shutdown()

    async def release(self, p):
        """Cancel and wait for partition p's merge, if one runs (before p is closed)."""
        t = self._running.get(p)
        if t is None:
            return
        job = self._jobs.get(p)
        if job is not None:
            job.cancel()
        await asyncio.gather(t, return_exceptions=True)

    def tick(self):
        self.check()

    def failed(self, exc):                                  # never let the loop die
        log.warning("node %s: merge policy check failed: %r", self.node.name, exc)

    def check(self):
        """Start merges of the partitions due, fullest dead bytes first, up to concurrency."""
        free = self.concurrency - len(self._running)
        if free <= 0:
            return
        candidates = []
        for p, part in list(self.node.replica.partitions.items()):
            if p in self._running or part.read_only is not None:
                continue                    # (a read-only partition writes no merge output)
            try:
                data, live = part.store.sizes()
            except StoreClosed:
                continue
            if due(data, live, self.dead_fraction, self.min_dead_bytes):
                candidates.append((data - live, p))
        for _, p in sorted(candidates, reverse=True)[:free]:
            self._start(p)
        hints = getattr(self.node, "hints", None)
        if hints is not None and not self._running:
            self._compact_hints(hints)

    def _start(self, p):
        t = asyncio.ensure_future(self.merge(p))
        self._running[p] = t
        t.add_done_callback(lambda _t, p=p: self._merged(p))
        return t

    def _merged(self, p):
        """A policy merge ended: start the next partition due at once (many small partitions
        due together would otherwise get one merge per check interval)."""
        self._running.pop(p, None)
        if self._task is not None and not self._task.done():
            try:
                self.check()
            except Exception as exc:
                self.failed(exc)

    async def merge(self, p):
        """Merge partition p now (whatever the policy says); bytes reclaimed, or None if it
        was closed, dropped or already merging."""
        part = self.node.replica.opened(p)
        if part is None:
            return None
        store = part.store
        t0 = time.perf_counter()
        if part.read_only is not None:
            return None
        try:
            before, _ = store.sizes()
            store.roll()                            # (with seal_later: a new file, no sync)
            await self.executor.run(store.seal_pending)
            job = store.begin_merge(roll=False)
        except (MergeError, StoreClosed, StoreReadOnly):
            return None
        except OSError as exc:          # rolling or sealing failed: nothing changed
            self.stats["merge_failures"] += 1
            log.warning("node %s: merge of partition %d not begun: %r", self.node.name, p, exc)
            return None
        self._jobs[p] = job
        try:
            await self.executor.run(job.run, self.max_bytes_per_s)
            await self.executor.run(job.install)
        except BaseException as exc:
            # finish_merge refuses a job that did not run to its end: it discards the outputs
            # and lets the next merge begin
            try:
                store.finish_merge(job)
            except Exception:
                pass
            if isinstance(exc, (MergeError, StoreClosed)):
                return None              # cancelled, or closed under it: nothing changed
            if not isinstance(exc, Exception):
                raise
            self.stats["merge_failures"] += 1
            log.warning("node %s: merge of partition %d failed: %r", self.node.name, p, exc)
            return None
        finally:
            self._jobs.pop(p, None)
        try:
            store.finish_merge(job, cleanup=False)
        except (MergeError, StoreClosed):
            return None                  # closed or dropped meanwhile: nothing changed
        try:
            await self.executor.run(job.cleanup)
        except OSError as exc:           # (inputs left on disk: the next open reads them too)
            log.warning("node %s: deleting partition %d's merged segments: %r",
                        self.node.name, p, exc)
        after, _ = store.sizes()
        reclaimed = max(0, before - after)
        self.stats["merges"] += 1
        self.stats["bytes_reclaimed"] += reclaimed
        self.stats["merge_seconds"] += time.perf_counter() - t0
        log.debug("node %s: merged partition %d: %d bytes reclaimed", self.node.name, p, reclaimed)
        return reclaimed

    async def compact(self, partitions=None):
        """Merge these partitions (default: every one held) one after another now, waiting
        for a policy merge already running on one; {"partitions", "bytes_reclaimed"}."""
        held = self.node.replica.partitions
        todo = sorted(held) if partitions is None else [p for p in partitions if p in held]
        total = 0
        for p in todo:
            running = self._running.get(p)
            if running is not None:
                await asyncio.gather(running, return_exceptions=True)
            t = self._running[p] = asyncio.ensure_future(self.merge(p))
            try:
                total += await t or 0
            finally:
                self._running.pop(p, None)
        hints = getattr(self.node, "hints", None)
        if hints is not None:
            self._compact_hints(hints, force=True)
        return {"partitions": len(todo), "bytes_reclaimed": total}

    def _compact_hints(self, hints, force=False):
        """Hint logs by the same policy (acknowledged hints are deleted records)."""
        try:
            self.stats["hint_compactions"] += hints.compact(
                None if force else lambda data, live: due(data, live, self.dead_fraction,
                                                          self.min_dead_bytes))
        except Exception as exc:
            log.warning("node %s: hint log compaction failed: %r", self.node.name, exc)
