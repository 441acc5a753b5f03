"""The replica's side of the peer protocol: what a node answers other nodes (riak_kv_vnode's
role). Reads and writes of its partitions (single and batched: the direct lane), hints kept
for a down primary, the coordinator's forwarded writes, SCAN of its partitions, counts, INFO
and FLUSH. Each handler checks its payload through kvnet/payload.py and refuses a partition
this node does not hold by its ring (an error counts as no reply, never a false one).

`ReplicaHandlers.register(table)` adds them to the node's HandlerTable (kvnet/handlers.py).
They need of their node only `ReplicaHost` (below), so a test or the simulator can give them
a fake or a real node alike.
"""
from kvcore import versions as V
from kvcore._native import select
from kvcore.storage.options import rotate_token
from kvnet import payload as P
from kvnet.coordinator import driver
from kvnet.coordinator import scan as S
from kvnet.coordinator.trace import Trace
from kvnet.errors import CommandError
from kvnet.peer.batching import ANSWER_BYTES, MAX_BATCH, answer_batch
from kvnet.resp.backend import LATER
from kvnet.resp.glob import compile_glob

_LaneReplica = select("kvnet.localdoor", "kvnet.localdoor_py").LaneReplica


class ReplicaHost(driver.Cluster):
    """What the replica's handlers need of their node (kvnet/node.py implements it): the
    coordinator's Cluster (for a forwarded write, and writes a moving ring adds), and:"""

    cfg: object            # NodeConfig: key and value limits
    hints: object          # the HintLog (kvnet/handoff/hintlog.py), once started

    def client_port(self):
        """The port its clients connect to (0 before it serves)."""
        return 0

    def hints_pending(self):
        """Hints it holds for other nodes, in all."""
        return 0


class ReplicaHandlers:
    """The peer handlers of node `host`'s replica `replica`, by its ring holder `rings`
    (kvnet/ringholder.py)."""

    def __init__(self, host, rings, replica, cfg):
        self.host = host
        self.rings = rings
        self.replica = replica
        self.cfg = cfg
        self.name = rings.me
        self.qbits = cfg.ring_size.bit_length() - 1
        # the direct lane's batches, their common items in C (kvnet/localdoor.pyx)
        self._lane = None if _LaneReplica is None else _LaneReplica(
            rings, replica, self.stored, self.read_now, cfg.max_key_bytes, MAX_BATCH,
            ANSWER_BYTES)

    # (payload.py's checks read these, as they read a node's)
    @property
    def ring(self):
        return self.rings.ring

    def register(self, table):
        table.add("get", self._get, self.read_now)
        table.add("put", self._put, self._put_now)
        table.add("mget", self._mget, self.answer_mget)
        table.add("mput", self._mput, self._mput_now)
        table.add_all({"coord_put": self._coord_put, "hput": self._hput, "hget": self._hget,
                       "mscan": self._mscan, "scan": self._scan, "count": self._count,
                       "info": self._info, "flush": self._flush})

    def replica_of(self, p):
        """Refuse replica reads and writes for a partition this node does not hold by its ring
        (a coordinator with an older ring): an error counts as no reply, never a false one."""
        state = self.rings.state
        if not state.holds(self.name, p):
            raise CommandError(f"node {self.name} is not a replica of partition {p} "
                               f"at ring epoch {state.epoch}")

    # ---- reads and writes ------------------------------------------------------------------

    def read_now(self, m):
        """A replica read {"p", "k"}: the stored canonical clock bytes (what encode() gives),
        or None."""
        p, k = P.partition_key(self, m)
        if self.name not in self.rings.ring.preference_list(p):   # (the common case: no call)
            self.replica_of(p)
        return self.replica.read_raw(p, k)

    async def _get(self, m):
        return self.read_now(m)

    def stored(self, m):
        """Store one replicated write {"p", "k", "c": clock bytes}; its acknowledgement (no wait
        for a sync). Once per replica per replicated write: the common case makes no call it
        can skip."""
        p, k = P.partition_key(self, m)
        if self.name not in self.rings.ring.preference_list(p):
            self.replica_of(p)                  # held only in the next ring, or refused
        raw = m.get("c")
        rep = self.replica
        if type(raw) is not bytes or not rep.merge_superseding(p, k, raw):
            rep.merge(p, k, P.clock(raw), raw)  # decoded: checked canonical bytes
        if self.rings.state.next is not None:
            self.forward_to_new(p, k, raw)
        return True

    def _put_now(self, m):
        if self.replica.fsync == "always" or (type(m) is dict and "d" in m):
            return LATER                # the acknowledgement waits for the group commit
        return self.stored(m)

    async def _put(self, m):
        """A replicated write answered once as durable as the fsync policy asks, or, asked
        with "d" (DURABLE k), once fsynced whatever the policy: DURABLE_ACK then."""
        durable = type(m) is dict and P.durable(m)      # (checked before anything is stored)
        self.stored(m)
        if durable:
            await self.replica.durable_write(m["p"])
            return P.DURABLE_ACK
        await self.replica.after_write(m["p"])
        return True

    def forward_to_new(self, p, key, raw):
        """While the ring moves, a write stored here also goes to the replicas being added
        (a hint when that fails): its coordinator may not know of the move yet, and this
        replica's transfer may be done or under way (docs/membership.md, "Ring changes")."""
        state = self.rings.state
        if state is not None and state.next is not None:
            for x in state.extra_targets(p):
                if x != self.name:
                    self.host.spawn(driver.store_extra(self.host, x, p, key, raw))

    # batches of the direct lane (PeerConnection.batch_request): each item a put or get payload

    def answer_mput(self, items):
        lane = self._lane
        return answer_batch(self.stored, items) if lane is None else lane.mput(items)

    def answer_mget(self, items):
        lane = self._lane
        return answer_batch(self.read_now, items) if lane is None else lane.mget(items)

    def _mput_now(self, items):
        if self.replica.fsync == "always":
            return LATER
        return self.answer_mput(items)

    async def _mput(self, items):
        answer = self.answer_mput(items)
        # one sync for the batch; a partition of it made read-only by that sync fails it all
        await self.replica.after_write({it.get("p") for it in items if type(it) is dict})
        return answer

    async def _mget(self, items):
        return self.answer_mget(items)

    async def _coord_put(self, m):
        """A write forwarded by a node that is not a primary of its partition: coordinated
        here (docs/cluster.md)."""
        p, k = P.partition_key(self, m)
        ring = self.rings.ring
        n = min(ring.n, len(ring.nodes))
        v, ts, ow, w, st = m.get("v"), m.get("ts"), m.get("ow"), m.get("w"), m.get("st", False)
        if (v is not None and type(v) is not bytes) or type(ts) is not int or type(ow) is not bool \
                or type(w) is not int or not 1 <= w <= n or type(st) is not bool:
            raise CommandError("malformed coord_put request")
        durable = P.durable_count(m, n)
        if v is not None and len(v) > self.cfg.max_value_bytes:
            raise CommandError(f"value is {len(v)} bytes, above the limit of "
                               f"{self.cfg.max_value_bytes}")
        if m.get("ctx") is not None and type(m["ctx"]) is not bytes:
            raise CommandError("coord_put: ctx must be encoded context bytes")
        ctx = P.context(m.get("ctx"))
        traced = bool(m.get("tr"))
        if not durable and not traced:
            return await driver.coordinate_put_raw(self.host, p, k, V.Sibling(v, ts), ctx, ow, w,
                                                   st)
        # DURABLE k: the answer says how many fsyncs were confirmed (a coordinator from before
        # DURABLE answers the clock bytes alone, which the forwarding node refuses). KV.TRACE
        # on the forwarding node: this coordinator's own trace comes back with the clock
        # (kvnet/coordinator/trace.py).
        trace = Trace(self.name) if traced else None
        results = []
        raw = await driver.coordinate_put_raw(self.host, p, k, V.Sibling(v, ts), ctx, ow, w, st,
                                              None, durable, results, trace=trace)
        answer = {"c": raw}
        if durable:
            answer["d"] = len(results[0].durable)
        if trace is not None:
            await trace.settle(self.host.timeout)
            answer["t"] = [s.data() for s in trace.steps]
        return answer

    # ---- hints kept for a down primary ------------------------------------------------------

    def _hint_target(self, m, p):
        """The primary a hint request names: a primary of p other than this node."""
        h = m.get("h")
        if type(h) is not str or h == self.name or h not in self.rings.ring.preference_list(p):
            raise CommandError(f"hint target {h!r} is not another primary of partition {p}")
        return h

    async def _hput(self, m):
        p, k = P.partition_key(self, m)
        h = self._hint_target(m, p)
        raw = m.get("c")
        P.clock(raw)                       # validated before it is kept
        durable = P.durable(m)
        self.host.hints.add(h, p, k, raw)
        if durable:                        # DURABLE k: fsynced whatever the policy
            await self.host.after_hint(True)
            return P.DURABLE_ACK
        await self.host.after_hint()
        return True

    async def _hget(self, m):
        p, k = P.partition_key(self, m)
        return self.host.hints.get(self._hint_target(m, p), p, k)

    # ---- scans, counts, INFO, FLUSH ---------------------------------------------------------

    async def _mscan(self, m):
        """SCAN: scan a coordinator's list of partitions (FrontDoor.scan, coordinator/scan.py).
        {"ps": rising partitions, "c": the cursor in the first, "n": COUNT, "m": MATCH or None}
        -> [[p, live keys, examined, next cursor or 0], ...], refused for a partition this node
        does not hold by its ring."""
        if type(m) is not dict:
            raise CommandError("peer payload must be a map")
        ring = P.ring_of(self)
        ps, c, n, pattern = m.get("ps"), m.get("c"), m.get("n"), m.get("m")
        if type(ps) is not list or not 1 <= len(ps) <= ring.q \
                or not all(type(p) is int and 0 <= p < ring.q for p in ps) \
                or not all(a < b for a, b in zip(ps, ps[1:])):
            raise CommandError(f"mscan: 'ps' must be a rising list of partitions (Q={ring.q})")
        if type(c) is not int or not 0 <= c < (1 << 64) or S.partition_of(c, self.qbits) != ps[0]:
            raise CommandError("mscan: 'c' must be a cursor in the first partition of 'ps'")
        if type(n) is not int or not 1 <= n <= S.MAX_COUNT:
            raise CommandError(f"mscan: 'n' must be a count in [1, {S.MAX_COUNT}]")
        if pattern is not None and (type(pattern) is not bytes or len(pattern) > S.MAX_MATCH):
            raise CommandError(f"mscan: 'm' must be a pattern of at most {S.MAX_MATCH} bytes")
        return self.scan_partitions(ps, c, n, pattern)

    async def _scan(self, m):
        """One partition from a cursor: the request of coordinators from before `mscan`,
        answered for them during a rolling upgrade."""
        p = P.on_ring(self, m)
        c, n = m.get("c"), m.get("n")
        if type(c) is not int or not 0 <= c < (1 << 64) or S.partition_of(c, self.qbits) != p \
                or type(n) is not int or not 1 <= n <= 10_000:
            raise CommandError("malformed scan request")
        self.replica_of(p)
        keys, _, nxt = self.scan_one(p, c, n, S.REPLY_BYTES, None)
        return [nxt, keys]

    def scan_partitions(self, ps, cursor, count, pattern):
        """This node's answer to scanning partitions `ps` (kvnet/coordinator/scan.py,
        scan_partitions), refused unless it holds each of them by its ring: a partition it
        does not have here must never read as empty. Synchronous: no ring change comes
        between the check and the reads."""
        for p in ps:
            self.replica_of(p)
        matcher = None if pattern is None else compile_glob(pattern)
        return S.scan_partitions(
            ps, cursor, count,
            lambda p, c, budget, room: self.scan_one(p, c, budget, room, matcher), self.qbits)

    def scan_one(self, p, cursor, budget, room, matcher):
        """(live keys matching, keys examined, next cursor or 0 at its end) of partition p
        from cursor (a token), stopping once `budget` keys are examined (tombstones
        included) or the keys' bytes reach `room`."""
        part = self.replica.opened(p)
        if part is None:
            return [], 0, 0
        # The store orders a partition's keys by the token rotated left by qbits (its index
        # skips the partition's bits, docs/storage.md): token cursor <-> store cursor.
        q = self.qbits
        store = part.store
        at = rotate_token(cursor, q)
        chunk = max(1, min(1024, (4 << 20) // self.cfg.max_key_bytes))   # room passed by <= 4 MiB
        live, examined, size = [], 0, 0
        get, deleted = store.get, V.is_deleted_raw
        while True:
            nxt, keys = store.scan(at, min(budget - examined, chunk))
            examined += len(keys)
            for k in keys:
                raw = get(k)
                if raw is not None and not deleted(raw) and (matcher is None or matcher(k)):
                    live.append(k)
                    size += len(k)
            if not nxt:
                return live, examined, 0
            at = nxt
            if examined >= budget or size >= room:
                break
        after = ((nxt - 1) >> q) + 1                      # the free bits after the last key
        return live, examined, 0 if after >> (64 - q) else S.first_token(p, q) | after

    def owned_count(self):
        """Keys (tombstones included) in the partitions this node owns (DBSIZE's share)."""
        ring = self.rings.ring
        n = 0
        for p, part in list(self.replica.partitions.items()):
            if ring.owner(p) == self.name:
                n += len(part.store)
        return n

    async def _count(self, m):
        return self.owned_count()

    async def _info(self, m):
        return {"name": self.name, "host": self.cfg.host, "port": self.host.client_port(),
                "hints_pending": self.host.hints_pending()}

    def flush_local(self):
        for p in list(self.replica.partitions):
            self.replica.empty_partition(p)

    async def _flush(self, m):
        if m != {"all": True}:               # never emptied by a stray or malformed message
            raise CommandError("flush needs {'all': True}")
        self.flush_local()
        return True
