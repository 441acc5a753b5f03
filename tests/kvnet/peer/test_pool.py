"""PeerPool on 127.0.0.1: lazy dial, one connection per pair, reconnect with backoff, close."""
import asyncio

import pytest

from kvnet.errors import PeerError
from kvnet.peer.errors import AuthenticationError, ConnectionLost, PeerUnavailable
from kvnet.peer.pool import PeerPool
from kvnet.peer.serving import serve_peers

SECRET = b"pool-secret"
HOST = "127.0.0.1"


def run(coro, limit=10):
    async def bounded():
        async with asyncio.timeout(limit):
            return await coro

    return asyncio.run(bounded(), debug=True)


async def echo(type, payload):
    if type == "sleep":
        await asyncio.sleep(payload)
    return payload


def test_lazy_connect_shared_by_concurrent_first_requests():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server, PeerPool("a", SECRET) as pool:
            assert pool.get("b") is None and not server.connections  # nothing dialed yet
            addr = (HOST, server.port)
            results = await asyncio.gather(*(pool.request("b", addr, "x", i, timeout=5) for i in range(50)))
            assert results == list(range(50))
            assert len(server.connections) == 1  # one dial served all fifty
            conn = pool.get("b")
            assert await pool.request("b", addr, "x", "again") == "again"
            assert pool.get("b") is conn
            assert pool.status()["b"]["connections"] == 1

    run(main())


def test_pair_shares_one_connection_whoever_dialed():
    async def main():
        async with PeerPool("a", SECRET, echo) as a, PeerPool("b", SECRET, echo) as b:
            server_a = await a.serve(HOST, 0)
            server_b = await b.serve(HOST, 0)
            assert await a.request("b", (HOST, server_b.port), "x", 1) == 1
            assert await b.request("a", (HOST, server_a.port), "x", 2) == 2  # reuses a's dial
            assert len(server_b.connections) == 1 and len(server_a.connections) == 0
            assert b.get("a") is next(iter(server_b.connections))

    run(main())


def test_simultaneous_dials_converge_on_the_lower_ids_connection():
    async def main():
        async with PeerPool("a", SECRET, echo) as a, PeerPool("b", SECRET, echo) as b:
            server_a = await a.serve(HOST, 0)
            server_b = await b.serve(HOST, 0)
            r1, r2 = await asyncio.gather(
                a.request("b", (HOST, server_b.port), "x", 1), b.request("a", (HOST, server_a.port), "x", 2)
            )
            assert (r1, r2) == (1, 2)
            assert len(server_a.connections) == len(server_b.connections) == 1  # one each way
            assert a.get("b").initiator is True  # both prefer the one "a" dialed
            assert b.get("a").initiator is False
            assert b.get("a") is next(iter(server_b.connections))
            assert await b.request("a", (HOST, server_a.port), "x", 3) == 3

    run(main())


def test_peer_restart_and_reconnect():
    async def main():
        async with PeerPool("a", SECRET, backoff_base=0.02, backoff_max=0.1) as pool:
            server = await serve_peers(HOST, 0, "b", SECRET, echo)
            port = server.port
            addr = (HOST, port)
            try:
                assert await pool.request("b", addr, "x", 1) == 1
                pending = asyncio.ensure_future(pool.request("b", addr, "sleep", 5, timeout=5))
                await asyncio.sleep(0.05)
                server.close()  # b goes down
                await server.wait_closed()
                with pytest.raises(ConnectionLost):
                    await pending
                with pytest.raises(PeerUnavailable, match="cannot connect"):
                    await pool.request("b", addr, "x", 2, timeout=1)
                assert pool.status()["b"]["failures"] == 1
                server = await serve_peers(HOST, port, "b", SECRET, echo)  # b comes back
                assert await pool.request("b", addr, "x", 3, timeout=2) == 3  # waits out the backoff
                status = pool.status()["b"]
                assert status["failures"] == 0 and status["connections"] == 1
            finally:
                server.close()
                await server.wait_closed()

    run(main())


def test_backoff_is_exponential_bounded_and_jittered():
    pool = PeerPool("a", SECRET, backoff_base=0.1, backoff_max=2.0)
    for failures in range(1, 40):
        ceiling = min(2.0, 0.1 * 2 ** (failures - 1))
        delays = {pool.backoff(failures) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jitter
    with pytest.raises(ValueError):
        PeerPool("a", SECRET, backoff_base=3, backoff_max=2)


def test_unreachable_peer_fails_fast_during_backoff():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            port = server.port
        async with PeerPool("a", SECRET, backoff_base=5.0, backoff_max=5.0) as pool:
            with pytest.raises(PeerUnavailable, match=f"cannot connect to peer at {HOST}:{port}"):
                await pool.request("b", (HOST, port), "x", timeout=1)
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(PeerUnavailable, match=r"node b at .* is unreachable .*next attempt in"):
                await pool.request("b", (HOST, port), "x", timeout=1)
            assert loop.time() - start < 0.5
            status = pool.status()["b"]
            assert status["failures"] == 1 and 2.5 <= status["retry_in"] <= 5.0
            assert "cannot connect" in status["last_error"]

    run(main())


def test_wrong_secret_through_the_pool():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            async with PeerPool("a", b"wrong", backoff_base=0.01) as pool:
                with pytest.raises(AuthenticationError):
                    await pool.request("b", (HOST, server.port), "x", timeout=2)
                assert pool.get("b") is None

    run(main())


def test_wrong_peer_at_address():
    async def main():
        async with await serve_peers(HOST, 0, "c", SECRET, echo) as server:
            async with PeerPool("a", SECRET) as pool:
                with pytest.raises(PeerError, match="expected node 'b' but the peer is node 'c'"):
                    await pool.request("b", (HOST, server.port), "x", timeout=2)
                with pytest.raises(PeerError, match="itself"):
                    await pool.request("a", (HOST, server.port), "x")

    run(main())


def test_close_cancels_everything():
    async def main():
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()

        async def silent(reader, writer):
            try:
                await reader.read()
            finally:
                writer.close()
                gone.set()

        silent_server = await asyncio.start_server(silent, HOST, 0)
        server = await serve_peers(HOST, 0, "b", SECRET, echo)
        async with await serve_peers(HOST, 0, "d", SECRET, echo) as dead:
            dead_port = dead.port
        try:
            pool = PeerPool("a", SECRET, backoff_base=4.0, backoff_max=4.0, connect_timeout=5)
            with pytest.raises(PeerUnavailable):  # puts "d" into backoff
                await pool.request("d", (HOST, dead_port), "x", timeout=2)
            in_flight = asyncio.ensure_future(pool.request("b", (HOST, server.port), "sleep", 5, timeout=5))
            dialing = asyncio.ensure_future(
                pool.request("c", (HOST, silent_server.sockets[0].getsockname()[1]), "x", timeout=5)
            )
            backing_off = asyncio.ensure_future(pool.request("d", (HOST, dead_port), "x", timeout=5))
            while not (pool.get("b") and pool.get("b").pending and pool.status()["c"]["connecting"]):
                await asyncio.sleep(0.01)  # all three in their state; bounded by run()'s limit
            start = loop.time()
            await pool.close()
            results = await asyncio.gather(in_flight, dialing, backing_off, return_exceptions=True)
            assert loop.time() - start < 1
            assert isinstance(results[0], ConnectionLost)
            assert isinstance(results[1], PeerError) and "closed" in str(results[1])
            assert isinstance(results[2], PeerError) and "closed" in str(results[2])
            with pytest.raises(PeerError, match="closed"):
                await pool.request("b", (HOST, server.port), "x")
            await gone.wait()
        finally:
            server.close()
            await server.wait_closed()
            silent_server.close()
            await silent_server.wait_closed()

    run(main())


def test_unreachable_from_a_failed_dial_until_a_connection_is_up_again():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            port = server.port
        async with PeerPool("a", SECRET, backoff_base=0.05, backoff_max=0.05) as pool:
            assert pool.reachable("b")                      # never dialed
            with pytest.raises(PeerUnavailable):
                await pool.request("b", (HOST, port), "x", timeout=1)
            assert not pool.reachable("b")
            await asyncio.sleep(0.2)                        # the backoff ran out: still not
            assert not pool.reachable("b")
            async with await serve_peers(HOST, port, "b", SECRET, echo):
                assert await pool.request("b", (HOST, port), "x", 1, timeout=1) == 1
                assert pool.reachable("b")

    run(main())


def test_redial_on_news_skips_the_backoff_but_not_twice_in_a_row():
    """News that a peer in backoff is alive dials it at once (routing takes it back). A peer
    that still refuses us gets no second dial on news until a dial of the backoff failed too."""
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            port = server.port
        async with PeerPool("a", SECRET, backoff_base=0.2, backoff_max=0.2) as pool:
            assert not pool.redial("b", (HOST, port))       # never dialed: nothing to do
            with pytest.raises(PeerUnavailable):
                await pool.request("b", (HOST, port), "x", timeout=1)
            assert pool.status()["b"]["retry_in"] > 0.05    # in backoff, yet dialed at once:
            assert pool.redial("b", (HOST, port))
            await asyncio.gather(pool._peers["b"].connecting, return_exceptions=True)
            assert pool.status()["b"]["failures"] == 2 and not pool.reachable("b")
            assert not pool.redial("b", (HOST, port))       # refused on news: backoff's turn
            await asyncio.sleep(0.25)
            with pytest.raises(PeerUnavailable):            # the backoff's dial, refused
                await pool.request("b", (HOST, port), "x", timeout=1)
            assert pool.status()["b"]["failures"] == 3
            async with await serve_peers(HOST, port, "b", SECRET, echo):
                assert pool.redial("b", (HOST, port))
                assert not pool.redial("b", (HOST, port))   # a dial is running
                await asyncio.wait_for(pool._peers["b"].connecting, 2)
                assert pool.reachable("b") and pool.status()["b"]["failures"] == 0
                assert not pool.redial("b", (HOST, port))   # connected: nothing to do
                assert await pool.request("b", (HOST, port), "x", 2, timeout=1) == 2

    run(main())


def test_idle_connections_close_and_the_next_request_dials_again():
    async def main():
        async with PeerPool("a", SECRET, echo, idle_timeout=0.2) as a, \
                PeerPool("b", SECRET, echo) as b:
            server_b = await b.serve(HOST, 0)
            addr = (HOST, server_b.port)
            assert await a.request("b", addr, "x", 1) == 1
            conn = a.get("b")
            # in use (a request every 0.05 s, one of 0.5 s running across sweeps): kept open
            for i in range(6):
                assert await a.request("b", addr, "x", i) == i
                await asyncio.sleep(0.05)
            assert await a.request("b", addr, "sleep", 0.5) == 0.5
            assert a.get("b") is conn and conn.is_ready
            # then idle: closed within 1.5 timeouts at both ends, with no failure noted
            await asyncio.sleep(0.35)
            for _ in range(100):                    # (b hears of the close a moment later)
                if a.get("b") is None and b.get("a") is None and not server_b.connections:
                    break
                await asyncio.sleep(0.01)
            assert a.get("b") is None and b.get("a") is None and not server_b.connections
            assert a.reachable("b") and a.status()["b"]["failures"] == 0
            assert await a.request("b", addr, "x", "again") == "again"     # dials again
            assert a.get("b") is not conn and a.get("b").is_ready

    run(main())


def test_a_connection_the_peer_uses_is_not_idle():
    async def main():
        # only b sends (over the connection a dialed): a sees the traffic and keeps it open
        async with PeerPool("a", SECRET, echo, idle_timeout=0.2) as a, \
                PeerPool("b", SECRET, echo) as b:
            server_a = await a.serve(HOST, 0)
            server_b = await b.serve(HOST, 0)
            assert await a.request("b", (HOST, server_b.port), "x", 0) == 0
            conn = a.get("b")
            for i in range(10):
                assert await b.request("a", (HOST, server_a.port), "x", i) == i
                await asyncio.sleep(0.05)
            assert a.get("b") is conn and conn.is_ready

    run(main())


def test_no_idle_timeout_keeps_connections_and_bad_values_are_refused():
    async def main():
        async with PeerPool("a", SECRET, echo) as a, PeerPool("b", SECRET, echo) as b:
            server_b = await b.serve(HOST, 0)
            assert await a.request("b", (HOST, server_b.port), "x", 1) == 1
            conn = a.get("b")
            await asyncio.sleep(0.3)
            assert a.get("b") is conn

    run(main())
    with pytest.raises(ValueError, match="idle_timeout"):
        PeerPool("a", SECRET, idle_timeout=-1)
