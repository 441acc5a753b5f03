"""Limits that agree end to end (issue 17 item E): the object limit at the coordinator,
client contexts, and objects above the peer frame limit carried between replicas."""
import asyncio
import itertools
import random

import pytest
import redis.asyncio as aredis

from kvcore import versions as V
from kvnet.config import load
from kvnet.node import Node
from kvnet.peer.framing import DEFAULT_MAX_FRAME_SIZE
from kvnet.testing import FaultProxy, eventually, free_ports


async def _cluster(tmp_path, nodes=3, n=3, proxied=False, **kw):
    """In-process nodes on 127.0.0.1; proxied: node i reaches node j through proxies[i, j]
    (a FaultProxy), so a test can cut the network between them."""
    kw.setdefault("request_timeout_ms", 10000)
    kw.setdefault("fsync", "never")
    ports = free_ports(2 * nodes)
    proxies = {}
    if proxied:
        for i, j in itertools.permutations(range(nodes), 2):
            proxies[i, j] = FaultProxy(ports[nodes + j], name=f"n{i}->n{j}")
    out = []
    try:
        for i in range(nodes):
            seen = [proxies[i, j].port if (i, j) in proxies else ports[nodes + j]
                    for j in range(nodes)]
            members = [f"n{j}@127.0.0.1:{port}" for j, port in enumerate(seen)]
            cfg = load(name=f"n{i}", port=ports[i], peer_port=ports[nodes + i], n=n,
                       data_dir=str(tmp_path / f"n{i}"), members=members, **kw)
            out.append(await Node(cfg).start())
    except BaseException:
        for node in out:
            await node.stop()
        for px in proxies.values():
            px.close()
        raise
    return out, ports[:nodes], proxies


async def _stop(nodes, proxies=(), clients=()):
    for c in clients:
        await c.aclose()
    for node in nodes:
        await node.stop()
    for px in dict(proxies).values():
        px.close()


def run(coro, limit=60):
    return asyncio.run(asyncio.wait_for(coro, limit))


def test_a_write_leaving_an_object_above_max_object_bytes_is_refused_before_it_is_stored(tmp_path):
    """A second blind write would leave two 3,000-byte siblings, above max_object_bytes=5120:
    refused with TOOLARGE by the coordinator, and the same reply when another node forwarded
    the write to it; nothing is stored, and the write that resolves the siblings goes."""
    async def main():
        nodes, ports, _ = await _cluster(tmp_path, n=1, r=1, w=1, max_value_bytes=4096,
                                         max_object_bytes=5120)
        key = b"big"
        p = nodes[0].ring.partition_of(key)
        owner = int(nodes[0].ring.preference_list(p)[0][1:])
        other = (owner + 1) % 3
        clients = [aredis.Redis(port=ports[i]) for i in (owner, other)]
        try:
            for c in clients:
                await c.execute_command("KV.PUT", key, b"a" * 3000)
                with pytest.raises(aredis.ResponseError) as info:
                    await c.execute_command("KV.PUT", key, b"b" * 3000)
                msg = str(info.value)
                # the refusal's own prefix, also through a forward (not a failed peer request)
                assert msg.startswith("TOOLARGE the write would leave key b'big' an object "), msg
                assert "above max_object_bytes=5120" in msg and "context" in msg, msg
                ctx, vals = await c.execute_command("KV.GET", key)
                assert b"a" * 3000 in vals and b"b" * 3000 not in vals
                await c.execute_command("KV.PUT", key, b"c", "CONTEXT", ctx)    # resolved
                assert (await c.execute_command("KV.GET", key))[1] == [b"c"]
        finally:
            await _stop(nodes, clients=clients)

    run(main())


def test_malformed_or_oversized_contexts_get_a_clear_error_and_the_node_goes_on(tmp_path):
    """Contexts a client sends back are bounded (MAX_CONTEXT_BYTES, MAX_CONTEXT_ENTRIES) and
    their actors checked, at the node the client talks to and at a coordinator a write is
    forwarded to (coord_put); nothing is written, and the connection keeps serving."""
    async def main():
        nodes, ports, _ = await _cluster(tmp_path, n=1, r=1, w=1)
        key = b"ctx"
        p = nodes[0].ring.partition_of(key)
        owner = int(nodes[0].ring.preference_list(p)[0][1:])
        c = aredis.Redis(port=ports[(owner + 1) % 3])       # not the key's replica: forwards
        bad = [
            (b"\x93garbage", "invalid context"),
            (b"x" * ((1 << 20) + 1), "above the limit of 1048576"),
            (V.encode_context(tuple((("n1", 1, e), 1) for e in range(10_001))),
             "10001 actors, above the limit of 10000"),
            (V.encode_context(((("no such node!", 1, 1), 1),)), "is not an actor"),
            (V.encode_context(((["n1", 1, 1, 1], 1),)), "is not an actor"),
        ]
        try:
            for ctx, error in bad:
                for cmd in ("KV.PUT", "KV.DEL"):
                    args = (key, b"v", "CONTEXT", ctx) if cmd == "KV.PUT" else (key, "CONTEXT", ctx)
                    with pytest.raises(aredis.ResponseError, match="invalid context") as info:
                        await c.execute_command(cmd, *args)
                    assert error in str(info.value)
            # the same checks where a forwarded write arrives (a peer's coord_put)
            with pytest.raises(Exception, match="invalid context: .* is not an actor"):
                await nodes[(owner + 1) % 3].call(f"n{owner}", "coord_put", {
                    "p": p, "k": key, "v": b"v", "ts": 1, "ow": False, "w": 1, "st": False,
                    "ctx": bad[3][0]}, 5)
            assert (await c.execute_command("KV.GET", key))[1] == []
            ctx, _ = await c.execute_command("KV.GET", key)
            await c.execute_command("KV.PUT", key, b"ok", "CONTEXT", ctx)
            assert (await c.execute_command("KV.GET", key))[1] == [b"ok"]
        finally:
            await _stop(nodes, clients=[c])

    run(main())


async def _until(predicate, timeout, what):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.1)


@pytest.mark.slow
def test_two_40_mib_siblings_from_the_two_sides_of_a_partition_reach_every_replica(tmp_path):
    """n0 | n1 n2 cut apart (fault proxies between in-process nodes; the real peer protocol):
    a 40 MiB value written on each side, each within max_object_bytes (64 MiB), so their sync
    is an object of 80 MiB, above the 64 MiB peer frame limit. After the heal, anti-entropy
    carries it in chunks and every replica's store holds both values (read from each replica
    alone), and the front door replies with both."""
    size = 40 << 20
    rng = random.Random(17)
    a, b = rng.randbytes(size), rng.randbytes(size)      # incompressible: 80 MiB stored

    async def main():
        nodes, ports, proxies = await _cluster(
            tmp_path, proxied=True, r=1, w=1, ring_size=8, max_value_bytes=size,
            request_timeout_ms=30_000, gossip_interval_ms=100, ae_interval_ms=200)
        key = b"big"
        p = nodes[0].ring.partition_of(key)
        c0, c1 = aredis.Redis(port=ports[0]), aredis.Redis(port=ports[1])
        try:
            await _until(lambda: all(x.is_up(f"n{j}") for x in nodes for j in range(3)), 20,
                         "every node up")
            for (i, j), px in proxies.items():
                if 0 in (i, j):
                    px.cut("refuse")
            await c0.execute_command("KV.PUT", key, a, "W", 1)
            await c1.execute_command("KV.PUT", key, b, "W", 1)
            await _until(lambda: nodes[2].replica.read_raw(p, key) is not None, 20, "n2 has b")
            assert V.values(nodes[0].replica.read(p, key))[0].value == a
            for px in proxies.values():
                px.heal()

            def both(i):
                raw = nodes[i].replica.read_raw(p, key)
                return raw is not None and len(raw) > 2 * size
            await _until(lambda: all(both(i) for i in range(3)), 60, "both values everywhere")
            for i in range(3):                   # each replica's own store, alone
                raw = nodes[i].replica.read_raw(p, key)
                assert len(raw) > DEFAULT_MAX_FRAME_SIZE
                assert sorted(s.value for s in V.values(V.decode(raw))) == sorted([a, b])
                del raw
            c2 = aredis.Redis(port=ports[2])
            try:
                _, vals = await c2.execute_command("KV.GET", key, "R", 1)
            finally:
                await c2.aclose()
            assert sorted(vals) == sorted([a, b])
        finally:
            await _stop(nodes, proxies, clients=[c0, c1])

    run(main(), limit=150)


def _small_frames(node, frame=16 << 10):
    """Peer frames of at most `frame` bytes on this node's connections (before start): every
    object below travels in chunks, whatever carries it."""
    node.pool._opts["max_frame_size"] = frame
    return node


@pytest.mark.slow
def test_replication_read_repair_hints_and_transfers_carry_objects_above_the_frame_limit(tmp_path):
    """50 KiB values through 16 KiB peer frames, so every message holding one goes in chunks:
    replication (W=ALL), read repair (a newer object on one primary), a fallback's hint and its
    replay to the primary once back, and the transfers of a join. Every primary of the final
    ring holds every key's newest object."""
    q, nodes_n = 16, 5
    ports = free_ports(2 * nodes_n)
    members = [f"s{i}@127.0.0.1:{ports[nodes_n + i]}" for i in range(nodes_n)]
    fast = dict(gossip_interval_ms=50, phi_threshold=8.0, hint_replay_interval_ms=100,
                ae_enabled=False, fsync="never", request_timeout_ms=5000,
                max_value_bytes=64 << 10, ring_size=q, n=3, r=2, w=2)
    cfgs = [load(name=f"s{i}", port=ports[i], peer_port=ports[nodes_n + i],
                 data_dir=str(tmp_path / f"s{i}"), join=i == nodes_n - 1,
                 members=[members[0], members[i]] if i == nodes_n - 1 else members[:-1], **fast)
            for i in range(nodes_n)]
    rng = random.Random(5)
    want = {}

    def value():
        return rng.randbytes(50 << 10)

    async def main():
        nodes = [await _small_frames(Node(c)).start() for c in cfgs[:-1]]
        c = aredis.Redis(port=cfgs[0].port)
        ring = nodes[0].ring
        try:
            assert await eventually(lambda: all(n.is_up(f"s{j}") for n in nodes for j in range(4)))
            # replication to every primary
            for i in range(8):
                k = b"rep-%d" % i
                want[k] = [value()]
                await c.execute_command("KV.PUT", k, want[k][0], "W", "ALL")
            for k in want:
                p = ring.partition_of(k)
                for x in ring.preference_list(p):
                    assert V.values(nodes[int(x[1:])].replica.read(p, k))[0].value == want[k][0]
            # read repair: a newer object (a second sibling) on one primary only
            k = b"rep-0"
            p = ring.partition_of(k)
            first = int(ring.preference_list(p)[0][1:])
            want[k].append(value())
            nodes[first].replica.mint(p, k, V.sibling(want[k][1]))
            _, vals = await c.execute_command("KV.GET", k, "R", "ALL")
            assert sorted(vals) == sorted(want[k])
            assert await eventually(lambda: all(
                len(V.values(nodes[int(x[1:])].replica.read(p, k))) == 2
                for x in ring.preference_list(p)), 15)
            # a hint kept by a fallback while a primary is down, replayed once it is back
            k = b"hinted"
            p = ring.partition_of(k)
            down = int(ring.preference_list(p)[0][1:])
            await nodes[down].stop()
            live = [n for j, n in enumerate(nodes) if j != down]
            for n in live:
                try:
                    await n.call(f"s{down}", "gping", {}, 0.5)
                except Exception:
                    pass
            assert await eventually(lambda: not any(n.is_up(f"s{down}") for n in live))
            want[k] = [value()]
            via = aredis.Redis(port=live[0].cfg.port)
            await via.execute_command("KV.PUT", k, want[k][0], "W", 2)
            await via.aclose()
            assert await eventually(lambda: any(sum(n.handoff.pending().values()) for n in live))
            nodes[down] = await _small_frames(Node(cfgs[down])).start()
            assert await eventually(lambda: nodes[down].replica.read(p, k) is not None, 20)
            assert V.values(nodes[down].replica.read(p, k))[0].value == want[k][0]
            # a join: the new node's partitions come to it by transfers
            nodes.append(await _small_frames(Node(cfgs[-1])).start())
            assert await eventually(lambda: all(n.is_up(x) for n in nodes
                                                for x in ("s0", "s1", "s2", "s3", "s4")))
            await nodes[1].changes.request("stage", {"op": "join", "node": "s4"})
            await nodes[1].changes.request("commit")
            assert await eventually(lambda: all(
                n.ring_state is not None and not n.ring_state.moving and "s4" in n.ring.nodes
                for n in nodes), 60)
            ring = nodes[0].ring
            moved = 0
            for k, vals in want.items():
                p = ring.partition_of(k)
                for x in ring.preference_list(p):
                    got = nodes[int(x[1:])].replica.read(p, k)
                    assert got is not None, (k, x)
                    assert sorted(s.value for s in V.values(got)) == sorted(vals), (k, x)
                    moved += x == "s4"
            assert moved, "no key of these moved to the new node: pick others"
        finally:
            await c.aclose()
            for n in nodes:
                await n.stop()

    run(main(), limit=150)


def test_a_key_whose_clock_has_more_actors_than_a_context_may_hold(tmp_path):
    """Actors are never pruned: a key whose clock holds more than MAX_CONTEXT_ENTRIES actors
    (10,000 node incarnations and epochs that wrote it) reads as usual, but the context KV.GET
    returns is refused when a client sends it back (ERR invalid context: ... actors, above
    the limit), and nothing is written. The writes that need no client context still go:
    SET and DEL (the coordinator's own context), and a blind KV.PUT (docs/versions.md)."""
    from kvnet.payload import MAX_CONTEXT_ENTRIES

    async def main():
        nodes, ports, _ = await _cluster(tmp_path, n=1, r=1, w=1)
        key = b"old"
        p = nodes[0].ring.partition_of(key)
        owner = nodes[int(nodes[0].ring.preference_list(p)[0][1:])]
        many = MAX_CONTEXT_ENTRIES + 1
        entries = tuple(((f"n{e % 3}", 1, e), 1, ()) for e in range(1, many))
        clock = V.Clock(tuple(sorted(entries + ((("n9", 1, 1), 1, (V.sibling(b"a", 1),)),))),
                        ())
        owner.replica.merge(p, key, clock)
        c = aredis.Redis(port=ports[0])
        try:
            ctx, vals = await c.execute_command("KV.GET", key)
            assert vals == [b"a"] and len(V.decode_context(ctx)) == many
            with pytest.raises(aredis.ResponseError) as info:
                await c.execute_command("KV.PUT", key, b"b", "CONTEXT", ctx)
            assert str(info.value) == (f"invalid context: {many} actors, above the limit of "
                                       f"{MAX_CONTEXT_ENTRIES}")
            assert (await c.execute_command("KV.GET", key))[1] == [b"a"]
            await c.execute_command("SET", key, b"c")                # the coordinator's context
            assert (await c.execute_command("KV.GET", key))[1] == [b"c"]
            await c.execute_command("KV.PUT", key, b"d")             # blind: a sibling more
            assert sorted((await c.execute_command("KV.GET", key))[1]) == [b"c", b"d"]
            assert await c.execute_command("DEL", key) == 1
            assert await c.get(key) is None
        finally:
            await _stop(nodes, clients=[c])

    run(main())
