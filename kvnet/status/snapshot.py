"""The status page's data: a JSON snapshot of one node, rebuilt by the node's loop once a
second and served as bytes by the metrics port's thread (docs/observability.md, "The status
page").

The HTTP thread never reads the node's parts: `StatusSampler.sample()` runs on the loop (the
node spawns `run()`), reads the membership, ring, transfers and request counters there, and
swaps in a new `body` (one attribute store: the thread sees the old bytes or the new). A stuck
loop leaves the snapshot as it was, its `time` telling how old it is.

Throughput and latency come from the front door's request counters (kvnet/reqstats.pyx): each
sample takes every slot's histogram, merged, and keeps the difference from the last sample: the
commands answered in that second and the p50/p99 of their latencies (bucket bounds, as INFO's
latencystats), in a ring buffer of the last `history` seconds.
"""
import asyncio
import collections
import json
import logging
import math
import time

from kvnet.membership.detector import DOWN, UNKNOWN
from kvnet.metrics import percentile_us

__all__ = ["StatusSampler", "INTERVAL_S", "HISTORY_S"]

log = logging.getLogger("kvnet.status")

INTERVAL_S = 1.0        # one snapshot (and one throughput bucket) per second
HISTORY_S = 300         # seconds of throughput and latency kept (five minutes)


class StatusSampler:
    """One node's status snapshot (see the module docstring). `body` is the JSON in bytes."""

    def __init__(self, node, interval=INTERVAL_S, history=HISTORY_S, clock=time.monotonic,
                 wall=time.time):
        self.node = node
        self.interval = interval
        self.clock, self.wall = clock, wall
        # one row per sample: (unix time, requests per second, p50 us, p99 us)
        self.series = collections.deque(maxlen=max(1, int(history)))
        self._last = None            # (clock, merged cumulative buckets) of the last sample
        self._ring = (None, None)    # (ring, its part's JSON): rebuilt when the ring changes
        self.body = b"{}"
        self.sample()

    async def run(self):
        """Sample every `interval` seconds until cancelled (the node spawns it)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sample()
            except Exception:        # a part closing under us: the next second tries again
                log.debug("status snapshot failed", exc_info=True)

    # ---- one sample ----------------------------------------------------------------------

    def sample(self):
        """Read the node now (on its loop), add a throughput bucket, rebuild `body`. The ring's
        part is encoded once per ring (Q preference lists: most of the JSON) and spliced in."""
        self._requests()
        ring = self.node.ring
        rest = json.dumps(self.snapshot(ring), separators=(",", ":"))
        self.body = (rest[:-1] + ',"ring":' + self._ring_json(ring) + "}").encode()

    def snapshot(self, ring):
        """Everything but the ring's part, as a dict."""
        node = self.node
        return {"node": node.name, "time": round(self.wall(), 3), "interval_s": self.interval,
                "ring_epoch": None if ring is None else ring.epoch,
                "members": self._members(ring),
                "transfers": self._transfers(),
                "throughput": self._series()}

    def _requests(self):
        resp = self.node.resp
        if resp is None:
            return
        merged = None
        for _command, _quorum, buckets, _sum in resp.commands.reqstats.snapshot():
            merged = buckets if merged is None else [a + b for a, b in zip(merged, buckets)]
        now = self.clock()
        last, self._last = self._last, (now, merged)
        if last is None:
            return
        then, before = last
        if merged is None:
            delta = None
        elif before is None:
            delta = merged
        else:
            delta = [max(0, a - b) for a, b in zip(merged, before)]
        n = sum(delta) if delta else 0
        elapsed = max(now - then, 1e-3)
        self.series.append((round(self.wall(), 3), round(n / elapsed, 1),
                            percentile_us(delta, 50) if n else None,
                            percentile_us(delta, 99) if n else None))

    def _series(self):
        rows = list(self.series)
        return {"t": [r[0] for r in rows], "rps": [r[1] for r in rows],
                "p50_us": [r[2] for r in rows], "p99_us": [r[3] for r in rows]}

    def _members(self, ring):
        """Every member of the ring and every peer gossip knows, with its liveness here."""
        node = self.node
        gossip = node.gossip
        view = gossip.view()
        owned = collections.Counter(ring.owners) if ring is not None else {}
        zones = dict(ring.members) if ring is not None else {}
        names = set(ring.nodes if ring is not None else ()) | set(view) | {node.name}
        out = []
        for name in sorted(names):
            entry = gossip.table.get(name)
            zone = entry.zone if entry is not None and entry.zone is not None else zones.get(name)
            if name == node.name:
                zone = node.cfg.zone if node.cfg.zone is not None else zone
                row = {"state": "up", "phi": 0.0, "heartbeat_age_s": 0.0, "suspected_by": []}
            else:
                v = view.get(name, {})
                phi = v.get("phi")
                row = {"state": _liveness(v),
                       "phi": phi if phi is None or math.isfinite(phi) else None,
                       "heartbeat_age_s": v.get("heartbeat_age_s"),
                       "suspected_by": v.get("suspected_by", [])}
            out.append({"name": name, "self": name == node.name, **row,
                        "routable": node.is_up(name), "zone": zone,
                        "status": entry.status if entry is not None else None,
                        "in_ring": ring is not None and name in zones,
                        "partitions": owned.get(name, 0)})
        return out

    def _ring_json(self, ring):
        """The ring's part in JSON (null while joining), kept until the ring changes."""
        kept, text = self._ring
        if kept is ring and text is not None:
            return text
        if ring is None:
            text = "null"
        else:
            nodes = list(ring.nodes)
            index = {n: i for i, n in enumerate(nodes)}
            text = json.dumps({
                "epoch": ring.epoch, "q": ring.q, "n": ring.n, "nodes": nodes,
                "owners": [index[o] for o in ring.owners],
                "preflists": [[index[x] for x in ring.preference_list(p)]
                              for p in range(ring.q)]}, separators=(",", ":"))
        self._ring = (ring, text)
        return text

    def _transfers(self):
        """The moving ring's transfers as this node knows them (the claimant drives them and
        knows their progress; others list them as waiting), the streams this node sends, and
        the hints it holds per target."""
        node = self.node
        state = node.ring_state
        changes = node.changes
        rows = []
        moving = bool(state is not None and state.moving)
        if moving:
            from kvnet.membership import ringstate as RS

            for x in RS.transfers(state.current, state.next):
                pr = changes.progress.get((state.epoch, x.partition, x.to), {})
                rows.append({"partition": x.partition, "to": x.to,
                             "state": pr.get("state", "waiting"), "source": pr.get("source"),
                             "keys": pr.get("keys", 0), "bytes": pr.get("bytes", 0)})
        sending = [{"partition": p, "to": to, "keys": e["keys"], "bytes": e["bytes"]}
                   for (p, to), e in sorted(changes.sending.items())]
        hints = {t: n for t, n in sorted(node.handoff.pending().items()) if n}
        return {"moving": moving, "epoch": None if state is None else state.epoch,
                "pending": rows, "sending": sending, "hints_pending": hints,
                "hints_total": sum(hints.values())}


def _liveness(v):
    """up, suspect (a detector suspects it, not yet confirmed by a second source), down, or
    unknown (never heard from), from a row of Gossip.view()."""
    state = v.get("state", UNKNOWN)
    if state == DOWN:
        return "down"
    if state == UNKNOWN:
        return "unknown"
    return "suspect" if v.get("suspected_by") else "up"
