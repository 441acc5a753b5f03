"""DURABLE k through real nodes in one event loop (docs/quorum.md, "Durable writes"): a write
forwarded to its coordinator (coord_put with "d"), and a fallback's fsynced hint counted
toward k unless STRICT."""
import asyncio

import pytest
import redis
import redis.asyncio as aredis

from tests.kvnet.test_node import _cluster, run


async def _waits(ports):
    out = []
    for p in ports:
        c = aredis.Redis(port=p)
        out.append((await c.info())["durable_write_waits"])
        await c.aclose()
    return out


def _key_without(node, n=0):
    """A key whose preference list leaves out `node` (so a write sent to it is forwarded)."""
    ring = node.ring
    return next(k for k in (b"k%d" % i for i in range(10_000))
                if node.name not in ring.preference_list(ring.partition_of(k)))


def test_a_durable_write_forwarded_to_its_coordinator_and_a_fallbacks_hint(tmp_path):
    async def main():
        nodes, ports = await _cluster(tmp_path, nodes=4, n=3, request_timeout_ms=3000)
        c0 = aredis.Redis(port=ports[0])
        try:
            k = _key_without(nodes[0])
            assert await c0.execute_command("KV.PUT", k, "v", "DURABLE", "3")   # forwarded
            waits = await _waits(ports)
            assert waits[0] == 0 and sum(waits) == 3        # each replica fsynced it once
            # a primary down: its fallback (node 0, the only node left) keeps a hint, syncs its
            # hint log and counts toward k
            prefs = nodes[0].ring.preference_list(nodes[0].ring.partition_of(k))
            down = nodes[[n.name for n in nodes].index(prefs[0])]
            await down.stop()
            live = [n for n in nodes if n is not down]

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:             # until the others route around the stopped node
                try:
                    assert await c0.execute_command("KV.PUT", k, "w", "DURABLE", "3")
                    break
                except redis.ResponseError:
                    assert loop.time() < deadline
                    await asyncio.sleep(0.1)
            assert nodes[0].hints_pending() >= 1      # (node 0 kept it as a hint, synced)
            with pytest.raises(redis.ResponseError, match="write needs DURABLE=3 primaries"):
                await c0.execute_command("KV.PUT", k, "x", "STRICT", "DURABLE", "3")
            nodes[:] = live
        finally:
            await c0.aclose()
            for n in nodes:
                await n.stop()

    run(main())
