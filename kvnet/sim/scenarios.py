"""Scenarios of `python -m kvnet.sim` (docs/simulation.md): clients writing and deleting with
contexts on a SimCluster while faults happen, then a heal, convergence and the checker."""
import asyncio
import logging
import tempfile

from kvnet.sim.cluster import History, SimCluster, client, converged, final_reads
from kvnet.sim.loop import determinism

KEYS = 40                      # keys the clients share
CLIENTS = 4
RATE = 20.0                    # operations per second per client
SETTLE = 120.0                 # simulated seconds allowed for convergence after the heal


async def _steady(c, until):
    await asyncio.sleep(until - c.loop.time())


async def _partition(c, until):
    """One node cut from every other for the middle third of the run."""
    start = c.loop.time()
    third = (until - start) / 3
    victim = c.rng.choice(c.names)
    await asyncio.sleep(third)
    for other in c.names:
        if other != victim:
            c.net.cut(victim, other)
    c.events.append((round(c.loop.time() - start, 3), f"cut {victim}"))
    await asyncio.sleep(third)
    c.net.heal()
    c.events.append((round(c.loop.time() - start, 3), f"heal {victim}"))
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
        c.events.append((round(c.loop.time() - start, 3), f"crash {victim}"))
        await asyncio.sleep(c.rng.uniform(0.5, 2.0))
        await c.start_node(victim)
        c.events.append((round(c.loop.time() - start, 3), f"restart {victim}"))
    await asyncio.sleep(max(0.0, until - c.loop.time()))


SCENARIOS = {"steady": _steady, "partition": _partition, "loss": _loss, "churn": _churn}


def run(scenario="steady", nodes=5, seed=1, duration=20.0, root=None, w=None):
    """Run one seeded scenario; its summary (a dict of plain values)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    with tempfile.TemporaryDirectory(prefix="ringkv-sim-") as tmp:
        c = SimCluster(root or tmp, size=nodes, seed=seed)
        c.events = []
        with determinism(seed, c.loop.time):
            return c.run(_main(c, scenario, duration, w))


async def _main(c, scenario, duration, w):
    logging.getLogger("kvnet").setLevel(logging.CRITICAL)
    history = History()
    keys = [b"key-%03d" % i for i in range(KEYS)]
    await c.start()
    t0 = c.loop.time()
    until = t0 + duration
    fault = asyncio.ensure_future(SCENARIOS[scenario](c, until))
    clients = [asyncio.ensure_future(client(c, history, i, keys, until, RATE, w=w))
               for i in range(CLIENTS)]
    await asyncio.gather(fault, *clients)
    c.net.heal()
    for name in [nm for nm in c.names if nm not in c.nodes]:
        await c.start_node(name)
    end = c.loop.time()
    settled = None
    while c.loop.time() - end < SETTLE:
        if converged(c, keys):
            settled = c.loop.time() - end
            break
        await asyncio.sleep(0.5)
    final = await final_reads(c, keys)
    violations = history.check(final)
    summary = {
        "scenario": scenario, "seed": c.seed, "nodes": c.size, "duration_s": duration,
        "acked": history.acks, "unacked": history.unacked, "reads": history.reads,
        "keys_with_values": sum(1 for v in final.values() if v),
        "siblings": sum(max(0, len(v) - 1) for v in final.values()),
        "converged_after_s": None if settled is None else round(settled, 3),
        "violations": violations, "events": c.events,
        "net": dict(c.net.stats), "sim_time_s": round(c.loop.time() - t0, 3),
    }
    await c.stop()
    return summary
