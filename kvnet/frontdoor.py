"""The front door's backend: what a node does for its clients (kvnet/resp/backend.py's
`Backend`), by running the coordinator (kvnet/coordinator/driver.py) against its node.

KV.GET/PUT/DEL and the Redis commands' plain GET and SET (with their fast lanes: a partition
this node serves alone, and the direct lane, kvnet/routes.py), whole-keyspace operations (SCAN,
DBSIZE, FLUSHDB) and introspection (KV.RING, KV.STATUS, INFO, KV.CLUSTER, KV.COMPACT). It needs
of its node only `FrontHost` (below), so a test or the simulator can give it a fake or a real
node alike.
"""
import asyncio
import logging

from kvcore import versions as V
from kvcore._native import select
from kvcore.zones import zone_table
from kvnet.coordinator import driver
from kvnet.coordinator import scan as S
from kvnet.coordinator import trace as _trace
from kvnet.coordinator.quorum import resolve_quorum
from kvnet.errors import CommandError, Unavailable
from kvnet.metrics import SIBLING_BUCKETS, count_siblings, telemetry
from kvnet.payload import context as _client_context
from kvnet.replicahandlers import ReplicaHost
from kvnet.resp.backend import LATER, Backend, Reply
from kvnet.resp.glob import compile_glob

_LocalDoor = select("kvnet.localdoor", "kvnet.localdoor_py").LocalDoor
log = logging.getLogger("kvnet.node")


class FrontHost(ReplicaHost):
    """What the front door's backend needs of its node (kvnet/node.py implements it): the
    coordinator's Cluster and the replica's host, its parts, and its services for INFO and
    KV.STATUS:"""

    rings: object          # the RingHolder (kvnet/ringholder.py)
    lanes: object          # the direct lane's connections (kvnet/routes.py Lanes)
    answers: object        # the replica's handlers (kvnet/replicahandlers.py)
    stats: dict            # counters: gets, puts, deletes
    gossip: object         # client_address, view, table, generation
    handoff: object        # pending(), stats
    changes: object        # request(op, payload), stats
    antientropy: object    # stats, catchup_pending(), reaper.stats
    compactor: object      # compact(partitions), stats


class FrontDoor(Backend):
    """Node `host`'s backend for its front door (kvnet/resp/server.py serves it)."""

    def __init__(self, host):
        self.host = host
        self.name = host.name
        self.cfg = host.cfg
        self.rings = host.rings
        self.lanes = host.lanes
        self.replica = host.replica
        self.answers = host.answers
        self.stats = host.stats
        self.timeout = host.timeout
        self.qbits = self.cfg.ring_size.bit_length() - 1
        # False: get_lww_now / set_overwrite_now check the key, then leave every plain GET and
        # SET to the coordinator's general path (tests/kvnet/test_set_paths.py compares them)
        self.fast_lanes = True
        self._client_addrs = {host.name: (self.cfg.host, self.cfg.client_port)}
        # KV.GETs by siblings returned (kvnet/metrics.py SIBLING_BUCKETS, then more), and the
        # siblings they returned in all
        self.sibling_counts = [0] * (len(SIBLING_BUCKETS) + 1)
        self.siblings_returned = 0

    # ---- helpers -------------------------------------------------------------------------

    @property
    def ring(self):
        return self.rings.ring

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
        return await driver.get(self.host, p, key, min(self._r(r), self._n()), strict)

    async def _write(self, key, sibling, context, overwrite, w=None, strict=False,
                     count="puts", durable=None):
        """The new clock's bytes once W replicas have it (and `durable` (DURABLE k) nodes have
        fsynced it); counted in stats[count] once its key is accepted (as _read counts a
        GET)."""
        p = self._partition(key)
        k = 0 if durable is None else resolve_quorum(durable, self._n(), "DURABLE")
        self.stats[count] += 1
        if k:
            return await driver.put_raw(self.host, p, key, sibling, context, overwrite,
                                        min(self._w(w), self._n()), strict, k)
        # (without DURABLE, put_raw's arguments as before it: the simulator's mutations wrap
        # put_raw with that signature, kvnet/sim/scenarios.py)
        return await driver.put_raw(self.host, p, key, sibling, context, overwrite,
                                    min(self._w(w), self._n()), strict)

    # ---- Backend: versioned API ----------------------------------------------------------

    async def get(self, key, r=None, strict=False):
        res = await self._read(key, r, strict)
        clock = res.clock
        siblings = V.values(clock)
        if res.found:
            count_siblings(self.sibling_counts, len(siblings))
            self.siblings_returned += len(siblings)
        return Reply(V.encode_context(V.join(clock)), siblings)

    async def put(self, key, value, context=None, w=None, strict=False, durable=None):
        self._check_value(value)
        ctx = self._context(context)
        raw = await self._write(key, V.sibling(bytes(value)), ctx, False, w, strict,
                                durable=durable)
        return V.encode_context(V.join(V.decode(raw)))

    async def delete(self, key, context=None, w=None, strict=False, durable=None):
        ctx = self._context(context)
        raw = await self._write(key, V.tombstone(), ctx, ctx is None, w, strict, "deletes",
                                durable)
        return V.encode_context(V.join(V.decode(raw)))

    # ---- Backend: Redis-compatible API ---------------------------------------------------

    def local_door(self, commands):
        """The compiled door for plain GETs and SETs of the partitions this node serves alone
        or on the direct lane (their get_lww_now / set_overwrite_now path, without the Python
        calls); None without it."""
        return None if _LocalDoor is None else _LocalDoor(
            commands, self.host, self.rings, self.lanes, self.replica, self.stats, self.cfg)

    def _fast_lane(self, p):
        """Partition p's fast lane now: None when this node serves it alone, (the ready
        connections to its other primaries, its Preflist) on the direct lane, else LATER."""
        if not self.fast_lanes:
            return LATER
        routes = self.rings.routes
        if p in routes.solo:
            return None
        lane = self.lanes.pick(routes.lane(p))
        return LATER if lane is None else lane

    def get_lww_now(self, key):
        p = self._partition(key)
        lane = self._fast_lane(p)
        if lane is LATER:
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
        return driver.get_direct(self.host, p, key, raw, min(self.cfg.r, len(pl.targets)), pl, conns)

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
        """The one SET path. Its fast lane (the compiled door takes the same one in C, with
        the same mint and replication, kvnet/localdoor.pyx): a partition this node serves
        alone, or one on the direct lane (Routes.lane, Lanes.pick: this node one of its
        primaries, every one up and connected), is minted and stored here with the
        coordinator's own mint (LocalReplica.mint_raw) and replicated by put_direct; else
        LATER, having done nothing, and set_overwrite takes the coordinator's general path."""
        p = self._partition(key)
        self._check_value(value)
        lane = self._fast_lane(p)
        rep = self.replica
        always = rep.fsync == "always"
        if lane is LATER or (lane is None and always):
            return LATER              # (alone under fsync=always: the ack waits for the commit)
        raw = rep.mint_raw(p, key, V.sibling(bytes(value)), None, True)
        self.stats["puts"] += 1
        if lane is None:
            return None
        conns, pl = lane
        fut = driver.put_direct(self.host, p, key, raw, min(self.cfg.w, len(pl.targets)), pl, conns)
        # fsync=always: the replicas ack once durable; the local copy counts once synced too
        return rep.durable(fut, p) if always else fut

    async def set_overwrite(self, key, value):
        done = self.set_overwrite_now(key, value)
        if done is LATER:
            await self._write(key, V.sibling(bytes(value)), None, True)
        elif done is not None:
            await done

    async def mset(self, pairs):
        for k, v in pairs:
            self._check_value(v)
        await asyncio.gather(*(self.set_overwrite(k, v) for k, v in pairs))

    async def delete_overwrite(self, key):
        if await self.get_lww(key) is None:
            return False
        await self._write(key, V.tombstone(), None, True, count="deletes")
        return True

    # ---- Backend: whole-keyspace operations ------------------------------------------------

    async def dbsize_estimate(self):
        """Keys in the stores of each partition's owner (tombstones included): an estimate."""
        others = [n for n in self.ring.nodes if n != self.name and self.host.is_up(n)]
        counts = await asyncio.gather(*(self.host.call(n, "count", {}, self.timeout) for n in others),
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
        state = self.rings.state
        prefs = state.current.preference_list(p)
        if self.name in prefs:
            return (self.name,)
        up = [n for n in prefs if self.host.is_up(n)]
        if state.next is not None and len(up) > 1:
            keep = state.next.preference_list(p)
            up.sort(key=lambda n: n not in keep)
        return up

    def _ask_scan(self, node, payload):
        try:
            return self.host.call_future(node, "mscan", payload, self.timeout)
        except Exception as exc:              # (no address known)
            fut = self.host.loop.create_future()
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
        down = [n for n in self.ring.nodes if not self.host.is_up(n)]
        if down:
            raise Unavailable(f"FLUSHDB needs every member up; down: {', '.join(down)}")
        results = await asyncio.gather(*(self.host.call(n, "info", {}, self.timeout)
                                         for n in self.ring.nodes if n != self.name),
                                       return_exceptions=True)
        bad = [str(r) for r in results if isinstance(r, Exception)]
        if bad:
            raise Unavailable(f"FLUSHDB needs every member up: {'; '.join(bad)}")
        hinted = sum(self.host.handoff.pending().values()) + sum(
            r.get("hints_pending", 0) for r in results if isinstance(r, dict))
        if hinted:
            raise Unavailable(f"FLUSHDB is refused while {hinted} hints are pending; "
                              "retry once they are delivered (INFO hints_pending)")
        self.answers.flush_local()
        await asyncio.gather(*(self.host.call(n, "flush", {"all": True}, self.timeout)
                               for n in self.ring.nodes if n != self.name))

    # ---- Backend: introspection ------------------------------------------------------------

    async def _client_addr(self, node):
        addr = self.host.gossip.client_address(node)
        if addr is not None:
            return addr
        if node not in self._client_addrs:
            try:
                info = await self.host.call(node, "info", {}, self.timeout)
                self._client_addrs[node] = (info["host"], info["port"])
            except Exception:
                return None
        return self._client_addrs[node]

    async def ring_info(self):
        nodes = []
        ring = self.ring
        zone = dict(ring.members)
        for n in ring.nodes:
            addr = await self._client_addr(n)
            nodes.append({"name": n, "host": addr[0] if addr else None,
                          "port": addr[1] if addr else None, "up": self.host.is_up(n),
                          "zone": zone[n]})
        return {"epoch": ring.epoch, "q": ring.q, "n": ring.n,
                "nodes": nodes, "owners": list(ring.owners), "zones": zone_table(ring)}

    async def preflist(self, key):
        p = self._partition(key)
        return [{"node": n, "partition": p, "primary": True, "up": self.host.is_up(n)}
                for n in self.ring.preference_list(p)]

    async def status(self):
        counts = {n: 0 for n in self.ring.nodes}
        zones = dict(self.ring.members)
        for o in self.ring.owners:
            counts[o] += 1
        view = self.host.gossip.view()
        members = []
        for n in sorted(set(self.ring.nodes) | set(view)):
            row = {"name": n, "up": self.host.is_up(n), "partitions": counts.get(n, 0)}
            entry = self.host.gossip.table.get(n)
            row["zone"] = zones[n] if n in zones else getattr(entry, "zone", None)
            row["status"] = entry.status if entry is not None else None   # joining, valid, ...
            if n == self.name:
                row.update(state="up", heartbeat_age_s=0.0, suspected_by=[],
                           generation=self.host.gossip.generation)
            else:
                v = view.get(n, {})
                row.update(state=v.get("state", "unknown"), heartbeat_age_s=v.get("heartbeat_age_s"),
                           suspected_by=v.get("suspected_by", []), generation=v.get("generation"))
            members.append(row)
        ae = self.host.antientropy
        st = ae.stats
        return {"node": self.name, "ring_epoch": self.ring.epoch, "members": members,
                "zones": zone_table(self.ring),
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
            return {"staged": await self.host.changes.request("stage", {"op": op, "node": node})}
        if op == "relayout":                # stage a zone relayout (CANCEL: unstage it)
            staged = await self.host.changes.request(
                "stage", {"op": op, "node": (node or "").lower()})
            return {"staged": staged, "relayout": (node or "").lower() != "cancel"}
        if op in ("plan", "commit", "transfers"):
            return await self.host.changes.request(op)
        raise CommandError(f"unknown KV.CLUSTER subcommand {op!r}: "
                           "JOIN|LEAVE|REMOVE|CLEAR node, RELAYOUT [CANCEL], PLAN, COMMIT, "
                           "TRANSFERS")

    async def compact(self, partition=None):
        """KV.COMPACT [P]: merge every partition this node holds (or P) now."""
        if partition is not None and partition not in self.replica.partitions:
            raise CommandError(f"{self.name} holds no partition {partition}")
        out = await self.host.compactor.compact(None if partition is None else [partition])
        return {"node": self.name, **out}

    async def info_section(self):
        return {"ringkv_node": self.name, "ring_epoch": self.ring.epoch, "ring_size": self.ring.q,
                "n_val": self.ring.n, "members": len(self.ring.nodes),
                "partitions_open": len(self.replica.partitions), "fsync": self.cfg.fsync,
                **self.replica.group.stats(),
                **self.replica.fault_stats(),
                "hints_pending": sum(self.host.handoff.pending().values()),
                **{f"hints_{k}": v for k, v in self.host.handoff.stats.items()},
                **{f"ae_{k}": v for k, v in self.host.antientropy.stats.items() if v is not None},
                **{f"reaper_{k}": v for k, v in self.host.antientropy.reaper.stats.items()},
                **{f"transfer_{k}": v for k, v in self.host.changes.stats.items()},
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
        st = self.host.compactor.stats
        out.update(merges=st["merges"], merge_failures=st["merge_failures"],
                   merge_bytes_reclaimed=st["bytes_reclaimed"],
                   merge_seconds=round(st["merge_seconds"], 3),
                   hint_compactions=st["hint_compactions"])
        return out

    # ---- KV.TRACE ----------------------------------------------------------------------------

    async def trace(self, op, key, value=None, context=None, quorum=None, strict=False,
                    command=""):
        """KV.TRACE: run one GET, SET, DEL, KV.GET, KV.PUT or KV.DEL through the coordinator's
        general path with a trace, and return what it did (kvnet/coordinator/trace.py)."""
        return await _trace.run(self, op, key, value, context, quorum, strict, command)

    async def telemetry(self):
        """KV.STATS: read staleness per R and canary convergence per W (kvnet/metrics.py)."""
        return telemetry(self.host)
