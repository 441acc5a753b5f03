"""Failure detection as pure math: phi-accrual arrival windows and the two-source liveness rule.

No clocks and no I/O: every call takes `now` (seconds, from a monotonic clock in the driver) and
the (generation, heartbeat) the arrival carried, so tests run on synthetic timestamps (Cassandra
`FailureDetector` / `ArrivalWindow`). Rules: docs/algorithms.md, section 5; math:
docs/membership.md.

Phi, exponential model: with m the mean of the last `window` inter-arrival times,
    phi(t) = (t - t_last) / m * log10(e)
i.e. -log10 of the probability that an exponential arrival process with mean m stays silent
that long. A peer is suspected at phi >= threshold, after threshold * ln(10) * m of silence
(threshold 8: 18.4 mean intervals).

Liveness is local, never gossiped: `Liveness` marks a peer DOWN only when this node's detector
suspects it AND a second source agrees (another member's fresh report that it suspects the peer,
or a failed indirect probe through another member), and UP again as soon as a newer
(generation, heartbeat) of it arrives, by whatever route.
"""
import heapq
import math
from collections import deque
from typing import NamedTuple

__all__ = [
    "LOG10_E", "phi_of", "detection_time", "ArrivalWindow", "PhiDetector", "Liveness",
    "Transition", "PeerView", "UP", "DOWN", "UNKNOWN",
]

LOG10_E = math.log10(math.e)        # 0.4343
UP, DOWN, UNKNOWN = "up", "down", "unknown"


def phi_of(silence, mean):
    """Phi after `silence` seconds without news from a peer whose mean interval is `mean`."""
    return max(0.0, silence) / mean * LOG10_E


def detection_time(threshold, mean):
    """The silence after which phi reaches threshold: threshold * ln(10) * mean."""
    return threshold / LOG10_E * mean


class ArrivalWindow:
    """The last `size` inter-arrival times of one peer, with the last arrival and its version."""

    __slots__ = ("intervals", "total", "last", "version", "queued")

    def __init__(self, size, initial_interval, now, version):
        self.intervals = deque((initial_interval,), maxlen=size)
        self.total = initial_interval
        self.last = now
        self.version = version
        self.queued = None      # the earliest time this window waits at in the detector's heap

    def add(self, interval):
        iv = self.intervals
        if len(iv) == iv.maxlen:
            self.total -= iv[0]
        iv.append(interval)
        self.total += interval

    def mean(self):
        return self.total / len(self.intervals)

    def resum(self):
        """Recompute the running total (float drift over very long runs)."""
        self.total = math.fsum(self.intervals)


class PhiDetector:
    """Phi-accrual failure detector over per-peer arrival windows.

    interval          the configured gossip interval (s); the bootstrap sample defaults to twice it
                      (Cassandra's initial value), so a peer heard once is suspected only after
                      about 2 * 18.4 intervals at threshold 8 until real samples replace it
    window            how many inter-arrival times to keep per peer (~100)
    threshold         phi at which a peer is suspected
    initial_interval  the bootstrap sample put in a new window (default 2 * interval)
    max_interval      intervals longer than this are not recorded (a silence is not a sample);
                      default: those at whose end the peer was already suspected
    """

    def __init__(self, interval=1.0, window=100, threshold=8.0, initial_interval=None,
                 max_interval=None):
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        if type(window) is not int or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold!r}")
        self.interval = float(interval)
        self.window = window
        self.threshold = float(threshold)
        if initial_interval is None:
            initial_interval = 2.0 * interval
        self.initial_interval = float(initial_interval)
        if not self.initial_interval > 0:
            raise ValueError(f"initial_interval must be > 0, got {initial_interval!r}")
        self.max_interval = max_interval
        self._w = {}
        self._arrivals = 0
        # Suspicion kept up to date incrementally rather than by computing every peer's phi at
        # every call: a heap of (time at which a peer's phi would reach the threshold, peer),
        # one live entry per window at most (`ArrivalWindow.queued`), and the peers whose time
        # has come and who sent no news since. A peer's phi only grows between its arrivals,
        # so a window whose time has not come is not suspected.
        self._due = []
        self._suspected = set()
        self._polled = None     # the latest `now` the heap was polled at

    def heartbeat(self, peer, now, version):
        """Record news of peer at `now` if `version` = (generation, heartbeat) is newer than the
        last seen; return whether it was. A new generation (a restart) starts a fresh window: the
        gap across a restart is not an inter-arrival time."""
        version = tuple(version)
        w = self._w.get(peer)
        if w is None or version[0] > w.version[0]:
            self._w[peer] = w = ArrivalWindow(self.window, self.initial_interval, now, version)
            self._suspected.discard(peer)
            self._queue(peer, w)
            return True
        if version <= w.version:
            return False
        # (ArrivalWindow.add and mean, detection_time and _queue written out: this runs for
        # every member's every newer heartbeat, hundreds of times a round at 100 members)
        iv = w.intervals
        mean = w.total / len(iv)
        gap = now - w.last
        limit = self.max_interval
        if limit is None:
            limit = self.threshold / LOG10_E * mean
        if 0 < gap < limit:
            if len(iv) == iv.maxlen:
                w.total -= iv[0]
            iv.append(gap)
            w.total += gap
            mean = w.total / len(iv)
            self._arrivals += 1
            if self._arrivals % (1 << 16) == 0:
                w.resum()
                mean = w.total / len(iv)
        if now > w.last:
            w.last = now
        w.version = version
        self._suspected.discard(peer)
        due = w.last + self.threshold / LOG10_E * mean
        if w.queued is None or due < w.queued:
            w.queued = due
            heapq.heappush(self._due, (due, peer))
        return True

    def _when(self, w):
        """When w's phi reaches the threshold (rounding aside: `_poll` checks phi itself)."""
        return w.last + detection_time(self.threshold, w.mean())

    def _queue(self, peer, w):
        """Keep w in the heap at its time, unless an earlier entry of it is there already."""
        due = self._when(w)
        if w.queued is None or due < w.queued:
            w.queued = due
            heapq.heappush(self._due, (due, peer))

    def _poll(self, now):
        """Move the windows whose time has come by `now` to the suspected set; O(log n) per
        window that comes due, none for the others."""
        self._polled = now
        due, suspected = self._due, self._suspected
        while due and due[0][0] <= now:
            at, peer = heapq.heappop(due)
            w = self._w.get(peer)
            if w is None or w.queued != at:          # forgotten, or an entry replaced since
                continue
            w.queued = None
            if phi_of(now - w.last, w.mean()) >= self.threshold:
                suspected.add(peer)
            else:                                     # not yet (news came, or rounding)
                again = self._when(w)
                w.queued = again if again > now else math.nextafter(now, math.inf)
                heapq.heappush(due, (w.queued, peer))

    def phi(self, peer, now):
        """Phi of peer at now; 0.0 for a peer never heard of (unknown is not suspected here)."""
        w = self._w.get(peer)
        if w is None:
            return 0.0
        return phi_of(now - w.last, w.mean())

    def suspects(self, now, threshold=None):
        """Sorted peers whose phi at now is >= threshold (default: the configured one)."""
        if threshold is None and (self._polled is None or now >= self._polled):
            self._poll(now)
            return sorted(self._suspected)
        # another threshold, or a time earlier than one asked before: every window's phi
        t = self.threshold if threshold is None else threshold
        return sorted(p for p, w in self._w.items() if phi_of(now - w.last, w.mean()) >= t)

    def suspected(self, peer, now):
        return peer in self._w and self.phi(peer, now) >= self.threshold

    def forget(self, peer):
        """Drop a peer's window (a removed member)."""
        self._w.pop(peer, None)
        self._suspected.discard(peer)

    def peers(self):
        return sorted(self._w)

    def version(self, peer):
        """The newest (generation, heartbeat) seen of peer, or None."""
        w = self._w.get(peer)
        return None if w is None else w.version

    def last_arrival(self, peer):
        w = self._w.get(peer)
        return None if w is None else w.last

    def mean(self, peer):
        w = self._w.get(peer)
        return None if w is None else w.mean()


class Transition(NamedTuple):
    peer: str
    up: bool            # True: DOWN -> UP (a newer heartbeat); False: UP -> DOWN (two sources)


class PeerView(NamedTuple):
    """One row of `kvctl status`'s liveness columns."""

    node: str
    state: str                  # UP, DOWN or UNKNOWN (never heard of)
    phi: float
    age: float | None           # seconds since the last newer heartbeat arrived
    suspected_by: tuple         # node ids whose detector suspects it (this node's included)
    failed_probes_via: tuple    # members through which an indirect probe failed


class Liveness:
    """This node's local up/down view of its peers: the two-source rule over a PhiDetector.

    Inputs, all with `now`: `heartbeat` (newer versions of a peer, from any route),
    `report(reporter, suspects, now)` (a member's current suspect list, carried by gossip, each
    replacing that member's previous one), `probe(peer, via, ok, now)` (an indirect probe of
    peer through member `via`). `update(now)` marks DOWN every peer this node's detector suspects
    that also has a second source: a fresh report from a member other than this node and the
    peer (and not itself DOWN here), or a failed probe through such a member since the peer's last
    heartbeat. Reports and failed probes older than `ttl` seconds (default 10 gossip intervals)
    no longer count. A DOWN peer is UP again at the first newer (generation, heartbeat).
    """

    def __init__(self, me, detector, ttl=None):
        self.me = me
        self.detector = detector
        self.ttl = float(ttl if ttl is not None else 10 * detector.interval)
        self._down = set()
        self._reports = {}          # reporter -> (frozenset of suspects, time)
        self._probes = {}           # peer -> {via: time of the failure}

    # ---- inputs -----------------------------------------------------------------------------

    def heartbeat(self, peer, now, generation, heartbeat):
        """News of peer; -> [Transition(peer, up=True)] if it brings a DOWN peer back, else []."""
        news, back = self.arrival(peer, now, generation, heartbeat)
        return [Transition(peer, True)] if back else []

    def arrival(self, peer, now, generation, heartbeat):
        """heartbeat's work, told as (whether it was news, whether it brought a DOWN peer
        back): gossip's per-entry path, without building lists."""
        if peer == self.me or not self.detector.heartbeat(peer, now, (generation, heartbeat)):
            return False, False
        if self._probes:
            self._probes.pop(peer, None)
        if peer in self._down:
            self._down.discard(peer)
            return True, True
        return True, False

    def report(self, reporter, suspects, now):
        """reporter's current suspect list (replaces its previous one)."""
        if reporter == self.me:
            return
        self._reports[reporter] = (frozenset(suspects), now)

    def probe(self, peer, via, ok, now):
        """The result of an indirect probe of peer through via."""
        if via in (self.me, peer):
            return
        fails = self._probes.setdefault(peer, {})
        if ok:
            fails.pop(via, None)
        else:
            fails[via] = now

    def forget(self, peer):
        """Drop everything about a removed member."""
        self.detector.forget(peer)
        self._down.discard(peer)
        self._reports.pop(peer, None)
        self._probes.pop(peer, None)

    # ---- the rule ---------------------------------------------------------------------------

    def _fresh(self, t, now):
        return now - t <= self.ttl

    def reporters(self, peer, now):
        """Members other than me and peer, not DOWN here, with a fresh report suspecting peer."""
        return tuple(sorted(
            r for r, (s, t) in self._reports.items()
            if peer in s and r != peer and r not in self._down and self._fresh(t, now)))

    def failed_probes(self, peer, now):
        return tuple(sorted(v for v, t in self._probes.get(peer, {}).items()
                            if v not in self._down and self._fresh(t, now)))

    def second_sources(self, peer, now):
        """[("report", member) | ("probe", member)] agreeing that peer is failing."""
        return ([("report", r) for r in self.reporters(peer, now)]
                + [("probe", v) for v in self.failed_probes(peer, now)])

    def update(self, now):
        """Apply the two-source rule; -> [Transition(peer, up=False)] for peers newly DOWN."""
        out = []
        for peer in self.detector.suspects(now):
            if peer in self._down or peer == self.me:
                continue
            if self.second_sources(peer, now):
                self._down.add(peer)
                out.append(Transition(peer, False))
        return out

    # ---- views ------------------------------------------------------------------------------

    def state(self, peer):
        if peer in self._down:
            return DOWN
        return UP if self.detector.version(peer) is not None else UNKNOWN

    def is_up(self, peer):
        return self.state(peer) == UP

    def down(self):
        return sorted(self._down)

    def my_suspects(self, now):
        """What this node reports to others in gossip: its own detector's suspects."""
        return self.detector.suspects(now)

    def suspected_by(self, peer, now):
        """Node ids that suspect peer now: this node (if its detector does) and fresh reporters."""
        by = set(self.reporters(peer, now))
        if self.detector.suspected(peer, now):
            by.add(self.me)
        return tuple(sorted(by))

    def view(self, now, peers=None):
        """[PeerView] for peers (default: all heard of, all reported on, all DOWN), sorted."""
        if peers is None:
            peers = set(self.detector.peers()) | self._down
            for s, _ in self._reports.values():
                peers |= s
            peers.discard(self.me)
        rows = []
        for p in sorted(peers):
            last = self.detector.last_arrival(p)
            rows.append(PeerView(p, self.state(p), self.detector.phi(p, now),
                                 None if last is None else max(0.0, now - last),
                                 self.suspected_by(p, now), self.failed_probes(p, now)))
        return rows
