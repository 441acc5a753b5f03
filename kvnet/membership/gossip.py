"""The gossip service: rounds, the syn/ack/ack2 handlers, indirect probes, liveness.

This is the I/O half of membership (Cassandra's `Gossiper`): the member table, its merge and
the failure detector are pure values (state.py, detector.py); this module owns the clock and the
peer calls. Every `gossip_interval_ms` a node bumps its own heartbeat and sends its digest to
`gossip_fanout` random peers (members it knows of and the configured seeds); the two sides then
trade the entries each lacks. Every newer (generation, heartbeat) of a peer, whoever relayed it,
is an arrival for the detector. Each syn and ack carries the sender's suspect list, one of the
two sources of the liveness rule; for a peer this node suspects with no second source yet, it
asks another member to ping it (an indirect probe), the other source. Rules: docs/algorithms.md,
section 5; docs/membership.md.
"""
import asyncio
import logging
import os
import random
import time

import msgpack

from kvcore.storage.files import fsync_dir, write_file

from kvnet.errors import CommandError
from kvnet.membership import ringstate as RS
from kvnet.membership import state as S
from kvnet.membership.detector import Liveness, PhiDetector, Transition

log = logging.getLogger("kvnet.membership")

__all__ = ["Gossip", "PEERS_FILE"]

PEERS_FILE = "PEERS"     # the peer addresses gossip taught this node, for its next start
SAVE_EVERY = 10          # rounds between two writes of PEERS_FILE at most (and one at stop)


class Gossip:
    """One node's membership service (see the module docstring)."""

    def __init__(self, node, clock=None, rng=None):
        cfg = node.cfg
        self.node = node
        self.me = node.name
        self.interval = cfg.gossip_interval_ms / 1000.0
        self.fanout = cfg.gossip_fanout
        self.clock = clock or time.monotonic     # (looked up now, not when imported)
        self.rng = rng or random.Random()
        self.detector = PhiDetector(interval=self.interval, threshold=cfg.phi_threshold)
        self.liveness = Liveness(self.me, self.detector)
        self.seeds = tuple(m.name for m in cfg.all_members() if m.name != self.me)
        self._known = {}               # node -> (host, peer_port) kept in PEERS_FILE
        self.generation = None
        self.table = S.MemberTable()
        self.listeners = []            # fn(Transition): called on every up/down change
        self.rounds = 0
        self._task = None
        self._inflight = set()         # peers with a gossip exchange still running
        self._probing = set()
        self._peers_of = (None, None)  # (roster, seeds) -> the sorted peers _peers gave for it
        self._kept_for = None          # the roster _keep_peers last looked at
        self._unsaved = False          # _known has changes PEERS_FILE lacks
        self._saved_at = -SAVE_EVERY   # the round PEERS_FILE was last written

    # ---- service -------------------------------------------------------------------------

    def handlers(self):
        return {"gsyn": self._on_syn, "gack2": self._on_ack2, "gprobe": self._on_probe,
                "gping": self._on_ping}

    async def start(self):
        cfg = self.node.cfg
        self.generation = S.next_generation(cfg.data_dir, time.time())
        # Members learned by gossip before a restart are seeds too: the configured ones may
        # have left the cluster since (a node that joined through one seed, which then left).
        self._known = _load_peers(cfg.data_dir)
        self.seeds = tuple(sorted(set(self.seeds) | set(self._known) - {self.me}))
        host, peer_port = cfg.peer_address
        resp = self.node.resp
        me = S.MemberState(node=self.me, host=host, peer_port=peer_port, client_host=cfg.host,
                           client_port=resp.port if resp is not None else cfg.client_port,
                           generation=self.generation, heartbeat=0,
                           status="joining" if cfg.join and not self._in_ring() else "valid",
                           ring_epoch=0, zone=cfg.zone)
        self.table = S.with_member(self.table, me)
        self._task = asyncio.ensure_future(self._run())

    def _in_ring(self):
        state = self.node.ring_state
        return state is not None and self.me in state.members()

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._unsaved:
            self._save()

    # ---- views ---------------------------------------------------------------------------

    def is_down(self, peer):
        return peer in self.liveness._down     # (liveness.state(peer) == DOWN, without its calls)

    @property
    def down_peers(self):
        """The set of peers marked DOWN now (live, not a copy: read it, never change it);
        `peer in down_peers` is is_down(peer) for the hot path."""
        return self.liveness._down

    def address(self, peer):
        """A peer's gossiped (host, peer_port) (or the one kept from an earlier run), or None."""
        m = self.table.get(peer)
        return self._known.get(peer) if m is None else (m.host, m.peer_port)

    def client_address(self, peer):
        m = self.table.get(peer)
        return None if m is None or not m.client_port else (m.client_host, m.client_port)

    def view(self):
        """Per peer: liveness state, heartbeat age, phi, who suspects it (kvctl status)."""
        now = self.clock()
        peers = self._peers()
        out = {}
        for row in self.liveness.view(now, sorted(peers)):
            m = self.table.get(row.node)
            out[row.node] = {
                "state": row.state, "phi": round(row.phi, 2),
                "heartbeat_age_s": None if row.age is None else round(row.age, 3),
                "suspected_by": list(row.suspected_by),
                "failed_probes_via": list(row.failed_probes_via),
                "generation": None if m is None else m.generation,
                "heartbeat": None if m is None else m.heartbeat,
                "status": None if m is None else m.status}
        return out

    # ---- rounds --------------------------------------------------------------------------

    async def _run(self):
        while True:
            # A little jitter keeps the nodes' rounds from falling into step.
            await asyncio.sleep(self.interval * (0.9 + 0.2 * self.rng.random()))
            try:
                self.round()
            except Exception:
                log.exception("gossip round failed")

    def round(self):
        """Beat, gossip to a few peers (in the background), apply the liveness rule."""
        self.rounds += 1
        self.table = S.beat(self.table, self.me)
        inflight = self._inflight
        peers = [p for p in self._sorted_peers() if p not in inflight]
        for peer in self.rng.sample(peers, min(self.fanout, len(peers))):
            self._inflight.add(peer)
            self.node.spawn(self._exchange(peer))
        now = self.clock()
        self._changed(self.liveness.update(now))
        self._keep_peers()
        for peer in self.detector.suspects(now):
            if not self.is_down(peer) and not self.liveness.second_sources(peer, now) \
                    and peer not in self._probing:
                self._probe(peer)

    def _peers(self):
        """Members and seeds to gossip with: not this node, not one that left or was removed."""
        gone = {n for n, m in self.table.items() if m.status in ("exiting", "removed")}
        return (set(self.table) | set(self.seeds)) - gone - {self.me}

    def _sorted_peers(self):
        """sorted(_peers()), computed again only when the table's roster (members, statuses,
        addresses: not heartbeats) or the seeds changed."""
        key = (self.table.roster, self.seeds)
        cached_key, peers = self._peers_of
        if cached_key is None or cached_key[0] is not key[0] or cached_key[1] != key[1]:
            peers = sorted(self._peers())
            self._peers_of = (key, peers)
        return peers

    def _keep_peers(self):
        """Keep PEERS_FILE up to date with the peers' addresses (members that left dropped):
        derived again only when the roster changed, written at most every SAVE_EVERY rounds
        (a starting node learns its members over a few rounds) and at stop. It is a hint for
        the next start, so a crash loses at most the last few rounds' news of it."""
        roster = self.table.roster
        if roster is not self._kept_for:        # (only heartbeats moved: nothing to derive)
            self._kept_for = roster
            known = dict(self._known)
            for n, m in self.table.items():
                if n == self.me or m.status in ("exiting", "removed"):
                    known.pop(n, None)
                else:
                    known[n] = (m.host, m.peer_port)
            if known != self._known:
                self._known = known
                self._unsaved = True
        if self._unsaved and self.rounds >= self._saved_at + SAVE_EVERY:
            self._save()

    def _save(self):
        self._saved_at, self._unsaved = self.rounds, False
        try:
            _save_peers(self.node.cfg.data_dir, self._known)
        except OSError as exc:
            log.info("cannot keep the peer list: %s", exc)

    def _timeout(self):
        return max(2 * self.interval, 0.05)

    async def _exchange(self, peer):
        try:
            now = self.clock()
            # "beats": this node takes heartbeats alone in the ack (docs/membership.md)
            syn = {"from": self.me, "digest": S.table_digest(self.table),
                   "suspects": self.liveness.my_suspects(now), "ring": list(self.node.ring_order()),
                   "beats": True}
            ack = await self.node.call(peer, "gsyn", syn, self._timeout())
            if not isinstance(ack, dict):
                raise CommandError("gossip ack must be a map")
            self._absorb(S.decode_entries(ack.get("entries", []), known=self.table),
                         S.decode_beats(ack.get("beats", []), known=self.table))
            self._reported(peer, ack.get("suspects"))
            if ack.get("ring_state") is not None:
                self._ring_from(peer, ack["ring_state"])
            want = ack.get("want") or []
            want_beats = ack.get("want_beats") or []
            for what, nodes in (("want", want), ("want_beats", want_beats)):
                if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
                    raise CommandError(f"gossip ack: {what} must be a list of node ids")
            if want or want_beats or ack.get("ring_want") is True:
                ack2 = {"from": self.me, "entries": S.encode_entries(S.entries(self.table, want))}
                if want_beats:
                    ack2["beats"] = S.encode_beats(S.beats_of(self.table, want_beats))
                if ack.get("ring_want") is True and self.node.ring_state is not None:
                    ack2["ring_state"] = RS.encode(self.node.ring_state)
                await self.node.call(peer, "gack2", ack2, self._timeout())
        except Exception as exc:
            log.debug("gossip with %s failed: %s", peer, exc)
        finally:
            self._inflight.discard(peer)

    def _probe(self, peer):
        vias = [n for n in self.table if n not in (self.me, peer) and not self.is_down(n)]
        if not vias:
            return
        via = self.rng.choice(sorted(vias))
        self._probing.add(peer)

        async def probe():
            try:
                ok = await self.node.call(via, "gprobe", {"target": peer}, 3 * self._timeout())
                self.liveness.probe(peer, via, ok is True, self.clock())
            except Exception as exc:            # via did not answer: no evidence either way
                log.debug("indirect probe of %s via %s failed: %s", peer, via, exc)
            finally:
                self._probing.discard(peer)
            self._changed(self.liveness.update(self.clock()))

        self.node.spawn(probe())

    # ---- applying what arrives -----------------------------------------------------------

    def _absorb(self, received, beats=()):
        """Merge received entries and beats; every newer heartbeat is an arrival for the
        detector."""
        if received:
            self.table = S.apply(self.table, received)
        if beats:
            self.table, changed = S.apply_beats(self.table, beats)
            received = list(received) + changed
        if not received:
            return
        now = self.clock()
        changes = []
        table, me, arrival = self.table._m, self.me, self.liveness.arrival
        for m in received:
            node = m.node
            if node == me:
                continue
            cur = table[node]
            news, back = arrival(node, now, cur.generation, cur.heartbeat)
            if back:
                changes.append(Transition(node, True))
            if news:
                self.node.heard_from(node)
        self._changed(changes)

    def _ring_from(self, sender, raw):
        """A ring state a peer sent: installed when newer (ordered by (epoch, claimant))."""
        try:
            state = RS.decode(raw) if isinstance(raw, bytes) else None
        except ValueError as exc:
            state = None
            log.info("bad ring state from %s: %s", sender, exc)
        if state is None:
            raise CommandError("gossip: bad ring state")
        self.node.offer_ring(state)

    def _reported(self, reporter, suspects):
        if not isinstance(suspects, list) or not all(isinstance(s, str) for s in suspects):
            return
        self.liveness.report(reporter, suspects, self.clock())

    def _changed(self, transitions):
        for t in transitions:
            log.warning("node %s is %s", t.peer, "up" if t.up else "down")
            for fn in self.listeners:
                try:
                    fn(t)
                except Exception:
                    log.exception("membership listener failed")

    # ---- handlers ------------------------------------------------------------------------

    @staticmethod
    def _sender(m):
        if not isinstance(m, dict) or not isinstance(m.get("from"), str):
            raise CommandError("gossip message needs a map with 'from'")
        return m["from"]

    async def _on_syn(self, m):
        sender = self._sender(m)
        try:
            theirs = S.decode_digest(m.get("digest"), known=self.table)
        except ValueError as exc:
            raise CommandError(f"bad gossip digest: {exc}") from None
        self._reported(sender, m.get("suspects"))
        if m.get("beats") is True:              # the sender takes heartbeats alone
            send, beats, want, want_beats = S.diff_beats(self.table, theirs)
            reply = {"entries": S.encode_entries(send), "beats": S.encode_beats(beats),
                     "want": want, "want_beats": want_beats}
        else:
            send, want = S.diff(self.table, theirs)
            reply = {"entries": S.encode_entries(send), "want": list(want)}
        reply["suspects"] = self.liveness.my_suspects(self.clock())
        ring = m.get("ring")
        if isinstance(ring, list) and len(ring) == 2 and type(ring[0]) is int \
                and type(ring[1]) is str:
            theirs_ring, mine = tuple(ring), self.node.ring_order()
            if mine > theirs_ring and self.node.ring_state is not None:
                reply["ring_state"] = RS.encode(self.node.ring_state)
            elif theirs_ring > mine:
                reply["ring_want"] = True
        return reply

    async def _on_ack2(self, m):
        self._sender(m)
        try:
            received = S.decode_entries(m.get("entries"), known=self.table)
            beats = S.decode_beats(m.get("beats", []), known=self.table)
        except ValueError as exc:
            raise CommandError(f"bad gossip entries: {exc}") from None
        self._absorb(received, beats)
        if m.get("ring_state") is not None:
            self._ring_from(m["from"], m["ring_state"])
        return True

    async def _on_probe(self, m):
        if not isinstance(m, dict) or not isinstance(m.get("target"), str):
            raise CommandError("probe needs {'target': node}")
        target = m["target"]
        if target == self.me:
            return True
        if target not in self.table and target not in self.seeds:
            raise CommandError(f"probe of unknown node {target!r}")
        try:
            return await self.node.call(target, "gping", {}, 2 * self._timeout()) is True
        except Exception:
            return False

    async def _on_ping(self, m):
        return True


def _load_peers(data_dir):
    try:
        with open(os.path.join(data_dir, PEERS_FILE), "rb") as f:
            raw = msgpack.unpackb(f.read(), raw=False)
        return {str(n): (str(a[0]), int(a[1])) for n, a in raw.items()}
    except FileNotFoundError:
        return {}
    except Exception as exc:             # a damaged file only loses hints of where peers are
        log.warning("ignoring a damaged %s: %s", PEERS_FILE, exc)
        return {}


def _save_peers(data_dir, known):
    path = os.path.join(data_dir, PEERS_FILE)
    write_file(path + ".tmp", msgpack.packb({n: list(a) for n, a in known.items()}))
    os.replace(path + ".tmp", path)
    fsync_dir(data_dir)
