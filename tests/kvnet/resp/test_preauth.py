"""Limits before AUTH and the node-wide input budget (docs/security.md, "Limits before AUTH"):
Redis' 10 arguments of 16 KiB until a connection authenticates, the auth timeout, the budget
of partly received commands, and the bulk limit that follows max_value_bytes."""
import asyncio

import pytest

from kvnet.errors import ProtocolError
from kvnet.resp.backend import MemoryBackend
from kvnet.resp.parser import PREAUTH_LIMITS, RequestParser
from kvnet.resp.server import BULK_ROOM, options_from, serve


def run(coro):
    with asyncio.Runner(debug=True) as runner:
        return runner.run(asyncio.wait_for(coro, 60))


def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


# ---- the parser -----------------------------------------------------------------------------------

def test_a_preauth_parser_gives_one_command_at_a_time():
    p = RequestParser(**PREAUTH_LIMITS)
    p.preauth = True
    assert p.feed(cmd("AUTH", "pw") + cmd("PING") + b"PING\r\n") == [[b"AUTH", b"pw"]]
    assert p.feed(b"") == [[b"PING"]]
    assert p.feed(b"") == [[b"PING"]]
    assert p.feed(b"") == [] and p.buffered() == 0


@pytest.mark.parametrize("data, word", [
    (b"*11\r\n", "unauthenticated multibulk length"),
    (b"*1\r\n$16385\r\n", "unauthenticated bulk length"),
    (b"*1000000000\r\n", "unauthenticated multibulk length"),
    (b"*2\r\n$3\r\nSET\r\n$-5\r\n", "invalid bulk length"),
])
def test_a_preauth_parser_refuses_in_redis_words(data, word):
    p = RequestParser(**PREAUTH_LIMITS)
    p.preauth = True
    with pytest.raises(ProtocolError, match=word):
        p.feed(data)


def test_limits_after_auth_follow_max_value_bytes():
    from kvnet.config import load
    from kvnet.payload import MAX_CONTEXT_BYTES
    small = options_from(load(max_value_bytes=4096, max_object_bytes=8192))
    assert small["max_bulk"] == MAX_CONTEXT_BYTES + BULK_ROOM     # a context still fits
    big = options_from(load(max_value_bytes=(8 << 20)))
    assert big["max_bulk"] == (8 << 20) + BULK_ROOM
    assert big["max_command"] == 256 << 20 and big["auth_timeout"] == 10


# ---- a server ---------------------------------------------------------------------------------------

async def exchange(port, data, *, read_eof=True):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await (reader.read() if read_eof else reader.read(65536))
    finally:
        writer.close()


def test_before_auth_small_requests_only_after_auth_big_ones():
    async def main():
        server = await serve(MemoryBackend(), password="pw")
        try:
            got = await exchange(server.port, cmd("SET", "k", "v" * 16385))
            assert got == b"-ERR Protocol error: unauthenticated bulk length\r\n"
            got = await exchange(server.port, cmd(*["PING"] * 11))
            assert got == b"-ERR Protocol error: unauthenticated multibulk length\r\n"
            # AUTH then a big SET and GET in one packet: the limits rise as AUTH runs
            big = b"v" * 100_000
            got = await exchange(server.port, cmd("PING") + cmd("AUTH", "pw")
                                 + cmd("SET", "k", big) + cmd("GET", "k") + cmd("QUIT"))
            assert got == (b"-NOAUTH Authentication required.\r\n+OK\r\n+OK\r\n$100000\r\n"
                           + big + b"\r\n+OK\r\n")
            # HELLO 3 AUTH too, and a wrong password keeps the small limits
            got = await exchange(server.port, cmd("AUTH", "no") + cmd("SET", "k", big))
            assert got == (b"-WRONGPASS invalid username-password pair or user is disabled."
                           b"\r\n-ERR Protocol error: unauthenticated bulk length\r\n")
            got = await exchange(server.port, cmd("HELLO", "3", "AUTH", "default", "pw")
                                 + cmd("SET", "k", big) + cmd("QUIT"))
            assert got.endswith(b"+OK\r\n+OK\r\n") and b"proto" in got
            assert server.input_bytes == 0
        finally:
            await server.close()
    run(main())


def test_a_connection_that_never_authenticates_is_closed():
    async def main():
        server = await serve(MemoryBackend(), password="pw", auth_timeout=0.3)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"*2\r\n$4\r\nAUTH\r\n$2\r\np")          # and nothing more
            got = await reader.read()
            assert got.startswith(b"-ERR authentication timeout")
            writer.close()
            # an authenticated one stays (no idle timeout by default)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(cmd("AUTH", "pw"))
            assert await reader.readexactly(5) == b"+OK\r\n"
            await asyncio.sleep(0.5)
            writer.write(cmd("PING"))
            assert await reader.readexactly(7) == b"+PONG\r\n"
            writer.close()
        finally:
            await server.close()
        # without a password nobody needs to authenticate: no timer
        server = await serve(MemoryBackend(), auth_timeout=0.1)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            await asyncio.sleep(0.3)
            writer.write(cmd("PING"))
            assert await reader.readexactly(7) == b"+PONG\r\n"
            writer.close()
        finally:
            await server.close()
    run(main())


def test_the_input_budget_closes_the_connection_that_would_pass_it():
    async def main():
        server = await serve(MemoryBackend(), max_input=1 << 20)
        try:
            head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$900000\r\n"
            r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
            w1.write(head + b"a" * 600_000)                   # partly received: 600 KB held
            await w1.drain()
            for _ in range(100):
                if server.input_bytes >= 600_000:
                    break
                await asyncio.sleep(0.02)
            r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
            w2.write(head + b"b" * 600_000)                   # 1.2 MB together: over
            try:        # the error line, unless the kernel resets the connection first
                got = await r2.read()   # (the server closes with input still unread)
            except ConnectionResetError:
                got = b""
            assert got == b"" or got.startswith(b"-ERR client input buffers are over this "
                                                b"node's budget")
            w2.close()
            w1.write(b"a" * 300_000 + b"\r\n" + cmd("STRLEN", "k") + cmd("GET", "x"))
            assert await r1.readexactly(5) == b"+OK\r\n"       # the first one completes
            w1.close()
            for _ in range(100):
                if server.input_bytes == 0:
                    break
                await asyncio.sleep(0.02)
            assert server.input_bytes == 0
            assert server.commands.stats["rejected_input"] == 1
        finally:
            await server.close()
    run(main())
