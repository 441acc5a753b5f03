"""Measurements on simulated clusters (docs/simulation.md, "Scale"): how many gossip rounds a
new member takes to be known by every node, against the cluster's size."""
import asyncio
import dataclasses
import tempfile
import time

from kvnet.sim.cluster import SimCluster, ring_size_for  # noqa: F401 (measure's users)
from kvnet.sim.loop import determinism, inline_pools, quiet


def join_rounds(nodes, seed=1, limit=600.0):
    """Start `nodes` nodes, let gossip settle, then start one more as a joining member
    (its members: one seed and itself). Returns a dict: the gossip rounds (interval) until
    every node's member table holds the newcomer, the simulated seconds that took, the
    network's messages meanwhile, and the wall seconds of the whole run."""
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ringkv-sim-") as tmp:
        c = SimCluster(tmp, size=nodes, seed=seed, ring_size=ring_size_for(nodes))
        with determinism(seed, c.loop.time), quiet(), inline_pools():
            out = c.run(_join(c, limit))
    out["wall_s"] = round(time.perf_counter() - wall, 2)
    out["nodes"] = nodes
    return out


async def _join(c, limit):
    await c.start()
    interval = c.cfgs[0].gossip_interval_ms / 1000.0
    await asyncio.sleep(5 * interval)                   # (every node up and gossiping)
    seed_member = c.cfgs[0].members[0]
    name = "joiner"
    cfg = dataclasses.replace(c.cfgs[0], name=name, port=19999, peer_port=29999, join=True,
                              data_dir=c.cfgs[0].data_dir + "-joiner")
    cfg = dataclasses.replace(cfg, members=(seed_member,
                                            dataclasses.replace(seed_member, name=name,
                                                                peer_port=29999)))
    t0 = c.loop.time()
    writes0 = c.net.stats["writes"]
    asyncio.ensure_future(c.start_node(name, cfg))     # (a joiner's start waits for the ring)
    known = None
    while c.loop.time() - t0 < limit:
        await asyncio.sleep(interval / 4)
        if all(name in n.gossip.table for n in c.nodes.values()):
            known = c.loop.time() - t0
            break
    out = {"known_after_s": None if known is None else round(known, 3),
           "rounds": None if known is None else round(known / interval, 1),
           "messages": c.net.stats["writes"] - writes0}
    await c.stop()
    return out
