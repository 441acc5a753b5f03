"""Real ringkv nodes in one process on a SimLoop and a SimNetwork, with clients, faults and a
checker (docs/simulation.md). kvnet's node, membership, coordinator, handoff and
anti-entropy code runs as it is; only the clock, the network, randomness and executors are
the simulation's."""
import asyncio
import contextlib
import dataclasses
import os
import random

from kvcore import versions as V
from kvnet.config import load
from kvnet.errors import KVNetError
from kvnet.node import Node
from kvnet.sim.loop import SimLoop, collect_less
from kvnet.sim.net import CURRENT, SimNetwork
from kvnet.sim.storage import MemoryDisk

STORAGES = ("memory", "disk")

SECRET = "simulation-secret-" + "s" * 32


def _no_sync(fd):
    """os.fsync and os.fdatasync in a run on memory storage (SimCluster.stores)."""
    os.fstat(fd)                                    # (a bad descriptor is still an error)


def ring_size_for(nodes):
    """Q for a cluster of this size: a power of two, at least 64 and 8 per node."""
    q = 64
    while q < 8 * nodes:
        q *= 2
    return q


class SimCluster:
    """`size` nodes n0..n{size-1} (N=n, R=W=2 by default) with their data directories under
    `root`; `settings` go to every node's config. ring_size: Q, by default ring_size_for(size).
    storage: "memory" (the stores are kvnet/sim/storage.py's twin on one MemoryDisk) or
    "disk" (real LogStores under `root`)."""

    def __init__(self, root, size=5, seed=1, n=3, ring_size=None, latency=0.0005, loss=0.0,
                 storage="memory", **settings):
        if storage not in STORAGES:
            raise ValueError(f"unknown storage {storage!r}: one of {', '.join(STORAGES)}")
        ring_size = ring_size or ring_size_for(size)
        self.storage = storage
        self.disk = MemoryDisk() if storage == "memory" else None
        self.root, self.size, self.seed = root, size, seed
        self.rng = random.Random(seed)          # the scenario's own choices
        self.loop = SimLoop(host_var=CURRENT)
        self.net = SimNetwork(self.loop, random.Random(seed * 7919 + 1), latency=latency,
                              loss=loss)
        self.loop.net = self.net
        self.names = [f"n{i}" for i in range(size)]
        members = [f"{nm}@127.0.0.1:{20000 + i}" for i, nm in enumerate(self.names)]
        settings.setdefault("gossip_interval_ms", 200)
        settings.setdefault("ae_interval_ms", 1000)
        settings.setdefault("hint_replay_interval_ms", 200)
        settings.setdefault("request_timeout_ms", 1000)
        if storage == "memory":         # (a group commit syncs each store: in memory, no syncfs)
            settings.setdefault("sync_method", "fdatasync")
        self.cfgs = [load(name=nm, port=10000 + i, peer_port=20000 + i, n=n,
                          ring_size=ring_size, members=members, cluster_secret=SECRET,
                          data_dir=os.path.join(root, nm), fsync="interval", **settings)
                     for i, nm in enumerate(self.names)]
        self.nodes = {}
        self.crashed = set()
        self.lost_bytes = 0
        self.events = []        # [(seconds since t0, what)]: the faults of a run
        self.t0 = 0.0
        self.watch = []         # keys whose values a crash may lose (lost_in_crash)
        self.lost_in_crash = set()      # (node, key, value) a crash took from node's store
        self._held_at_crash = {}        # node -> {key: values} when it crashed
        self.paused = set()
        self.disk_faulty = set()
        self.reaped = 0                 # tombstones reaped by nodes since stopped
        self.gone = set()               # nodes that left the ring (never started again)

    def event(self, what):
        """Note a fault (or a heal) in the run's events, and in the trace if one is kept."""
        at = round(self.loop.time() - self.t0, 3)
        self.events.append((at, what))
        if self.net.trace is not None:
            self.net.trace(f"{self.loop.time():.6f} EVENT {what}")

    # -- running code as a node --
    def as_node(self, name, coro):
        """A task running `coro` as node `name` (its network context)."""
        return self.loop.create_task(coro, context=self.net.context(name).copy())

    def run(self, coro):
        with self.stores(), collect_less():
            return self.loop.run_until_complete(coro)

    @contextlib.contextmanager
    def stores(self):
        """While the cluster runs: with storage="memory", the replica's and the hint log's
        stores are opened on this cluster's MemoryDisk, and the byte-level writes that take
        the compiled LogStore (kvcore/replicawrite.pyx, the replica side of the direct lane
        in kvnet/localdoor.pyx) run their pure-Python twins, which use the public API; and
        os.fsync and os.fdatasync do nothing: the few real files a node keeps (generation,
        PEERS, IDENTITY, TRUSTED, TREE) are never cut by a simulated crash, so syncing them
        only waited for the machine's disk (a 1,000-node start makes thousands)."""
        if self.disk is None:
            yield
            return
        import kvcore.replicawrite_py
        import kvnet.handoff.hintlog
        import kvnet.replica
        import kvnet.replicahandlers
        patches = [(kvnet.replica, "LogStore", self.disk), (kvnet.handoff.hintlog, "LogStore",
                                                             self.disk),
                   (kvnet.replica, "RW", kvcore.replicawrite_py),
                   (kvnet.replicahandlers, "_LaneReplica", None),
                   (os, "fsync", _no_sync), (os, "fdatasync", _no_sync)]
        saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
        try:
            for mod, name, value in patches:
                setattr(mod, name, value)
            yield
        finally:
            for mod, name, value in saved:
                setattr(mod, name, value)

    async def sleep(self, seconds):
        await asyncio.sleep(seconds)

    # -- lifecycle --
    async def start(self):
        await asyncio.gather(*(self.start_node(nm) for nm in self.names))

    async def start_node(self, name, cfg=None):
        """Start node `name` with its configured settings (or `cfg`)."""
        cfg = cfg or self.cfgs[self.names.index(name)]
        self.net.restart(name)
        self.crashed.discard(name)
        node = self.nodes[name] = Node(cfg)
        node.on_left = lambda: self._left(name, node)
        await self.as_node(name, node.start())
        before = self._held_at_crash.pop(name, None)
        if before is not None:          # what the crash took: held then, not after the open
            for key, values in before.items():
                for value in values - self.held(name, key):
                    self.lost_in_crash.add((name, key, value))

    # -- ring changes, through the real membership code (what kvctl join/leave/commit ask) --
    def add_member(self, name):
        """A new node `name`, configured to join through n0 (kvnode start --join): start it
        with start_node, then stage its join and commit (change_ring)."""
        i = len(self.names)
        base = self.cfgs[0]
        seed = base.members[0]
        cfg = dataclasses.replace(base, name=name, port=10000 + i, peer_port=20000 + i,
                                  join=True, data_dir=os.path.join(self.root, name))
        cfg = dataclasses.replace(cfg, members=(seed, dataclasses.replace(
            seed, name=name, peer_port=20000 + i)))
        self.names.append(name)
        self.cfgs.append(cfg)

    async def admin(self, via, op, who=None):
        """KV.CLUSTER op [who] through node `via` (answered by the claimant)."""
        return await self.as_node(via, self.nodes[via].front.cluster_admin(op, who))

    async def change_ring(self, op, who, timeout=30.0):
        """Stage `op` (join or leave) of node `who`, commit, and wait until every node has
        the settled ring. Retries the staging and the commit while they are refused (a
        joiner not seen up yet, a commit while a node is down). Returns the settled epoch,
        or None if it did not settle within `timeout` simulated seconds."""
        deadline = self.loop.time() + timeout
        for step in ((op, who), ("commit", None)):
            while True:
                via = self.serving()[0]
                try:
                    res = await self.admin(via, *step)
                    break
                except (KVNetError, OSError):     # refused or not answered: again
                    if self.loop.time() > deadline:
                        return None
                    await asyncio.sleep(0.2)
        epoch = res["epoch"]
        while self.loop.time() < deadline:
            states = [n.ring_state for nm, n in self.nodes.items() if nm != who or op != "leave"]
            if all(st.epoch > epoch and not st.moving for st in states):
                return max(st.epoch for st in states)
            await asyncio.sleep(0.2)
        return None

    def _left(self, name, node):
        """Node `name` is out of a settled ring: it exits (as kvnode does) a second later."""
        async def leave():
            await asyncio.sleep(1.0)
            if self.nodes.get(name) is node:
                del self.nodes[name]
                self.gone.add(name)
                self._count(node)
                await node.stop()
        self.as_node(name, leave())

    async def restart(self, name):
        """Stop node `name` cleanly (its stores synced and closed, as far as its disk lets
        it) and start it again. Returns the error its stop raised, or None."""
        node = self.nodes.pop(name)
        self.disk_faulty.discard(name)
        self._count(node)
        error = None
        try:
            await self.as_node(name, node.stop())
        except Exception as exc:        # (a store that cannot sync closes as after a crash)
            error = exc
            # its stop may have ended before closing some stores: let them go as a crash
            # would (a store closed already is left as it is)
            for p in sorted(node.replica.partitions):
                node.replica.partitions[p].store._abandon()
        await self.start_node(name)
        return error

    def _count(self, node):
        """Keep a leaving node's counters (a restart starts them again)."""
        ae = getattr(node, "antientropy", None)
        if ae is not None:
            self.reaped += ae.reaper.stats["reaped"]

    def reaped_total(self):
        return self.reaped + sum(n.antientropy.reaper.stats["reaped"]
                                 for n in self.nodes.values()
                                 if getattr(n, "antientropy", None) is not None)

    async def stop(self):
        for name in sorted(self.paused):
            self.resume(name)
        for name in list(self.nodes):
            await self.as_node(name, self.nodes.pop(name).stop())

    async def crash(self, name, lose_unsynced=True):
        """The node's machine fails: its connections reset, its stores closed without a sync,
        and (lose_unsynced) each partition's active segment cut back to what its last sync
        covered, as a power cut loses pages the disk never got (the open finds a torn tail).
        lose_unsynced=False: a kill of the process only (the page cache keeps everything)."""
        if name in self.paused:
            raise ValueError(f"{name} is paused: resume it first")
        self._held_at_crash[name] = {k: self.held(name, k) for k in self.watch}
        node = self.nodes.pop(name)
        self.crashed.add(name)
        self.disk_faulty.discard(name)
        self._count(node)
        self.net.crash(name)
        if self.disk is not None:
            self.lost_bytes += self.disk.crash(node.cfg.data_dir, lose_unsynced)
            node.replica.partitions = {}
            await self.as_node(name, node.stop())
            return
        cuts = []
        for part in node.replica.partitions.values():
            st = part.store.stats()
            if lose_unsynced and st["synced_offset"] < st["active_offset"]:
                segs = sorted(f for f in os.listdir(part.path) if f.endswith(".data"))
                if segs:
                    keep = max(32, st["synced_offset"])
                    cuts.append((os.path.join(part.path, segs[-1]), keep))
                    self.lost_bytes += st["active_offset"] - keep     # (records, not the
            part.store._abandon()                                     # space reserved ahead)
        node.replica.partitions = {}
        for path, size in cuts:
            if os.path.getsize(path) > size:
                os.truncate(path, size)
        await self.as_node(name, node.stop())

    def pause(self, name):
        """Stop node `name`'s process (SIGSTOP): it neither reads nor sends nor runs a timer
        until resume(name); its peers' requests to it time out meanwhile."""
        self.paused.add(name)
        self.loop.pause(name)

    def resume(self, name):
        self.paused.discard(name)
        self.loop.resume(name)

    def disk_errors(self, name, err=None, fsync=False):
        """From now on every write to a store node `name` has open fails with OSError(err)
        (EIO, ENOSPC); fsync: its next store sync fails too (that store turns read-only for
        good, until a restart). err None: the disk works again."""
        node = self.nodes[name]
        for p in sorted(node.replica.partitions):
            store = node.replica.partitions[p].store
            if err is None:
                store._fail_next(None)
            elif fsync:
                store._fail_next("fdatasync", err, times=1)
            else:
                store._fail_next("write", err, times=1 << 30)
        (self.disk_faulty.discard if err is None else self.disk_faulty.add)(name)

    def read_only_partitions(self, name):
        """How many of node `name`'s partitions turned read-only (a failed sync)."""
        parts = self.nodes[name].replica.partitions
        return sum(1 for p in sorted(parts) if parts[p].store.stats()["read_only"])

    def up(self):
        return [nm for nm in self.names if nm in self.nodes]

    def serving(self):
        """Nodes up and not paused (where a client's request gets an answer)."""
        return [nm for nm in self.names if nm in self.nodes and nm not in self.paused]

    # -- client calls, as the node that coordinates them --
    async def get(self, name, key, r=None):
        return await self.as_node(name, self.nodes[name].front.get(key, r=r))

    async def put(self, name, key, value, context=None, w=None):
        return await self.as_node(name, self.nodes[name].front.put(key, value, context=context, w=w))

    async def delete(self, name, key, context=None, w=None):
        return await self.as_node(name, self.nodes[name].front.delete(key, context=context, w=w))

    # -- looking at replicas directly --
    def replicas_of(self, key):
        node = self.nodes[self.up()[0]]
        p = node.ring.partition_of(key)
        return p, list(node.ring.preference_list(p))

    def held(self, name, key):
        """The values node `name` holds for key: its store's siblings, nothing if it holds
        none or the partition is not open there (never opens one)."""
        node = self.nodes.get(name)
        if node is None:
            return set()
        part = node.replica.opened(node.ring.partition_of(key))
        return set() if part is None else decoded_values(part.store.get(key))

    def hinted(self, name, key):
        """The values node `name` holds for key as hints (for whichever nodes)."""
        node = self.nodes.get(name)
        if node is None or node.hints is None:
            return set()
        p = node.ring.partition_of(key)
        out = set()
        for target in node.hints.holders(p, key):
            out |= decoded_values(node.hints.get(target, p, key))
        return out

    def stored(self, name, key):
        """The clock node `name` holds for key (None if none), read from its store."""
        node = self.nodes.get(name)
        if node is None:
            return None
        p = node.ring.partition_of(key)
        raw = node.replica.read_raw(p, key)
        return None if raw is None else raw


class History:
    """What clients were told, per key, for the checker: every acknowledged write's unique
    value and the nodes that held it (in their store, or as a hint) when the client was
    told; the values each acknowledged write or delete superseded (its context came from a
    read that returned them); and those a write that failed may have superseded (it may
    have reached a replica all the same). `w`: the write quorum the clients asked for."""

    def __init__(self, w=2):
        self.w = w
        self.acked = {}         # key -> [value]
        self.holders = {}       # (key, value) -> {node}: held it when acknowledged
        self.superseded = {}    # key -> {value}: by acknowledged writes and deletes
        self.maybe = {}         # key -> {value}: by writes and deletes that failed
        self.unacked = 0
        self.acks = 0
        self.reads = 0

    def ack(self, key, value, read_values, holders=()):
        if value is not None:
            self.acked.setdefault(key, []).append(value)
            self.holders[(key, value)] = set(holders)
        self.superseded.setdefault(key, set()).update(read_values)
        self.acks += 1

    def fail(self, key, read_values):
        self.maybe.setdefault(key, set()).update(read_values)
        self.unacked += 1

    def check(self, final, lost_in_crash=frozenset()):
        """Violations of: every acknowledged write is there (a value or a sibling) unless a
        write or delete superseded it, or at least W nodes held it when it was acknowledged
        and a crash took it from every one of them before they synced it; nothing an
        acknowledged one superseded comes back. `final`: key -> set of values read with
        R=all after the heal; `lost_in_crash`: (node, key, value) a crash took."""
        out = []
        for key in sorted(set(self.acked) | set(self.superseded)):
            got = final.get(key, set())
            gone = self.superseded.get(key, set())
            may_go = gone | self.maybe.get(key, set())
            for value in self.acked.get(key, []):
                if value in got or value in may_go:
                    continue
                held = self.holders.get((key, value), set())
                if len(held) >= self.w and all((n, key, value) in lost_in_crash for n in held):
                    continue            # every node that acknowledged it crashed unsynced
                crashed = sorted(n for n in held if (n, key, value) in lost_in_crash)
                out.append(f"lost: {key!r} = {value!r} was acknowledged (held by "
                           f"{', '.join(sorted(held)) or 'no node'} then, W={self.w}"
                           + (f"; a crash took it from {', '.join(crashed)}" if crashed else "")
                           + ")")
            for value in sorted(got & gone):
                out.append(f"resurrected: {key!r} = {value!r} was superseded")
        return out


async def client(cluster, history, cid, keys, until, rate, w=None, delete_share=0.1,
                 timeout=5.0, window=None, slide=0.0):
    """One client: read-modify-write of random keys (a read, then a write or a delete with
    the read's context, through a random live node) at `rate` operations per second. The
    keys: any of `keys`, or (window) `window` of them that slide on by `slide` keys a
    second, so keys left behind keep their last value or tombstone (a reaper's work). When
    the read fails, a write without a context (a new sibling; never a blind delete, which
    would supersede what it never saw). A request not answered within `timeout` (a paused
    node) fails."""
    rng = random.Random(cluster.rng.getrandbits(64))
    seq = 0
    loop = cluster.loop
    t0 = loop.time()
    while loop.time() < until:
        await asyncio.sleep(rng.expovariate(rate))
        up = cluster.up()
        if not up:
            continue
        name = rng.choice(up)
        if window is None:
            key = rng.choice(keys)
        else:
            first = min(int((loop.time() - t0) * slide), len(keys) - window)
            key = keys[first + rng.randrange(window)]
        context, read = None, set()
        try:
            reply = await asyncio.wait_for(asyncio.shield(cluster.get(name, key)), timeout)
            history.reads += 1
            context = reply.context
            read = {s.value for s in reply.siblings if s.value is not None}
        except Exception:
            pass
        seq += 1
        try:
            if context is not None and rng.random() < delete_share:
                await asyncio.wait_for(asyncio.shield(
                    cluster.delete(name, key, context=context, w=w)), timeout)
                history.ack(key, None, read)
            else:
                value = b"c%d-%d" % (cid, seq)
                await asyncio.wait_for(asyncio.shield(
                    cluster.put(name, key, value, context=context, w=w)), timeout)
                history.ack(key, value, read, [nm for nm in cluster.up()
                                               if value in cluster.held(nm, key)
                                               or value in cluster.hinted(nm, key)])
        except Exception:
            history.fail(key, read)


async def final_reads(cluster, keys):
    """Every key read with R=all through the first live node: key -> set of values."""
    name = cluster.up()[0]
    out = {}
    for key in keys:
        reply = await cluster.get(name, key, r="all")
        out[key] = {s.value for s in reply.siblings if s.value is not None}
    return out


def converged(cluster, keys):
    """Every live replica of every key holds the same clock bytes."""
    for key in keys:
        _, prefs = cluster.replicas_of(key)
        held = {cluster.stored(nm, key) for nm in prefs if nm in cluster.nodes}
        if len(held) > 1:
            return False
    return True


def decoded_values(raw):
    """The sibling values (not tombstones) of stored clock bytes."""
    if raw is None:
        return set()
    return {s.value for s in V.values(V.decode(raw)) if s.value is not None}
