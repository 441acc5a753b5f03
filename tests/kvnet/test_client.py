"""The Python client and kvctl against a 3-node cluster running in a background thread."""
import asyncio
import io
import threading

import pytest

from kvnet.cli import kvctl
from kvnet.client import Client
from kvnet.config import load
from kvnet.node import Node
from kvnet.testing import free_ports


@pytest.fixture
def cluster(tmp_path):
    ports = free_ports(6)
    members = [f"n{i}@127.0.0.1:{ports[3 + i]}" for i in range(3)]
    loop = asyncio.new_event_loop()
    nodes = []

    async def start():
        for i in range(3):
            cfg = load(name=f"n{i}", port=ports[i], peer_port=ports[3 + i], members=members,
                       data_dir=str(tmp_path / f"n{i}"), fsync="never")
            nodes.append(await Node(cfg).start())

    loop.run_until_complete(start())
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    yield ports[:3]

    async def stop():
        for n in nodes:
            await n.stop()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)
    loop.close()


def test_client_contexts_siblings_and_routing(cluster):
    with Client("127.0.0.1", cluster[0]) as c:
        assert not c.get("absent").found
        ctx1 = c.put("cart", "apple")
        c.put("cart", "pear")                          # no context: a sibling
        obj = c.get("cart")
        assert obj.has_siblings and sorted(obj.values) == [b"apple", b"pear"]
        c.put("cart", "apple+pear", context=obj.context)
        assert c.get("cart").values == [b"apple+pear"]
        c.put("cart", "late", context=ctx1)            # saw only apple: stays beside the merge
        assert sorted(c.get("cart", r="all").values) == [b"apple+pear", b"late"]
        c.delete("cart", context=c.get("cart").context)
        assert not c.get("cart").found
        # routing: the ring lists every node with its client port
        ring = c.ring()
        assert sorted(n["port"] for n in ring["nodes"]) == sorted(cluster)
        assert len(c.preflist("cart")) == 3
    with Client("127.0.0.1", cluster[1], route=False) as c:
        assert c.get("cart").values == []


def test_client_rejects_bad_input(cluster):
    with Client("127.0.0.1", cluster[0]) as c:
        with pytest.raises(TypeError):
            c.put(1, "x")
        import redis

        with pytest.raises(redis.ResponseError, match="context"):
            c.put("k", "v", context=b"garbage")
        with pytest.raises(redis.ResponseError):
            c.put("k", "v", w=7)


def test_kvctl_commands(cluster):
    def run(*args):
        out = io.StringIO()
        rc = kvctl.main(["--port", str(cluster[2]), *args], out=out)
        return rc, out.getvalue()

    rc, text = run("status")
    assert rc == 0 and "n0" in text and "up" in text
    rc, text = run("ring")
    assert rc == 0 and "Q=256, N=3" in text
    rc, text = run("put", "greeting", "hello")
    assert rc == 0 and text.startswith("context ")
    rc, text = run("get", "greeting")
    assert rc == 0 and "hello" in text
    ctx = text.split()[1]
    rc, _ = run("put", "greeting", "bonjour", "--context", ctx)
    rc, text = run("get", "greeting")
    assert "bonjour" in text and "hello" not in text
    rc, text = run("preflist", "greeting")
    assert rc == 0 and "partition" in text and text.count("primary") == 3
    assert kvctl.main(["--port", str(free_ports(1)[0]), "status"], out=io.StringIO()) == 1


def test_async_client_and_batch_calls(cluster):
    from kvnet import AsyncClient

    async def main():
        async with AsyncClient("127.0.0.1", cluster[1]) as c:
            await c.mput({"a": "1", "b": "2", "c": "3"})
            objs = await c.mget(["a", "b", "c", "zz"])
            assert [o.value for o in objs] == [b"1", b"2", b"3", None]
            await c.put("a", "sibling")
            o = await c.get("a")
            assert sorted(o.siblings) == [b"1", b"sibling"] and o.has_siblings
            await c.delete("a", context=o.context)
            assert not (await c.get("a")).found
            assert (await c.status())["members"]

    asyncio.run(main())


def test_client_survives_a_routed_node_going_away(cluster, tmp_path):
    from kvnet import Client

    with Client("127.0.0.1", cluster[0]) as c:
        c.mput([(f"k{i}", f"v{i}") for i in range(20)])
        # point the ring at a dead address for every node but the seed
        q, owners, addrs = c._ring
        dead = free_ports(1)[0]
        c._ring = (q, owners, {n: (a if a[1] == cluster[0] else ("127.0.0.1", dead)) for n, a in addrs.items()})
        assert [o.value for o in c.mget([f"k{i}" for i in range(20)])] == [f"v{i}".encode() for i in range(20)]
        assert c._ring is None or all(a[1] != dead for a in c._ring[2].values())


@pytest.mark.parametrize("host, port, error", [
    ([("127.0.0.1", 7379)], 7379, TypeError), ("", 7379, TypeError), (None, 7379, TypeError),
    ("127.0.0.1", "7379", ValueError), ("127.0.0.1", 0, ValueError),
    ("127.0.0.1", 70000, ValueError)])
def test_a_bad_address_is_refused_when_the_client_is_made(host, port, error):
    from kvnet.client import AsyncClient
    for cls in (Client, AsyncClient):
        with pytest.raises(error, match="host|port"):
            cls(host, port)


def test_retries_zero_fails_at_once_and_bad_retries_are_refused():
    import socket
    import time

    import redis

    with socket.socket() as s:                    # accepts (the kernel does), never answers
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        c = Client("127.0.0.1", port, socket_timeout=0.2, retries=0)
        t0 = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            c.get("k")                            # the ring read times out: not asked twice
        assert time.monotonic() - t0 < 1.0
        c.close()
    with pytest.raises(redis.ConnectionError):
        Client("127.0.0.1", free_ports(1)[0], retries=0).status()
    for bad in (-1, 1.5, "2"):
        with pytest.raises(ValueError, match="retries"):
            Client("127.0.0.1", 7379, retries=bad)


def test_durable_writes_through_the_client_kvctl_and_redis_cli_syntax(cluster, capsys):
    import redis

    def waits():
        return [redis.Redis(port=p).info()["durable_write_waits"] for p in cluster]

    assert waits() == [0, 0, 0]
    with Client("127.0.0.1", cluster[0]) as c:
        ctx = c.put("dk", "v1", durable=3)              # every replica fsynced it (fsync=never)
        assert c.get("dk").values == [b"v1"] and waits() == [1, 1, 1]
        c.put("dk", "v2", context=ctx, w=1, durable="all")
        c.delete("dk", context=c.get("dk").context, durable=1)
        assert not c.get("dk").found
        with pytest.raises(redis.ResponseError, match="DURABLE must be from 1 to N=3, got 4"):
            c.put("dk", "v", durable=4)                 # refused: nothing written
        assert not c.get("dk").found
    r = redis.Redis(port=cluster[1])                    # as from redis-cli
    assert r.execute_command("KV.PUT", "rk", "v", "DURABLE", "2")
    r.close()

    async def main():
        from kvnet import AsyncClient

        async with AsyncClient("127.0.0.1", cluster[2]) as c:
            await c.put("ak", "v", durable=2)
            await c.delete("ak", durable=2)

    asyncio.run(main())

    def run(*args):
        out = io.StringIO()
        rc = kvctl.main(["--port", str(cluster[2]), *args], out=out)
        return rc, out.getvalue()

    rc, text = run("put", "ck", "v", "--durable", "3")
    assert rc == 0 and text.startswith("context ")
    rc, text = run("del", "ck", "--durable", "quorum")
    assert rc == 0 and text.startswith("context ")
    rc, _ = run("put", "ck", "v", "--durable", "4")
    assert rc == 1 and "DURABLE must be from 1 to N=3, got 4" in capsys.readouterr().err
