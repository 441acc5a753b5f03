"""Peer framing, with bytes alone."""
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvnet.errors import ProtocolError
from kvnet.peer.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    MAX_REQ_ID,
    Frame,
    FrameReader,
    Kind,
    encode_frame,
    encode_message,
    reassembly,
)

MSGS = [
    (Kind.HELLO, 0, None, {"versions": [1, 1], "node": "n1", "nonce": b"\x00" * 32}),
    (Kind.REQUEST, 1, "get", [b"key", {"r": 2}]),
    (Kind.RESPONSE, 1, None, {"value": b"\xff" * 300, "ctx": None}),
    (Kind.ERROR, 7, "ValueError", "bad things"),
    (Kind.NOTIFY, 0, "gossip", [1, 2.5, True, None, "s"]),
    (Kind.REQUEST, MAX_REQ_ID, "put", {1: b"", 2: []}),
]


def test_layout_byte_by_byte():
    data = encode_frame((Kind.REQUEST, 5, "get", b"k"))
    body = bytes([0x94, 0x03, 0x05, 0xA3]) + b"get" + bytes([0xC4, 0x01]) + b"k"
    assert data == struct.pack(">I", len(body)) + body
    assert FrameReader().feed(data) == [Frame(Kind.REQUEST, 5, "get", b"k")]


def test_roundtrip_and_types():
    frames = FrameReader().feed(b"".join(encode_frame(m) for m in MSGS))
    assert frames == [Frame(*m) for m in MSGS]
    assert all(type(f.kind) is Kind for f in frames)


def test_split_at_every_byte():
    stream = b"".join(encode_frame(m) for m in MSGS)
    expected = [Frame(*m) for m in MSGS]
    for i in range(len(stream) + 1):
        reader = FrameReader()
        got = reader.feed(stream[:i]) + reader.feed(stream[i:])
        assert got == expected, i
        assert reader.buffered == 0


def test_one_byte_at_a_time():
    stream = b"".join(encode_frame(m) for m in MSGS)
    reader = FrameReader()
    got = []
    for i in range(len(stream)):
        got += reader.feed(stream[i:i + 1])
    assert got == [Frame(*m) for m in MSGS]


def test_many_frames_in_one_chunk():
    msgs = [(Kind.REQUEST, i + 1, "t", i) for i in range(2000)]
    chunk = b"".join(encode_frame(m) for m in msgs)
    reader = FrameReader()
    assert reader.feed(chunk + chunk[:3]) == [Frame(*m) for m in msgs]
    assert reader.buffered == 3
    assert reader.feed(chunk[3:]) == [Frame(*m) for m in msgs]


def test_accepts_bytearray_and_memoryview():
    data = encode_frame(MSGS[1])
    assert FrameReader().feed(bytearray(data)) == [Frame(*MSGS[1])]
    assert FrameReader().feed(memoryview(data)) == [Frame(*MSGS[1])]


def test_oversize_refused_at_the_header():
    reader = FrameReader(max_frame_size=100)
    with pytest.raises(ProtocolError, match="exceeds the limit of 100 bytes"):
        reader.feed(struct.pack(">I", 101))  # no body needed to refuse
    with pytest.raises(ProtocolError):  # framing is lost for good
        reader.feed(encode_frame(MSGS[1]))


def test_frame_at_the_limit_passes():
    data = encode_frame((Kind.RESPONSE, 1, None, b"x" * 50))
    size = len(data) - 4
    assert FrameReader(max_frame_size=size).feed(data)[0].payload == b"x" * 50
    with pytest.raises(ProtocolError):
        FrameReader(max_frame_size=size - 1).feed(data)


def test_encode_oversize():
    with pytest.raises(ProtocolError, match="exceeds"):
        encode_frame((Kind.RESPONSE, 1, None, b"x" * 1000), max_frame_size=500)
    assert DEFAULT_MAX_FRAME_SIZE == 64 * 1024 * 1024


def test_encode_unencodable_is_type_error():
    with pytest.raises(TypeError):
        encode_frame((Kind.REQUEST, 1, "t", object()))


def _frame(body):
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    "data, match",
    [
        (struct.pack(">I", 0), "empty"),
        (_frame(b"\xc1"), "undecodable"),  # reserved msgpack byte
        (_frame(msgpack.packb([3, 1, "t", None]) + b"\x00"), "undecodable"),  # trailing bytes
        (_frame(b"\x94\x03\x01"), "undecodable"),  # truncated array
        (_frame(msgpack.packb({"a": 1})), "array"),
        (_frame(msgpack.packb([3, 1, "t"])), "array"),
        (_frame(msgpack.packb([99, 1, "t", None])), "unknown peer frame kind"),
        (_frame(msgpack.packb(["3", 1, "t", None])), "not an integer"),
        (_frame(msgpack.packb([True, 1, "t", None])), "not an integer"),
        (_frame(msgpack.packb([3, -1, "t", None])), "u32"),
        (_frame(msgpack.packb([3, 2**32, "t", None])), "u32"),
        (_frame(msgpack.packb([3, 1.0, "t", None])), "u32"),
        (_frame(msgpack.packb([3, 1, 5, None])), "string"),
        (_frame(msgpack.packb([3, 1, b"t", None])), "string"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "exceeds"),  # someone speaking HTTP at us
    ],
)
def test_garbage(data, match):
    reader = FrameReader()
    with pytest.raises(ProtocolError, match=match):
        reader.feed(data)


def test_garbage_after_good_frames():
    reader = FrameReader()
    with pytest.raises(ProtocolError):
        reader.feed(encode_frame(MSGS[1]) + _frame(b"\xc1"))


payloads = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
messages = st.tuples(
    st.sampled_from(list(Kind)),
    st.integers(0, MAX_REQ_ID),
    st.none() | st.text(max_size=10),
    payloads,
)


@given(st.lists(messages, min_size=1, max_size=8), st.data())
def test_roundtrip_with_random_chunks(msgs, data):
    stream = b"".join(encode_frame(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    reader = FrameReader()
    got = []
    prev = 0
    for cut in cuts + [len(stream)]:
        got += reader.feed(stream[prev:cut])
        prev = cut
    assert got == [Frame(*m) for m in msgs]


@given(st.binary(max_size=200))
def test_random_bytes_only_raise_protocol_error(data):
    reader = FrameReader(max_frame_size=1000)
    try:
        for frame in reader.feed(data):
            assert isinstance(frame, Frame)
    except ProtocolError:
        pass


@given(st.binary(min_size=1, max_size=60))
def test_random_bodies_only_raise_protocol_error(body):
    try:
        FrameReader().feed(_frame(body))
    except ProtocolError:
        pass


# ---- chunked messages (docs/peer.md, "Chunked messages") -------------------------------------

def _frames_of(parts):
    return FrameReader(max_frame_size=64).feed(b"".join(bytes(p) for p in parts))


def test_a_message_within_the_frame_limit_is_one_frame_as_before():
    msg = (Kind.REQUEST, 3, "put", {"c": b"x" * 40})
    assert encode_message(msg, 64, 10_000) == encode_frame(msg, 64)


def test_a_message_above_the_frame_limit_goes_in_chunks_that_rebuild_it():
    msg = (Kind.RESPONSE, 9, None, {"c": bytes(range(256)) * 4})
    parts = encode_message(msg, 64, 10_000)
    assert type(parts) is list
    frames = _frames_of(parts)          # every CHUNK frame within the 64-byte frame limit
    assert len(frames) > 10 and {f.kind for f in frames} == {Kind.CHUNK}
    total = frames[0].payload[0]
    assert total == sum(len(f.payload[1]) for f in frames) > 64
    whole = reassembly(frames[0].payload, 10_000)
    got = [whole.add(f.payload) for f in frames]
    assert got[:-1] == [None] * (len(frames) - 1) and got[-1] == Frame(*msg)


def test_a_message_above_the_message_limit_is_refused_by_its_sender():
    msg = (Kind.REQUEST, 1, "put", b"x" * 1000)
    with pytest.raises(ProtocolError, match="message of .* exceeds the limit of 500"):
        encode_message(msg, 64, 500)
    with pytest.raises(ProtocolError, match="frame of .* exceeds the limit of 64"):
        encode_message(msg, 64, 0)          # no chunks (a peer of protocol version 2)


@pytest.mark.parametrize("payload, error", [
    ([5000, b"x"], "exceeds the limit of 1000"),
    ([0, b"x"], "exceeds the limit"),
    ("x", "malformed CHUNK"),
    ([10, "x"], "malformed CHUNK"),
])
def test_a_bad_first_chunk_is_a_protocol_error(payload, error):
    with pytest.raises(ProtocolError, match=error):
        reassembly(payload, 1000).add(payload)


def test_pieces_must_keep_to_their_message():
    r = reassembly([10, b"abcd"], 1000)
    assert r.add([10, b"abcd"]) is None
    with pytest.raises(ProtocolError, match="inside one of 10 bytes"):
        r.add([12, b"ef"])
    with pytest.raises(ProtocolError, match="longer than its 10 bytes"):
        r.add([10, b"efghijk"])


def test_a_chunked_message_holds_a_request_answer_or_notification_only():
    body = encode_frame((Kind.PING, 1, None, None))[4:]
    r = reassembly([len(body), body], 1000)
    with pytest.raises(ProtocolError, match="not PING"):
        r.add([len(body), body])


@given(payload=st.binary(min_size=0, max_size=5000), frame=st.integers(100, 2000),
       piece=st.integers(1, 3000), feed=st.integers(1, 700))
def test_any_message_in_chunks_of_any_size_read_in_any_pieces_is_rebuilt(payload, frame, piece,
                                                                          feed):
    msg = (Kind.REQUEST, 77, "put", {"c": payload})
    out = encode_message(msg, frame, 100_000, chunk_bytes=piece)
    data = out if type(out) is bytes else b"".join(bytes(p) for p in out)
    reader, frames = FrameReader(max_frame_size=frame), []
    for at in range(0, len(data), feed):
        frames += reader.feed(data[at:at + feed])
    if type(out) is bytes:
        assert frames == [Frame(*msg)]
        return
    assert {f.kind for f in frames} == {Kind.CHUNK}
    whole = reassembly(frames[0].payload, 100_000)
    assert [whole.add(f.payload) for f in frames][-1] == Frame(*msg)
