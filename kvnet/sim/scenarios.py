"""Scenarios of `python -m kvnet.sim` (docs/simulation.md): clients writing and deleting with
contexts on a SimCluster while faults happen, then a heal, convergence and the checker."""
import asyncio
import contextlib
import errno
import tempfile

from kvnet.sim.cluster import History, SimCluster, client, converged, final_reads
from kvnet.sim.loop import determinism, inline_pools, quiet

KEYS = 40                      # keys the clients share at any moment
SLIDE = 2.0                    # keys a second by which the clients' window of keys moves on
CLIENTS = 4
RATE = 20.0                    # operations per second per client
SETTLE = 120.0                 # simulated seconds allowed for convergence after the heal
# The stated bound: every live replica of every key holds the same clock within this many
# simulated seconds of the heal (hints replay every 0.2 s here; a full anti-entropy sweep of
# a node's partitions at one exchange each AE_INTERVAL_MS takes longer (about 40 partitions
# of 64 on 5 nodes: 10 s), so this bound needs hinted handoff)
CONVERGE_BOUND = 5.0
MUTATIONS = ("none", "no-hint-replay", "w-minus-one")
LAG = 3.0                      # seconds more per write on the lag scenario's slow links
TOMBSTONE_GRACE_S = 1          # the nodes' tombstone grace: deletes are reaped in a run
AE_INTERVAL_MS = 250           # an exchange and a reaper pass (one partition) this often


async def _steady(c, until):
    await asyncio.sleep(until - c.loop.time())


async def _partition(c, until):
    """One node cut from every other from a third of the run to its end: the writes of the
    last two thirds reach it only by hints (and anti-entropy) after the heal."""
    start = c.loop.time()
    victim = c.rng.choice(c.names)
    await asyncio.sleep((until - start) / 3)
    for other in c.names:
        if other != victim:
            c.net.cut(victim, other)
    c.event(f"cut {victim}")
    await asyncio.sleep(until - c.loop.time())


async def _loss(c, until):
    c.net.loss = 0.01
    await asyncio.sleep(until - c.loop.time())
    c.net.loss = 0.0


async def _churn(c, until):
    """One fault after another, 1-3 s apart, each undone before the next: a node crashed
    (a machine's failure: unsynced writes lost) and restarted after 0.5-2 s; a node paused
    (its process stopped) for 0.5-3 s, longer than the peers' request timeout; or a node's
    disk failing for 1-3 s (every write EIO or ENOSPC; or one sync EIO, which leaves its
    stores read-only until the node is restarted at the window's end). Once in a run, a
    ring change instead: a new node joins (staged and committed through the claimant, as
    kvctl does), or, with more than N+1 members, one leaves; the next fault waits until
    every node has the settled ring."""
    changed = False
    while c.loop.time() < until - 4:
        await asyncio.sleep(c.rng.uniform(1.0, 3.0))
        victim = c.rng.choice(c.up())
        kind = c.rng.choice(("crash", "crash", "pause", "disk", "ring"))
        if kind == "ring" and changed:
            kind = "crash"
        if kind == "ring":
            changed = True
            n = c.cfgs[0].n
            if len(c.up()) > n + 1 and c.rng.random() < 0.5:
                c.event(f"leave {victim}")
                epoch = await c.change_ring("leave", victim)
            else:
                victim = f"j{len(c.names)}"
                c.add_member(victim)
                start = asyncio.ensure_future(c.start_node(victim))
                c.event(f"join {victim}")
                epoch = await c.change_ring("join", victim)
                await start
            c.event(f"ring settled at epoch {epoch}" if epoch is not None
                    else "ring not settled within 30 s")
        elif kind == "crash":
            await c.crash(victim)
            c.event(f"crash {victim}")
            await asyncio.sleep(c.rng.uniform(0.5, 2.0))
            await c.start_node(victim)
            c.event(f"restart {victim}")
        elif kind == "pause":
            c.pause(victim)
            c.event(f"pause {victim}")
            await asyncio.sleep(c.rng.uniform(0.5, 3.0))
            c.resume(victim)
            c.event(f"resume {victim}")
        else:
            err = c.rng.choice((errno.EIO, errno.ENOSPC))
            fsync = err == errno.EIO and c.rng.random() < 0.5
            c.disk_errors(victim, err, fsync=fsync)
            c.event(f"disk {errno.errorcode[err]} on {'sync' if fsync else 'write'} "
                    f"at {victim}")
            await asyncio.sleep(c.rng.uniform(1.0, 3.0))
            if victim not in c.nodes:
                continue
            c.disk_errors(victim, None)
            if fsync:
                ro = c.read_only_partitions(victim)
                error = await c.restart(victim)
                c.event(f"disk ok, restart {victim} ({ro} partitions read-only"
                        + (f"; its stop: {type(error).__name__}" if error else "") + ")")
            else:
                c.event(f"disk ok at {victim}")
    await asyncio.sleep(max(0.0, until - c.loop.time()))


async def _lag(c, until):
    """One node's links all slow (3 s more each way, more than the peers' request timeout)
    from a third of the run; at two thirds it crashes (its unsynced writes lost) and its
    links are fast again; it restarts at the heal. Its own writes cannot reach W meanwhile
    (no other replica answers in time), so none is acknowledged, and none is lost: unless
    the coordinator acknowledges with fewer than W copies (--mutate w-minus-one)."""
    start = c.loop.time()
    victim = c.rng.choice(c.names)
    await asyncio.sleep((until - start) / 3)
    for other in c.names:
        if other != victim:
            c.net.slow(victim, other, LAG)
    c.event(f"slow links of {victim}")
    await asyncio.sleep((until - start) / 3)
    await c.crash(victim)
    for other in c.names:
        c.net.slow(victim, other, 0)
    c.event(f"crash {victim}")
    await asyncio.sleep(max(0.0, until - c.loop.time()))


def _hints_pending(c):
    return sum(sum(node.handoff.pending().values()) for node in c.nodes.values())


SCENARIOS = {"steady": _steady, "partition": _partition, "loss": _loss, "churn": _churn,
             "lag": _lag}


def run(scenario="steady", nodes=5, seed=1, duration=20.0, root=None, w=None, mutation="none",
        storage="memory", trace=None):
    """Run one seeded scenario; its summary (a dict of plain values). `mutation`: a bug put
    in on purpose ("no-hint-replay": hints are never handed back), which the checker must
    report (CI runs it: a checker that misses it is broken). `trace`: fn(line), told of
    every message the network delivers and every event (to find where two runs part)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    if mutation not in MUTATIONS:
        raise ValueError(f"unknown mutation {mutation!r}: one of {', '.join(MUTATIONS)}")
    with tempfile.TemporaryDirectory(prefix="ringkv-sim-") as tmp, _mutated(mutation):
        c = SimCluster(root or tmp, size=nodes, seed=seed, storage=storage,
                       tombstone_grace_s=TOMBSTONE_GRACE_S, ae_interval_ms=AE_INTERVAL_MS)
        c.net.trace = trace
        with determinism(seed, c.loop.time), quiet(), inline_pools():
            return c.run(_main(c, scenario, duration, w))


@contextlib.contextmanager
def _mutated(mutation):
    """Put a bug in kvnet's own code for the `with` block, from here (no flag in kvnet):
    no-hint-replay: hints are never handed back; w-minus-one: a write is acknowledged once
    W-1 replicas have it (the coordinator is handed a quorum one short)."""
    from kvnet.coordinator import driver
    from kvnet.handoff.replay import HintReplay
    saved = HintReplay.replay, driver.put_raw
    try:
        if mutation == "no-hint-replay":
            async def replay(self, target, budget):
                return 0
            HintReplay.replay = replay
        elif mutation == "w-minus-one":
            put_raw = driver.put_raw

            async def short_put_raw(cluster, p, key, sibling, context=None, overwrite=False,
                                    w=2, strict=False, *rest, **options):
                return await put_raw(cluster, p, key, sibling, context, overwrite,
                                     max(1, w - 1), strict, *rest, **options)
            driver.put_raw = short_put_raw
        yield
    finally:
        HintReplay.replay, driver.put_raw = saved


async def _main(c, scenario, duration, w):
    history = History(int(w) if w is not None else c.cfgs[0].w)
    keys = c.watch = [b"key-%03d" % i for i in range(KEYS + int(duration * SLIDE))]
    await c.start()
    t0 = c.t0 = c.loop.time()
    until = t0 + duration
    fault = asyncio.ensure_future(SCENARIOS[scenario](c, until))
    clients = [asyncio.ensure_future(client(c, history, i, keys, until, RATE, w=w,
                                            window=KEYS, slide=SLIDE))
               for i in range(CLIENTS)]
    await asyncio.gather(fault, *clients)
    if c.net.cut_links:
        c.event("heal")
    for name in sorted(c.paused):
        c.resume(name)
    for name in sorted(c.disk_faulty):
        c.disk_errors(name, None)
    c.net.heal()
    for name in [nm for nm in c.names if nm not in c.nodes and nm not in c.gone]:
        await c.start_node(name)
    end = c.loop.time()
    hints_at_heal = _hints_pending(c)
    settled = None
    while c.loop.time() - end < SETTLE:
        if converged(c, keys) and not _hints_pending(c):
            settled = c.loop.time() - end
            break
        await asyncio.sleep(0.5)
    final = await final_reads(c, keys)
    violations = history.check(final, c.lost_in_crash)
    if settled is None or settled > CONVERGE_BOUND:
        violations.append(f"replicas did not converge and hand back every hint within "
                          f"{CONVERGE_BOUND:g} s of the heal"
                          + ("" if settled is None else f" (took {settled:.1f} s)")
                          + f"; hints still pending: {_hints_pending(c)}")
    summary = {
        "scenario": scenario, "seed": c.seed, "nodes": c.size, "duration_s": duration,
        "acked": history.acks, "unacked": history.unacked, "reads": history.reads,
        "keys_with_values": sum(1 for v in final.values() if v),
        "siblings": sum(max(0, len(v) - 1) for v in final.values()),
        "converged_after_s": None if settled is None else round(settled, 3),
        "violations": violations, "events": c.events, "lost_bytes": c.lost_bytes,
        "hints_pending_at_heal": hints_at_heal,
        "lost_in_crash": len(c.lost_in_crash), "reaped": c.reaped_total(),
        "ring_members": sorted(c.nodes[c.up()[0]].ring.nodes), "left": sorted(c.gone),
        "net": dict(c.net.stats), "sim_time_s": round(c.loop.time() - t0, 3),
    }
    await c.stop()
    return summary
