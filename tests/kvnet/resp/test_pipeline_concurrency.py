"""Pipelined commands that suspend run side by side when they touch different keys; replies
stay in order, a command sees earlier commands of its connection on the same key, and
multi-key or keyspace-wide commands are barriers (kvnet/resp/server.py)."""
import asyncio

import pytest

from kvnet.errors import CommandError
from kvnet.resp.backend import MemoryBackend
from kvnet.resp.commands import Commands
from kvnet.resp.server import RespProtocol, RespServer, serve
from kvnet.stepping import ReplyFuture, reject, resolve
from kvnet.testing.fakes import LaneDoor

from tests.kvnet.resp.test_server import RecordingTransport, raw_connection, read_until_eof, run


def resp(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


class GatedBackend(MemoryBackend):
    """SET of a key named gate:<x> waits until a SET of key <x> has started; every read and
    write suspends once. Records when each operation starts and ends."""

    def __init__(self):
        super().__init__()
        self.events = {}
        self.log = []

    def _event(self, key):
        return self.events.setdefault(key, asyncio.Event())

    async def set_overwrite(self, key, value):
        self.log.append(("set", key))
        self._event(key).set()
        if key.startswith(b"gate:"):
            await self._event(key[5:]).wait()
        await asyncio.sleep(0)
        await super().set_overwrite(key, value)
        self.log.append(("set done", key))

    async def get_lww(self, key):
        self.log.append(("get", key))
        await asyncio.sleep(0)
        return await super().get_lww(key)

    async def mget(self, keys):
        self.log.append(("mget", tuple(keys)))
        return await super().mget(keys)


def test_different_keys_run_side_by_side():
    """SET gate:b can only finish once SET b has started: one after the other, this pipeline
    would never finish."""
    async def main():
        backend = GatedBackend()
        server = await serve(backend)
        try:
            reader, writer = await raw_connection(server.port)
            writer.write(resp(b"SET", b"gate:b", b"1") + resp(b"SET", b"b", b"2")
                         + resp(b"GET", b"gate:b") + resp(b"GET", b"b") + b"QUIT\r\n")
            data = await asyncio.wait_for(read_until_eof(reader), 5)
            assert data == b"+OK\r\n+OK\r\n$1\r\n1\r\n$1\r\n2\r\n+OK\r\n"
            writer.close()
        finally:
            await server.close()
    run(main())


def test_same_key_waits_for_the_command_before_it():
    async def main():
        backend = GatedBackend()
        server = await serve(backend)
        try:
            reader, writer = await raw_connection(server.port)
            # GET gate:x must see the SET before it, though that SET is still running (it
            # waits for a SET x that another client sends later); GET y need not wait.
            writer.write(resp(b"SET", b"gate:x", b"new") + resp(b"GET", b"gate:x")
                         + b"QUIT\r\n")
            await asyncio.sleep(0.05)
            assert backend.log == [("set", b"gate:x")]
            r2, w2 = await raw_connection(server.port)
            w2.write(resp(b"SET", b"x", b"1") + b"QUIT\r\n")
            assert await asyncio.wait_for(read_until_eof(r2), 5) == b"+OK\r\n+OK\r\n"
            data = await asyncio.wait_for(read_until_eof(reader), 5)
            assert data == b"+OK\r\n$3\r\nnew\r\n+OK\r\n"
            log = backend.log
            assert log.index(("set done", b"gate:x")) < log.index(("get", b"gate:x"))
            writer.close()
            w2.close()
        finally:
            await server.close()
    run(main())


def test_multi_key_command_is_a_barrier():
    async def main():
        backend = GatedBackend()
        server = await serve(backend)
        try:
            reader, writer = await raw_connection(server.port)
            writer.write(resp(b"SET", b"a", b"1") + resp(b"SET", b"b", b"2")
                         + resp(b"MGET", b"a", b"b") + resp(b"SET", b"a", b"3")
                         + resp(b"GET", b"a") + b"QUIT\r\n")
            data = await asyncio.wait_for(read_until_eof(reader), 5)
            assert data == (b"+OK\r\n+OK\r\n*2\r\n$1\r\n1\r\n$1\r\n2\r\n+OK\r\n$1\r\n3\r\n"
                            b"+OK\r\n")
            log = backend.log
            mget = log.index(("mget", (b"a", b"b")))
            # MGET started after both SETs before it finished, and the SET after it later.
            assert log.index(("set done", b"a")) < mget and log.index(("set done", b"b")) < mget
            assert [e for e in log[mget:] if e[0] == "set"] == [("set", b"a")]
            writer.close()
        finally:
            await server.close()
    run(main())


@pytest.mark.parametrize("n", [2000])
def test_mixed_pipeline_of_sets_and_gets_in_order(n):
    """SET/GET of the same key and of different keys, all suspending: every reply in order,
    every GET the value of the SET before it."""
    async def main():
        backend = GatedBackend()
        server = await serve(backend)
        try:
            reader, writer = await raw_connection(server.port)
            data, expected = [], []
            for i in range(n):
                k = b"k%d" % (i % 37)
                data.append(resp(b"SET", k, b"v%d" % i) + resp(b"GET", k)
                            + resp(b"GET", b"k%d" % ((i + 1) % 37)))
                nxt = (i + 1) % 37
                prev = max((j for j in range(i) if j % 37 == nxt), default=None)
                expected.append(b"+OK\r\n$%d\r\nv%d\r\n" % (len(b"v%d" % i), i))
                expected.append(b"$-1\r\n" if prev is None else
                                b"$%d\r\nv%d\r\n" % (len(b"v%d" % prev), prev))
            writer.write(b"".join(data) + b"QUIT\r\n")
            got = await asyncio.wait_for(read_until_eof(reader), 30)
            assert got == b"".join(expected) + b"+OK\r\n"
            writer.close()
        finally:
            await server.close()
    run(main())


def test_fast_reply_waits_behind_a_running_command_and_errors_come_last():
    async def main():
        backend = GatedBackend()
        server = await serve(backend, max_bulk=100)
        try:
            reader, writer = await raw_connection(server.port)
            writer.write(resp(b"SET", b"gate:y", b"1") + b"PING\r\n" + resp(b"SET", b"y", b"2")
                         + b"*1\r\n$101\r\n" + b"x" * 101 + b"\r\n")
            data = await asyncio.wait_for(read_until_eof(reader), 5)
            assert data == b"+OK\r\n+PONG\r\n+OK\r\n-ERR Protocol error: invalid bulk length\r\n"
            writer.close()
        finally:
            await server.close()
    run(main())


def test_key_of():
    c = Commands(MemoryBackend())
    assert c.key_of([b"GET", b"k"]) == b"k"
    assert c.key_of([b"set", b"k", b"v"]) == b"k"
    assert c.key_of([b"KV.PUT", b"k", b"v", b"W", b"1"]) == b"k"
    assert c.key_of([b"Del", b"k"]) == b"k"
    assert c.key_of([b"DEL", b"a", b"b"]) is None
    assert c.key_of([b"MGET", b"a"]) is None
    assert c.key_of([b"MSET", b"a", b"1"]) is None
    assert c.key_of([b"PING"]) == ()
    for barrier in ([b"AUTH", b"x"], [b"HELLO", b"3"], [b"SELECT", b"0"], [b"QUIT"],
                    [b"FLUSHDB"], [b"SCAN", b"0"], [b"DBSIZE"], [b"CLIENT", b"SETNAME", b"x"],
                    [b"NOPE", b"k"]):
        assert c.key_of(barrier) is None, barrier


@pytest.mark.parametrize("cap", [0, 1, 64])
def test_run_ahead_cap_is_server_wide_and_released(cap):
    """With the cap at 0 a connection runs one suspended command at a time (the order of
    starts is the order sent); at any cap every reply comes in order and the count of
    commands running ahead returns to 0."""
    async def main():
        backend = GatedBackend()
        server = await serve(backend, max_run_ahead=cap)
        seen = []
        try:
            conns = [await raw_connection(server.port) for _ in range(3)]
            for i, (reader, writer) in enumerate(conns):
                writer.write(b"".join(resp(b"SET", b"c%d-%d" % (i, j), b"%d" % j)
                                      + resp(b"GET", b"c%d-%d" % (i, j)) for j in range(50))
                             + b"QUIT\r\n")
            async def watch():
                while True:
                    seen.append(server.run_ahead)
                    await asyncio.sleep(0)
            w = asyncio.ensure_future(watch())
            for i, (reader, writer) in enumerate(conns):
                data = await asyncio.wait_for(read_until_eof(reader), 10)
                assert data == b"".join(b"+OK\r\n$%d\r\n%d\r\n" % (len(b"%d" % j), j)
                                        for j in range(50)) + b"+OK\r\n"
                writer.close()
            w.cancel()
            assert max(seen) <= cap and server.run_ahead == 0
            if cap:
                assert max(seen) > 0          # commands did run ahead
            if cap == 0:
                sets = [e[1] for e in backend.log if e[0] == "set"]
                for i in range(3):
                    mine = [k for k in sets if k.startswith(b"c%d-" % i)]
                    assert mine == [b"c%d-%d" % (i, j) for j in range(50)]
        finally:
            await server.close()
    run(main())


def _connected(backend, idle_timeout=0):
    """(server, one connection to it, the log of its writes): no sockets."""
    server = RespServer(backend, idle_timeout=idle_timeout)
    log = []
    conn = RespProtocol(server)
    conn.connection_made(RecordingTransport(log, "a"))
    return server, conn, log


class FutureBackend(MemoryBackend):
    """set_overwrite_now answers with a Future (as a node's direct lane does: a ReplyFuture
    when reply=True) that settles only when the test says so; keys fail:<x> fail with a
    CommandError."""

    def __init__(self, reply=False):
        super().__init__()
        self.futures = {}
        self.reply = reply

    def set_overwrite_now(self, key, value):
        loop = asyncio.get_running_loop()
        fut = ReplyFuture(loop=loop) if self.reply else loop.create_future()
        self.futures[key] = (fut, value)
        return fut

    def settle(self, key):
        fut, value = self.futures.pop(key)
        if key.startswith(b"fail:"):
            reject(fut, CommandError(f"cannot write {key.decode()}"))
        else:
            with pytest.raises(StopIteration):     # MemoryBackend's write never suspends
                super().set_overwrite(key, value).send(None)
            resolve(fut, b"clock")


@pytest.mark.parametrize("reply", [False, True], ids=["Future", "ReplyFuture"])
def test_backend_futures_keep_reply_order_and_same_key_order(reply):
    """Writes settled in reverse order still answer in order; a failed one answers its error
    in its place; a GET of a key with a write still out waits for it."""
    async def main():
        backend = FutureBackend(reply)
        server = await serve(backend)
        try:
            reader, writer = await raw_connection(server.port)
            writer.write(resp(b"SET", b"a", b"1") + resp(b"SET", b"fail:b", b"2")
                         + resp(b"SET", b"c", b"3") + resp(b"GET", b"c") + b"PING\r\n")
            while len(backend.futures) < 3:
                await asyncio.sleep(0.005)
            for key in (b"c", b"fail:b"):
                backend.settle(key)
                await asyncio.sleep(0.02)
            assert not await _ready(reader)      # SET a still out: nothing may be answered
            backend.settle(b"a")
            writer.write(b"QUIT\r\n")
            data = await asyncio.wait_for(read_until_eof(reader), 5)
            assert data == (b"+OK\r\n-ERR cannot write fail:b\r\n+OK\r\n$1\r\n3\r\n+PONG\r\n"
                            b"+OK\r\n")
            writer.close()
        finally:
            await server.close()
    run(main())


async def _ready(reader):
    try:
        return await asyncio.wait_for(reader.read(1), 0.05)
    except TimeoutError:
        return b""


@pytest.mark.parametrize("reply", [False, True], ids=["Future", "ReplyFuture"])
def test_reply_future_answers_in_the_round_it_is_settled(reply):
    """A ReplyFuture's reply is written with the writes of the round that settles it; an
    asyncio Future's a round later (its done callbacks run a round after set_result)."""
    async def main():
        backend = FutureBackend(reply)
        server, conn, log = _connected(backend, idle_timeout=0)
        conn.data_received(resp(b"SET", b"k", b"v"))
        await asyncio.sleep(0)
        assert log == []
        backend.settle(b"k")
        await asyncio.sleep(0)
        assert log == ([("a", b"+OK\r\n")] if reply else [])
        await asyncio.sleep(0)
        assert log == [("a", b"+OK\r\n")]
        conn.connection_lost(None)
    run(main())


def test_reply_futures_of_a_lost_connection_release_their_bookkeeping():
    """A connection lost with ReplyFutures out cancels them and counts them done at once:
    the server-wide run-ahead count returns to 0 and the per-key table empties."""
    async def main():
        backend = FutureBackend(reply=True)
        server, conn, _ = _connected(backend)
        conn.data_received(resp(b"SET", b"a", b"1") + resp(b"SET", b"b", b"2"))
        assert len(backend.futures) == 2 and server.run_ahead == 1
        conn.connection_lost(None)
        assert server.run_ahead == 0 and not conn._running and not conn._keys
        assert all(fut.cancelled() for fut, _ in backend.futures.values())
    run(main())


class TriggerBackend(FutureBackend):
    """SET trigger:<x> settles the write of <x> still out, inside its own dispatch."""

    def set_overwrite_now(self, key, value):
        if key.startswith(b"trigger:"):
            self.settle(key[8:])
            return None
        return super().set_overwrite_now(key, value)


def test_a_command_settling_another_ones_future_keeps_reply_order():
    """The settled command's completion runs inside the dispatch of a later command of the
    same connection: it fills its slot, and the commands after both still answer in order."""
    async def main():
        backend = TriggerBackend(reply=True)
        server, conn, log = _connected(backend, idle_timeout=0)
        conn.data_received(resp(b"SET", b"a", b"1") + resp(b"SET", b"trigger:a", b"x")
                           + b"PING\r\n" + resp(b"GET", b"a"))
        await asyncio.sleep(0)
        assert log == [("a", b"+OK\r\n+OK\r\n+PONG\r\n$1\r\n1\r\n")]
        conn.connection_lost(None)
    run(main())


def test_idle_timeout_never_drops_a_reply_not_yet_written():
    """A reply settled in the round the idle timer fires is written before the close."""
    async def main():
        backend = FutureBackend(reply=True)
        server, conn, log = _connected(backend, idle_timeout=1)
        conn.data_received(resp(b"SET", b"k", b"v"))
        backend.settle(b"k")
        conn._last_read -= 10           # idle for longer than the timeout
        conn._check_idle()
        await asyncio.sleep(0)
        assert log == [("a", b"+OK\r\n")]
        conn._check_idle()              # nothing left to write: now it closes
        assert log[-1] == ("a", "closed")
        conn.connection_lost(None)
    run(main())


class BrokenTransport(RecordingTransport):
    def write(self, data):
        raise RuntimeError("broken transport")


def test_one_failing_write_does_not_hold_the_other_connections_replies():
    async def main():
        server = RespServer(MemoryBackend(), idle_timeout=0)
        log = []
        broken, fine = RespProtocol(server), RespProtocol(server)
        broken.connection_made(BrokenTransport(log, "broken"))
        fine.connection_made(RecordingTransport(log, "fine"))
        broken.data_received(b"PING\r\n")
        fine.data_received(b"PING\r\n")
        await asyncio.sleep(0)
        assert log == [("broken", "aborted"), ("fine", b"+PONG\r\n")]
        for c in (broken, fine):
            c.connection_lost(None)
    run(main())


def _lane_server(max_run_ahead, max_lane_ahead, names):
    """A server whose door (kvnet.testing.fakes.LaneDoor) keeps every SET in flight until the
    test settles it, and a connection per name, writing to one log."""
    backend = FutureBackend(reply=True)
    server = RespServer(backend, idle_timeout=0, max_run_ahead=max_run_ahead,
                        max_lane_ahead=max_lane_ahead)
    server.door = LaneDoor(server.commands)
    log = []
    conns = {}
    for name in names:
        conns[name] = RespProtocol(server)
        conns[name].connection_made(RecordingTransport(log, name))
    return backend, server, conns, log


def _writes(log, name):
    return [data for who, data in log if who == name and type(data) is bytes]


def test_lane_commands_pass_the_run_ahead_cap_and_each_pipeline_answers_in_one_write():
    """The door's commands on the direct lane count apart from max_run_ahead: with a cap of 2,
    three connections' pipelines of 16 SETs are all in flight at once. Settled in reverse
    order (a batch's acknowledgements come in any order), each connection's replies still
    leave in command order, a failed one's error in its place, in one write per connection;
    none leaves while the connection's first command is still out."""
    async def main():
        backend, server, conns, log = _lane_server(2, 4096, "abc")
        keys = {name: [b"%s%d" % (name.encode(), i) for i in range(16)] for name in "abc"}
        keys["b"][5] = b"fail:b5"
        for name, conn in conns.items():
            conn.data_received(b"".join(resp(b"SET", k, b"v") for k in keys[name]))
        assert len(backend.futures) == 48
        assert server.lane_ahead == 45 and server.run_ahead == 0
        for key in reversed(list(backend.futures)):
            if key != b"a0":
                backend.settle(key)
        await asyncio.sleep(0)
        assert _writes(log, "a") == []          # a0 is still out: nothing of a's may leave
        assert _writes(log, "b") == [b"+OK\r\n" * 5 + b"-ERR cannot write fail:b5\r\n"
                                     + b"+OK\r\n" * 10]
        assert _writes(log, "c") == [b"+OK\r\n" * 16]
        backend.settle(b"a0")
        await asyncio.sleep(0)
        assert _writes(log, "a") == [b"+OK\r\n" * 16]
        assert server.lane_ahead == 0 and server.run_ahead == 0
        assert server.door.started == 48
        for conn in conns.values():
            conn.connection_lost(None)
    run(main())


def test_past_max_lane_ahead_the_general_path_and_its_cap_take_over():
    """With 4 lane commands ahead, the next ones run by the general path while max_run_ahead
    (2) lets them; the rest wait in the queue, in order, and start as those before finish."""
    async def main():
        backend, server, conns, log = _lane_server(2, 4, "a")
        keys = [b"k%d" % i for i in range(16)]
        conns["a"].data_received(b"".join(resp(b"SET", k, b"v") for k in keys))
        assert list(backend.futures) == keys[:7]    # the first, 4 on the lane, 2 general
        assert server.door.started == 5 and server.lane_ahead == 4 and server.run_ahead == 2
        for _ in range(16):
            for key in list(backend.futures):
                backend.settle(key)
            await asyncio.sleep(0)
            if not backend.futures:
                break
        assert b"".join(_writes(log, "a")) == b"+OK\r\n" * 16
        assert server.lane_ahead == 0 and server.run_ahead == 0
        conns["a"].connection_lost(None)
    run(main())
