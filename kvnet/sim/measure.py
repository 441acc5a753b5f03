"""Measurements on simulated clusters (docs/simulation.md, "Scale"): gossip dissemination of a
new member against the cluster's size, the failure detector's false positives under loss,
claim balance and movement, and the hint backlog and repair after a partition heals.

Each returns a dict of plain values (benchmarks/sim_scale.py prints them as tables and
plots them). Wall and CPU seconds are measured around the simulated run; everything else
is simulated and seeded."""
import asyncio
import contextlib
import dataclasses
import random
import tempfile
import time

from kvnet.sim.cluster import History, SimCluster, client, converged, ring_size_for  # noqa: F401
from kvnet.sim.loop import determinism, inline_pools, quiet

SCALE_SETTINGS = dict(ae_enabled=False)     # dissemination and detection: no anti-entropy
_perf = time.perf_counter                   # (the real one: a run's reads the loop's clock)


@contextlib.contextmanager
def _cluster(nodes, seed, **kw):
    with tempfile.TemporaryDirectory(prefix="ringkv-sim-") as tmp:
        c = SimCluster(tmp, size=nodes, seed=seed, **kw)
        with determinism(seed, c.loop.time), quiet(), inline_pools():
            yield c


def _clock():
    return _perf(), time.process_time()


def _since(t):
    return round(_perf() - t[0], 2), round(time.process_time() - t[1], 2)


def join_rounds(nodes, seed=1, limit=600.0, costs=False, **settings):
    """Start `nodes` nodes (anti-entropy off: SCALE_SETTINGS), let gossip settle, then start
    one more as a joining member (its members: one seed and itself). Returns a dict: the
    gossip rounds (interval) until every node's member table holds the newcomer, the
    simulated seconds that took, the network's messages and bytes meanwhile, and the wall
    seconds of the whole run; with costs=True also what varies from run to run: the CPU
    seconds of the run, the wall and CPU seconds of the start, and the CPU seconds per node
    per simulated second while the news spread."""
    t = _clock()
    with _cluster(nodes, seed, **{**SCALE_SETTINGS, **settings}) as c:
        out = c.run(_join(c, limit, t))
    out["wall_s"], cpu = _since(t)
    if costs:
        out["cpu_s"] = cpu
    else:
        for key in ("start_wall_s", "start_cpu_s", "cpu_per_node_s"):
            del out[key]
    out["nodes"] = nodes
    out["q"] = c.cfgs[0].ring_size
    return out


async def _join(c, limit, t):
    await c.start()
    start_wall, start_cpu = _since(t)
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
    writes0, bytes0 = c.net.stats["writes"], c.net.stats["bytes"]
    cpu0 = time.process_time()
    asyncio.ensure_future(c.start_node(name, cfg))     # (a joiner's start waits for the ring)
    known = None
    while c.loop.time() - t0 < limit:
        await asyncio.sleep(interval / 4)
        if all(name in n.gossip.table for n in c.nodes.values()):
            known = c.loop.time() - t0
            break
    cpu = time.process_time() - cpu0
    sim = c.loop.time() - t0
    open_conns = sum(p["connections"] for n in c.nodes.values()
                     for p in n.pool.status().values())
    out = {"known_after_s": None if known is None else round(known, 3),
           # peer connections open at each end when every node knew the joiner, per node
           "conns_per_node": round(open_conns / len(c.nodes), 1),
           "rounds": None if known is None else round(known / interval, 1),
           "messages": c.net.stats["writes"] - writes0,
           "bytes": c.net.stats["bytes"] - bytes0,
           "start_wall_s": start_wall, "start_cpu_s": start_cpu,
           # CPU seconds per simulated second per node while the news spread: what one
           # node's gossip and detection cost, against N
           "cpu_per_node_s": round(cpu / max(sim, 1e-9) / len(c.nodes), 5)}
    await c.stop()
    return out


def false_positives(nodes, seed=1, duration=300.0, loss=0.01, cut=None, **settings):
    """`nodes` nodes gossip for `duration` simulated seconds with `loss` of the writes on
    every link delayed 200 ms (a TCP retransmission; net.py), none failing: every peer a
    node marks DOWN is a false positive. Returns the DOWN marks, the node-hours observed and
    the marks per node-hour (a node-hour: one node watching the others for an hour).
    cut: a node cut from every other when the count starts (its marks are true ones: the
    count's own test)."""
    t = _clock()
    with _cluster(nodes, seed, **{**SCALE_SETTINGS, **settings}) as c:
        out = c.run(_false_positives(c, duration, loss, cut))
    out["wall_s"], out["cpu_s"] = _since(t)
    out.update(nodes=nodes, duration_s=duration, loss=loss)
    return out


async def _false_positives(c, duration, loss, cut):
    await c.start()
    interval = c.cfgs[0].gossip_interval_ms / 1000.0
    await asyncio.sleep(10 * interval)                  # (every detector has its windows)
    marks = []
    for name, node in c.nodes.items():
        liveness = node.gossip.liveness
        update = liveness.update

        def counted(now, update=update, name=name):
            out = update(now)
            marks.extend((name, tr.peer) for tr in out if not tr.up)
            return out
        liveness.update = counted
    suspected = 0
    c.net.loss = loss
    for other in c.names if cut is not None else ():
        if other != cut:
            c.net.cut(cut, other)
    t0 = c.loop.time()
    while c.loop.time() - t0 < duration:
        await asyncio.sleep(interval)
        now = c.loop.time()
        suspected += sum(len(n.gossip.liveness.my_suspects(now)) for n in c.nodes.values())
    c.net.loss = 0.0
    c.net.heal()
    hours = len(c.nodes) * duration / 3600.0
    await c.stop()
    return {"down_marks": len(marks), "node_hours": round(hours, 3),
            "per_node_hour": round(len(marks) / hours, 3),
            # sampled once a round: (node, peer) pairs the node's own detector suspected
            "suspicion_samples": suspected, "first_marks": marks[:5]}


def repair_after_heal(nodes, seed=1, cut_s=10.0, limit=120.0, step=0.1, keys=40):
    """Clients write `keys` keys (as the `partition` scenario's clients) while one node is
    cut from every other for `cut_s` simulated seconds; then the heal. Returns the hints pending at the heal, the
    simulated seconds until every hint was handed back and every replica of every key
    agreed (repair_s), and the backlog's series [[seconds after the heal, hints pending]]
    sampled every `step`."""
    t = _clock()
    with _cluster(nodes, seed) as c:
        out = c.run(_repair(c, cut_s, limit, step, keys))
    out["wall_s"], out["cpu_s"] = _since(t)
    out.update(nodes=nodes, cut_s=cut_s, keys=keys)
    return out


def _pending(c):
    return sum(sum(n.handoff.pending().values()) for n in c.nodes.values())


async def _repair(c, cut_s, limit, step, nkeys):
    keys = [b"key-%05d" % i for i in range(nkeys)]
    history = History()
    await c.start()
    victim = random.Random(c.seed).choice(c.names)
    for other in c.names:
        if other != victim:
            c.net.cut(victim, other)
    until = c.loop.time() + cut_s
    await asyncio.gather(*(client(c, history, i, keys, until, 20.0) for i in range(4)))
    c.net.heal()
    t0 = c.loop.time()
    at_heal = _pending(c)
    series, repaired = [[0.0, at_heal]], None
    while c.loop.time() - t0 < limit:
        await asyncio.sleep(step)
        pending = _pending(c)
        series.append([round(c.loop.time() - t0, 3), pending])
        if not pending and converged(c, keys):
            repaired = c.loop.time() - t0
            break
    await c.stop()
    return {"hints_at_heal": at_heal, "acked": history.acks,
            "repair_s": None if repaired is None else round(repaired, 3), "series": series}


def claim_moves(nodes, n=3, seed=1):
    """The ring a cluster of `nodes` starts with (kvcore.claim, Q = ring_size_for(nodes)),
    then one node joining it and one (chosen by the seed) leaving it: the partitions per
    node (min, max) before and after, and the partitions moved by each change against the
    fewest possible (a join: Q / (N + 1); a leave: what the leaver owned)."""
    from kvcore import claim
    from kvcore.ring import Ring
    q = ring_size_for(nodes)
    names = [f"n{i}" for i in range(nodes)]
    t = _clock()
    ring = Ring.create(names, q=q, n=n)
    create = _since(t)

    def balance(r):
        counts = [r.owners.count(x) for x in r.nodes]
        return min(counts), max(counts)

    joined = ring.with_node("joiner")
    leaver = random.Random(seed).choice(names)
    left = ring.without_node(leaver)
    return {"nodes": nodes, "q": q, "balance": balance(ring),
            "join_balance": balance(joined), "leave_balance": balance(left),
            "join_moved": len(claim.diff(ring, joined)), "join_ideal": q // (nodes + 1),
            "leave_moved": len(claim.diff(ring, left)),
            "leave_ideal": ring.owners.count(leaver), "create_wall_s": create[0]}
