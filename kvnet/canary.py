"""The canary writer: how long after a write does every replica hold it?

With `canary_interval_ms` > 0, a node writes its canary key (`ringkv:canary:<node>`) once an
interval, with W cycling through 1..N, then asks each of the key's N primaries for it directly
until every one holds a version at least as new, and records the time from the write's
acknowledgement to then in a histogram per W: PBS's t-visibility (Bailis et al., VLDB 2012),
measured instead of predicted (docs/observability.md, "Convergence").
"""
import asyncio
import bisect
import collections
import logging
import math
import time

from kvcore import versions as V
from kvnet.coordinator import driver
from kvnet.periodic import Periodic

__all__ = ["Canary", "Convergence", "BUCKETS", "canary_key"]

log = logging.getLogger("kvnet.canary")

# histogram upper bounds, seconds (then +Inf)
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
RECENT = 1024           # samples kept per W for kvctl stats' percentiles
POLL_FIRST_S = 0.001    # first pause between two reads of a replica that lacks the write
POLL_MAX_S = 0.05       # doubling up to this
GIVE_UP_S = 10.0        # a round not converged by then counts as unconverged


def canary_key(node):
    return f"ringkv:canary:{node}".encode()


class Convergence:
    """One W's samples: histogram buckets (BUCKETS, then +Inf), their sum and count, the last
    RECENT samples, and the rounds that did not converge in time."""

    def __init__(self):
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0
        self.recent = collections.deque(maxlen=RECENT)
        self.unconverged = 0

    def add(self, seconds):
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1
        self.recent.append(seconds)

    def percentile(self, q):
        """The q-th percentile (0-100) of the recent samples, seconds; None without any."""
        xs = sorted(self.recent)
        if not xs:
            return None
        return xs[max(1, math.ceil(q * len(xs) / 100)) - 1]        # nearest rank

    def data(self):
        return {"samples": self.count, "unconverged": self.unconverged,
                "mean_ms": None if not self.count else round(1000 * self.sum / self.count, 3),
                **{f"p{q}_ms": None if self.percentile(q) is None
                   else round(1000 * self.percentile(q), 3) for q in (50, 99)},
                "max_ms": None if not self.recent else round(1000 * max(self.recent), 3)}


class Canary(Periodic):
    """A node's canary writer (a service of kvnet/node.py: start, stop, handlers): one
    round every `canary_interval_ms`."""

    def __init__(self, node):
        self.node = node
        self.period = node.cfg.canary_interval_ms / 1000.0
        self.key = canary_key(node.name)
        self.by_w = {}                  # W -> Convergence
        self.stats = {"rounds": 0, "failures": 0}
        self._next = 0

    def tick(self):
        return self.round()

    def failed(self, exc):              # a write refused, no quorum: next round
        self.stats["failures"] += 1
        log.debug("canary write of %s failed: %s", self.node.name, exc)

    def convergence(self, w):
        c = self.by_w.get(w)
        if c is None:
            c = self.by_w[w] = Convergence()
        return c

    async def round(self, w=None):
        """One canary write (W=w, else the next of 1..N) and the wait for every primary; the
        seconds it took, or None (not in a ring, or not converged by GIVE_UP_S)."""
        node = self.node
        ring = node.ring
        if ring is None or node.name not in ring.nodes:
            return None
        n = min(ring.n, len(ring.nodes))
        if w is None:
            w = self._next % n + 1
            self._next += 1
        p = ring.partition_of(self.key)
        raw = await driver.put_raw(node, p, self.key, V.sibling(b"%d" % time.time_ns()), None,
                                   True, w)
        acked = time.monotonic()
        written = V.decode(raw)
        self.stats["rounds"] += 1
        replicas = list(ring.preference_list(p))
        times = await asyncio.gather(*(self._until_held(x, p, written, acked)
                                       for x in replicas))
        conv = self.convergence(w)
        if any(t is None for t in times):
            conv.unconverged += 1
            return None
        took = max(times)
        conv.add(took)
        return took

    async def _until_held(self, replica, p, written, acked):
        """Seconds from `acked` until `replica` answered a clock equal to or newer than
        `written` (the answer's arrival: within one read's round trip of the truth), or
        None at GIVE_UP_S."""
        node = self.node
        pause = POLL_FIRST_S
        while True:
            try:
                if replica == node.name:
                    raw = node.replica.read_raw(p, self.key)
                else:
                    raw = await node.call(replica, "get", {"p": p, "k": self.key}, node.timeout)
                if raw is not None:
                    clock = V.decode(raw)
                    if V.equal(clock, written) or V.less(written, clock):
                        return time.monotonic() - acked
            except Exception as exc:          # down, or not a replica by its ring: try again
                log.debug("canary read on %s failed: %s", replica, exc)
            if time.monotonic() - acked >= GIVE_UP_S:
                return None
            await asyncio.sleep(pause)
            pause = min(2 * pause, POLL_MAX_S)
