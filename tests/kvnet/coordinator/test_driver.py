"""The coordinator drivers against a fake cluster: replies fed by callbacks, deadlines, read
repair of stragglers, failures named in errors. No sockets: remote replicas are dicts that
answer after a chosen delay."""
import asyncio

import pytest

from kvcore import versions as V
from kvcore.ring import Ring
from kvnet.coordinator import driver
from kvnet.errors import QuorumError
from kvnet.replica import LocalReplica


class FakeCluster(driver.Cluster):
    def __init__(self, tmp_path, delays=None, fail=()):
        self.name = "a"
        self.ring = Ring.create(["a", "b", "c"], q=4, n=3)
        self.replica = LocalReplica(str(tmp_path / "a"), "a", fsync="never")
        self.timeout = 0.3
        self.remote = {"b": {}, "c": {}}
        self.delays = delays or {}
        self.fail = set(fail)
        self.calls = []
        self.tasks = set()

    def is_up(self, node):
        return True

    async def call(self, node, type, payload, timeout):
        self.calls.append((node, type))
        await asyncio.sleep(self.delays.get(node, 0.0))
        if node in self.fail:
            raise ConnectionError(f"{node} is failing")
        store, k = self.remote[node], payload["k"]
        if type == "get":
            return None if k not in store else V.encode(store[k])
        if type == "put":
            new = V.decode(payload["c"])
            store[k] = new if k not in store else V.sync(store[k], new)
            return True
        raise AssertionError(type)

    def call_future(self, node, type, payload, timeout):
        fut = asyncio.ensure_future(asyncio.wait_for(self.call(node, type, payload, timeout),
                                                     timeout))
        self.tasks.add(fut)             # settle() waits for the replies too (read repair
        fut.add_done_callback(self.tasks.discard)   # starts from their callbacks)
        return fut

    def spawn(self, coro):
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    async def settle(self):
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def _p(c, key):
    return c.ring.partition_of(key)


def test_read_repairs_a_straggler_after_answering(tmp_path):
    async def main():
        c = FakeCluster(tmp_path, delays={"c": 0.1})
        k = b"key"
        new = await driver.put(c, _p(c, k), k, V.sibling(b"new"), None, True, w=3)
        c.remote["c"][k] = V.new(V.sibling(b"stale-elsewhere"))     # c lost the write
        got = await driver.get(c, _p(c, k), k, r=2)                  # a and b are enough
        assert V.lww_value(got.clock) == b"new"
        assert c.remote["c"][k] != new                               # c has not answered yet
        await c.settle()                                             # the straggler answers...
        assert c.remote["c"][k] == V.sync(new, V.new(V.sibling(b"stale-elsewhere")))  # ...repaired
        assert c.replica.read(_p(c, k), k) == c.remote["c"][k]          # a holds the sync too
        await c.replica.close()

    run(main())


def test_write_quorum_met_without_a_slow_replica_and_refused_without_a_failing_one(tmp_path):
    async def main():
        c = FakeCluster(tmp_path, delays={"c": 5.0})
        k = b"k2"
        loop = asyncio.get_running_loop()
        t = loop.time()
        clock = await driver.put(c, _p(c, k), k, V.sibling(b"v"), None, True, w=2)
        assert loop.time() - t < 0.2 and V.lww_value(clock) == b"v"
        with pytest.raises(QuorumError) as info:                     # W=3 cannot wait 5 s
            await driver.put(c, _p(c, k), k, V.sibling(b"w"), None, True, w=3)
        assert "2 of 3" in str(info.value)
        c2 = FakeCluster(tmp_path / "x", fail={"b"})
        with pytest.raises(QuorumError) as info:
            await driver.put(c2, _p(c2, k), k, V.sibling(b"v"), None, True, w=3)
        assert "b" in str(info.value) and "failing" in str(info.value)
        for x in (c, c2):
            for t in list(x.tasks):
                t.cancel()
            await x.settle()
            await x.replica.close()

    run(main())


def test_read_with_a_failing_replica_counts_the_others(tmp_path):
    async def main():
        c = FakeCluster(tmp_path, fail={"c"})
        k = b"k3"
        await driver.put(c, _p(c, k), k, V.sibling(b"v"), None, True, w=2)
        got = await driver.get(c, _p(c, k), k, r=2)
        assert V.lww_value(got.clock) == b"v"
        with pytest.raises(QuorumError):
            await driver.get(c, _p(c, k), k, r=3)
        await c.settle()
        await c.replica.close()

    run(main())


def test_read_repair_never_copies_a_reap_pending_tombstone(tmp_path):
    async def main():
        c = FakeCluster(tmp_path)
        k = b"gone"
        tomb = await driver.put(c, _p(c, k), k, V.tombstone(), None, True, w=3)
        del c.remote["c"][k]                        # c already reaped it
        raw = V.encode(tomb)
        c.reap_pending = lambda p, key, r: key == k and r == raw
        await driver.get(c, _p(c, k), k, r=3)
        await c.settle()
        assert k not in c.remote["c"]               # not pushed back onto c
        c.reap_pending = lambda p, key, r: False
        await driver.get(c, _p(c, k), k, r=3)
        await c.settle()
        assert c.remote["c"][k] == tomb             # an ordinary repair does copy it
        await c.replica.close()

    run(main())


def test_a_failed_write_to_a_replica_being_added_is_kept_as_a_hint(tmp_path):
    async def main():
        c = FakeCluster(tmp_path)
        hints = []
        c.extra_targets = lambda p: ("d",)              # a ring change adds d; it is not there
        c.hint_store = lambda p, key, node, raw: hints.append((p, key, node, raw))
        k = b"moving"
        clock = await driver.put(c, _p(c, k), k, V.sibling(b"v"), None, True, w=2)
        await c.settle()
        assert hints == [(_p(c, k), k, "d", V.encode(clock))]
        await c.replica.close()

    run(main())
