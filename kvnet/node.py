"""A ringkv node: builds its parts, wires them and starts/stops them (riak_core_sup's role).

The parts, each against a declared interface this node implements: the ring holder
(kvnet/ringholder.py, the node its RingListener) with its routes value (kvnet/routes.py); the
local replica (kvnet/replica.py) and its peer handlers (kvnet/replicahandlers.py, ReplicaHost)
in the node's handler table (kvnet/handlers.py); the coordinator's driver.Cluster (routing,
hints as a fallback, calls to peers); the front door's backend (kvnet/frontdoor.py, FrontHost)
served by kvnet/resp; and the services (gossip, ring changes, hint replay, anti-entropy,
compaction). Static membership comes from the config until gossip brings a ring.
"""
import asyncio
import gc
import logging
import os

from kvcore import versions as V
from kvcore.ring import Ring
from kvnet.config import NodeConfig
from kvnet.coordinator import driver
from kvnet.errors import ConfigError, Unavailable
from kvnet.antientropy.service import AntiEntropy
from kvnet.canary import Canary
from kvnet.compaction import Compactor
from kvnet.handoff.hintlog import HintLog, dvv_merge
from kvnet.handoff.replay import HintReplay
from kvnet.membership import ringstate as RS
from kvnet.membership.changes import ClusterChanges
from kvnet.membership.gossip import Gossip
from kvnet.metrics import MetricsServer
from kvnet.peer.pool import PeerPool
from kvnet.replica import LocalReplica
from kvnet.frontdoor import FrontDoor, FrontHost
from kvnet.resp.server import options_from, serve
from kvnet.handlers import HandlerTable
from kvnet.replicahandlers import ReplicaHandlers
from kvnet.ringholder import RingHolder, RingListener
from kvnet.routes import Lanes
from kvnet.tlsconfig import NodeTLS

log = logging.getLogger("kvnet.node")

GREET_TIMEOUT = 1.0     # seconds a starting node waits for its members' connections (_greet_peers)


class Node(FrontHost, RingListener):
    """One node of the cluster; `await start()`, then `await stop()`."""

    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.name = cfg.name
        members = cfg.all_members()
        self.addrs = {m.name: (m.host, m.peer_port) for m in members}
        # The first ring comes from the configured members; a ring kept in the data directory
        # (a restart) or a newer one from gossip replaces it. A joining node waits for gossip's.
        self.on_left = None               # called once this node is out of a settled ring
        self.lanes = None                 # the direct lane's connections (kvnet/routes.py)
        self.hints = None                 # HintLog, opened at start (kvnet/handoff)
        self.rings = RingHolder(cfg.name, cfg.data_dir, self.is_up, self)
        if not cfg.join:
            self.rings.install_ring(RS.RingState(
                Ring.create([m.name for m in members], q=cfg.ring_size, n=cfg.n)), save=False)
        self.qbits = cfg.ring_size.bit_length() - 1
        self.timeout = cfg.request_timeout_ms / 1000.0
        self.replica = LocalReplica(cfg.data_dir, cfg.name, fsync=cfg.fsync,
                                    index_skip_bits=self.qbits,
                                    sync_interval_ms=cfg.sync_interval_ms,
                                    sync_method=cfg.sync_method,
                                    max_key_bytes=cfg.max_key_bytes, max_siblings=cfg.max_siblings,
                                    max_object_bytes=cfg.max_object_bytes,
                                    min_free_percent=cfg.min_free_percent,
                                    max_segment_bytes=cfg.max_segment_bytes)
        # every peer request's handler, by message type (kvnet/handlers.py): the replica's
        # and each service's
        self.handlers = HandlerTable()
        self.answers = ReplicaHandlers(self, self.rings, self.replica, cfg)
        self.answers.register(self.handlers)
        # TLS contexts (kvnet/tlsconfig.py): built here, so a bad file fails before anything
        # starts; reloaded on SIGHUP (reload_tls)
        self.tls = NodeTLS(cfg) if NodeTLS.wanted(cfg) else None
        self.pool = PeerPool(cfg.name, cfg.cluster_secret.encode(), self.handlers,
                             max_message_size=cfg.max_peer_message_bytes,
                             tls=self.tls if cfg.tls_cluster else None,
                             idle_timeout=cfg.peer_idle_timeout_s,
                             frame_mac=cfg.peer_frame_mac)
        self.services = []                # background parts: start(), stop(), handlers()
        self.gossip = self.add_service(Gossip(self))
        self.lanes = Lanes(self.pool, self.gossip.down_peers)
        self.handoff = self.add_service(HintReplay(self))
        self.changes = self.add_service(ClusterChanges(self))
        # Handlers always answer; exchanges are scheduled only with cfg.ae_enabled.
        self.add_service(AntiEntropy(self))
        self.add_service(Compactor(self))
        self.canary = self.add_service(Canary(self))   # canary_interval_ms (docs/observability.md)
        self.resp = None
        self._tasks = set()
        self.stats = {"gets": 0, "puts": 0, "deletes": 0}
        self.coord_stats = driver.new_coord_stats()  # the coordinator's outcomes and read repairs
        self.front = FrontDoor(self)          # the front door's backend
        self.metrics = None                   # /metrics (kvnet/metrics.py), when configured

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self, ring_timeout=60.0):
        self.loop = asyncio.get_running_loop()
        os.makedirs(self.cfg.data_dir, exist_ok=True)
        host, port = self.cfg.peer_address
        kept = RS.load(self.cfg.data_dir)
        if kept is not None:
            self.rings.install_ring(kept, save=False)
        self.replica.open_existing()
        if self.ring is not None:
            # every partition this node is a primary of, created now rather than by its first
            # write: "ready" means writable at full speed (docs/cluster.md)
            self.replica.open_all(p for p in range(self.ring.q)
                                  if self.name in self.ring.preference_list(p))
        self.hints = HintLog(os.path.join(self.cfg.data_dir, "hints"), dvv_merge,
                             fsync="never" if self.cfg.fsync == "never" else "interval",
                             sync_interval_ms=self.cfg.sync_interval_ms)
        if self.ring_state is not None and not self.ring_state.moving:
            # a crash may have come between a settled ring and moving its removed nodes' hints
            self.spawn(self._reassign_hints())
        await self.pool.serve(host, port)
        self.replica.start()
        for svc in self.services:
            await svc.start()
        await self._greet_peers()
        if self.ring_state is None:                 # joining: the seeds' gossip brings the ring
            try:
                await self.rings.wait_ready(ring_timeout)
            except asyncio.TimeoutError:
                await self.stop()
                raise OSError(f"no ring from the seeds in {ring_timeout:g} s: are they up?") from None
        tls = self.tls.clients if self.tls is not None else None
        self.resp = await serve(self.front, self.cfg.host, self.cfg.port or None,
                                tls_port=self.cfg.tls_port, ssl=tls, **options_from(self.cfg))
        clients = [f"{self.cfg.host}:{self.resp.port}"] if self.cfg.port else []
        if tls is not None:
            clients.append(f"TLS {self.cfg.host}:{self.resp.tls_port}")
        log.info("node %s: clients on %s, peers on %s:%d%s", self.name, " and ".join(clients),
                 host, port, " (mutual TLS)" if self.cfg.tls_cluster else "")
        if self.cfg.metrics_port:
            try:
                self.metrics = MetricsServer(self, self.cfg.metrics_host, self.cfg.metrics_port)
            except OSError as exc:
                await self.stop()
                raise OSError(f"metrics_port: cannot listen on {self.cfg.metrics_host}:"
                              f"{self.cfg.metrics_port}: {exc}") from exc
            self.spawn(self.metrics.status.run())   # the status page's snapshot, each second
            log.info("node %s: metrics on http://%s:%d/metrics, status page on /", self.name,
                     self.cfg.metrics_host, self.metrics.port)
        return self

    def reload_tls(self):
        """SIGHUP: re-read the TLS certificate, key and CA files; connections made from now on
        use them (kvnet/tlsconfig.py). A file that cannot be loaded is logged and changes
        nothing. Returns whether it reloaded."""
        if self.tls is None:
            log.info("node %s: SIGHUP: no TLS configured, nothing to reload", self.name)
            return False
        try:
            self.tls.reload()
        except ConfigError as exc:
            log.error("node %s: TLS reload failed, keeping the certificates in use: %s",
                      self.name, exc)
            return False
        return True

    async def _greet_peers(self, timeout=GREET_TIMEOUT):
        """Dial the members this node shares a preference list with before the client port
        opens. A member that dialed this node while it was not listening routes around it until
        a connection is up (PeerPool.reachable); this connection, adopted there, is that one.
        Without it a cluster whose nodes start together refuses writes for a while after every
        node answers PING. Only these neighbours (all members in a small cluster), not every
        member: connections stay bounded by whom a node talks to (docs/peer.md, "Idle
        connections"); any other member that tried this node is told by gossip
        (heard_from). Members that do not answer within `timeout` are left to gossip."""
        if self.ring is None:                       # joining: the members come with the ring
            return
        ring, me = self.ring, self.name
        near = set()
        for p in range(ring.q):
            prefs = ring.preference_list(p)
            if me in prefs:
                near.update(prefs)
        near.discard(me)

        async def greet(peer):
            try:
                await self.pool.connection(peer, self._addr(peer), timeout)
            except Exception as exc:
                log.debug("greeting %s at start failed: %s", peer, exc)

        await asyncio.gather(*(greet(n) for n in ring.nodes if n in near))

    async def stop(self):
        """Stop serving, finish background work, sync and close every store."""
        if self.metrics is not None:
            metrics, self.metrics = self.metrics, None
            await asyncio.to_thread(metrics.close)     # (shutdown() polls: off the loop)
        if self.resp is not None:
            await self.resp.close()
            self.resp = None
        for svc in reversed(self.services):
            await svc.stop()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pool.close()
        if self.hints is not None:
            self.hints.close()
            self.hints = None
        await self.replica.close()

    def add_service(self, svc):
        """Register a background part before start(): its peer handlers (message type ->
        async fn(payload)) join the node's table, and it is started and stopped with the node.
        A service of the same class replaces the one registered (tests pass other options)."""
        for old in [x for x in self.services if type(x) is type(svc)]:
            self.remove_service(old)
        self.handlers.add_all(svc.handlers())
        self.services.append(svc)
        return svc

    def remove_service(self, svc):
        """Unregister a service and its handlers (before start)."""
        self.services.remove(svc)
        self.handlers.remove(svc.handlers())

    def service(self, cls):
        """The registered service of class `cls` (or a subclass), or None."""
        return next((x for x in self.services if isinstance(x, cls)), None)

    @property
    def antientropy(self):
        return self.service(AntiEntropy)

    @property
    def compactor(self):
        return self.service(Compactor)

    # ---- the ring (kvnet/ringholder.py holds it; this node is its RingListener) ----------

    @property
    def ring_state(self):
        return self.rings.state

    @property
    def ring(self):
        return self.rings.ring

    def ring_order(self):
        return self.rings.ring_order()

    def offer_ring(self, state):
        return self.rings.offer_ring(state)

    def ring_installed(self, old, state):
        """RingListener: after a settled ring, drop the partitions no longer held, move the
        hints of removed members, and leave when this node is out of the ring."""
        if self.lanes is not None:
            self.lanes.forget()           # (no connection kept to a node that left)
        if not state.moving and old is not None:
            if self.hints is not None:
                self.spawn(self._reassign_hints())
            self.spawn(self._drop_unheld())
            if self.name not in state.current.nodes and self.name in old.members():
                log.warning("node %s: no longer in the ring; leaving", self.name)
                if self.on_left is not None:
                    self.on_left()

    def direct_lane(self, p):
        """(ready connections to p's other primaries, p's Preflist) when a GET or SET of p
        takes the direct lane now (Routes.lane, Lanes.pick), else None."""
        return self.lanes.pick(self.rings.routes.lane(p))

    async def _drop_unheld(self):
        """A settled ring: drop the partitions this node no longer replicates (their new
        replicas confirmed their copies before the ring settled). One at a time: the store is
        closed and its directory renamed at once, on the loop (a later ring may give the
        partition back: it then starts afresh at its path), and deleted in a worker thread."""
        for p in sorted(self.replica.partitions):
            if self.ring_state.holds(self.name, p):
                continue
            await self.compactor.release(p)           # a merge of it stops first
            if await self.replica.drop(p):
                log.info("node %s: dropped partition %d", self.name, p)

    async def _reassign_hints(self):
        """Hints for nodes no longer in the ring go to their partitions' new replicas: this
        node's own replica when it is one (acknowledged only once that write is durable), else
        the partition's first other primary's hints."""
        ring = self.ring
        for target in self.hints.targets():
            if target in self.ring_state.members():
                continue
            mine = [(p, k, raw) for p, k, raw in self.hints.items(target)
                    if self.name in ring.preference_list(p)]
            for p, k, raw in mine:
                self.replica.merge(p, k, V.decode(raw))
            if mine:
                await self.replica.after_write({p for p, _, _ in mine})
            for p, k, raw in mine:
                self.hints.ack(target, p, k, raw)
            self.hints.reassign(target, lambda p: next(
                x for x in ring.preference_list(p) if x != self.name))
            log.info("node %s: hints for removed node %s reassigned", self.name, target)

    def holds(self, p):
        return self.rings.holds(p)

    def reap_pending(self, p, key, raw):
        return self.antientropy.reaper.is_pending(p, key, raw)

    def extra_targets(self, p):
        return self.rings.extra_targets(p)

    # ---- driver.Cluster ------------------------------------------------------------------

    def is_up(self, node):
        """Routing's view: not marked down by the two-source rule (docs/membership.md), and
        not in dial backoff (a refused connection needs no second opinion to route around)."""
        return node == self.name or (not self.gossip.is_down(node) and self.pool.reachable(node))

    def targets(self, p, strict=False):
        """From the routes value of the down set now (kvnet/routes.py: computed once each)."""
        return self.rings.routes_now().targets(p, strict)

    def coordinator_route(self, p, strict=False):
        return self.rings.routes_now().coordinator_route(p, strict)

    def route_and_targets(self, p, strict=False):
        routes = self.rings.routes_now()  # once for both: it is most of the lookup
        return routes.coordinator_route(p, strict), routes.targets(p, strict)

    # ---- driver.Cluster: this node as a fallback (hints, kvnet/handoff) --------------------

    def hint_read(self, p, key, hint_for):
        return self.hints.get(hint_for, p, key)

    def hint_store(self, p, key, hint_for, raw):
        return self.hints.add(hint_for, p, key, raw)

    def mint_hint(self, p, key, sibling, context, overwrite, hint_for):
        """Every primary is down: mint from the hint copy under a fresh epoch (a fallback cannot
        vouch for the dots it may have minted before), keep the result as a hint."""
        raw = self.hints.get(hint_for, p, key)
        local = None if raw is None else V.decode(raw)
        ident = self.replica.identity
        clock = self.replica.next_clock(local, sibling, context, overwrite,
                                        lambda ctx: ident.actor(ident.new_epoch()))
        self.hints.add(hint_for, p, key, self.replica.encode_object(key, clock))
        return clock

    async def after_hint(self, durable=False):
        if durable or self.cfg.fsync == "always":
            await asyncio.to_thread(self.hints.sync)

    def _addr(self, node):
        # Configured addresses come first (a test's fault proxy sits there); gossip adds the rest.
        addr = self.addrs.get(node) or self.gossip.address(node)
        if addr is None:
            raise Unavailable(f"no address known for node {node!r}")
        return addr

    def heard_from(self, node):
        """Gossip brought a newer heartbeat of node: if a failed dial keeps routing away from
        it, dial it again now (PeerPool.redial) instead of when the backoff ends."""
        if not self.pool.reachable(node):
            try:
                self.pool.redial(node, self._addr(node))
            except Unavailable:               # no address known yet
                pass

    async def call(self, node, type, payload, timeout):
        return await self.pool.request(node, self._addr(node), type, payload, timeout=timeout)

    def call_future(self, node, type, payload, timeout):
        return self.pool.request_future(node, self._addr(node), type, payload, timeout)

    def forward_to_new(self, p, key, raw):
        """ReplicaHandlers.forward_to_new (a write stored here while the ring moves)."""
        self.answers.forward_to_new(p, key, raw)

    def client_port(self):
        return self.resp.port if self.resp else 0

    def hints_pending(self):
        return sum(self.handoff.pending().values())

    def spawn(self, coro):
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t


async def run(cfg, ready=None):
    """Run a node until cancelled, signalled (SIGINT/SIGTERM) or out of the ring (after a
    leave), then stop it cleanly; returns "left" in the last case. With TLS, SIGHUP reloads
    its certificates (Node.reload_tls)."""
    import signal

    node = Node(cfg)
    stop = asyncio.Event()
    left = []

    def on_left():
        left.append(True)
        # let the settled ring reach the others by gossip before going away
        asyncio.get_running_loop().call_later(max(1.0, 5 * node.gossip.interval), stop.set)

    node.on_left = on_left
    await node.start()
    # Requests make many short-lived objects: a larger first generation and a frozen
    # start-up heap cut the collector's share of a request (docs/performance.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    if ready is not None:
        ready(node)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if node.tls is not None:    # (without TLS, SIGHUP ends the process as it always did)
        try:
            loop.add_signal_handler(signal.SIGHUP, node.reload_tls)
        except (NotImplementedError, RuntimeError, AttributeError):
            pass
    try:
        await stop.wait()
    finally:
        await node.stop()
    return "left" if left else None
