"""Real ringkv nodes in one process on a SimLoop and a SimNetwork, with clients, faults and a
checker (docs/simulation.md). kvnet's node, membership, coordinator, handoff and
anti-entropy code runs as it is; only the clock, the network, randomness and executors are
the simulation's."""
import asyncio
import os
import random

from kvcore import versions as V
from kvnet.config import load
from kvnet.node import Node
from kvnet.sim.loop import SimLoop
from kvnet.sim.net import CURRENT, SimNetwork

SECRET = "simulation-secret-" + "s" * 32


class SimCluster:
    """`size` nodes n0..n{size-1} (N=n, R=W=2 by default) with their data directories under
    `root`; `settings` go to every node's config."""

    def __init__(self, root, size=5, seed=1, n=3, ring_size=64, latency=0.0005, loss=0.0,
                 **settings):
        self.root, self.size, self.seed = root, size, seed
        self.rng = random.Random(seed)          # the scenario's own choices
        self.loop = SimLoop()
        self.net = SimNetwork(self.loop, random.Random(seed * 7919 + 1), latency=latency,
                              loss=loss)
        self.loop.net = self.net
        self.names = [f"n{i}" for i in range(size)]
        members = [f"{nm}@127.0.0.1:{20000 + i}" for i, nm in enumerate(self.names)]
        settings.setdefault("gossip_interval_ms", 200)
        settings.setdefault("ae_interval_ms", 1000)
        settings.setdefault("hint_replay_interval_ms", 200)
        settings.setdefault("request_timeout_ms", 1000)
        self.cfgs = [load(name=nm, port=10000 + i, peer_port=20000 + i, n=n,
                          ring_size=ring_size, members=members, cluster_secret=SECRET,
                          data_dir=os.path.join(root, nm), fsync="interval", **settings)
                     for i, nm in enumerate(self.names)]
        self.nodes = {}
        self.crashed = set()
        self.lost_bytes = 0

    # -- running code as a node --
    def as_node(self, name, coro):
        """A task running `coro` as node `name` (its network context)."""
        return self.loop.create_task(coro, context=self.net.context(name).copy())

    def run(self, coro):
        return self.loop.run_until_complete(coro)

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
        await self.as_node(name, node.start())

    async def stop(self):
        for name in list(self.nodes):
            await self.as_node(name, self.nodes.pop(name).stop())

    async def crash(self, name, lose_unsynced=True):
        """The node's machine fails: its connections reset, its stores closed without a sync,
        and (lose_unsynced) each partition's active segment cut back to what its last sync
        covered, as a power cut loses pages the disk never got (the open finds a torn tail).
        lose_unsynced=False: a kill of the process only (the page cache keeps everything)."""
        node = self.nodes.pop(name)
        self.crashed.add(name)
        self.net.crash(name)
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

    def up(self):
        return [nm for nm in self.names if nm in self.nodes]

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
    value; the values each acknowledged write or delete superseded (its context came from a
    read that returned them); and those a write that failed may have superseded (it may
    have reached a replica all the same)."""

    def __init__(self):
        self.acked = {}         # key -> [value]
        self.superseded = {}    # key -> {value}: by acknowledged writes and deletes
        self.maybe = {}         # key -> {value}: by writes and deletes that failed
        self.unacked = 0
        self.acks = 0
        self.reads = 0

    def ack(self, key, value, read_values):
        if value is not None:
            self.acked.setdefault(key, []).append(value)
        self.superseded.setdefault(key, set()).update(read_values)
        self.acks += 1

    def fail(self, key, read_values):
        self.maybe.setdefault(key, set()).update(read_values)
        self.unacked += 1

    def check(self, final):
        """Violations of: every acknowledged write is there (a value or a sibling) unless a
        write or delete superseded it; nothing an acknowledged one superseded comes back.
        `final`: key -> set of values read with R=all after the heal."""
        out = []
        for key in sorted(set(self.acked) | set(self.superseded)):
            got = final.get(key, set())
            gone = self.superseded.get(key, set())
            may_go = gone | self.maybe.get(key, set())
            for value in self.acked.get(key, []):
                if value not in got and value not in may_go:
                    out.append(f"lost: {key!r} = {value!r} was acknowledged")
            for value in sorted(got & gone):
                out.append(f"resurrected: {key!r} = {value!r} was superseded")
        return out


async def client(cluster, history, cid, keys, until, rate, w=None, delete_share=0.1):
    """One client: read-modify-write of random keys (a read, then a write or a delete with
    the read's context, through a random live node) at `rate` operations per second."""
    rng = random.Random(cluster.rng.getrandbits(64))
    seq = 0
    loop = cluster.loop
    while loop.time() < until:
        await asyncio.sleep(rng.expovariate(rate))
        up = cluster.up()
        if not up:
            continue
        name = rng.choice(up)
        key = rng.choice(keys)
        try:
            reply = await cluster.get(name, key)
            history.reads += 1
        except Exception:
            continue
        read = {s.value for s in reply.siblings if s.value is not None}
        seq += 1
        try:
            if rng.random() < delete_share:
                await cluster.delete(name, key, context=reply.context, w=w)
                history.ack(key, None, read)
            else:
                value = b"c%d-%d" % (cid, seq)
                await cluster.put(name, key, value, context=reply.context, w=w)
                history.ack(key, value, read)
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
    return set() if raw is None else set(V.values(V.decode(raw)))
