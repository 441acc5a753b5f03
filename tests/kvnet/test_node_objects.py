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
from kvnet.testing import FaultProxy, free_ports


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
            members = [f"n{j}@127.0.0.1:{proxies[i, j].port if (i, j) in proxies else ports[nodes + j]}"
                       for j in range(nodes)]
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
                assert msg.startswith("TOOLARGE the write would leave key b'big' an object of "), msg
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
