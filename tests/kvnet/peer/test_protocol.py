"""PeerConnection end to end on 127.0.0.1: multiplexing, timeouts, errors, flow control."""
import asyncio
import random

import pytest

from kvnet.errors import PeerError
from kvnet.peer.core import PROTOCOL_VERSION, State
from kvnet.peer.errors import (
    AuthenticationError,
    ConnectionLost,
    PeerTimeout,
    PeerUnavailable,
    RemoteError,
)
from kvnet.peer.framing import Kind, encode_frame
from kvnet.peer import batching as B
from kvnet.peer.protocol import connect
from kvnet.peer.serving import current_peer, serve_peers

SECRET = "s3cret"
HOST = "127.0.0.1"


def run(coro, limit=10):
    async def bounded():
        async with asyncio.timeout(limit):
            return await coro

    return asyncio.run(bounded(), debug=True)


async def until(cond):
    """Poll until cond() holds; run()'s limit bounds the wait."""
    while not cond():
        await asyncio.sleep(0.005)


async def close_both(conn, server):
    """Close a dialed connection and the server it reached, and wait for both."""
    conn.close()
    await conn.wait_closed()
    server.close()
    await server.wait_closed()


async def echo(type, payload):
    if type == "sleep":
        await asyncio.sleep(payload)
        return payload
    if type == "boom":
        raise ValueError(f"cannot do {payload}")
    if type == "who":
        return current_peer()
    return [type, payload]


def test_many_concurrent_requests_out_of_order_on_one_connection():
    async def handler(type, payload):
        await asyncio.sleep(random.random() * 0.05)  # replies come back shuffled
        return payload * 2

    async def main():
        order = []

        async def tracked(type, payload):
            result = await handler(type, payload)
            order.append(payload)
            return result

        async with await serve_peers(HOST, 0, "b", SECRET, tracked) as server:
            conn = await connect(HOST, server.port, "a", SECRET, expected_peer="b")
            try:
                results = await asyncio.gather(*(conn.request("double", i, timeout=5) for i in range(300)))
                assert results == [i * 2 for i in range(300)]
                assert order != sorted(order)  # really out of order
                assert len(server.connections) == 1
                assert conn.pending == 0
            finally:
                conn.close()
                await conn.wait_closed()

    run(main())


def test_handler_sees_the_requesting_peer_and_both_ends_serve():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            conn = await connect(HOST, server.port, "a", SECRET, echo)
            try:
                assert await conn.request("who", timeout=2) == "a"
                (inbound,) = server.connections
                assert inbound.peer_id == "a"
                assert await inbound.request("who", timeout=2) == "b"  # b asks a over the same socket
                assert await conn.request("x", {"k": b"v"}, timeout=2) == ["x", {"k": b"v"}]
                assert await conn.ping(timeout=2) >= 0
            finally:
                conn.close()
                await conn.wait_closed()

    run(main())


def test_timeout_then_connection_still_usable():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            conn = await connect(HOST, server.port, "a", SECRET)
            try:
                with pytest.raises(PeerTimeout, match=r"node b did not answer 'sleep' within 0.05 s"):
                    await conn.request("sleep", 0.5, timeout=0.05)
                with pytest.raises(TimeoutError):  # PeerTimeout is also a TimeoutError
                    await conn.request("sleep", 0.5, timeout=0.01)
                assert await conn.request("x", 1, timeout=2) == ["x", 1]
                await until(lambda: conn.late_responses == 2)  # late answers arrive, are dropped
                assert conn.pending == 0
                assert conn.state is State.READY
            finally:
                conn.close()
                await conn.wait_closed()

    run(main())


def test_handler_exception_becomes_error_response():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            conn = await connect(HOST, server.port, "a", SECRET)
            try:
                with pytest.raises(RemoteError) as info:
                    await conn.request("boom", "it", timeout=2)
                assert info.value.code == "ValueError"
                assert info.value.remote_message == "cannot do it"
                assert "node b failed request 'boom': ValueError: cannot do it" in str(info.value)
                assert isinstance(info.value, PeerError)
                assert await conn.request("x", 2, timeout=2) == ["x", 2]
            finally:
                conn.close()
                await conn.wait_closed()

    run(main())


def test_unencodable_response_becomes_error_response():
    async def handler(type, payload):
        return object()

    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, handler) as server:
            conn = await connect(HOST, server.port, "a", SECRET)
            try:
                with pytest.raises(RemoteError, match="EncodeError"):
                    await conn.request("x", timeout=2)
            finally:
                conn.close()
                await conn.wait_closed()

    run(main())


def test_no_handler_refuses_requests():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            conn = await connect(HOST, server.port, "a", SECRET)  # a serves nothing
            try:
                (inbound,) = server.connections
                with pytest.raises(RemoteError, match="NoHandler"):
                    await inbound.request("x", timeout=2)
            finally:
                conn.close()
                await conn.wait_closed()

    run(main())


def test_wrong_secret_refused():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            with pytest.raises(AuthenticationError, match="auth"):
                await connect(HOST, server.port, "a", "not the secret", timeout=2)
            await until(lambda: not server.connections)  # the refused connection is gone
            conn = await connect(HOST, server.port, "a", SECRET)  # the server still works
            conn.close()
            await conn.wait_closed()

    run(main())


def test_wrong_node_refused():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            with pytest.raises(PeerError, match="expected node 'c' but the peer is node 'b'"):
                await connect(HOST, server.port, "a", SECRET, expected_peer="c", timeout=2)

    run(main())


def test_connect_refused_and_silent_server():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            port = server.port
        with pytest.raises(PeerUnavailable, match=f"cannot connect to peer at {HOST}:{port}"):
            await connect(HOST, port, "a", SECRET, timeout=2)

        done = asyncio.Event()

        async def silent(reader, writer):
            try:
                await reader.read()  # never says HELLO; returns when the dialer gives up
            finally:
                writer.close()
                done.set()

        server = await asyncio.start_server(silent, HOST, 0)
        try:
            with pytest.raises(PeerTimeout):
                await connect(HOST, server.sockets[0].getsockname()[1], "a", SECRET, timeout=0.2)
            await done.wait()
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_frame_before_auth_closes_the_connection():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            reader, writer = await asyncio.open_connection(HOST, server.port)
            try:
                writer.write(encode_frame((Kind.REQUEST, 1, "x", None)))
                data = await asyncio.wait_for(reader.read(), 2)  # server sends HELLO, ERROR, closes
                assert b"before authentication" in data
                assert not server.connections
            finally:
                writer.close()
                await writer.wait_closed()

    run(main())


def test_connection_loss_fails_pending_requests():
    async def main():
        server = await serve_peers(HOST, 0, "b", SECRET, echo)
        conn = await connect(HOST, server.port, "a", SECRET)
        try:
            pending = asyncio.ensure_future(conn.request("sleep", 5, timeout=5))
            await asyncio.sleep(0.05)
            server.close()  # the peer goes away mid-request
            await server.wait_closed()
            with pytest.raises(ConnectionLost, match="closed before it answered 'sleep'"):
                await pending
            with pytest.raises(ConnectionLost):
                await conn.request("x", timeout=1)
        finally:
            await close_both(conn, server)

    run(main())


def test_inbound_backpressure_pauses_reading():
    async def main():
        release = asyncio.Event()

        async def blocked(type, payload):
            await release.wait()
            return payload

        async with await serve_peers(HOST, 0, "b", SECRET, blocked, max_inflight=4) as server:
            conn = await connect(HOST, server.port, "a", SECRET)
            try:
                reqs = [asyncio.ensure_future(conn.request("x", i, timeout=5)) for i in range(10)]
                await until(lambda: server.connections and next(iter(server.connections))._inbound.read_paused)
                (inbound,) = server.connections
                await asyncio.sleep(0.05)
                assert inbound._inbound.read_paused and len(inbound._inbound.tasks) == 4  # the rest unread
                release.set()
                assert await asyncio.gather(*reqs) == list(range(10))
                assert not inbound._inbound.read_paused
            finally:
                conn.close()
                await conn.wait_closed()

    run(main())


def test_handlers_answered_inline_are_bounded_per_flush():
    """Handlers that answer at once run inline, but at most max_inflight per flush: the rest of
    one read's requests go through the slots (tasks, then a backlog), which pause reading."""
    from kvnet.peer.core import State
    from kvnet.peer.framing import FrameReader
    from kvnet.peer.protocol import PeerConnection
    from kvnet.testing.fakes import PeerTransport

    async def main():
        ran, feeding = [], [False]

        async def quick(type, payload):
            ran.append("inline" if feeding[0] else "task")      # inside _on_request or not
            return payload

        conn = PeerConnection("b", SECRET, quick, initiator=False, max_inflight=4)
        conn._transport = PeerTransport()
        conn.state, conn.peer_id = State.READY, "a"
        for i in range(1, 11):              # ten requests of one read, before any flush
            feeding[0] = True
            conn._on_request("x", i, i)
            feeding[0] = False
        assert ran == ["inline"] * 4        # the budget; the rest wait for slots
        assert len(conn._inbound.tasks) == 4 and len(conn._inbound.backlog) == 2
        assert conn._transport.paused
        for _ in range(10):
            await asyncio.sleep(0)
        assert ran == ["inline"] * 4 + ["task"] * 6 and not conn._transport.paused
        frames = FrameReader(1 << 20).feed(conn._transport.out)
        assert sorted(f.payload for f in frames) == list(range(1, 11))

    run(main())


def test_requests_wait_while_write_buffer_full():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            conn = await connect(HOST, server.port, "a", SECRET)
            try:
                conn.pause_writing()  # as the transport does above its high-water mark
                req = asyncio.ensure_future(conn.request("x", 1, timeout=5))
                await asyncio.sleep(0.05)
                assert not req.done() and conn.pending == 0  # not sent yet
                with pytest.raises(PeerTimeout, match="write buffer still full"):
                    await conn.request("x", 2, timeout=0.05)
                conn.resume_writing()
                assert await req == ["x", 1]
                # a connection lost while paused wakes the waiters
                conn.pause_writing()
                req = asyncio.ensure_future(conn.request("x", 3, timeout=5))
                await asyncio.sleep(0.01)
                conn.close()
                with pytest.raises(ConnectionLost):
                    await req
            finally:
                conn.close()
                await conn.wait_closed()

    run(main())


def test_real_flow_control_with_large_payloads():
    async def main():
        big = b"x" * (1 << 20)
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            conn = await connect(HOST, server.port, "a", SECRET)
            conn._transport.set_write_buffer_limits(high=64 * 1024)
            try:
                results = await asyncio.gather(*(conn.request("x", big, timeout=5) for _ in range(8)))
                assert all(r == ["x", big] for r in results)
            finally:
                conn.close()
                await conn.wait_closed()

    run(main())


def test_close_cancels_running_handlers():
    async def main():
        started = asyncio.Event()
        cancelled = []

        async def hang(type, payload):
            started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(type)
                raise

        server = await serve_peers(HOST, 0, "b", SECRET, hang)
        conn = await connect(HOST, server.port, "a", SECRET)
        req = asyncio.ensure_future(conn.request("hang", timeout=5))
        await started.wait()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)
        assert cancelled == ["hang"]
        with pytest.raises(ConnectionLost, match=r"answered 'hang' \(request 1\): node b closed the connection"):
            await req
        conn.close()
        await conn.wait_closed()

    run(main())


def test_notifications_reach_the_handler():
    async def main():
        got = asyncio.Queue()

        async def handler(type, payload):
            await got.put((type, payload, current_peer()))

        async with await serve_peers(HOST, 0, "b", SECRET, handler) as server:
            conn = await connect(HOST, server.port, "a", SECRET)
            try:
                await conn.notify("gossip", [1, 2])
                assert await asyncio.wait_for(got.get(), 2) == ("gossip", [1, 2], "a")
            finally:
                conn.close()
                await conn.wait_closed()

    run(main())


def test_max_connections():
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo, max_connections=1) as server:
            first = await connect(HOST, server.port, "a", SECRET)
            try:
                with pytest.raises(PeerError):
                    await connect(HOST, server.port, "c", SECRET, timeout=2)
            finally:
                first.close()
                await first.wait_closed()

    run(main())


def test_request_callback_answers_errors_timeouts_and_loss():
    """request_callback: each request's callback runs once, with the answer or the PeerError
    that ended it, in any order; the late answer of a timed-out one is dropped."""
    async def main():
        server = await serve_peers(HOST, 0, "b", SECRET, echo)
        conn = await connect(HOST, server.port, "a", SECRET)
        calls = {}

        def recorder(name):
            def callback(peer, exc, payload):
                assert name not in calls, f"{name} called twice"
                calls[name] = (peer, exc, payload)
            return callback
        try:
            assert conn.request_callback("sleep", 0.2, recorder("slow"), 5)
            assert conn.request_callback("x", 1, recorder("x"), 5)
            assert conn.request_callback("boom", "it", recorder("boom"), 5)
            assert conn.request_callback("sleep", 0.5, recorder("late"), 0.05)
            await until(lambda: {"x", "boom", "late"} <= calls.keys())
            assert calls["x"] == ("b", None, ["x", 1])
            peer, exc, payload = calls["boom"]
            assert isinstance(exc, RemoteError) and payload is None
            assert "node b failed request 'boom': ValueError: cannot do it" in str(exc)
            peer, exc, _ = calls["late"]
            assert isinstance(exc, PeerTimeout) and isinstance(exc, TimeoutError)
            assert "node b did not answer 'sleep' within 0.05 s" in str(exc)
            assert "slow" not in calls           # the earlier, longer request still runs
            await until(lambda: "slow" in calls)
            assert calls["slow"] == ("b", None, 0.2)
            await until(lambda: conn.late_responses == 1)
            assert conn.pending == 0 and not conn._slots
            # a full write buffer: nothing is sent, the caller is told
            conn.pause_writing()
            assert conn.write_paused
            assert not conn.request_callback("x", 2, recorder("paused"), 5)
            conn.resume_writing()
            # the connection lost: the requests still out fail at once
            assert conn.request_callback("sleep", 5, recorder("lost"), 5)
            await asyncio.sleep(0.05)
            server.close()
            await server.wait_closed()
            await until(lambda: "lost" in calls)
            assert isinstance(calls["lost"][1], ConnectionLost)
            assert "closed before it answered 'sleep'" in str(calls["lost"][1])
            assert "paused" not in calls
        finally:
            await close_both(conn, server)

    run(main())


def test_request_callback_timer_survives_answered_deadlines():
    """Many answered requests leave their deadlines behind; a later one that times out still
    does, within the grain."""
    async def main():
        async with await serve_peers(HOST, 0, "b", SECRET, echo) as server:
            conn = await connect(HOST, server.port, "a", SECRET)
            got = []
            try:
                for i in range(200):
                    assert conn.request_callback("x", i, lambda p, e, v: got.append((e, v)), 0.2)
                await until(lambda: len(got) == 200)
                assert all(e is None for e, _ in got)
                timed = []
                start = asyncio.get_running_loop().time()
                assert conn.request_callback("sleep", 2, lambda p, e, v: timed.append(
                    (e, asyncio.get_running_loop().time() - start)), 0.3)
                await until(lambda: timed)
                exc, after = timed[0]
                assert isinstance(exc, PeerTimeout)
                assert 0.3 <= after < 1.5
            finally:
                conn.close()
                await conn.wait_closed()

    run(main())


def test_batch_request_joins_one_iterations_items_into_one_request():
    """Items joined in one loop iteration leave as one request; each item's callback gets its
    own value or its own error; a big batch leaves early; loss and timeouts reach every item."""
    seen = []

    async def handler(type, items):
        seen.append((type, len(items)))
        if type == "mget":                                 # the slow one
            await asyncio.sleep(1)
        return B.answer_batch(lambda x: 1 // x["n"], items)     # n=0: ZeroDivisionError

    async def main():
        server = await serve_peers(HOST, 0, "b", SECRET, handler)
        conn = await connect(HOST, server.port, "a", SECRET)
        got = {}

        def cb(i):
            return lambda peer, exc, value: got.setdefault(i, (peer, exc, value))
        try:
            for i in range(5):
                assert conn.batch_request("mput", {"n": i}, cb(i), 5)
            await until(lambda: len(got) == 5)
            assert seen == [("mput", 5)]                         # one request for the five
            assert [got[i][2] for i in range(1, 5)] == [1, 0, 0, 0]
            peer, exc, value = got[0]
            assert peer == "b" and value is None and isinstance(exc, RemoteError)
            assert exc.code == "ZeroDivisionError" and "failed request 'mput'" in str(exc)
            # items above BATCH_BYTES leave at once, in more than one request
            seen.clear()
            got.clear()
            third = b"x" * (B.BATCH_BYTES // 3)
            for i in range(4):
                assert conn.batch_request("mput", {"n": 1, "c": third}, cb(i), 5)
            await until(lambda: len(got) == 4)
            assert seen == [("mput", 3), ("mput", 1)]
            # an item of BATCH_BYTES goes alone, the batch before it first
            seen.clear()
            got.clear()
            assert conn.batch_request("mput", {"n": 1}, cb(0), 5)
            assert conn.batch_request("mput", {"n": 1, "c": b"x" * B.BATCH_BYTES}, cb(1), 5)
            assert conn.batch_request("mput", {"n": 1}, cb(2), 5)
            await until(lambda: len(got) == 3)
            assert seen == [("mput", 1), ("mput", 1), ("mput", 1)]
            # a timeout reaches every item of the batch
            got.clear()
            for i in range(3):
                assert conn.batch_request("mget", {"n": 1}, cb(i), 0.1)
            await until(lambda: len(got) == 3)
            assert all(isinstance(got[i][1], PeerTimeout) for i in range(3))
            # a malformed answer is an error for each item, not a crash
            assert conn.request_callback("x", None, lambda *a: None, 1)
            got.clear()
            batch = B._Batch(1)
            batch.callbacks += [cb(0), cb(1)]
            batch.items += [{}, {}]
            B.Fanout(conn, "mput", batch)("b", None, [[1], {}])
            assert all(isinstance(got[i][1], RemoteError) for i in range(2))
            # paused writes: refused; but a batch accepted before the pause still leaves
            conn.pause_writing()
            assert not conn.batch_request("mput", {"n": 1}, cb(9), 5)
            conn.resume_writing()
            got.clear()
            assert conn.batch_request("mput", {"n": 2}, cb(0), 5)
            conn.pause_writing()
            await until(lambda: 0 in got)
            assert got[0] == ("b", None, 0)
            conn.resume_writing()
            # a connection lost before the batch leaves: every item
            got.clear()
            assert conn.batch_request("mput", {"n": 1}, cb(0), 5)
            conn.close()
            await until(lambda: 0 in got)
            assert isinstance(got[0][1], ConnectionLost)
            with pytest.raises(ConnectionLost):
                conn.batch_request("mput", {"n": 1}, cb(1), 5)
        finally:
            await close_both(conn, server)

    run(main())


def test_batch_answers_above_the_budget_are_deferred_and_asked_again_alone():
    seen = []

    async def handler(type, payload):
        seen.append(type)
        if type == "mget":
            return B.answer_batch(lambda it: b"x" * it["n"], payload, budget=1000)
        return b"x" * payload["n"]          # "get": one item, alone

    async def main():
        server = await serve_peers(HOST, 0, "b", SECRET, handler)
        conn = await connect(HOST, server.port, "a", SECRET)
        got = {}
        try:
            for i in range(4):
                assert conn.batch_request("mget", {"n": 600}, lambda p, e, v, i=i: got.setdefault(
                    i, (e, v)), 5)
            await until(lambda: len(got) == 4)
            assert all(e is None and v == b"x" * 600 for e, v in got.values())
            assert seen == ["mget", "get", "get", "get"]     # the first fits, the rest alone
        finally:
            await close_both(conn, server)

    run(main())


def test_an_answer_above_the_message_limit_fails_the_request_not_the_connection():
    async def handler(type, payload):
        return b"z" * payload

    async def main():
        server = await serve_peers(HOST, 0, "b", SECRET, handler, max_frame_size=4096,
                                   max_message_size=50_000)
        conn = await connect(HOST, server.port, "a", SECRET, max_frame_size=4096,
                             max_message_size=50_000)
        try:
            with pytest.raises(RemoteError) as info:
                await conn.request("big", 60_000, timeout=5)
            assert info.value.code == "EncodeError" and "exceeds the limit" in str(info.value)
            assert await conn.request("small", 10, timeout=5) == b"z" * 10
            assert conn.is_ready
        finally:
            await close_both(conn, server)

    run(main())


@pytest.mark.parametrize("uvloop", [False, True])
def test_requests_and_answers_above_the_frame_limit_go_in_chunks(uvloop):
    """A 300 KB request and its 600 KB answer through 4 KiB frames, among small requests on
    the same connection, on asyncio's loop and on uvloop's (memoryviews written)."""
    async def handler(type, payload):
        if type == "double":
            await asyncio.sleep(0)                  # answered from a task
            return [payload, payload]
        return payload

    async def main():
        server = await serve_peers(HOST, 0, "b", SECRET, handler, max_frame_size=4096)
        conn = await connect(HOST, server.port, "a", SECRET, max_frame_size=4096)
        try:
            big = bytes(range(256)) * 1200
            got = await asyncio.gather(conn.request("double", big, timeout=5),
                                       *(conn.request("echo", i, timeout=5) for i in range(50)),
                                       conn.request("echo", big, timeout=5))
            assert got[0] == [big, big] and got[1:51] == list(range(50)) and got[51] == big
            assert conn.is_ready and conn.version == PROTOCOL_VERSION >= 3 and conn.mac
        finally:
            await close_both(conn, server)

    if not uvloop:
        run(main())
        return
    uv = pytest.importorskip("uvloop")
    uv.run(asyncio.wait_for(main(), 10))


def test_a_callback_that_closes_the_connection_is_not_called_again():
    """Timeouts call each callback once, even when one of them closes the connection (which
    fails the others with ConnectionLost)."""
    async def main():
        server = await serve_peers(HOST, 0, "b", SECRET, echo)
        conn = await connect(HOST, server.port, "a", SECRET)
        calls = []

        def first(peer, exc, value):
            calls.append(("first", type(exc).__name__))
            conn.close()

        def second(peer, exc, value):
            calls.append(("second", type(exc).__name__))
        try:
            assert conn.request_callback("sleep", 1, first, 0.05)
            assert conn.request_callback("sleep", 1, second, 0.05)
            await until(lambda: len(calls) >= 2)
            await asyncio.sleep(0.1)
            assert calls == [("first", "PeerTimeout"), ("second", "ConnectionLost")]
            assert not conn._slots
        finally:
            await close_both(conn, server)

    run(main())
