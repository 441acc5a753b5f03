"""Scenarios of `python -m kvnet.sim` (docs/simulation.md): clients writing and deleting with
contexts on a SimCluster while faults happen, then a heal, convergence and the checker."""
import asyncio
import contextlib
import tempfile

from kvnet.sim.cluster import History, SimCluster, client, converged, final_reads
from kvnet.sim.loop import determinism, inline_pools, quiet

KEYS = 40                      # keys the clients share
CLIENTS = 4
RATE = 20.0                    # operations per second per client
SETTLE = 120.0                 # simulated seconds allowed for convergence after the heal
# The stated bound: every live replica of every key holds the same clock within this many
# simulated seconds of the heal (hints replay every 0.2 s here; a full anti-entropy sweep of
# 64 partitions at one exchange a second per node takes longer, so this bound needs hints)
CONVERGE_BOUND = 5.0
MUTATIONS = ("none", "no-hint-replay")


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
    """A node crashed (kill -9) and restarted, one after another."""
    start = c.loop.time()
    while c.loop.time() < until - 4:
        await asyncio.sleep(c.rng.uniform(1.0, 3.0))
        victim = c.rng.choice(c.up())
        await c.crash(victim)
        c.event(f"crash {victim}")
        await asyncio.sleep(c.rng.uniform(0.5, 2.0))
        await c.start_node(victim)
        c.event(f"restart {victim}")
    await asyncio.sleep(max(0.0, until - c.loop.time()))


def _hints_pending(c):
    return sum(sum(node.handoff.pending().values()) for node in c.nodes.values())


SCENARIOS = {"steady": _steady, "partition": _partition, "loss": _loss, "churn": _churn}


def run(scenario="steady", nodes=5, seed=1, duration=20.0, root=None, w=None, mutation="none",
        trace=None):
    """Run one seeded scenario; its summary (a dict of plain values). `mutation`: a bug put
    in on purpose ("no-hint-replay": hints are never handed back), which the checker must
    report (CI runs it: a checker that misses it is broken). `trace`: fn(line), told of
    every message the network delivers and every event (to find where two runs part)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    if mutation not in MUTATIONS:
        raise ValueError(f"unknown mutation {mutation!r}: one of {', '.join(MUTATIONS)}")
    with tempfile.TemporaryDirectory(prefix="ringkv-sim-") as tmp, _mutated(mutation):
        c = SimCluster(root or tmp, size=nodes, seed=seed)
        c.net.trace = trace
        with determinism(seed, c.loop.time), quiet(), inline_pools():
            return c.run(_main(c, scenario, duration, w))


@contextlib.contextmanager
def _mutated(mutation):
    from kvnet.handoff.replay import HintReplay
    saved = HintReplay.replay
    try:
        if mutation == "no-hint-replay":
            async def replay(self, target, budget):
                return 0
            HintReplay.replay = replay
        yield
    finally:
        HintReplay.replay = saved


async def _main(c, scenario, duration, w):
    history = History()
    keys = [b"key-%03d" % i for i in range(KEYS)]
    await c.start()
    t0 = c.t0 = c.loop.time()
    until = t0 + duration
    fault = asyncio.ensure_future(SCENARIOS[scenario](c, until))
    clients = [asyncio.ensure_future(client(c, history, i, keys, until, RATE, w=w))
               for i in range(CLIENTS)]
    await asyncio.gather(fault, *clients)
    if c.net.cut_links:
        c.event("heal")
    c.net.heal()
    for name in [nm for nm in c.names if nm not in c.nodes]:
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
    violations = history.check(final)
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
        "net": dict(c.net.stats), "sim_time_s": round(c.loop.time() - t0, 3),
    }
    await c.stop()
    return summary
