"""Per-frame MACs of peer connections (protocol version 4; docs/security.md, "Frame MACs"):
every frame after the handshake carries a 16-byte tag over a per-direction sequence number and
the frame, keyed per connection and direction; an altered, replayed or reordered frame closes
the connection; older nodes are refused while MACs are wanted; a stripped HELLO flag fails
authentication. Cores wired by bytes first, then a real node-to-node listener over TCP."""
import asyncio

import msgpack
import pytest

from kvnet.peer.core import MAC_VERSION, PROTOCOL_VERSION, PeerProtocolCore, State
from kvnet.peer.errors import AuthenticationError, VersionMismatch
from kvnet.peer.framing import (HEADER_SIZE, MAC_SHA256_FROM, MAC_SIZE, FrameMac, FrameMacError,
                                 FrameReader, Kind, encode_frame, seal)
from kvnet.peer.pool import PeerPool

SECRET = b"cluster-secret-for-tests"


class Core(PeerProtocolCore):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.out = []
        self.events = []

    def _write(self, data):
        if type(data) is list:
            data = b"".join(data)
        self.out.append(bytes(data))

    def _on_ready(self):
        self.events.append(("ready",))

    def _on_request(self, type, req_id, payload):
        self.events.append(("request", type, req_id, payload))

    def _on_response(self, req_id, payload):
        self.events.append(("response", req_id, payload))

    def _on_close(self, exc):
        self.events.append(("close", exc))


def pump(a, b, limit=100):
    for _ in range(limit):
        moved = False
        for src, dst in ((a, b), (b, a)):
            while src.out:
                dst.feed_data(src.out.pop(0))
                moved = True
        if not moved:
            return
    raise AssertionError("cores never went quiet")


def pair(mac_a=True, mac_b=True, versions_a=(1, PROTOCOL_VERSION),
         versions_b=(1, PROTOCOL_VERSION)):
    a = Core("node-a", SECRET, initiator=True, frame_mac=mac_a, versions=versions_a)
    b = Core("node-b", SECRET, initiator=False, frame_mac=mac_b, versions=versions_b)
    a.start_handshake()
    b.start_handshake()
    return a, b


def connected(**kw):
    a, b = pair(**kw)
    pump(a, b)
    assert a.state is State.READY and b.state is State.READY
    a.events.clear()
    b.events.clear()
    return a, b


def closed_with(core):
    (event,) = [e for e in core.events if e[0] == "close"]
    return event[1]


def test_frames_after_the_handshake_carry_a_tag_and_pass():
    a, b = connected()
    assert a.version == b.version == PROTOCOL_VERSION >= MAC_VERSION
    assert a.mac and b.mac
    a.send_request("get", b"k")
    (data,) = a.out
    plain = encode_frame((Kind.REQUEST, 1, "get", b"k"))
    assert len(data) == len(plain) + MAC_SIZE and data.startswith(plain)
    pump(a, b)
    assert b.events == [("request", "get", 1, b"k")]
    b.send_response(1, b"v")
    pump(a, b)
    assert a.events == [("response", 1, b"v")]


def test_a_flipped_byte_closes_the_connection():
    for at, change in ((HEADER_SIZE - 1, -1), (HEADER_SIZE + 1, 1), (-1, 1)):
        a, b = connected()                  # the length one less, a body byte, a tag byte
        a.send_request("get", b"key")
        data = bytearray(a.out.pop())
        data[at] = (data[at] + change) % 256
        b.feed_data(bytes(data))
        assert b.state is State.CLOSED
        exc = closed_with(b)
        assert isinstance(exc, FrameMacError) and "MAC" in str(exc)
        assert not [e for e in b.events if e[0] == "request"]
        # b tells a why, in a frame a can still check: a sees an authentication failure
        pump(a, b)
        assert isinstance(closed_with(a), AuthenticationError)
        assert "mac" in str(closed_with(a))


def test_a_replayed_or_reordered_frame_is_refused():
    a, b = connected()
    a.send_request("put", b"1")
    first = a.out.pop()
    b.feed_data(first)
    assert b.events == [("request", "put", 1, b"1")]
    b.feed_data(first)                                  # the same bytes again
    assert b.state is State.CLOSED and isinstance(closed_with(b), FrameMacError)

    a, b = connected()
    a.send_request("put", b"1")
    a.send_request("put", b"2")
    one, two = a.out
    b.feed_data(two + one)                              # swapped
    assert b.state is State.CLOSED and isinstance(closed_with(b), FrameMacError)
    assert not [e for e in b.events if e[0] == "request"]


def test_each_direction_and_connection_has_its_own_key():
    a, b = connected()
    a2, b2 = connected()
    a.send_request("get", b"k")
    a2.send_request("get", b"k")
    assert a.out[0] != a2.out[0]                         # new nonces, new keys
    # a frame of b's direction, tagged with a's key, fails at a
    a.send_request("get", b"k")
    b.feed_data(a.out.pop(0))
    b.out.clear()
    b.events.clear()
    stolen = a.out.pop()                     # a's second frame (seq 1 of a's direction) ...
    b.send_request("get", b"x")              # ... sent where b's seq 0 is due
    a.feed_data(stolen)
    assert a.state is State.CLOSED and isinstance(closed_with(a), FrameMacError)


def test_chunked_messages_carry_a_tag_per_chunk():
    a = Core("node-a", SECRET, initiator=True, max_frame_size=256, max_message_size=100_000)
    b = Core("node-b", SECRET, initiator=False, max_frame_size=256, max_message_size=100_000)
    a.start_handshake()
    b.start_handshake()
    pump(a, b)
    a.events.clear()
    b.events.clear()
    big = bytes(range(256)) * 20
    a.send_request("put", big)
    pump(a, b)
    assert b.events == [("request", "put", 1, big)]
    a.send_request("put", big)
    data = bytearray(b"".join(a.out))          # (the core writes a chunked message by parts)
    a.out.clear()
    data[19 + 100] ^= 0x80                     # in the first chunk's piece (after its head)
    b.feed_data(bytes(data))
    assert b.state is State.CLOSED and isinstance(closed_with(b), FrameMacError)
    assert not [e for e in b.events if e[0] == "request" and e[2] == 2]


def test_the_first_frames_after_auth_in_the_same_read_are_checked_with_the_mac():
    a, b = pair()
    a.feed_data(b.out.pop(0))                  # b's HELLO: a sends its AUTH
    b.feed_data(a.out.pop(0))                  # a's HELLO
    b.feed_data(a.out.pop(0))                  # a's AUTH: b sends its AUTH, READY
    assert b.state is State.READY
    b.send_request("ping-me", 7)               # b's first MAC'd frame ...
    a.feed_data(b"".join(b.out))               # ... in the same read as b's AUTH
    b.out.clear()
    assert a.state is State.READY
    assert ("request", "ping-me", 1, 7) in a.events


def test_without_macs_on_either_end_frames_are_plain():
    a, b = connected(mac_a=False, mac_b=False)
    assert a.version == PROTOCOL_VERSION and not a.mac and not b.mac
    a.send_request("get", b"k")
    assert a.out == [encode_frame((Kind.REQUEST, 1, "get", b"k"))]


def test_one_end_asking_is_enough():
    for mac_a, mac_b in ((True, False), (False, True)):
        a, b = connected(mac_a=mac_a, mac_b=mac_b)
        assert a.mac and b.mac
        a.send_request("get", b"k")
        pump(a, b)
        assert b.events == [("request", "get", 1, b"k")]


def test_an_older_node_is_refused_with_a_clear_error():
    a, b = pair(versions_b=(1, 3))          # b plays a node of before frame MACs
    pump(a, b)
    assert a.state is State.CLOSED and b.state is State.CLOSED
    exc = closed_with(a)
    assert isinstance(exc, VersionMismatch)
    assert "versions 4..4" in str(exc) and "1..3" in str(exc) and "MAC" in str(exc)
    assert isinstance(closed_with(b), VersionMismatch)
    # with MACs off, the older node is still spoken to (version 3, no tags)
    a, b = connected(mac_a=False, versions_b=(1, 3))
    assert a.version == 3 and not a.mac


def test_a_hello_stripped_of_its_mac_flag_fails_authentication():
    a, b = pair(mac_a=True, mac_b=False)
    hello = a.out.pop(0)
    env = msgpack.unpackb(hello[HEADER_SIZE:], raw=False)
    assert env[3]["mac"] is True
    env[3]["mac"] = False                     # a man in the middle turns the MACs off
    b.feed_data(encode_frame(tuple(env)))
    pump(a, b)
    assert b.state is State.CLOSED and a.state is State.CLOSED
    assert isinstance(closed_with(b), AuthenticationError) \
        or isinstance(closed_with(a), AuthenticationError)


def test_frame_mac_unit():
    key = b"k" * 32
    # small frames, and a big one (HMAC-SHA256 from MAC_SHA256_FROM bytes)
    frames = [encode_frame((Kind.NOTIFY, 0, "n", i)) for i in range(2)]
    frames.append(encode_frame((Kind.NOTIFY, 0, "n", b"x" * MAC_SHA256_FROM)))
    assert len(frames[1]) < MAC_SHA256_FROM < len(frames[2])
    send = FrameMac(key)
    sealed = [seal(send, f) for f in frames]
    assert [len(x) - len(f) for x, f in zip(sealed, frames)] == [MAC_SIZE] * 3
    reader = FrameReader(mac=FrameMac(key))
    got = reader.feed(b"".join(sealed))
    assert [f.payload for f in got] == [0, 1, b"x" * MAC_SHA256_FROM] and reader.mac.seq == 3
    for at in (5, len(frames[2]) // 2, -1):          # an altered byte of a big frame
        bad = bytearray(sealed[2])
        bad[at] ^= 1
        reader = FrameReader(mac=FrameMac(key))
        reader.feed(sealed[0] + sealed[1])
        with pytest.raises(FrameMacError):
            reader.feed(bytes(bad))
        with pytest.raises(FrameMacError):              # the reader stays failed
            reader.feed(b"")
    with pytest.raises(FrameMacError):                  # another key
        FrameReader(mac=FrameMac(b"j" * 32)).feed(sealed[0])


# -- a real listener: a raw client speaks the handshake, then sends bad frames -------------------

async def echo(type, payload):
    return payload


class RawClient(Core):
    """A dialing core over a plain socket: the bytes it would write are ours to send (or
    tamper with)."""


async def raw_connect(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    core = RawClient("raw", SECRET, initiator=True, expected_peer="srv")
    core.start_handshake()
    while core.state is not State.READY:
        writer.write(b"".join(core.out))
        core.out.clear()
        await writer.drain()
        data = await reader.read(65536)
        assert data, f"closed during the handshake: {core.events}"
        core.feed_data(data)
    writer.write(b"".join(core.out))
    core.out.clear()
    return core, reader, writer


async def until_closed(reader, core):
    while True:
        data = await reader.read(65536)
        if not data:
            return
        core.feed_data(data)


def run(coro, limit=30):
    async def bounded():
        async with asyncio.timeout(limit):
            return await coro

    return asyncio.run(bounded())


def test_a_node_closes_a_connection_whose_frame_fails_its_mac():
    async def main():
        async with PeerPool("srv", SECRET, echo) as pool:
            server = await pool.serve("127.0.0.1", 0)
            # a good request is answered
            core, reader, writer = await raw_connect(server.port)
            assert core.mac
            core.send_request("echo", b"hello")
            writer.write(core.out.pop())
            while not [e for e in core.events if e[0] == "response"]:
                core.feed_data(await reader.read(65536))
            assert ("response", 1, b"hello") in core.events
            # a flipped byte: the node closes the connection, counts it and says why
            core.send_request("echo", b"world")
            data = bytearray(core.out.pop())
            data[HEADER_SIZE + 3] ^= 0x20
            writer.write(bytes(data))
            await until_closed(reader, core)
            writer.close()
            assert isinstance(core.close_exc, AuthenticationError) and "mac" in str(core.close_exc)
            assert pool.mac_failures == 1
            assert not [e for e in core.events if e == ("response", 2, b"world")]

            # a replayed frame: the first copy is answered, the second closes the connection
            core, reader, writer = await raw_connect(server.port)
            core.send_request("echo", b"once")
            frame = core.out.pop()
            writer.write(frame)
            while not [e for e in core.events if e[0] == "response"]:
                core.feed_data(await reader.read(65536))
            writer.write(frame)
            await until_closed(reader, core)
            writer.close()
            assert pool.mac_failures == 2
            assert [e for e in core.events if e[0] == "response"] == [("response", 1, b"once")]

    run(main())


def test_pools_talk_with_macs_and_without():
    async def main():
        for mac_a, mac_b in ((True, True), (False, False), (True, False)):
            async with PeerPool("a", SECRET, echo, frame_mac=mac_a) as a, \
                    PeerPool("b", SECRET, echo, frame_mac=mac_b) as b:
                server = await b.serve("127.0.0.1", 0)
                big = b"z" * (3 << 20)                        # chunked too
                assert await a.request("b", ("127.0.0.1", server.port), "x", big) == big
                assert a.get("b").mac == (mac_a or mac_b)

    run(main())
