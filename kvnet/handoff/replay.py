"""Hint replay: the manager, sender and receiver of hinted handoff (riak_kv's handoff of
fallback vnodes, Cassandra's `HintsDispatcher`).

A fallback keeps writes for a down primary in the node's HintLog (hintlog.py). This service
offers them back: every `hint_replay_interval_ms`, and at once when gossip sees a target come
up, it sends each up target its hints in batches (`hreplay`), at most `hint_replay_rate` hints
a second across targets. The target `sync`s each clock into its replica (never refusing one)
and answers which it stored; only those are deleted here, and only if the hint was not merged
with a newer write meanwhile (compare-and-delete). Rules: docs/algorithms.md, section 2;
docs/handoff.md.
"""
import asyncio
import logging

from kvcore import versions as V
from kvnet import payload as P
from kvnet.errors import CommandError

log = logging.getLogger("kvnet.handoff")

__all__ = ["HintReplay"]

BATCH_ITEMS = 200
BATCH_BYTES = 1 << 20


class HintReplay:
    """One node's hint replay service (see the module docstring)."""

    def __init__(self, node):
        self.node = node
        self.interval = node.cfg.hint_replay_interval_ms / 1000.0
        self.rate = node.cfg.hint_replay_rate
        self.stats = {"replayed": 0, "received": 0, "batches": 0, "failures": 0, "rehomed": 0}
        self._wake = None
        self._task = None

    def handlers(self):
        return {"hreplay": self._on_replay}

    async def start(self):
        self._wake = asyncio.Event()
        gossip = getattr(self.node, "gossip", None)
        if gossip is not None:
            gossip.listeners.append(self._on_transition)
        self._task = asyncio.ensure_future(self._run())

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _on_transition(self, t):
        if t.up and self._wake is not None:
            self._wake.set()

    def pending(self):
        hints = self.node.hints
        return {t: hints.pending(t) for t in hints.targets()} if hints is not None else {}

    # ---- sender --------------------------------------------------------------------------

    async def _run(self):
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.replay_all()
            except Exception:
                log.exception("hint replay failed")

    async def replay_all(self):
        """One pass: every up target with hints, within the rate budget of one interval."""
        node = self.node
        budget = max(1, int(self.rate * self.interval))
        for target in node.hints.targets():
            if budget <= 0:
                break
            if target == node.name or target not in node.ring_state.members() \
                    or not node.is_up(target):
                continue
            budget -= await self.replay(target, budget)

    async def replay(self, target, budget):
        """Send target's hints until none is left or `budget` were sent; returns how many."""
        node, sent = self.node, 0
        loop = asyncio.get_running_loop()
        while sent < budget:
            items = node.hints.batch(target, max_items=min(BATCH_ITEMS, budget - sent),
                                     max_bytes=BATCH_BYTES)
            if not items:
                break
            items = await self._rehome(target, items)
            if not items:
                continue
            started = loop.time()
            try:
                stored = await node.call(target, "hreplay",
                                         {"items": [list(i) for i in items]}, node.timeout)
                if not isinstance(stored, list) or len(stored) != len(items):
                    raise CommandError("hreplay reply must be one flag per hint")
            except Exception as exc:
                self.stats["failures"] += 1
                node.hints.rewind(target)
                log.info("hint replay to %s failed: %s", target, exc)
                break
            self.stats["batches"] += 1
            for (p, k, raw), ok in zip(items, stored):
                if ok is True and node.hints.ack(target, p, k, raw):
                    self.stats["replayed"] += 1
            sent += len(items)
            # Pace to the rate: a batch of b hints takes at least b / rate seconds.
            spare = len(items) / self.rate - (loop.time() - started)
            if spare > 0:
                await asyncio.sleep(spare)
        return sent

    async def _rehome(self, target, items):
        """Hints for partitions the target no longer replicates (the ring changed since they
        were written) go to a current replica: this node's own (the hint is deleted once that
        write is durable), or the partition's first other replica's hints. Returns the items
        still for target."""
        node = self.node
        keep, moved, merged = [], [], False
        for p, k, raw in items:
            if node.ring_state.holds(target, p):        # now or in the ring being moved to
                keep.append((p, k, raw))
                continue
            prefs = node.ring.preference_list(p)
            if node.name in prefs:
                node.replica.merge(p, k, V.decode(raw))
                merged = True
            else:
                node.hints.add(next(x for x in prefs if x != node.name), p, k, raw)
            moved.append((p, k, raw))
        if merged:
            await node.replica.after_write()
        for p, k, raw in moved:
            node.hints.ack(target, p, k, raw)
            self.stats["rehomed"] += 1
        return keep

    # ---- receiver ------------------------------------------------------------------------

    async def _on_replay(self, m):
        """Sync each hinted clock into the replica; -> one flag per hint: stored here."""
        node = self.node
        items = m.get("items") if isinstance(m, dict) else None
        if not isinstance(items, list) or len(items) > 10 * BATCH_ITEMS:
            raise CommandError("hreplay needs {'items': [[partition, key, clock], ...]}")
        out, parts = [], set()
        for item in items:
            ok = False
            if isinstance(item, list) and len(item) == 3:
                p, k, raw = item
                try:
                    P.key(node, k, P.partition(P.ring_of(node), p))
                    if node.holds(p):
                        node.replica.merge(p, k, V.decode(raw))
                        node.forward_to_new(p, k, raw)
                        ok = True
                        parts.add(p)
                except (CommandError, V.InvalidClock, TypeError, ValueError) as exc:
                    log.info("hint replay: refused one hint: %s", exc)
            out.append(ok)
        if any(out):
            await node.replica.after_write(parts)
            self.stats["received"] += sum(out)
        return out
