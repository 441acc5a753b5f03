"""Length-prefixed msgpack frames for node-to-node traffic, free of I/O.

A frame is a big-endian u32 body length, then a msgpack body holding the
envelope ``[kind, req_id, type, payload]``; after the handshake of a version 4 connection that
agreed on it, a 16-byte MAC trails each frame (FrameMac). docs/peer.md has the layout.
"""
import enum
import hmac
import struct
from typing import Any, NamedTuple

import msgpack

from kvcore._native import select
from kvnet.errors import ProtocolError

DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024  # bytes of body, header excluded
# A message (a request, answer or notification) whose body is above the frame limit goes as
# CHUNK frames on a connection of protocol version 3 or later (CHUNK_VERSION). The frame limit
# bounds what one frame makes a node buffer before the peer has authenticated; this bounds a
# whole message after it has: the largest object a replica's store takes (2 GiB - 1, the
# store's record limit) with its envelope. docs/peer.md, "Chunked messages".
DEFAULT_MAX_MESSAGE_SIZE = (1 << 31) + (1 << 20)
CHUNK_BYTES = 1 << 20      # the piece of a message one CHUNK frame carries, at most
MAX_REQ_ID = 2**32 - 1

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
# the frame MAC (FrameMac: one direction's tags), in C (kvnet/peer/mac.pyx) or its twin
_mac = select("kvnet.peer.mac", "kvnet.peer.mac_py")
FrameMac = _mac.FrameMac
MAC_SIZE = _mac.MAC_SIZE    # bytes of the tag after each frame of a MAC'd connection
MAC_SHA256_FROM = _mac.MAC_SHA256_FROM    # from this frame size on: HMAC-SHA256, not BLAKE2b


def seal(mac, data):
    """`encode_message`'s output with `mac`'s tag (a FrameMac's) after each frame: bytes, or
    a list of buffers (a chunked message's, a tag after each head and piece)."""
    if type(data) is bytes:
        return data + mac.tag(data)
    out = []
    for i in range(0, len(data), 2):
        head, piece = data[i], data[i + 1]
        out += (head, piece, mac.tag(head, piece))
    return out


class FrameMacError(ProtocolError):
    """A frame's MAC did not match (altered, replayed, reordered, or a wrong session key)."""


class Kind(enum.IntEnum):
    """What a frame is; the first element of the envelope."""

    HELLO = 1  # handshake: versions, node id, nonce
    AUTH = 2  # handshake: HMAC proof
    REQUEST = 3  # req_id > 0, type names the request
    RESPONSE = 4  # answers REQUEST req_id
    ERROR = 5  # answers REQUEST req_id with (code, message); req_id 0: connection refused/closed
    NOTIFY = 6  # one-way, req_id 0
    PING = 7  # liveness probe, answered by PONG with the same req_id
    PONG = 8
    CHUNK = 9  # a piece of a message above the frame limit (version 3): payload [total, piece]


_KINDS = {int(k): k for k in Kind}
# One Packer for the module (msgpack.packb builds one per call, as costly as the packing): pack
# holds the GIL throughout (no `default` hook) and resets itself after an error.
_pack = msgpack.Packer(use_bin_type=True).pack


class Frame(NamedTuple):
    kind: Kind
    req_id: int
    type: str | None
    payload: Any


_new_tuple = tuple.__new__
_CHUNKABLE = (Kind.REQUEST, Kind.RESPONSE, Kind.ERROR, Kind.NOTIFY)


def encode_frame(msg, max_frame_size=DEFAULT_MAX_FRAME_SIZE):
    """The bytes of one frame for ``msg`` = (kind, req_id, type, payload).

    Raises ProtocolError if the body would exceed ``max_frame_size`` and
    TypeError if the payload holds something msgpack cannot encode.
    """
    kind, req_id, type_, payload = msg
    body = _pack((int(kind), req_id, type_, payload))
    if len(body) > max_frame_size:
        raise ProtocolError(
            f"peer frame of {len(body)} bytes exceeds the limit of {max_frame_size} bytes"
        )
    return _HEADER.pack(len(body)) + body


_CHUNK_PREFIX = bytes([0x94, Kind.CHUNK, 0x00, 0xC0, 0x92, 0xCE])     # [9, 0, nil, [u32 ...
_CHUNK_HEAD = struct.Struct(">I6sIBI")     # frame length, the prefix, total, bin 32, piece length
CHUNK_OVERHEAD = _CHUNK_HEAD.size - HEADER_SIZE    # a CHUNK frame's body beside its piece


def encode_message(msg, max_frame_size=DEFAULT_MAX_FRAME_SIZE, max_message_size=0,
                   chunk_bytes=CHUNK_BYTES):
    """`encode_frame`, but a body above ``max_frame_size`` and at most ``max_message_size``
    comes back as a list of CHUNK frames' buffers instead (each a small header, then a
    memoryview of the body: nothing is copied), to be written in this order and with nothing
    between them. max_message_size 0: no chunks (encode_frame's ProtocolError)."""
    kind, req_id, type_, payload = msg
    body = _pack((int(kind), req_id, type_, payload))
    size = len(body)
    if size <= max_frame_size:
        return _HEADER.pack(size) + body
    if size > max_message_size:
        if not max_message_size:
            raise ProtocolError(
                f"peer frame of {size} bytes exceeds the limit of {max_frame_size} bytes")
        raise ProtocolError(
            f"peer message of {size} bytes exceeds the limit of {max_message_size} bytes")
    step = max(1, min(chunk_bytes, max_frame_size - CHUNK_OVERHEAD))
    view = memoryview(body)
    parts = []
    for at in range(0, size, step):
        piece = view[at:at + step]
        parts.append(_CHUNK_HEAD.pack(CHUNK_OVERHEAD + len(piece), _CHUNK_PREFIX, size, 0xC6,
                                      len(piece)))
        parts.append(piece)
    return parts


class Reassembly:
    """The pieces of one chunked message so far (PeerProtocolCore keeps at most one per
    connection: a sender writes a message's chunks with nothing between them)."""

    __slots__ = ("total", "buf")

    def __init__(self, total):
        self.total = total
        self.buf = bytearray()

    def add(self, payload):
        """Take one CHUNK frame's payload; the message's Frame once it is whole, else None.
        ProtocolError for a malformed piece, a total unlike the first piece's, or more bytes
        than the total."""
        if type(payload) is not list or len(payload) != 2 or type(payload[0]) is not int \
                or type(payload[1]) is not bytes or not payload[1]:
            raise ProtocolError("malformed CHUNK frame: want [total, piece]")
        total, piece = payload
        if total != self.total:
            raise ProtocolError(f"CHUNK frame of a {total}-byte message inside one of "
                                f"{self.total} bytes")
        if len(self.buf) + len(piece) > total:
            raise ProtocolError(f"chunked peer message longer than its {total} bytes")
        self.buf += piece
        if len(self.buf) < total:
            return None
        buf, self.buf = self.buf, None
        frame = decode_body(buf)
        if frame.kind not in _CHUNKABLE:
            raise ProtocolError(f"a chunked peer message must be a request, answer or "
                                f"notification, not {frame.kind.name}")
        return frame


def reassembly(payload, max_message_size):
    """A Reassembly for the first piece of a chunked message (payload [total, piece])."""
    if type(payload) is not list or len(payload) != 2 or type(payload[0]) is not int:
        raise ProtocolError("malformed CHUNK frame: want [total, piece]")
    total = payload[0]
    if not 0 < total <= max_message_size:
        raise ProtocolError(f"chunked peer message of {total} bytes exceeds the limit of "
                            f"{max_message_size} bytes")
    return Reassembly(total)


def decode_body(body):
    """The Frame held by one frame body (bytes-like); ProtocolError if it is not one."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises ValueError, TypeError, FormatError, StackError...
        raise ProtocolError(f"undecodable peer frame: {type(exc).__name__}: {exc}") from None
    if type(obj) is not list or len(obj) != 4:
        raise ProtocolError("peer frame is not a [kind, req_id, type, payload] array")
    kind, req_id, type_, payload = obj
    if type(kind) is not int:
        raise ProtocolError(f"peer frame kind {kind!r} is not an integer")
    known = _KINDS.get(kind)
    if known is None:
        raise ProtocolError(f"unknown peer frame kind {kind}")
    kind = known
    if type(req_id) is not int or not 0 <= req_id <= MAX_REQ_ID:
        raise ProtocolError(f"peer frame request id {req_id!r} is not a u32")
    if type_ is not None and type(type_) is not str:
        raise ProtocolError(f"peer frame type {type_!r} is neither a string nor nil")
    return _new_tuple(Frame, (kind, req_id, type_, payload))     # Frame(...), without its __new__


class FrameReader:
    """Fed bytes as they arrive, returns the complete frames they finish.

    After a ProtocolError the stream has lost its framing: every later call
    raises the same error.

    ``mac`` (a FrameMac, None: none) checks the tag after each frame; with ``hold`` each feed
    returns at most one frame, keeping the rest for the next (``feed(b"")``): a peer
    connection's handshake holds, so that its frames after the handshake are read with the MAC
    the handshake set up.
    """

    __slots__ = ("max_frame_size", "_buf", "_error", "mac", "hold")

    def __init__(self, max_frame_size=DEFAULT_MAX_FRAME_SIZE, mac=None, hold=False):
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._error = None
        self.mac = mac
        self.hold = hold

    @property
    def buffered(self):
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    def feed(self, data):
        if self._error is not None:
            raise self._error
        if self._buf:
            self._buf += data
            src = self._buf
        else:
            src = data  # common case: parse straight from the chunk, no copy
        frames = []
        pos = 0
        end_of_data = len(src)
        view = memoryview(src)
        mac = self.mac
        trail = 0 if mac is None else MAC_SIZE
        try:
            while end_of_data - pos >= HEADER_SIZE:
                (size,) = _HEADER.unpack_from(view, pos)
                if size > self.max_frame_size:
                    raise ProtocolError(
                        f"peer frame of {size} bytes exceeds the limit of {self.max_frame_size} bytes"
                    )
                if size == 0:
                    raise ProtocolError("empty peer frame")
                end = pos + HEADER_SIZE + size
                if end + trail > end_of_data:
                    break
                if mac is not None:
                    self._check(mac, view, pos, end)
                body = view[pos + HEADER_SIZE:end]
                try:
                    frames.append(decode_body(body))
                finally:
                    body.release()
                pos = end + trail
                if self.hold:
                    break
        except ProtocolError as exc:
            self._error = exc
            self._buf = bytearray()
            raise
        finally:
            view.release()
        if src is self._buf:
            del self._buf[:pos]
        elif pos < end_of_data:
            self._buf = bytearray(src[pos:])
        return frames

    @staticmethod
    def _check(mac, view, pos, end):
        frame = view[pos:end]
        got = view[end:end + MAC_SIZE]
        try:
            seq = mac.seq
            if not hmac.compare_digest(mac.tag(frame), got):
                raise FrameMacError(f"peer frame {seq} after the handshake failed its MAC check "
                                    f"(altered, replayed or out of order)")
        finally:
            frame.release()
            got.release()
