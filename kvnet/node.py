"""A ringkv node: builds and starts/stops everything (riak_core_sup's role).

The node holds the ring (static membership from the config until gossip
arrives), the local replica, the peer pool and the RESP front door, and
implements the front door's Backend by running the coordinator drivers.
"""
import asyncio
import gc
import logging
import os
import time

from kvcore import versions as V
from kvcore._native import select
from kvcore.ring import Ring
from kvnet.config import NodeConfig
from kvnet.coordinator import driver
from kvnet.coordinator import scan as S
from kvnet.coordinator.quorum import resolve_quorum
from kvnet.errors import CommandError, Unavailable
from kvnet.antientropy.service import AntiEntropy
from kvnet.compaction import Compactor
from kvnet.handoff.hintlog import HintLog, dvv_merge
from kvnet.handoff.replay import HintReplay
from kvnet.membership import ringstate as RS
from kvnet.membership.changes import ClusterChanges
from kvnet.membership.gossip import Gossip
from kvnet.peer.pool import PeerPool
from kvnet.replica import LocalReplica
from kvnet.payload import context as _client_context
from kvnet.resp.backend import LATER, Backend, Reply
from kvnet.resp.glob import compile_glob
from kvnet.resp.server import serve
from kvnet.handlers import HandlerTable
from kvnet.replicahandlers import ReplicaHandlers, ReplicaHost
from kvnet.ringholder import RingHolder, RingListener
from kvnet.routes import Lanes

_doors = select("kvnet.localdoor", "kvnet.localdoor_py")
_LocalDoor = _doors.LocalDoor
log = logging.getLogger("kvnet.node")

GREET_TIMEOUT = 1.0     # seconds a starting node waits for its members' connections (_greet_peers)


class Node(ReplicaHost, RingListener, Backend):
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
        self.pool = PeerPool(cfg.name, cfg.cluster_secret.encode(), self.handlers,
                             max_message_size=cfg.max_peer_message_bytes)
        self.services = []                # background parts: start(), stop(), handlers()
        self.gossip = self.add_service(Gossip(self))
        self.lanes = Lanes(self.pool, self.gossip.down_peers)
        self.handoff = self.add_service(HintReplay(self))
        self.changes = self.add_service(ClusterChanges(self))
        # Handlers always answer; exchanges are scheduled only with cfg.ae_enabled.
        self.add_service(AntiEntropy(self))
        self.add_service(Compactor(self))
        self.resp = None
        self.started = time.time()
        self._tasks = set()
        self._client_addrs = {cfg.name: (cfg.host, cfg.port)}
        self.stats = {"gets": 0, "puts": 0, "deletes": 0, "forwarded": 0}

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
        self.resp = await serve(self, self.cfg.host, self.cfg.port, password=self.cfg.password,
                                allow_flush=self.cfg.allow_flush, max_clients=self.cfg.max_connections,
                                idle_timeout=self.cfg.idle_timeout_s)
        log.info("node %s: clients on %s:%d, peers on %s:%d", self.name, self.cfg.host,
                 self.resp.port, host, port)
        return self

    async def _greet_peers(self, timeout=GREET_TIMEOUT):
        """Dial every member before the client port opens. A member that dialed this node while
        it was not listening routes around it until a connection is up (PeerPool.reachable);
        this connection, adopted there, is that one. Without it a cluster whose nodes start
        together refuses writes for a while after every node answers PING. Members that do not
        answer within `timeout` are left to gossip."""
        if self.ring is None:                       # joining: the members come with the ring
            return

        async def greet(peer):
            try:
                await self.pool.connection(peer, self._addr(peer), timeout)
            except Exception as exc:
                log.debug("greeting %s at start failed: %s", peer, exc)

        await asyncio.gather(*(greet(n) for n in self.ring.nodes if n != self.name))

    async def stop(self):
        """Stop serving, finish background work, sync and close every store."""
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

    async def after_hint(self):
        if self.cfg.fsync == "always":
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

    # ---- helpers -------------------------------------------------------------------------

    def _partition(self, key):
        if type(key) is not bytes or not key:
            raise CommandError("keys must be non-empty")
        if len(key) > self.cfg.max_key_bytes:
            raise CommandError(f"key is {len(key)} bytes, above the limit of {self.cfg.max_key_bytes}")
        return self.ring.partition_of(key)

    def _check_value(self, value):
        if len(value) > self.cfg.max_value_bytes:
            raise CommandError(f"value is {len(value)} bytes, above the limit of {self.cfg.max_value_bytes}")

    def _n(self):
        return min(self.ring.n, len(self.ring.nodes))

    def _r(self, r):
        return self.cfg.r if r is None else resolve_quorum(r, self._n(), "R")

    def _w(self, w):
        return self.cfg.w if w is None else resolve_quorum(w, self._n(), "W")

    @staticmethod
    def _context(context):
        return _client_context(context)      # bounded, actors checked (kvnet/payload.py)

    async def _read(self, key, r=None, strict=False):
        p = self._partition(key)
        self.stats["gets"] += 1
        return await driver.get(self, p, key, min(self._r(r), self._n()), strict)

    async def _write(self, key, sibling, context, overwrite, w=None, strict=False):
        """The new clock's bytes once W replicas have it."""
        p = self._partition(key)
        return await driver.put_raw(self, p, key, sibling, context, overwrite,
                                    min(self._w(w), self._n()), strict)

    # ---- Backend: versioned API ----------------------------------------------------------

    async def get(self, key, r=None, strict=False):
        res = await self._read(key, r, strict)
        clock = res.clock
        return Reply(V.encode_context(V.join(clock)), V.values(clock))

    async def put(self, key, value, context=None, w=None, strict=False):
        self._check_value(value)
        ctx = self._context(context)
        self.stats["puts"] += 1
        raw = await self._write(key, V.sibling(bytes(value)), ctx, False, w, strict)
        return V.encode_context(V.join(V.decode(raw)))

    async def delete(self, key, context=None, w=None, strict=False):
        ctx = self._context(context)
        self.stats["deletes"] += 1
        raw = await self._write(key, V.tombstone(), ctx, ctx is None, w, strict)
        return V.encode_context(V.join(V.decode(raw)))

    # ---- Backend: Redis-compatible API ---------------------------------------------------

    def local_door(self, commands):
        """The compiled door for plain GETs and SETs of the partitions in _solo or on the
        direct lane (their get_lww_now / set_overwrite_now path, without the Python calls);
        None without it."""
        return None if _LocalDoor is None else _LocalDoor(commands, self, self.rings, self.lanes,
                                                          self.replica, self.stats, self.cfg)

    def get_lww_now(self, key):
        p = self._partition(key)
        lane = None
        routes = self.rings.routes
        if p not in routes.solo:
            lane = self.lanes.pick(routes.lane(p))
            if lane is None:
                return LATER
        try:
            raw = self.replica.read_raw(p, key)
            if lane is None:          # this node alone replicates p: its copy is the answer
                value = None if raw is None else V.lww_value_raw(raw)
        except Exception:
            return LATER              # the driver's path reports the failure
        self.stats["gets"] += 1
        if lane is None:
            return value
        conns, pl = lane
        return driver.get_direct(self, p, key, raw, min(self.cfg.r, len(pl.targets)), pl, conns)

    async def get_lww(self, key):
        value = self.get_lww_now(key)
        if value is not LATER:
            return await value if isinstance(value, asyncio.Future) else value
        res = await self._read(key)
        return None if res.not_found else V.lww_value(res.clock)

    async def mget(self, keys):
        return list(await asyncio.gather(*(self.get_lww(k) for k in keys)))

    async def exists(self, keys):
        vals = await asyncio.gather(*(self.get_lww(k) for k in keys))
        return sum(1 for v in vals if v is not None)

    def set_overwrite_now(self, key, value):
        p = self._partition(key)
        rep = self.replica
        always = rep.fsync == "always"
        routes = self.rings.routes
        if p in routes.solo:
            if always:
                return LATER          # the ack waits for the group commit
            self._check_value(value)
            if self._overwrite_local(rep, p, key, value) is None:
                return LATER          # a clock of another shape: the general path decides
            self.stats["puts"] += 1
            return None
        lane = self.lanes.pick(routes.lane(p))
        if lane is None:
            return LATER
        self._check_value(value)
        raw = self._overwrite_local(rep, p, key, value)
        if raw is None:               # a clock of another shape: mint it the general way
            raw = rep.mint_raw(p, key, V.sibling(bytes(value)), None, True)
        self.stats["puts"] += 1
        conns, pl = lane
        fut = driver.put_direct(self, p, key, raw, min(self.cfg.w, len(pl.targets)), pl, conns)
        # fsync=always: the replicas ack once durable; the local copy counts once synced too
        return rep.durable(fut, p) if always else fut

    @staticmethod
    def _overwrite_local(rep, p, key, value):
        """A plain SET's new clock made and stored as bytes here (LocalReplica.overwrite_raw),
        or None, having done nothing, for a stored clock of another shape."""
        return rep.overwrite_raw(rep.partition(p), key, bytes(value), time.time_ns() // 1000)

    async def set_overwrite(self, key, value):
        done = self.set_overwrite_now(key, value)
        if done is None:
            return
        if done is not LATER:
            await done
            return
        self._check_value(value)
        self.stats["puts"] += 1
        await self._write(key, V.sibling(bytes(value)), None, True)

    async def mset(self, pairs):
        for k, v in pairs:
            self._check_value(v)
        await asyncio.gather(*(self.set_overwrite(k, v) for k, v in pairs))

    async def delete_overwrite(self, key):
        if await self.get_lww(key) is None:
            return False
        self.stats["deletes"] += 1
        await self._write(key, V.tombstone(), None, True)
        return True

    # ---- Backend: whole-keyspace operations ------------------------------------------------

    async def dbsize_estimate(self):
        """Keys in the stores of each partition's owner (tombstones included): an estimate."""
        others = [n for n in self.ring.nodes if n != self.name and self.is_up(n)]
        counts = await asyncio.gather(*(self.call(n, "count", {}, self.timeout) for n in others),
                                      return_exceptions=True)
        total = self.answers.owned_count() if self.name in self.ring.nodes else 0
        for node, c in zip(others, counts):
            if isinstance(c, int):
                total += c
            else:
                log.info("dbsize: %s did not answer: %s", node, c)
        return total

    def _scan_choices(self, p):
        """The nodes that may scan partition p for SCAN, best first: this node when it is one
        of p's replicas in the current ring; else p's reachable replicas in the current ring,
        those a ring change keeps first. A current replica holds all of p and keeps it until
        the next ring is settled (which waits for every transfer); a replica the change adds
        may still be receiving p, so it is never asked before it is in the current ring."""
        state = self.ring_state
        prefs = state.current.preference_list(p)
        if self.name in prefs:
            return (self.name,)
        up = [n for n in prefs if self.is_up(n)]
        if state.next is not None and len(up) > 1:
            keep = state.next.preference_list(p)
            up.sort(key=lambda n: n not in keep)
        return up

    def _ask_scan(self, node, payload):
        try:
            return self.call_future(node, "mscan", payload, self.timeout)
        except Exception as exc:              # (no address known)
            fut = self.loop.create_future()
            fut.set_exception(exc)
            return fut

    async def scan(self, cursor, match=None, count=10):
        """SCAN (docs/cluster.md): the partitions from the cursor's to the ring's end are
        divided among reachable replicas, each node asked once for its list (this one scans
        its own), and the answers merged in ring order until COUNT keys were examined
        (kvnet/coordinator/scan.py, which argues why no key is skipped)."""
        ring, qbits = self.ring, self.qbits
        count = max(1, min(int(count), S.MAX_COUNT))
        p0 = S.partition_of(cursor, qbits)
        if p0 >= ring.q:
            return 0, []
        walk = range(p0, ring.q)
        plan, _ = S.assign(walk, self._scan_choices)
        here = match is not None and len(match) > S.MAX_MATCH     # applied below, not sent
        pattern = None if here else match

        def start(ps):
            return cursor if ps[0] == p0 else S.first_token(ps[0], qbits)

        others = [n for n in plan if n != self.name]
        futures = [self._ask_scan(n, {"ps": plan[n], "c": start(plan[n]), "n": count,
                                      "m": pattern}) for n in others]
        answers = {}
        mine = plan.get(self.name)
        if mine is not None:
            try:
                answers[self.name] = S.check_answer(
                    self.answers.scan_partitions(mine, start(mine), count, pattern), mine,
                    start(mine), qbits)
            except Exception as exc:          # raised if the walk gets there
                answers[self.name] = exc
        for n, got in zip(others, await asyncio.gather(*futures, return_exceptions=True)):
            if not isinstance(got, BaseException):
                try:
                    got = S.check_answer(got, plan[n], start(plan[n]), qbits)
                except CommandError as exc:
                    got = CommandError(f"{exc} (from {n})")
            answers[n] = got
        nxt, keys = S.merge(walk, plan, answers, count, ring.q, qbits)
        if here:
            matcher = compile_glob(match)
            keys = [k for k in keys if matcher(k)]
        return nxt, keys

    async def flush(self):
        """FLUSHDB/FLUSHALL: only with every member up; every node empties every partition."""
        down = [n for n in self.ring.nodes if not self.is_up(n)]
        if down:
            raise Unavailable(f"FLUSHDB needs every member up; down: {', '.join(down)}")
        results = await asyncio.gather(*(self.call(n, "info", {}, self.timeout)
                                         for n in self.ring.nodes if n != self.name),
                                       return_exceptions=True)
        bad = [str(r) for r in results if isinstance(r, Exception)]
        if bad:
            raise Unavailable(f"FLUSHDB needs every member up: {'; '.join(bad)}")
        hinted = sum(self.handoff.pending().values()) + sum(
            r.get("hints_pending", 0) for r in results if isinstance(r, dict))
        if hinted:
            raise Unavailable(f"FLUSHDB is refused while {hinted} hints are pending; "
                              "retry once they are delivered (INFO hints_pending)")
        self.answers.flush_local()
        await asyncio.gather(*(self.call(n, "flush", {"all": True}, self.timeout)
                               for n in self.ring.nodes if n != self.name))

    # ---- Backend: introspection ------------------------------------------------------------

    async def _client_addr(self, node):
        addr = self.gossip.client_address(node)
        if addr is not None:
            return addr
        if node not in self._client_addrs:
            try:
                info = await self.call(node, "info", {}, self.timeout)
                self._client_addrs[node] = (info["host"], info["port"])
            except Exception:
                return None
        return self._client_addrs[node]

    async def ring_info(self):
        nodes = []
        for n in self.ring.nodes:
            addr = await self._client_addr(n)
            nodes.append({"name": n, "host": addr[0] if addr else None,
                          "port": addr[1] if addr else None, "up": self.is_up(n)})
        return {"epoch": self.ring.epoch, "q": self.ring.q, "n": self.ring.n,
                "nodes": nodes, "owners": list(self.ring.owners)}

    async def preflist(self, key):
        p = self._partition(key)
        return [{"node": n, "partition": p, "primary": True, "up": self.is_up(n)}
                for n in self.ring.preference_list(p)]

    async def status(self):
        counts = {n: 0 for n in self.ring.nodes}
        for o in self.ring.owners:
            counts[o] += 1
        view = self.gossip.view()
        members = []
        for n in sorted(set(self.ring.nodes) | set(view)):
            row = {"name": n, "up": self.is_up(n), "partitions": counts.get(n, 0)}
            entry = self.gossip.table.get(n)
            row["status"] = entry.status if entry is not None else None   # joining, valid, ...
            if n == self.name:
                row.update(state="up", heartbeat_age_s=0.0, suspected_by=[],
                           generation=self.gossip.generation)
            else:
                v = view.get(n, {})
                row.update(state=v.get("state", "unknown"), heartbeat_age_s=v.get("heartbeat_age_s"),
                           suspected_by=v.get("suspected_by", []), generation=v.get("generation"))
            members.append(row)
        ae = self.antientropy
        st = ae.stats
        return {"node": self.name, "ring_epoch": self.ring.epoch, "members": members,
                "antientropy": {"catchup_pending": ae.catchup_pending(),
                                "exchanges": st["exchanges"],
                                # keys this node's store took from a peer, in either's exchange
                                "keys_repaired": st["keys_repaired_here"] + st["served_repairs"]}}

    async def cluster_admin(self, op, node=None):
        """KV.CLUSTER: join/leave/remove/clear NODE stage a change; plan, commit, transfers.
        Answered by the claimant (kvnet/membership/changes.py, docs/operations.md)."""
        op = op.lower()
        if op in ("join", "leave", "remove", "clear"):
            if not node:
                raise CommandError(f"KV.CLUSTER {op.upper()} needs a node id")
            return {"staged": await self.changes.request("stage", {"op": op, "node": node})}
        if op in ("plan", "commit", "transfers"):
            return await self.changes.request(op)
        raise CommandError(f"unknown KV.CLUSTER subcommand {op!r}: "
                           "JOIN|LEAVE|REMOVE|CLEAR node, PLAN, COMMIT, TRANSFERS")

    async def compact(self, partition=None):
        """KV.COMPACT [P]: merge every partition this node holds (or P) now."""
        if partition is not None and partition not in self.replica.partitions:
            raise CommandError(f"{self.name} holds no partition {partition}")
        out = await self.compactor.compact(None if partition is None else [partition])
        return {"node": self.name, **out}

    async def info_section(self):
        return {"ringkv_node": self.name, "ring_epoch": self.ring.epoch, "ring_size": self.ring.q,
                "n_val": self.ring.n, "members": len(self.ring.nodes),
                "partitions_open": len(self.replica.partitions), "fsync": self.cfg.fsync,
                **self.replica.commit_stats(),
                **self.replica.fault_stats(),
                "hints_pending": sum(self.handoff.pending().values()),
                **{f"hints_{k}": v for k, v in self.handoff.stats.items()},
                **{f"ae_{k}": v for k, v in self.antientropy.stats.items() if v is not None},
                **{f"reaper_{k}": v for k, v in self.antientropy.reaper.stats.items()},
                **{f"transfer_{k}": v for k, v in self.changes.stats.items()},
                **{f"coord_{k}": v for k, v in self.stats.items()},
                **self._storage_info()}

    def _storage_info(self):
        """Live and dead bytes over the partitions held, and the compactor's counters."""
        data = live = 0
        for part in list(self.replica.partitions.values()):
            try:
                d, lv = part.store.sizes()
            except Exception:                 # closed under us
                continue
            data, live = data + d, live + lv
        out = {"storage_data_bytes": data, "storage_live_bytes": live,
               "storage_dead_bytes": max(0, data - live)}
        st = self.compactor.stats
        out.update(merges=st["merges"], merge_failures=st["merge_failures"],
                   merge_bytes_reclaimed=st["bytes_reclaimed"],
                   merge_seconds=round(st["merge_seconds"], 3),
                   hint_compactions=st["hint_compactions"])
        return out



async def run(cfg, ready=None):
    """Run a node until cancelled, signalled (SIGINT/SIGTERM) or out of the ring (after a
    leave), then stop it cleanly; returns "left" in the last case."""
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
    try:
        await stop.wait()
    finally:
        await node.stop()
    return "left" if left else None
