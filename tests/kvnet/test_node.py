"""A 3-node cluster in one event loop: the coordinator, replication and the front door."""
import asyncio
from types import SimpleNamespace

import pytest
import redis.asyncio as aredis

from kvnet.config import load
from kvnet.errors import CommandError, QuorumError
from kvnet.node import Node
from kvnet.peer.batching import answer_batch
from kvnet.resp.backend import LATER
from kvnet.routes import Routes
from kvnet.testing import free_ports


async def _cluster(tmp_path, nodes=3, n=3, **kw):
    kw.setdefault("request_timeout_ms", 10000)
    kw.setdefault("fsync", "never")
    ports = free_ports(2 * nodes)
    members = [f"n{i}@127.0.0.1:{ports[nodes + i]}" for i in range(nodes)]
    out = []
    for i in range(nodes):
        cfg = load(name=f"n{i}", port=ports[i], peer_port=ports[nodes + i], n=n,
                   data_dir=str(tmp_path / f"n{i}"), members=members, **kw)
        out.append(await Node(cfg).start())
    return out, ports[:nodes]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_set_on_one_node_get_on_every_node(tmp_path):
    async def main():
        nodes, ports = await _cluster(tmp_path)
        clients = [aredis.Redis(port=p) for p in ports]
        try:
            for i in range(30):
                assert await clients[i % 3].set(f"k{i}", f"v{i}")
            for c in clients:
                for i in range(30):
                    assert await c.get(f"k{i}") == f"v{i}".encode()
            # every replica holds every key (N=3 on 3 nodes), as a stored clock
            for node in nodes:
                assert sum(len(p.store) for p in node.replica.partitions.values()) == 30
            assert await clients[1].delete("k1", "k2", "nope") == 2
            assert await clients[2].get("k1") is None
            assert await clients[0].mget("k0", "k1", "k3") == [b"v0", None, b"v3"]
            assert await clients[0].exists("k0", "k1") == 1
        finally:
            for c in clients:
                await c.aclose()
            for node in nodes:
                await node.stop()

    run(main())


def test_siblings_and_contexts_across_nodes(tmp_path):
    async def main():
        nodes, ports = await _cluster(tmp_path)
        a, b = aredis.Redis(port=ports[0]), aredis.Redis(port=ports[2])
        try:
            await a.execute_command("KV.PUT", "cart", "apple")
            ctx, vals = await b.execute_command("KV.GET", "cart")
            assert vals == [b"apple"]
            await b.execute_command("KV.PUT", "cart", "pear")                   # blind: a sibling
            ctx2, vals = await a.execute_command("KV.GET", "cart")
            assert sorted(vals) == [b"apple", b"pear"]
            await a.execute_command("KV.PUT", "cart", "apple+pear", "CONTEXT", ctx2)
            _, vals = await b.execute_command("KV.GET", "cart", "R", "ALL")
            assert vals == [b"apple+pear"]
            # a write with an old context keeps what that context had not seen
            await b.execute_command("KV.PUT", "cart", "stale", "CONTEXT", ctx)
            _, vals = await a.execute_command("KV.GET", "cart")
            assert sorted(vals) == [b"apple+pear", b"stale"]
        finally:
            await a.aclose()
            await b.aclose()
            for node in nodes:
                await node.stop()

    run(main())


def test_one_node_down_quorum_holds_and_read_repair(tmp_path):
    async def main():
        nodes, ports = await _cluster(tmp_path)
        c0 = aredis.Redis(port=ports[0])
        try:
            await c0.set("before", "1")
            await nodes[2].stop()                       # R=W=2 of N=3: still available
            assert await c0.set("during", "2")
            assert await c0.get("during") == b"2"
            with pytest.raises(Exception, match="quorum|reachable"):
                await c0.execute_command("KV.PUT", "x", "y", "W", "ALL")
            # n2 comes back (same data dir) and misses "during" until a read repairs it
            cfg = nodes[2].cfg
            nodes[2] = await Node(cfg).start()
            p = nodes[2].ring.partition_of(b"during")
            assert nodes[2].replica.read(p, b"during") is None
            for _ in range(300):                        # n0 redials once its backoff ends
                if nodes[0].is_up("n2"):
                    break
                await asyncio.sleep(0.02)
            assert await c0.execute_command("KV.GET", "during", "R", "ALL")
            for _ in range(100):
                if nodes[2].replica.read(p, b"during") is not None:
                    break
                await asyncio.sleep(0.02)
            assert nodes[2].replica.read(p, b"during") is not None
        finally:
            await c0.aclose()
            for node in nodes:
                await node.stop()

    run(main())


def test_scan_dbsize_and_flush(tmp_path):
    async def main():
        nodes, ports = await _cluster(tmp_path)
        c = aredis.Redis(port=ports[1])
        try:
            for j in range(0, 200, 20):
                await c.mset({f"key:{i}": i for i in range(j, j + 20)})
            await c.set("other", "x")
            seen, cursor, rounds = set(), 0, 0
            while True:
                cursor, keys = await c.scan(cursor, match="key:*", count=25)
                seen.update(keys)
                rounds += 1
                if cursor == 0:
                    break
            assert seen == {f"key:{i}".encode() for i in range(200)} and rounds > 1
            assert await c.dbsize() == 201
            await c.flushdb()
            assert await c.dbsize() == 0 and await c.get("key:3") is None
        finally:
            await c.aclose()
            for node in nodes:
                await node.stop()

    run(main())


def test_writes_survive_restart_of_every_node(tmp_path):
    async def main():
        nodes, ports = await _cluster(tmp_path)
        c = aredis.Redis(port=ports[0])
        await c.mset({f"k{i}": f"v{i}" for i in range(50)})
        await c.aclose()
        cfgs = [n.cfg for n in nodes]
        for n in nodes:
            await n.stop()
        nodes = [await Node(cfg).start() for cfg in cfgs]
        c = aredis.Redis(port=ports[2])
        try:
            assert await c.dbsize() == 50            # every partition on disk is open again
            assert await c.mget([f"k{i}" for i in range(50)]) == [f"v{i}".encode() for i in range(50)]
            await c.flushdb()
            assert await c.dbsize() == 0
        finally:
            await c.aclose()
            for n in nodes:
                await n.stop()

    run(main())


def test_writes_through_a_non_replica_are_forwarded(tmp_path):
    async def main():
        nodes, ports = await _cluster(tmp_path, nodes=4, n=3)
        c = aredis.Redis(port=ports[0])
        try:
            keys = [f"key{i}".encode() for i in range(40)]
            for k in keys:
                await c.set(k, b"v-" + k)
            ring = nodes[0].ring
            forwarded = 0
            for k in keys:
                p = ring.partition_of(k)
                pref = ring.preference_list(p)
                forwarded += "n0" not in pref
                for node in nodes:
                    held = node.replica.read(p, k)
                    assert (held is not None) == (node.name in pref), (k, node.name, pref)
                assert await c.get(k) == b"v-" + k
            assert forwarded > 0
            # the minting actor is always a replica of the key
            for k in keys:
                p = ring.partition_of(k)
                owner_clock = nodes[int(ring.preference_list(p)[0][1])].replica.read(p, k)
                assert {e[0][0] for e in owner_clock.entries} <= set(ring.preference_list(p))
        finally:
            await c.aclose()
            for node in nodes:
                await node.stop()

    run(main())


@pytest.mark.slow
def test_pipeline_of_10000_commands(tmp_path):
    async def main():
        nodes, ports = await _cluster(tmp_path)
        c = aredis.Redis(port=ports[1])
        try:
            pipe = c.pipeline(transaction=False)
            for i in range(5000):
                pipe.set(f"p{i}", i)
                pipe.get(f"p{i}")
            out = await pipe.execute()
            assert len(out) == 10000
            assert out[1::2] == [str(i).encode() for i in range(5000)]
        finally:
            await c.aclose()
            for node in nodes:
                await node.stop()

    run(main())


def test_password_required_when_set(tmp_path):
    import redis

    async def main():
        nodes, ports = await _cluster(tmp_path, password="s3cret-pass")
        try:
            bare = aredis.Redis(port=ports[0], retry_on_error=[], retry=None)
            with pytest.raises(redis.AuthenticationError):
                await bare.get("k")
            await bare.aclose()
            good = aredis.Redis(port=ports[0], password="s3cret-pass")
            assert await good.set("k", "v") and await good.get("k") == b"v"
            await good.aclose()
        finally:
            for node in nodes:
                await node.stop()

    run(main())


def test_node_with_wrong_cluster_secret_is_refused(tmp_path):
    async def main():
        ports = free_ports(4)
        members = [f"n{i}@127.0.0.1:{ports[2 + i]}" for i in range(2)]
        good = await Node(load(name="n0", port=ports[0], peer_port=ports[2], n=2, r=1, w=1,
                               data_dir=str(tmp_path / "n0"), members=members, fsync="never",
                               request_timeout_ms=500)).start()
        bad = await Node(load(name="n1", port=ports[1], peer_port=ports[3], n=2, r=1, w=1,
                              data_dir=str(tmp_path / "n1"), members=members, fsync="never",
                              request_timeout_ms=500, cluster_secret="a-different-secret")).start()
        c = aredis.Redis(port=ports[0])
        try:
            assert await c.set("k", "v")                       # W=1: the local replica
            with pytest.raises(Exception, match="quorum|reachable|auth"):
                await c.execute_command("KV.PUT", "k2", "v", "W", "ALL")
            p = good.ring.partition_of(b"k")
            assert bad.replica.read(p, b"k") is None           # nothing crossed
        finally:
            await c.aclose()
            await good.stop()
            await bad.stop()

    run(main())


def test_peer_requests_outside_the_ring_are_refused(tmp_path):
    from kvnet.peer.errors import RemoteError
    from kvnet.peer.protocol import connect

    async def main():
        nodes, ports = await _cluster(tmp_path)
        c = aredis.Redis(port=ports[0])
        try:
            await c.mset({f"k{i}": i for i in range(30)})
            assert await c.dbsize() == 30
            host, peer_port = nodes[0].cfg.peer_address
            conn = await connect(host, peer_port, "intruder", nodes[0].cfg.cluster_secret.encode())
            key = b"k1"
            right = nodes[0].ring.partition_of(key)
            for bad in (256, -1, 2 ** 40, (right + 1) % 256):
                with pytest.raises(RemoteError):
                    await conn.request("get", {"p": bad, "k": key}, timeout=5)
            for payload in ({}, {"all": False}, None):
                with pytest.raises(RemoteError):
                    await conn.request("flush", payload, timeout=5)
            conn.close()
            assert await c.dbsize() == 30
            assert sorted(nodes[0].replica.partitions) == sorted(set(nodes[0].replica.partitions) & set(range(256)))
        finally:
            await c.aclose()
            for node in nodes:
                await node.stop()

    run(main())


@pytest.mark.parametrize("q", [1, 4, 256])
def test_scan_with_small_counts_returns_every_key(tmp_path, q):
    """The node's token cursor maps onto each partition store's index order (which skips the
    partition bits) and back, across many small batches."""
    async def main():
        ports = free_ports(2)
        cfg = load(name="solo", port=ports[0], peer_port=ports[1], n=1, r=1, w=1, ring_size=q,
                   data_dir=str(tmp_path / "solo"), fsync="never")
        node = await Node(cfg).start()
        c = aredis.Redis(port=ports[0])
        try:
            keys = {f"k{i}".encode() for i in range(600)}
            for k in keys:
                await c.set(k, b"v")
            seen, cursor, calls = [], 0, 0
            while True:
                cursor, ks = await c.scan(cursor, count=7)
                seen.extend(ks)
                calls += 1
                if cursor == 0:
                    break
            assert set(seen) == keys and calls >= 600 // 7
        finally:
            await c.aclose()
            await node.stop()

    run(main())


def test_only_partitions_this_node_alone_replicates_take_the_fast_lane(tmp_path):
    async def main():
        (solo,), _ = await _cluster(tmp_path / "one", nodes=1, n=1, r=1, w=1)
        nodes, _ = await _cluster(tmp_path / "three", nodes=3, n=3)
        try:
            assert len(solo.rings.routes.solo) == solo.ring.q
            assert solo.front.set_overwrite_now(b"k", b"v") is None
            assert solo.front.get_lww_now(b"k") == b"v" and solo.front.get_lww_now(b"nope") is None
            assert await solo.front.get_lww(b"k") == b"v"
            with pytest.raises(CommandError):
                solo.front.set_overwrite_now(b"k", b"x" * (solo.cfg.max_value_bytes + 1))
            assert nodes[0].rings.routes.solo == frozenset()     # (the cluster's lane: the test below)
            await nodes[0].front.set_overwrite(b"k", b"v")
            assert [await n.front.get_lww(b"k") for n in nodes] == [b"v"] * 3
        finally:
            for n in [solo, *nodes]:
                await n.stop()

    run(main())


async def _lane_open(node, key):
    """Wait until node's connections to the key's other primaries are up (gossip dials them)."""
    p = node.ring.partition_of(key)
    while node.direct_lane(p) is None:
        await asyncio.sleep(0.01)
    return p


def test_a_plain_set_goes_straight_to_the_other_primaries(tmp_path):
    """With every primary up and connected, a SET returns a future without a coroutine; the
    value reaches every replica; a down or unconnected primary closes the lane (LATER)."""
    async def main():
        nodes, _ = await _cluster(tmp_path, nodes=3, n=3, r=2, w=2, request_timeout_ms=300)
        a, b, c = nodes
        try:
            p = await asyncio.wait_for(_lane_open(a, b"k"), 10)
            assert set(a.rings.routes.direct) == set(range(a.ring.q))     # N=3 of 3: a holds every one
            fut = a.front.set_overwrite_now(b"k", b"v1")
            assert isinstance(fut, asyncio.Future)
            raw = await fut
            assert a.replica.read_raw(p, b"k") == raw
            for n in (b, c):
                while n.replica.read_raw(p, b"k") != raw:    # W=2: the third may come later
                    await asyncio.sleep(0.01)
            assert [await n.front.get_lww(b"k") for n in nodes] == [b"v1"] * 3
            await a.front.set_overwrite(b"k", b"v2")                 # the coroutine takes the lane too
            assert await c.front.get_lww(b"k") == b"v2"
            with pytest.raises(CommandError):
                a.front.set_overwrite_now(b"k", b"x" * (a.cfg.max_value_bytes + 1))

            # replicas that do not answer in time: the general path's error, named
            async def stuck(m):
                await asyncio.sleep(5)
            saved = [n.handlers.replace("mput", stuck, lambda m: LATER) for n in (b, c)]
            fut = a.front.set_overwrite_now(b"k", b"v3")
            with pytest.raises(QuorumError) as info:
                await fut
            assert "timeout" in str(info.value)
            for n, old in zip((b, c), saved):
                n.handlers.replace("mput", *old)

            # reads: the future of the value at R; a stale replica is repaired afterwards
            fut = a.front.get_lww_now(b"k")       # v3 stayed on a (a failed quorum is no rollback)
            assert isinstance(fut, asyncio.Future) and await fut == b"v3"
            old = b.replica.read_raw(p, b"k")
            await a.front.set_overwrite(b"k", b"v5")
            while c.replica.read_raw(p, b"k") == old or b.replica.read_raw(p, b"k") == old:
                await asyncio.sleep(0.01)
            b.replica.partition(p).store.put(b"k", old)        # b loses the last write
            assert await a.front.get_lww_now(b"k") == b"v5"
            while b.replica.read_raw(p, b"k") == old:
                await asyncio.sleep(0.01)
            assert await b.front.get_lww(b"k") == b"v5"
            assert await a.front.get_lww_now(b"nope") is None

            # a primary marked down: the lane is closed, the general path writes with a hint
            a.gossip.liveness._down.add("n2")      # as the two-source rule marks it
            assert a.gossip.is_down("n2")
            assert a.front.set_overwrite_now(b"k", b"v4") is LATER
            assert a.front.get_lww_now(b"k") is LATER
            a.gossip.liveness._down.discard("n2")
            await asyncio.wait_for(_lane_open(a, b"k"), 10)
            # a closed connection is never used again: the pool's best, or no lane until redialed
            closed = a.lanes.conns["n1"]
            closed.close()
            lane = a.direct_lane(p)
            assert lane is None or closed not in lane[0]
            await asyncio.wait_for(_lane_open(a, b"k"), 10)
            assert closed not in a.direct_lane(p)[0]
            # a ring that moves closes it (writes go to the replicas being added too)
            assert Routes.of(a.ring_state, a.name).direct == a.rings.routes.direct
            assert Routes.of(SimpleNamespace(next=a.ring, current=a.ring), a.name).direct == {}
        finally:
            for n in nodes:
                await n.stop()

    run(main())


@pytest.mark.parametrize("fsync", ["never", "always"])
def test_replica_batches_answer_each_item(tmp_path, fsync):
    """The direct lane's mput/mget: each item stored or read, a bad one answered with its own
    error; with fsync="always" the batch waits for one sync (the coroutine), not the inline
    answer."""
    from kvcore import versions as V

    async def main():
        nodes, _ = await _cluster(tmp_path, nodes=3, n=3, fsync=fsync)
        b = nodes[1]
        try:
            p = b.ring.partition_of(b"k")
            other = next(x for x in range(b.ring.q) if x != p)
            k2 = next(k for k in (b"k%d" % i for i in range(1000)) if b.ring.partition_of(k) == p
                      and k != b"k")
            raw = V.encode(V.update(V.new(V.sibling(b"v", 5)), None, ("n0", 1, 1)))
            items = [{"p": p, "k": b"k", "c": raw}, {"p": other, "k": b"k", "c": raw},
                     {"p": p, "k": k2, "c": b"\xc1"}]
            answer = b.handlers.now("mput", items)
            if fsync == "always":
                assert answer is LATER
                answer = await b.handlers("mput", items)
            values, errors = answer
            assert values == [True, None, None] and sorted(errors) == [1, 2]
            assert errors[1][0] == "CommandError" and "not" in errors[1][1]
            assert errors[2][0] == "CommandError" and "bad clock" in errors[2][1]
            assert b.replica.read_raw(p, b"k") == raw and b.replica.read_raw(p, k2) is None
            values, errors = b.handlers.now("mget", [{"p": p, "k": b"k"}, {"p": p, "k": k2},
                                                    {"p": -1, "k": b"k"}])
            assert values == [raw, None, None] and list(errors) == [2]
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_the_lane_needs_n_distinct_primaries_and_peers_that_batch(tmp_path):
    """No lane when N is above the node count (shorter preference lists), nor to a peer whose
    connection agreed on protocol version 1 (it has no mput/mget); fsync="interval" keeps
    it (the timer syncs what the lane stored)."""
    async def main():
        two, _ = await _cluster(tmp_path / "two", nodes=2, n=3, r=2, w=2)
        try:
            assert two[0].rings.routes.direct == {}
            await two[0].front.set_overwrite(b"k", b"v")            # the general path
            assert await two[1].front.get_lww(b"k") == b"v"
        finally:
            for n in two:
                await n.stop()
        nodes, _ = await _cluster(tmp_path / "three", nodes=3, n=3, r=2, w=2, fsync="interval")
        a = nodes[0]
        try:
            p = await asyncio.wait_for(_lane_open(a, b"k"), 10)
            fut = a.front.set_overwrite_now(b"k", b"v1")
            assert isinstance(fut, asyncio.Future)
            await fut
            assert await nodes[2].front.get_lww(b"k") == b"v1"
            old = a.pool.get("n1")
            a.lanes.forget()
            old.version = 1                                  # as an older node agrees
            assert a.direct_lane(p) is None
            assert a.front.set_overwrite_now(b"k", b"v2") is LATER
            await a.front.set_overwrite(b"k", b"v2")
            assert await nodes[1].front.get_lww(b"k") == b"v2"
            old.version = 2
            assert a.direct_lane(p) is not None
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_a_client_that_leaves_while_its_set_is_in_flight(tmp_path, caplog):
    """The front door cancels the write's future when its client goes; the replicas' late
    answers (or the timeout) then settle nothing, raise nothing, and the node serves on."""
    async def main():
        nodes, ports = await _cluster(tmp_path, nodes=3, n=3, r=2, w=2, request_timeout_ms=300)
        a, b, c = nodes
        try:
            await asyncio.wait_for(_lane_open(a, b"k"), 10)
            release = asyncio.Event()

            async def held(items):
                await release.wait()
                return answer_batch(b.answers.stored, items)
            saved = [n.handlers.replace("mput", held, lambda m: LATER) for n in (b, c)]
            reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
            writer.write(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n")
            await writer.drain()
            p = a.ring.partition_of(b"k")
            while a.replica.read_raw(p, b"k") is None:       # stored here, replicas held
                await asyncio.sleep(0.01)
            writer.close()
            await asyncio.sleep(0.1)
            release.set()                                    # late answers, after the close
            await asyncio.sleep(0.5)                         # and past the timeout
            for n, old in zip((b, c), saved):
                n.handlers.replace("mput", *old)
            client = aredis.Redis(port=ports[0])
            assert await client.set(b"k", b"v2") and await client.get(b"k") == b"v2"
            await client.aclose()
        finally:
            for n in nodes:
                await n.stop()

    with caplog.at_level("ERROR"):
        run(main())
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_a_started_node_holds_every_partition_it_is_a_primary_of_open(tmp_path):
    """Ready means writable at full speed: no partition waits for its first write to be
    created (that cost the first seconds of a fresh cluster; benchmarks/first_second.py)."""
    async def main():
        nodes, _ = await _cluster(tmp_path, nodes=4, n=2, ring_size=32)
        try:
            for node in nodes:
                mine = {p for p in range(32) if node.name in node.ring.preference_list(p)}
                assert set(node.replica.partitions) == mine and len(mine) == 16
        finally:
            for node in nodes:
                await node.stop()

    run(main())


# ---- SCAN across nodes (kvnet/coordinator/scan.py) ---------------------------------------------

def _count_scan_requests(node):
    """Wrap node.call_future (what Node.scan sends with): a list of the nodes asked per call."""
    asked = []
    real = node.call_future

    def call_future(peer, type_, payload, timeout):
        if type_ == "mscan":
            asked.append(peer)
        return real(peer, type_, payload, timeout)

    node.call_future = call_future
    return asked


@pytest.mark.parametrize("n", [3, 1])
def test_scan_of_a_few_keys_is_one_call(tmp_path, n):
    """Three keys on three nodes with the default ring (Q=256): SCAN 0 returns them all and
    cursor 0 in one call (N=1: the keys are on different nodes; each is asked once)."""
    async def main():
        nodes, ports = await _cluster(tmp_path, n=n, r=1, w=1)
        asked = _count_scan_requests(nodes[0])
        c = aredis.Redis(port=ports[0])
        try:
            assert nodes[0].ring.q == 256
            await c.mset({"a": 1, "b": 2, "c": 3})
            if n == 1:
                assert len({nodes[0].ring.owner(nodes[0].ring.partition_of(k))
                            for k in (b"a", b"b", b"c")}) > 1
            cursor, keys = await c.scan(0)
            assert cursor == 0 and sorted(keys) == [b"a", b"b", b"c"]
            assert sorted(asked) == ([] if n == 3 else ["n1", "n2"])
            assert await c.scan(0, match="b") == (0, [b"b"])
        finally:
            await c.aclose()
            for node in nodes:
                await node.stop()

    run(main())


@pytest.mark.parametrize("proto", [2, 3])
def test_redis_py_scan_tests(tmp_path, proto):
    """redis-py's own SCAN tests (tests/test_commands.py: test_scan, test_scan_iter,
    test_scan_type), against a ringkv cluster through redis-py; test_scan_type with strings,
    the one type ringkv has, and with COUNT and MATCH variants."""
    async def main():
        nodes, ports = await _cluster(tmp_path, n=1, r=1, w=1)
        r = aredis.Redis(port=ports[1], protocol=proto)
        try:
            # test_scan
            await r.set("a", 1)
            await r.set("b", 2)
            await r.set("c", 3)
            cursor, keys = await r.scan()
            assert cursor == 0
            assert set(keys) == {b"a", b"b", b"c"}
            _, keys = await r.scan(match="a")
            assert set(keys) == {b"a"}
            # test_scan_iter
            keys = [k async for k in r.scan_iter()]
            assert set(keys) == {b"a", b"b", b"c"}
            keys = [k async for k in r.scan_iter(match="a")]
            assert set(keys) == {b"a"}
            # test_scan_type, for strings: TYPE string keeps them, another type returns none
            await r.set("a-string", 4)
            _, keys = await r.scan(match="a*", _type="STRING")
            assert set(keys) == {b"a", b"a-string"}
            cursor, keys = await r.scan(match="a*", _type="SET")
            assert cursor == 0 and keys == []
            assert [k async for k in r.scan_iter(_type="hash")] == []
            keys = [k async for k in r.scan_iter(match="a*", _type="string")]
            assert sorted(keys) == [b"a", b"a-string"]
            # COUNT: any count walks everything; a small one may take several calls
            for count in (1, 2, 10, 1000):
                keys = [k async for k in r.scan_iter(count=count)]
                assert sorted(keys) == [b"a", b"a-string", b"b", b"c"]
                keys = [k async for k in r.scan_iter(match="[ab]", count=count)]
                assert sorted(keys) == [b"a", b"b"]
            cursor, keys = await r.scan(count=1)
            assert cursor != 0 and 1 <= len(keys) <= 2
        finally:
            await r.aclose()
            for node in nodes:
                await node.stop()

    run(main())


def test_scan_count_counts_keys_examined(tmp_path):
    """COUNT counts the keys a call examines (tombstones included, before MATCH): a call
    examines at least COUNT unless the ring ends there and at most 2 x COUNT, returns exactly
    the live keys from its cursor to the next, asks each node at most once, and with COUNT 1
    every call moves on. N=1: each key is stored on one node."""
    from kvcore.hashing import token

    async def main():
        nodes, ports = await _cluster(tmp_path, n=1, r=1, w=1, ring_size=64)
        asked = _count_scan_requests(nodes[2])
        c = aredis.Redis(port=ports[2])
        try:
            keys = [b"key:%d" % i for i in range(400)]
            await c.mset({k: b"v" for k in keys})
            await c.delete(*keys[::7])
            live = sorted(set(keys) - set(keys[::7]))
            stored = sorted(token(k) for k in keys)          # the tombstones are still stored
            assert sum(len(p.store) for nd in nodes for p in nd.replica.partitions.values()) == 400

            def between(lo, hi):
                return [t for t in stored if t >= lo and (hi == 0 or t < hi)]

            for count, match in ((1, None), (7, None), (50, b"key:1*"), (1000, None)):
                seen, cursor, calls = [], 0, 0
                while True:
                    del asked[:]
                    nxt, got = await nodes[2].front.scan(cursor, match, count)
                    examined = len(between(cursor, nxt))
                    assert examined >= count or nxt == 0
                    assert examined <= 2 * count
                    assert nxt == 0 or nxt > cursor
                    want = sorted(k for k in live if token(k) >= cursor and (nxt == 0 or token(k) < nxt))
                    if match is None:
                        assert sorted(got) == want
                    else:
                        assert sorted(got) == [k for k in want if k.startswith(b"key:1")]
                    assert len(asked) == len(set(asked)) and set(asked) <= {"n0", "n1"}
                    seen += got
                    calls += 1
                    if nxt == 0:
                        break
                    cursor = nxt
                expected = live if match is None else [k for k in live if k.startswith(b"key:1")]
                assert sorted(seen) == expected                   # each key once
                if count == 1:
                    assert calls >= 400
            # through the front door as well
            cursor, got = await c.scan(0, count=1000)
            assert cursor == 0 and sorted(got) == live
        finally:
            await c.aclose()
            for node in nodes:
                await node.stop()

    run(main())


def test_scan_reaching_a_partition_without_a_reachable_replica(tmp_path):
    """N=1 and one node stopped: a call whose walk reaches one of its partitions fails with
    UNAVAILABLE (as a GET would); one that stops before it answers."""
    from kvcore.hashing import token
    from kvnet.coordinator import scan as S

    async def main():
        nodes, ports = await _cluster(tmp_path, n=1, r=1, w=1, ring_size=16)
        c = aredis.Redis(port=ports[0])
        try:
            ring = nodes[0].ring
            keys = [b"k%d" % i for i in range(200)]
            await c.mset({k: b"v" for k in keys})
            await nodes[2].stop()
            for _ in range(300):
                try:
                    await nodes[0].call("n2", "count", {}, 0.5)
                except Exception:
                    pass
                if not nodes[0].is_up("n2"):
                    break
                await asyncio.sleep(0.02)
            assert not nodes[0].is_up("n2")
            with pytest.raises(Exception, match="UNAVAILABLE no replica of partition .* SCAN"):
                await c.scan(0, count=1000)
            # a partition of a live node whose next partition is n2's: COUNT 1 stops in it
            p = next(p for p in range(ring.q - 1)
                     if ring.owner(p) != "n2" and ring.owner(p + 1) == "n2"
                     and any(ring.partition_of(k) == p for k in keys))
            first = min(token(k) for k in keys if ring.partition_of(k) == p)
            cursor, got = await c.scan(first, count=1)
            assert got and S.partition_of(cursor, 4) == p
            with pytest.raises(Exception, match="UNAVAILABLE"):
                await c.scan(S.first_token(p + 1, 4), count=1)
        finally:
            await c.aclose()
            for node in nodes:
                await node.stop()

    run(main())


def test_scan_requests_are_checked(tmp_path):
    """A node's mscan handler refuses malformed payloads and partitions it does not hold with
    a clear error (never a crash, never an empty answer for data held elsewhere)."""
    from kvnet.coordinator import scan as S
    from kvnet.peer.errors import RemoteError
    from kvnet.peer.protocol import connect

    async def main():
        nodes, ports = await _cluster(tmp_path, n=1, r=1, w=1, ring_size=16)
        c = aredis.Redis(port=ports[0])
        try:
            node = nodes[0]
            ring = node.ring
            mine = [p for p in range(16) if ring.owner(p) == "n0"]
            other = next(p for p in range(16) if ring.owner(p) != "n0")
            await c.mset({b"k%d" % i: b"v" for i in range(100)})
            good = {"ps": mine, "c": S.first_token(mine[0], 4), "n": 1000, "m": None}
            answer = await node.handlers("mscan", good)
            held = sum(len(node.replica.partitions[p].store) for p in mine
                       if p in node.replica.partitions)
            assert [e[0] for e in answer] == mine and sum(e[2] for e in answer) == held
            # MATCH filters on the node, after counting: the same keys examined, none returned
            assert await node.handlers("mscan", dict(good, m=b"nothing*")) == \
                [[p, [], examined, nxt] for p, _, examined, nxt in answer]
            bad = [None, [], {}, dict(good, ps=[]), dict(good, ps=mine[::-1]),
                   dict(good, ps=[mine[0], mine[0]]), dict(good, ps=[16]), dict(good, ps=[-1]),
                   dict(good, ps=[True]), dict(good, ps="0"), dict(good, ps=list(range(17))),
                   dict(good, c=-1), dict(good, c=1 << 64), dict(good, c="0"),
                   dict(good, c=S.first_token(mine[0] + 1, 4)), dict(good, n=0),
                   dict(good, n=S.MAX_COUNT + 1), dict(good, n=1.5), dict(good, n=None),
                   dict(good, m="*"), dict(good, m=b"x" * (S.MAX_MATCH + 1)),
                   dict(good, ps=[other], c=S.first_token(other, 4))]
            for payload in bad:
                with pytest.raises(CommandError):
                    await node.handlers("mscan", payload)
            with pytest.raises(CommandError, match="not a replica of partition"):
                await node.handlers("mscan", {"ps": [other], "c": S.first_token(other, 4), "n": 5})
            # the same through the peer protocol: errors, and the node goes on answering
            host, peer_port = node.cfg.peer_address
            conn = await connect(host, peer_port, "n1", node.cfg.cluster_secret.encode())
            for payload in bad:
                if isinstance(payload, dict) and payload.get("c") == 1 << 64:
                    continue                                    # (msgpack has no such int)
                with pytest.raises(RemoteError):
                    await conn.request("mscan", payload, timeout=5)
            assert len(await conn.request("mscan", good, timeout=5)) == len(mine)
            conn.close()
            cursor, keys = await c.scan(0, count=1000)
            assert cursor == 0 and len(keys) == 100
        finally:
            await c.aclose()
            for node in nodes:
                await node.stop()

    run(main())


def test_a_node_started_after_a_crash_serves_while_its_trees_are_folded(tmp_path, monkeypatch):
    """After a kill -9 (stores abandoned: no TREE, no CLEAN) a node serves reads and writes as
    soon as it has started, while INFO still shows trees being folded in the background; the
    folds end, every tree then equals a fold of its store, and INFO counts them."""
    import kvnet.replica as R
    from kvcore import merkle as M

    monkeypatch.setattr(R, "REBUILD_CHUNK", 2)      # (a long fold: many loop turns)

    async def main():
        nodes, ports = await _cluster(tmp_path, nodes=1, n=1, r=1, w=1)
        c = aredis.Redis(port=ports[0])
        try:
            for i in range(0, 3000, 500):
                await c.mset({f"k{j}": f"v{j}" for j in range(i, i + 500)})
        finally:
            await c.aclose()
        node = nodes[0]
        for part in node.replica.partitions.values():
            part.store._abandon()                   # the crash
        node.replica.partitions = {}
        await node.stop()
        nodes, ports = await _cluster(tmp_path, nodes=1, n=1, r=1, w=1)
        node = nodes[0]
        c = aredis.Redis(port=ports[0])
        try:
            info = await node.front.info_section()
            assert info["trees_rebuilding"] > 100   # served from here on, folds under way
            assert await c.get("k7") == b"v7" and await c.set("k7", b"new")
            assert await c.mget("k0", "k2999", "k7") == [b"v0", b"v2999", b"new"]
            assert (await node.front.info_section())["trees_rebuilding"] > 0
            for _ in range(3000):
                if (await node.front.info_section())["trees_rebuilding"] == 0:
                    break
                await asyncio.sleep(0.01)
            info = await node.front.info_section()
            assert info["trees_rebuilding"] == 0 and info["tree_rebuilds"] >= 200
            for part in node.replica.partitions.values():
                assert part.tree == M.MerkleTree().rebuild(part.store.items())
        finally:
            await c.aclose()
            await node.stop()

    asyncio.run(asyncio.wait_for(main(), 120))
