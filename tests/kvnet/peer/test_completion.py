"""The one way a request completes: a slot that its answer, its deadline or the connection's
close completes exactly once, whether a callback, a future or a coroutine waits for it. The
connection runs on a recording transport; answers are fed to it as bytes."""
import asyncio

import pytest

from kvnet.peer.core import State
from kvnet.peer.errors import ConnectionLost, PeerTimeout, RemoteError
from kvnet.peer.framing import FrameReader, Kind, encode_frame
from kvnet.peer.protocol import PeerConnection
from kvnet.testing.fakes import PeerTransport

SECRET = "s3cret"


def run(coro, limit=10):
    async def bounded():
        async with asyncio.timeout(limit):
            return await coro

    return asyncio.run(bounded(), debug=True)


async def until(cond):
    while not cond():
        await asyncio.sleep(0.005)


def ready_conn():
    """A READY connection from a to b on a recording transport (no socket, no handshake)."""
    conn = PeerConnection("a", SECRET, initiator=True)
    conn._transport = PeerTransport()
    conn.state, conn.peer_id, conn.version = State.READY, "b", 3
    return conn


def answer(conn, req_id, payload):
    conn.data_received(encode_frame((Kind.RESPONSE, req_id, None, payload)))


def sent(conn):
    conn._flush()
    return FrameReader(1 << 20).feed(conn._transport.out)


def recorder():
    calls = []
    return calls, lambda peer, exc, value: calls.append((peer, exc, value))


def test_an_answer_completes_its_request_once_and_a_second_is_dropped():
    async def main():
        conn = ready_conn()
        calls, cb = recorder()
        assert conn.request_callback("get", {"k": b"x"}, cb, 5)
        (frame,) = sent(conn)
        assert (frame.kind, frame.type, frame.payload) == (Kind.REQUEST, "get", {"k": b"x"})
        answer(conn, frame.req_id, b"v")
        answer(conn, frame.req_id, b"again")
        assert calls == [("b", None, b"v")]
        assert conn.late_responses == 1 and conn.pending == 0 and not conn._slots
        # a future and a coroutine wait on the same kind of slot
        fut = conn.request_future("get", 1, timeout=5)
        task = asyncio.ensure_future(conn.request("get", 2, timeout=5))
        await asyncio.sleep(0)
        ids = [f.req_id for f in sent(conn)[1:]]
        answer(conn, ids[1], "two")
        answer(conn, ids[0], "one")
        assert await fut == "one" and await task == "two"
        assert not conn._slots and conn._deadline_timer is not None   # (still set: harmless)

    run(main())


def test_an_error_answer_fails_its_request_once_with_a_remote_error():
    async def main():
        conn = ready_conn()
        calls, cb = recorder()
        assert conn.request_callback("put", 1, cb, 5)
        (frame,) = sent(conn)
        conn.data_received(encode_frame((Kind.ERROR, frame.req_id, "ValueError", "bad")))
        conn.data_received(encode_frame((Kind.ERROR, frame.req_id, "ValueError", "bad")))
        ((peer, exc, value),) = calls
        assert isinstance(exc, RemoteError) and (exc.code, exc.remote_message) == ("ValueError", "bad")
        assert str(exc) == "node b failed request 'put': ValueError: bad" and value is None
        assert conn.late_responses == 1

    run(main())


def test_a_deadline_fails_the_request_once_and_its_late_answer_is_dropped():
    async def main():
        conn = ready_conn()
        calls, cb = recorder()
        assert conn.request_callback("get", 1, cb, 0.05)
        fut = conn.request_future("get", 2, timeout=0.05)
        task = asyncio.ensure_future(conn.request("get", 3, timeout=0.05))
        await until(lambda: calls and fut.done() and task.done())
        ((peer, exc, value),) = calls
        assert type(exc) is PeerTimeout and isinstance(exc, TimeoutError) and value is None
        assert str(exc) == "node b did not answer 'get' within 0.05 s"
        for waited in (fut, task):
            with pytest.raises(PeerTimeout, match=r"^node b did not answer 'get' within 0.05 s$"):
                waited.result()
        assert conn.pending == 0 and not conn._slots
        for frame in sent(conn):
            answer(conn, frame.req_id, "late")
        assert len(calls) == 1 and conn.late_responses == 3
        assert conn.state is State.READY

    run(main())


def test_one_timer_serves_every_deadline_and_a_shorter_one_comes_first():
    async def main():
        conn = ready_conn()
        calls, cb = recorder()
        assert conn.request_callback("long", 1, cb, 30)
        first = conn._deadline_at
        assert conn.request_callback("short", 2, cb, 0.05)
        assert conn._deadline_at < first           # rescheduled for the shorter one
        assert conn.request_callback("none", 3, cb, None)
        await until(lambda: calls)
        assert [str(c[1]) for c in calls] == ["node b did not answer 'short' within 0.05 s"]
        assert sorted(s[1] for s in conn._slots.values()) == ["long", "none"]
        assert conn._deadline_at == pytest.approx(first)    # back to the next one still out

    run(main())


def test_a_close_fails_every_outstanding_request_once():
    async def main():
        conn = ready_conn()
        calls, cb = recorder()
        assert conn.request_callback("a", 1, cb, 5)
        assert conn.request_callback("b", 2, cb, None)
        fut = conn.request_future("c", 3, timeout=5)
        task = asyncio.ensure_future(conn.request("d", 4))
        await asyncio.sleep(0)
        ids = [f.req_id for f in sent(conn)]
        conn.connection_lost(None)
        conn.connection_lost(None)                  # a second time: nothing more
        assert [type(c[1]) for c in calls] == [ConnectionLost, ConnectionLost]
        assert str(calls[0][1]) == (f"connection to node b closed before it answered 'a' "
                                    f"(request {ids[0]}): connection to b lost")
        with pytest.raises(ConnectionLost, match=r"closed before it answered 'c'"):
            await fut
        with pytest.raises(ConnectionLost, match=r"closed before it answered 'd'"):
            await task
        answer(conn, ids[0], "after")               # a closed connection reads nothing
        assert len(calls) == 2 and not conn._slots and conn._deadline_timer is None
        with pytest.raises(ConnectionLost):
            conn.request_callback("e", 5, cb, 5)

    run(main())


def test_a_cancelled_request_frees_its_slot_and_its_answer_is_late():
    async def main():
        conn = ready_conn()
        task = asyncio.ensure_future(conn.request("get", 1, timeout=5))
        await asyncio.sleep(0)
        (frame,) = sent(conn)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not conn._slots and conn.pending == 0
        answer(conn, frame.req_id, "late")
        assert conn.late_responses == 1

    run(main())


def test_a_callback_that_raises_does_not_stop_the_others(caplog):
    async def main():
        conn = ready_conn()
        calls, cb = recorder()

        def broken(peer, exc, value):
            raise RuntimeError("caller's bug")
        assert conn.request_callback("x", 1, broken, 5)
        assert conn.request_callback("y", 2, cb, 5)
        first, second = sent(conn)
        answer(conn, first.req_id, 1)
        answer(conn, second.req_id, 2)
        assert calls == [("b", None, 2)]
        assert "request callback failed" in caplog.text

    run(main())
