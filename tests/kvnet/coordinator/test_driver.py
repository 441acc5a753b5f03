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


def test_a_read_answered_before_a_newer_reply_came_is_counted_stale(tmp_path):
    """The general path: R=1 answers with a's own old copy; b and c's newer one comes after,
    so once every reply is in the read counts stale for r=1. R=3 waits for them all: fresh."""
    async def main():
        c = FakeCluster(tmp_path, delays={"b": 0.05, "c": 0.05})
        c.coord_stats = driver.new_coord_stats()
        k = b"k-stale"
        old = await driver.put(c, _p(c, k), k, V.sibling(b"old"), None, True, w=3)
        new = V.update(V.new(V.sibling(b"new")), old, ("b", 1, 1))
        c.remote["b"][k] = c.remote["c"][k] = new      # a missed the newer write
        got = await driver.get(c, _p(c, k), k, r=1)
        assert V.lww_value(got.clock) == b"old"
        assert c.coord_stats["staleness"] == {}        # not counted before every reply is in
        await c.settle()
        assert c.coord_stats["staleness"] == {1: [1, 1]}
        assert c.coord_stats["divergent_reads"] == 1   # and a was repaired
        got = await driver.get(c, _p(c, k), k, r=3)
        await c.settle()
        assert V.lww_value(got.clock) == b"new"
        assert c.coord_stats["staleness"] == {1: [1, 1], 3: [1, 0]}
        await c.replica.close()

    run(main())


def test_a_traced_read_names_each_reply_what_counted_and_the_repair(tmp_path):
    from kvnet.coordinator.trace import Trace

    async def main():
        c = FakeCluster(tmp_path, delays={"b": 0.0, "c": 0.1})
        k = b"k-traced"
        await driver.put(c, _p(c, k), k, V.sibling(b"v1"), None, True, w=3)
        c.remote["c"].pop(k)                            # c lost it
        trace = Trace("a", "KV.GET k-traced")
        got = await driver.get(c, _p(c, k), k, r=2, trace=trace)
        assert V.lww_value(got.clock) == b"v1"
        await trace.settle(2.0)                         # waits for c, and the repair
        [step] = trace.reply()["steps"]
        assert step["op"] == "get" and step["r"] == 2 and step["n"] == 3
        assert sorted(step["asked"]) == ["a", "b", "c"]
        rows = {x["node"]: x for x in step["replies"]}
        assert rows["a"]["outcome"] == rows["b"]["outcome"] == "found"
        assert rows["a"]["counted"] == rows["b"]["counted"] == "yes"
        assert rows["c"]["outcome"] == "not found" and rows["c"]["counted"] == "after"
        assert rows["a"]["siblings"] == 1 and rows["a"]["clock"].startswith("a.")
        assert step["stale"] == "no"                    # the answer had the newest version
        assert step["repairs"] == [{"node": "c", "for": "-", "outcome": "ok"}]
        assert step["outcome"] == "ok" and step["decided_ms"] <= rows["c"]["ms"]
        assert c.remote["c"][k] == c.remote["b"][k]
        await c.settle()
        await c.replica.close()

    run(main())


def test_a_traced_write_names_the_acks_and_a_failing_replica(tmp_path):
    from kvnet.coordinator.trace import Trace

    async def main():
        c = FakeCluster(tmp_path, fail={"c"})
        k = b"k-traced-w"
        trace = Trace("a", "KV.PUT k")
        raw = await driver.put_raw(c, _p(c, k), k, V.sibling(b"v"), None, True, 2, trace=trace)
        await trace.settle(2.0)
        [step] = trace.reply()["steps"]
        assert step["op"] == "put" and step["w"] == 2 and step["outcome"] == "ok"
        rows = {x["node"]: x for x in step["replies"]}
        assert rows["a"]["outcome"] == rows["b"]["outcome"] == "ok"
        assert rows["c"]["outcome"].startswith("failed:") and rows["c"]["counted"] == "no"
        assert step["version"] == trace_summary(V.decode(raw))
        assert step["hints"] == []
        trace = Trace("a", "KV.PUT k W 3")
        with pytest.raises(QuorumError):
            await driver.put_raw(c, _p(c, k), k, V.sibling(b"w"), None, True, 3, trace=trace)
        assert trace.reply()["steps"][0]["outcome"].startswith("QUORUM write quorum not met")
        await c.settle()
        await c.replica.close()

    from kvnet.coordinator.trace import summary as trace_summary
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


# ---- the direct lane's write count ------------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from kvnet.coordinator.preflist import preflist_for  # noqa: E402
from kvnet.coordinator.quorum import OK, TIMEOUT, Failed, PutQuorum  # noqa: E402
from kvnet.peer.errors import ConnectionLost, PeerTimeout, RemoteError  # noqa: E402

_EXC = {"ok": None, "timeout": PeerTimeout("slow"), "lost": ConnectionLost("gone"),
        "remote": RemoteError("failed", code="CommandError", remote_message="no")}


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 5).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(1, n),
    st.permutations(range(1, n)),
    st.lists(st.sampled_from(sorted(_EXC)), min_size=n - 1, max_size=n - 1))))
def test_direct_write_decides_as_the_put_quorum_does(case):
    """Random N, W, reply order and outcomes: DirectWrite settles at the reply where PutQuorum
    fed the same replies (the local OK first) becomes enough(), with its result or its error."""
    n, w, order, outcomes = case
    nodes = [f"n{i}" for i in range(n)]
    ring = Ring.create(nodes, q=8, n=n)
    pl = preflist_for(ring, 0, lambda x: True)
    me = pl.targets[0].node
    others = [t.node for t in pl.targets[1:]]

    async def main():
        fut = asyncio.get_running_loop().create_future()
        write = driver.DirectWrite(fut, b"raw", n, w, pl, me, n - 1)
        quorum = PutQuorum(n, w, pl)
        quorum.add_result(me, OK)
        decided_at = 0 if quorum.enough() else None
        assert fut.done() == (decided_at == 0)
        for step, i in enumerate(order, 1):
            node, exc = others[i - 1], _EXC[outcomes[i - 1]]
            write(node, exc, None if exc else True)
            if decided_at is None:
                quorum.add_result(node, OK if exc is None else driver._reply_of(exc))
                if quorum.enough():
                    decided_at = step
            assert fut.done() == (decided_at is not None)
            if decided_at == step:
                expected = quorum.response()
                if isinstance(expected, Exception):
                    assert type(fut.exception()) is type(expected)
                    assert str(fut.exception()) == str(expected)
                else:
                    assert fut.result() == b"raw"
        assert fut.done()

    asyncio.run(main())


def test_direct_write_failure_names_the_replies():
    async def main():
        ring = Ring.create(["a", "b", "c"], q=8, n=3)
        pl = preflist_for(ring, 0, lambda x: True)
        me, b, c = (t.node for t in pl.targets)
        fut = asyncio.get_running_loop().create_future()
        write = driver.DirectWrite(fut, b"raw", 3, 3, pl, me, 2)
        write(b, None, True)
        assert not fut.done()
        write(c, PeerTimeout("slow"), None)
        with pytest.raises(QuorumError, match=r"2 of 3|timeout"):
            fut.result()
        assert driver._reply_of(PeerTimeout("x")) == TIMEOUT
        assert isinstance(driver._reply_of(ConnectionLost("x")), Failed)

    asyncio.run(main())


# ---- the direct lane's read ---------------------------------------------------------------------

from kvnet.coordinator.quorum import GetQuorum  # noqa: E402
from kvnet.coordinator.staleness import is_stale  # noqa: E402


def _clocks():
    a = V.update(V.new(V.sibling(b"a", 10)), None, ("x", 1, 1))
    b = V.update(V.new(V.sibling(b"b", 20)), a, ("x", 1, 1))          # a's successor
    c = V.update(V.new(V.sibling(b"c", 15)), None, ("y", 1, 1))       # concurrent with both
    d = V.update(V.new(V.tombstone(30)), b, ("x", 1, 1))              # b deleted
    return [None, V.encode(a), V.encode(b), V.encode(c), V.encode(d), b"\xc1junk"]


_RAWS = _clocks()


class _Spawns:
    def __init__(self, name):
        self.name = name
        self.spawned = []
        self.coord_stats = driver.new_coord_stats()

    def spawn(self, coro):
        self.spawned.append(coro)
        coro.close()

    def reap_pending(self, p, key, raw):
        return False


@settings(max_examples=400, deadline=None)
@given(st.integers(2, 5).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(1, n), st.integers(0, len(_RAWS) - 1),
    st.permutations(range(1, n)),
    st.lists(st.one_of(st.integers(0, len(_RAWS) - 1), st.sampled_from(["timeout", "lost"])),
             min_size=n - 1, max_size=n - 1))))
def test_direct_read_answers_and_repairs_as_the_get_quorum_does(case):
    """Random N, R, stored clocks (equal, older, concurrent, deleted, undecodable), failures
    and reply order: DirectRead answers at the reply where GetQuorum fed the same replies
    becomes enough(), with the general path's value (lww of the merge) or error, and spawns a
    read repair exactly when the quorum's final() has stale replicas."""
    n, r, local, order, answers = case
    ring = Ring.create([f"n{i}" for i in range(n)], q=8, n=n)
    pl = preflist_for(ring, 0, lambda x: True)
    me = pl.targets[0].node
    others = [t.node for t in pl.targets[1:]]

    async def main():
        cluster = _Spawns(me)
        fut = asyncio.get_running_loop().create_future()
        read = driver.DirectRead(cluster, fut, 0, b"k", _RAWS[local], n, r, pl, n - 1)
        quorum = GetQuorum(n, r, pl)
        quorum.add_result(me, driver._found_raw(_RAWS[local]))
        decided = quorum.enough()
        expected = quorum.response() if decided else None
        for i in order:
            node, ans = others[i - 1], answers[i - 1]
            if isinstance(ans, int):
                read(node, None, _RAWS[ans])
                quorum.add_result(node, driver._found_raw(_RAWS[ans]))
            else:
                exc = PeerTimeout("slow") if ans == "timeout" else ConnectionLost("gone")
                read(node, exc, None)
                quorum.add_result(node, driver._reply_of(exc))
            if not decided and quorum.enough():
                decided, expected = True, quorum.response()
            assert fut.done() == decided
        assert fut.done()
        if isinstance(expected, Exception):
            assert type(fut.exception()) is type(expected)
            assert str(fut.exception()) == str(expected)
        else:
            assert fut.result() == (None if expected.not_found else V.lww_value(expected.clock))
        repair = quorum.final()
        assert bool(cluster.spawned) == bool(repair is not None and repair.clock is not None
                                             and repair.stale)
        # every reply in: the read's staleness was counted, as staleness.is_stale says of
        # the answer and the merge of every reply (an error answers nothing: not counted)
        counts = cluster.coord_stats["staleness"]
        if isinstance(expected, Exception):
            assert counts == {}
        else:
            assert counts == {r: [1, int(is_stale(expected.clock, repair.clock))]}

    asyncio.run(main())


class _ForwardingCluster(FakeCluster):
    """Node a is no replica of the partition: a write is forwarded. `refuse` nodes cannot be
    connected to; the failed dial marks them down, as the peer pool does."""

    def __init__(self, tmp_path, refuse):
        super().__init__(tmp_path)
        self.ring = Ring.create(["a", "b", "c", "d"], q=8, n=2)
        self.refuse, self.down = set(refuse), set()

    def is_up(self, node):
        return node not in self.down

    async def call(self, node, type, payload, timeout):
        from kvnet.peer.errors import PeerUnavailable

        self.calls.append((node, type))
        if node in self.refuse:
            self.down.add(node)
            raise PeerUnavailable(f"cannot connect to peer {node}: Connection refused")
        assert type == "coord_put"
        return V.encode(V.new(V.sibling(payload["v"])))


def test_a_forward_that_cannot_connect_goes_to_the_next_reachable_node(tmp_path):
    c = _ForwardingCluster(tmp_path, refuse=())
    p = next(p for p in range(c.ring.q) if "a" not in c.ring.preference_list(p))
    first, second = c.ring.preference_list(p)[:2]
    c.refuse = {first}
    c.coord_stats = driver.new_coord_stats()
    got = run(driver.put(c, p, b"k", V.sibling(b"v"), None, True, w=1))
    assert V.lww_value(got) == b"v"
    assert c.calls == [(first, "coord_put"), (second, "coord_put")]
    assert c.coord_stats["forwarded_writes"] == 1      # one write forwarded, tried twice


def test_a_forward_gives_up_after_a_bounded_number_of_refusals(tmp_path):
    from kvnet.peer.errors import PeerUnavailable

    c = _ForwardingCluster(tmp_path, refuse=("b", "c", "d"))
    p = next(p for p in range(c.ring.q) if "a" not in c.ring.preference_list(p))
    with pytest.raises(PeerUnavailable):
        run(driver.put(c, p, b"k", V.sibling(b"v"), None, True, w=1))
    assert len(c.calls) == driver.FORWARD_ATTEMPTS


def test_a_traced_forward_carries_the_coordinators_own_trace(tmp_path):
    """KV.TRACE of a write this node does not coordinate: coord_put asks for the
    coordinator's trace ("tr"), which becomes the forward step's; a coordinator that answers
    the clock's bytes alone (not knowing "tr") leaves the step without one."""
    from kvnet.coordinator.trace import Trace

    class Tracing(_ForwardingCluster):
        async def call(self, node, type, payload, timeout):
            raw = await super().call(node, type, payload, timeout)
            self.payloads.append(payload)
            return {"c": raw, "t": [{"op": "put", "coordinator": node}]} if self.new else raw

    c = Tracing(tmp_path, refuse=())
    c.payloads, c.new = [], True
    p = next(p for p in range(c.ring.q) if "a" not in c.ring.preference_list(p))
    coordinator = c.ring.preference_list(p)[0]
    for new in (True, False):
        c.new = new
        trace = Trace("a", "SET k v")
        raw = run(driver.put_raw(c, p, b"k", V.sibling(b"v"), None, True, 1, trace=trace))
        assert V.lww_value(V.decode(raw)) == b"v"
        assert c.payloads[-1]["tr"] is True
        [step] = trace.reply()["steps"]
        assert step["op"] == "forward" and step["to"] == coordinator and step["outcome"] == "ok"
        assert step["steps"] == ([{"op": "put", "coordinator": coordinator}] if new else [])
    run(driver.put_raw(c, p, b"k", V.sibling(b"v"), None, True, 1))       # untraced: no "tr"
    assert "tr" not in c.payloads[-1]
