"""Length-prefixed msgpack frames for node-to-node traffic, free of I/O.

A frame is a big-endian u32 body length, then a msgpack body holding the
envelope ``[kind, req_id, type, payload]``; docs/peer.md has the layout.
"""
import enum
import struct
from typing import Any, NamedTuple

import msgpack

from kvnet.errors import ProtocolError

DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024  # bytes of body, header excluded
MAX_REQ_ID = 2**32 - 1

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size


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
    """

    __slots__ = ("max_frame_size", "_buf", "_error")

    def __init__(self, max_frame_size=DEFAULT_MAX_FRAME_SIZE):
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._error = None

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
                if end > end_of_data:
                    break
                body = view[pos + HEADER_SIZE:end]
                try:
                    frames.append(decode_body(body))
                finally:
                    body.release()
                pos = end
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
