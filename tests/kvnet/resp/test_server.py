"""The RESP server end to end on 127.0.0.1 (port 0): redis-py, raw sockets, limits."""
import asyncio

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from kvnet.resp.backend import MemoryBackend
from kvnet.resp.server import FLUSH_SIZE, RespProtocol, RespServer, serve

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

NO_RETRY = Retry(NoBackoff(), 0)
LOOPS = [pytest.param(asyncio.new_event_loop, id="asyncio")]
if uvloop is not None:
    LOOPS.append(pytest.param(uvloop.new_event_loop, id="uvloop"))


def run(coro, loop_factory=asyncio.new_event_loop):
    with asyncio.Runner(debug=True, loop_factory=loop_factory) as runner:
        return runner.run(asyncio.wait_for(coro, 60))


class SlowBackend(MemoryBackend):
    """Suspends in every read and write, so commands complete as Tasks, out of the fast path."""

    async def get_lww(self, key):
        await asyncio.sleep(0)
        return await super().get_lww(key)

    async def set_overwrite(self, key, value):
        await asyncio.sleep(0.001 if key.endswith(b"slow") else 0)
        return await super().set_overwrite(key, value)


async def raw_connection(port):
    return await asyncio.open_connection("127.0.0.1", port)


async def read_until_eof(reader):
    return await reader.read()  # bounded by run()'s timeout


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("proto", [2, 3])
def test_redis_py(proto, loop_factory):
    async def main():
        server = await serve(MemoryBackend())
        try:
            r = aredis.Redis(port=server.port, protocol=proto)
            assert await r.ping()
            assert await r.set("a", "1") and await r.get("a") == b"1"
            assert await r.mset({"b": "2", "c": "3"})
            assert await r.mget("a", "x", "c") == [b"1", None, b"3"]
            assert await r.exists("a", "b", "x") == 2
            assert await r.delete("a", "x") == 1
            assert await r.dbsize() == 2
            info = await r.info()
            assert info["redis_version"].startswith("7.") and info["cluster_enabled"] == 0
            assert info["tcp_port"] == server.port and "ringkv_backend" in info
            assert await r.client_setname("me") and await r.client_getname() in ("me", b"me")
            assert isinstance(await r.client_id(), int)
            assert await r.config_get("save") == {"save": ""} or await r.config_get("save") == {b"save": b""}
            keys = [k async for k in r.scan_iter(match="[bc]", count=1)]
            assert sorted(keys) == [b"b", b"c"]
            ctx = await r.execute_command("KV.PUT", "k", "v1")
            await r.execute_command("KV.PUT", "k", "v2")
            got = await r.execute_command("KV.GET", "k")
            assert got[1] == [b"v2", b"v1"]
            await r.execute_command("KV.PUT", "k", "v3", "CONTEXT", got[0])
            assert (await r.execute_command("KV.GET", "k"))[1] == [b"v3"] and ctx
            with pytest.raises(redis.ResponseError, match="SET option NX is not supported"):
                await r.set("a", "1", nx=True)
            with pytest.raises(redis.ResponseError, match="unknown command 'NOPE'"):
                await r.execute_command("NOPE", "x")
            if proto == 3:
                assert r.connection_pool.connection_kwargs["protocol"] == 3
            await r.aclose()
        finally:
            await server.close()
    run(main(), loop_factory)


@pytest.mark.parametrize("backend, n", [(MemoryBackend, 5000), (SlowBackend, 300)])
def test_pipelining_keeps_order(backend, n):
    async def main():
        server = await serve(backend())
        try:
            r = aredis.Redis(port=server.port)
            pipe = r.pipeline(transaction=False)
            for i in range(n):
                pipe.set(b"k%d" % i, b"v%d" % i)
                pipe.get(b"k%d" % i)
            res = await pipe.execute()
            assert res[1::2] == [b"v%d" % i for i in range(n)]
            assert all(x is True for x in res[::2])
            await r.aclose()
        finally:
            await server.close()
    run(main())


def test_raw_pipeline_mixed_fast_and_suspending_commands():
    async def main():
        server = await serve(SlowBackend())
        try:
            reader, writer = await raw_connection(server.port)
            # SET ...slow suspends for 1 ms; the GET behind it must still see it.
            writer.write(b"PING\r\n*3\r\n$3\r\nSET\r\n$6\r\nk-slow\r\n$1\r\n1\r\n"
                         b"*2\r\n$3\r\nGET\r\n$6\r\nk-slow\r\nECHO x\r\nQUIT\r\nPING\r\n")
            data = await read_until_eof(reader)
            assert data == b"+PONG\r\n+OK\r\n$1\r\n1\r\n$1\r\nx\r\n+OK\r\n"
            writer.close()
        finally:
            await server.close()
    run(main())


def test_protocol_error_answers_earlier_commands_then_closes():
    async def main():
        server = await serve(MemoryBackend(), max_bulk=100)
        try:
            reader, writer = await raw_connection(server.port)
            writer.write(b"PING\r\n*1\r\n$101\r\n" + b"x" * 101 + b"\r\n")
            data = await read_until_eof(reader)
            assert data == b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
            writer.close()
            r = aredis.Redis(port=server.port)  # the server is fine
            assert await r.ping()
            await r.aclose()
        finally:
            await server.close()
    run(main())


def test_backpressure_slow_reader():
    """A client that sends a big pipeline without reading: reading pauses, memory stays
    bounded, and every reply arrives in order once it reads."""
    async def main():
        server = await serve(MemoryBackend(), write_high_water=64 << 10, max_pending=64)
        try:
            r = aredis.Redis(port=server.port)
            value = b"v" * 20_000
            await r.set("big", value)
            reader, writer = await raw_connection(server.port)
            n = 2000  # 40 MB of replies
            writer.write(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * n + b"PING\r\n")
            (conn,) = [c for c in server.connections if c.session.lib_name != b"redis-py"]
            for _ in range(2000):  # until the server stops reading (bounded)
                if not conn._reading:
                    break
                await asyncio.sleep(0.005)
            assert not conn._reading
            # high water + one flush batch + one reply
            assert conn.transport.get_write_buffer_size() < (64 << 10) + FLUSH_SIZE + 2 * len(value)
            assert len(conn._queue) <= n  # commands wait instead of replies piling up
            assert await r.ping()  # other clients are served meanwhile
            expected = b"$20000\r\n" + value + b"\r\n"
            for i in range(n):
                assert await reader.readexactly(len(expected)) == expected
            assert await reader.readexactly(7) == b"+PONG\r\n"
            writer.close()
            await r.aclose()
        finally:
            await server.close()
    run(main())


def test_auth_over_the_wire():
    async def main():
        server = await serve(MemoryBackend(), password="pw")
        try:
            # No retries: redis-py retries a refused handshake with backoff (seconds).
            anon = aredis.Redis(port=server.port, retry=NO_RETRY)
            with pytest.raises(redis.AuthenticationError):
                await anon.get("a")
            await anon.aclose()
            with pytest.raises(redis.AuthenticationError):
                bad = aredis.Redis(port=server.port, password="nope", retry=NO_RETRY)
                try:
                    await bad.ping()
                finally:
                    await bad.aclose()
            for proto in (2, 3):
                ok = aredis.Redis(port=server.port, password="pw", protocol=proto)
                assert await ok.set("a", "1") and await ok.get("a") == b"1"
                await ok.aclose()
        finally:
            await server.close()
    run(main())


def test_max_clients_and_idle_timeout():
    async def main():
        server = await serve(MemoryBackend(), max_clients=1, idle_timeout=0.2)
        try:
            r1, w1 = await raw_connection(server.port)
            w1.write(b"PING\r\n")
            assert await r1.readexactly(7) == b"+PONG\r\n"
            r2, w2 = await raw_connection(server.port)
            assert await read_until_eof(r2) == b"-ERR max number of clients reached\r\n"
            w2.close()
            assert await read_until_eof(r1) == b""  # idle: closed by the server
            w1.close()
            assert server.commands.stats["rejected_connections"] == 1
        finally:
            await server.close()
    run(main())


def test_close_stops_connections():
    async def main():
        server = await serve(MemoryBackend())
        reader, writer = await raw_connection(server.port)
        writer.write(b"PING\r\n")
        assert await reader.readexactly(7) == b"+PONG\r\n"
        await server.close()
        assert await read_until_eof(reader) == b""
        writer.close()
        assert not server.connections
    run(main())


class RecordingTransport(asyncio.Transport):
    """Records writes with the order they happened in, across connections."""

    def __init__(self, log, name):
        super().__init__()
        self.log, self.name = log, name

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def write(self, data):
        self.log.append((self.name, bytes(data)))

    def close(self):
        self.log.append((self.name, "closed"))

    def abort(self):
        self.log.append((self.name, "aborted"))


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_replies_leave_once_per_loop_iteration(loop_factory):
    """Connections readable in one iteration all run their commands before any reply is
    written, then each connection's replies leave in one write (docs/resp.md)."""
    async def main():
        server = RespServer(MemoryBackend(), idle_timeout=0)
        log = []
        conns = []
        for name in ("a", "b"):
            conn = RespProtocol(server)
            conn.connection_made(RecordingTransport(log, name))
            conns.append(conn)
        conns[0].data_received(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n")
        conns[1].data_received(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n")
        conns[0].data_received(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        assert log == []            # nothing written while the iteration's callbacks run
        await asyncio.sleep(0)
        assert log == [("a", b"+OK\r\n$1\r\n1\r\n"), ("b", b"$1\r\n1\r\n+PONG\r\n")]
        conns[1].connection_lost(None)
        conns[1].data_received(b"*1\r\n$4\r\nPING\r\n")
        conns[0].data_received(b"*1\r\n$4\r\nPING\r\n")
        await asyncio.sleep(0)
        assert log[2:] == [("a", b"+PONG\r\n")]     # a closed connection writes nothing
        conns[0].connection_lost(None)
    run(main(), loop_factory)
