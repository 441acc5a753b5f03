"""DURABLE k through the coordinator against a fake cluster (docs/quorum.md, "Durable writes"):
the write is acknowledged only once k distinct nodes confirmed its fsync (and W acknowledged),
a node from before DURABLE is never counted as durable, and k above the reachable nodes is
refused before anything is written."""
import asyncio

import pytest

from kvcore import versions as V
from kvnet.coordinator import driver
from kvnet.errors import QuorumError, Unavailable
from kvnet.payload import DURABLE_ACK
from tests.kvnet.coordinator.test_driver import FakeCluster, _ForwardingCluster, _p, run


class DurableCluster(FakeCluster):
    """Remote replicas b and c answer a put asking for durability ("d") once their `fsynced`
    Event is set, with DURABLE_ACK; `old` nodes ignore "d" and answer True at once, as a node
    from before DURABLE does. `down` nodes are not up."""

    def __init__(self, tmp_path, old=(), down=(), timeout=5.0):
        super().__init__(tmp_path)
        self.timeout = timeout
        self.old, self.down = set(old), set(down)
        self.fsynced = {x: asyncio.Event() for x in ("b", "c")}
        self.payloads = []

    def is_up(self, node):
        return node not in self.down

    async def call(self, node, type, payload, timeout):
        self.payloads.append((node, type, dict(payload)))
        ack = await super().call(node, type, payload, timeout)
        if payload.get("d") and node not in self.old:
            await self.fsynced[node].wait()
            return DURABLE_ACK
        return ack


def test_a_durable_write_is_acknowledged_only_after_k_fsync_confirmations(tmp_path):
    async def main():
        c = DurableCluster(tmp_path)
        k = b"key"
        put = asyncio.ensure_future(driver.put(c, _p(c, k), k, V.sibling(b"v"), None, True, w=1,
                                               durable=3))
        while c.replica.group.commits < 1:  # a's own fsync (fsync=never: asked for)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not put.done()               # W=1 is met (a stored it), k=3 is not
        assert c.replica.group.durable_writes == 1
        assert sorted(x for x, t, m in c.payloads if t == "put" and m.get("d") is True) \
            == ["b", "c"]
        c.fsynced["b"].set()
        await asyncio.sleep(0.05)
        assert not put.done()               # 2 of 3
        c.fsynced["c"].set()
        assert V.lww_value(await put) == b"v"
        # without DURABLE nothing waits for an fsync (fsync=never: no round at all)
        await driver.put(c, _p(c, k), k, V.sibling(b"w"), None, True, w=1)
        assert c.replica.group.commits == 1 and all("d" not in m for _, _, m in c.payloads[2:])
        await c.settle()
        await c.replica.close()

    run(main())


def test_a_node_from_before_durable_counts_toward_w_never_toward_k(tmp_path):
    async def main():
        c = DurableCluster(tmp_path, old={"c"})
        c.fsynced["b"].set()
        k = b"key"
        with pytest.raises(QuorumError) as info:
            await driver.put(c, _p(c, k), k, V.sibling(b"v"), None, True, w=3, durable=3)
        msg = str(info.value)
        # decided once c answered: k=3 is out of reach (a's own fsync may still be running)
        assert "needed fsync confirmations (W=3, DURABLE=3, N=3, 3 targets)" in msg
        assert "stored without an fsync confirmation: c" in msg
        assert "not acknowledged is not the same as not written" in msg
        assert V.lww_value(c.replica.read(_p(c, k), k)) == b"v"      # (stored all the same)
        assert V.lww_value(await driver.put(c, _p(c, k), k, V.sibling(b"w"), None, True, w=3,
                                            durable=2)) == b"w"
        await c.settle()
        await c.replica.close()

    run(main())


def test_durable_above_the_reachable_nodes_is_refused_before_anything_is_written(tmp_path):
    async def main():
        c = DurableCluster(tmp_path, down={"c"})
        k = b"key"
        with pytest.raises(Unavailable) as info:
            await driver.put(c, _p(c, k), k, V.sibling(b"v"), None, True, w=1, durable=3)
        assert "DURABLE=3" in str(info.value) and "only 2 are reachable" in str(info.value)
        assert c.replica.read(_p(c, k), k) is None and c.payloads == []
        await c.replica.close()

    run(main())


def test_a_durable_write_times_out_as_a_quorum_error(tmp_path):
    async def main():
        c = DurableCluster(tmp_path, timeout=0.3)   # b and c store it, never confirm the fsync
        k = b"key"
        with pytest.raises(QuorumError) as info:
            await driver.put(c, _p(c, k), k, V.sibling(b"v"), None, True, w=1, durable=2)
        assert "1 of 2 needed fsync confirmations" in str(info.value)
        assert "b: timeout" in str(info.value)
        for t in list(c.tasks):
            t.cancel()
        await c.settle()
        await c.replica.close()

    run(main())


class _DurableForwarding(_ForwardingCluster):
    """Node a forwards; its coordinator answers a durable forward as `reply(payload)`."""

    def __init__(self, tmp_path, reply):
        super().__init__(tmp_path, refuse=())
        self.reply, self.sent = reply, []

    async def call(self, node, type, payload, timeout):
        self.sent.append(payload)
        return self.reply(payload)


def test_a_forwarded_durable_write_is_refused_from_a_coordinator_before_durable(tmp_path):
    raw = V.encode(V.new(V.sibling(b"v")))
    new = _DurableForwarding(tmp_path / "new",
                             lambda m: {"c": raw, "d": m["d"]} if "d" in m else raw)
    p = next(p for p in range(new.ring.q) if "a" not in new.ring.preference_list(p))
    got = run(driver.put(new, p, b"k", V.sibling(b"v"), None, True, w=1, durable=2))
    assert V.lww_value(got) == b"v" and new.sent[0]["d"] == 2
    run(driver.put(new, p, b"k", V.sibling(b"v"), None, True, w=1))
    assert "d" not in new.sent[1]                   # absent unless asked: as before DURABLE
    old = _DurableForwarding(tmp_path / "old", lambda m: raw)    # ignores "d"
    with pytest.raises(QuorumError, match="does not support DURABLE"):
        run(driver.put(old, p, b"k", V.sibling(b"v"), None, True, w=1, durable=2))
    for c in (new, old):
        run(c.replica.close())
