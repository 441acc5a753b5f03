"""The RESP server's TLS port, in this process: redis-py `ssl=True` and redis-cli `--tls`
work, a plaintext connection to it is closed unserved, tls_auth_clients yes/optional/no, and
`port=None` (a TLS-only server)."""
import asyncio
import shutil

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from kvnet.resp.backend import MemoryBackend
from kvnet.resp.server import serve
from kvnet.testing.tls import DevPKI
from kvnet.tlsconfig import server_context

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

REDIS_CLI = shutil.which("redis-cli")
NO_RETRY = Retry(NoBackoff(), 0)
LOOPS = [pytest.param(asyncio.new_event_loop, id="asyncio")]
if uvloop is not None:
    LOOPS.append(pytest.param(uvloop.new_event_loop, id="uvloop"))


def run(coro, loop_factory=asyncio.new_event_loop):
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(asyncio.wait_for(coro, 60))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return DevPKI(tmp_path_factory.mktemp("tls"))


def ctx(pki, auth="yes"):
    crt, key = pki.cert("node1")
    return server_context(crt, key, pki.ca_cert, auth)


def tls_client(pki, port, cert=True, **kw):
    c = pki.client()
    extra = dict(ssl_certfile=c["cert"], ssl_keyfile=c["key"]) if cert else {}
    return aredis.Redis(port=port, ssl=True, ssl_ca_certs=c["cacert"], retry=NO_RETRY,
                        socket_timeout=10, **extra, **kw)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_redis_py_over_tls_and_plaintext_side_by_side(pki, loop_factory):
    async def main():
        server = await serve(MemoryBackend(), tls_port=0, ssl=ctx(pki))
        assert server.tls_port and server.port != server.tls_port
        r = tls_client(pki, server.tls_port)
        plain = aredis.Redis(port=server.port, retry=NO_RETRY)
        try:
            assert await r.ping()
            assert await r.set("a", "1") and await r.get("a") == b"1"
            big = b"x" * (3 << 20)                  # more than one TLS record each way
            assert await r.set("big", big) and await r.get("big") == big
            pipe = r.pipeline(transaction=False)
            for i in range(200):
                pipe.set(f"k{i}", i)
                pipe.get(f"k{i}")
            assert (await pipe.execute())[1::2] == [str(i).encode() for i in range(200)]
            assert await plain.get("a") == b"1"      # one store behind both ports
            info = await r.info("clients")
            assert info["connected_clients"] == 2
        finally:
            await r.aclose()
            await plain.aclose()
            await server.close()
    run(main(), loop_factory)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_a_plaintext_connection_to_the_tls_port_is_closed_unserved(pki, loop_factory):
    async def main():
        server = await serve(MemoryBackend(), tls_port=0, ssl=ctx(pki))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.tls_port)
            writer.write(b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
            try:
                got = await asyncio.wait_for(reader.read(), 20)    # until the server closes
            except ConnectionResetError:
                got = b""
            writer.close()
            assert b"PONG" not in got and b"+OK" not in got
            plain = aredis.Redis(port=server.port, retry=NO_RETRY)
            assert await plain.get("k") is None             # the SET was not run
            await plain.aclose()
            # redis-py without ssl: an error, not an answer
            r = aredis.Redis(port=server.tls_port, retry=NO_RETRY, socket_timeout=10)
            with pytest.raises(redis.RedisError):
                await r.ping()
            await r.aclose()
        finally:
            await server.close()
    run(main(), loop_factory)


def test_tls_auth_clients_yes_optional_no(pki):
    async def main():
        for auth, without_cert_ok in (("yes", False), ("optional", True), ("no", True)):
            server = await serve(MemoryBackend(), tls_port=0, ssl=ctx(pki, auth))
            try:
                with_cert = tls_client(pki, server.tls_port)
                assert await with_cert.ping()
                await with_cert.aclose()
                bare = tls_client(pki, server.tls_port, cert=False)
                if without_cert_ok:
                    assert await bare.ping()
                else:
                    with pytest.raises(redis.RedisError):
                        await bare.ping()
                await bare.aclose()
            finally:
                await server.close()
    run(main())


def test_a_tls_only_server(pki):
    async def main():
        server = await serve(MemoryBackend(), port=None, tls_port=0, ssl=ctx(pki))
        try:
            assert server.server is None and server.port == server.tls_port
            assert len(server.sockets) == 1
            r = tls_client(pki, server.port)
            assert await r.set("a", "1") and await r.get("a") == b"1"
            await r.aclose()
        finally:
            await server.close()
        with pytest.raises(ValueError, match="no listener"):
            await serve(MemoryBackend(), port=None)
    run(main())


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed (apt-get install redis-tools)")
def test_redis_cli_tls(pki):
    async def cli(*args):
        proc = await asyncio.create_subprocess_exec(
            REDIS_CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        return proc.returncode, out.decode() + err.decode()

    async def main():
        server = await serve(MemoryBackend(), tls_port=0, ssl=ctx(pki))
        c = pki.client()
        flags = ["-p", str(server.tls_port), "--tls", "--cacert", c["cacert"]]
        try:
            mine = flags + ["--cert", c["cert"], "--key", c["key"]]
            assert await cli(*mine, "set", "greeting", "hello") == (0, "OK\n")
            assert await cli(*mine, "get", "greeting") == (0, "hello\n")
            # without a client certificate (tls_auth_clients yes): no answer
            code, out = await cli(*flags, "get", "greeting")
            assert "hello" not in out
        finally:
            await server.close()
    run(main())
