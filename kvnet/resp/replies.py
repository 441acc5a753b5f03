"""Reply values and their RESP2/RESP3 encodings, free of I/O (docs/resp.md).

Handlers return plain Python values; `encode(value, proto)` turns them into bytes:

    bytes/bytearray -> bulk string      int   -> integer        None  -> null
    list/tuple      -> array            dict  -> map (RESP2: flat array of key, value, ...)
    set/frozenset   -> set (RESP2: array)                        float -> double (RESP2: bulk)
    bool            -> boolean (RESP2: integer 1/0)              str   -> bulk string (UTF-8)
    Simple          -> simple string    Verbatim -> verbatim string (RESP2: bulk)
    KVNetError / ErrorReply -> error line (the one mapping in kvnet/errors.py)
"""
import math

from kvnet.errors import KVNetError

__all__ = ["Simple", "Verbatim", "ErrorReply", "OK", "PONG", "QUEUED", "encode", "encode_error"]

_CRLF = b"\r\n"


class Simple(str):
    """A status reply (`+OK`); must not contain CR or LF."""

    __slots__ = ()


class Verbatim(str):
    """A RESP3 verbatim string (`=` with a 3-letter format, "txt" by default); RESP2 bulk."""

    __slots__ = ()
    fmt = "txt"


class ErrorReply:
    """An error reply built from a complete line (prefix included), e.g. 'ERR unknown command'."""

    __slots__ = ("line",)

    def __init__(self, line: str):
        self.line = line

    def __repr__(self):
        return f"ErrorReply({self.line!r})"

    def __eq__(self, other):
        return isinstance(other, ErrorReply) and other.line == self.line

    def __hash__(self):
        return hash(self.line)


OK = Simple("OK")
PONG = Simple("PONG")
QUEUED = Simple("QUEUED")

# Replies sent on every request are built once.
_CONST = {
    (OK, 2): b"+OK\r\n", (OK, 3): b"+OK\r\n",
    (PONG, 2): b"+PONG\r\n", (PONG, 3): b"+PONG\r\n",
}
_NULL = {2: b"$-1\r\n", 3: b"_\r\n"}


def _clean_line(text: str) -> bytes:
    # Simple strings and errors are single lines: a CR or LF would split the reply.
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


def encode_error(err) -> bytes:
    """`-<line>\r\n` for a KVNetError, an ErrorReply or an error line (str)."""
    if isinstance(err, KVNetError):
        line = err.resp()
    elif isinstance(err, ErrorReply):
        line = err.line
    else:
        line = str(err)
    return b"-" + _clean_line(line) + _CRLF


def encode(value, proto: int = 2) -> bytes:
    """The RESP bytes of one reply value under protocol `proto` (2 or 3)."""
    t = type(value)
    if t is bytes:
        return b"$%d\r\n%b\r\n" % (len(value), value)
    if t is Simple:
        const = _CONST.get((value, proto))
        if const is not None:
            return const
    if value is None:
        return _NULL[proto]
    out = []
    _encode_into(value, proto, out)
    return b"".join(out)


def _encode_into(value, proto, out):
    append = out.append
    t = type(value)
    if t is bytes or t is bytearray or t is memoryview:
        append(b"$%d\r\n" % len(value))
        append(bytes(value))
        append(_CRLF)
    elif value is None:
        append(_NULL[proto])
    elif t is bool:
        if proto == 3:
            append(b"#t\r\n" if value else b"#f\r\n")
        else:
            append(b":1\r\n" if value else b":0\r\n")
    elif t is int:
        append(b":%d\r\n" % value)
    elif t is Simple:
        append(b"+" + _clean_line(value) + _CRLF)
    elif t is Verbatim:
        data = value.encode("utf-8")
        if proto == 3:
            append(b"=%d\r\n%b:" % (len(data) + 4, value.fmt.encode()))
        else:
            append(b"$%d\r\n" % len(data))
        append(data)
        append(_CRLF)
    elif t is str:
        data = value.encode("utf-8")
        append(b"$%d\r\n" % len(data))
        append(data)
        append(_CRLF)
    elif t is list or t is tuple:
        append(b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(item, proto, out)
    elif t is dict:
        append((b"%%%d\r\n" if proto == 3 else b"*%d\r\n") % (len(value) if proto == 3 else 2 * len(value)))
        for k, v in value.items():
            _encode_into(k, proto, out)
            _encode_into(v, proto, out)
    elif t is set or t is frozenset:
        append((b"~%d\r\n" if proto == 3 else b"*%d\r\n") % len(value))
        for item in value:
            _encode_into(item, proto, out)
    elif t is float:
        if proto == 3:
            append(b"," + _format_double(value) + _CRLF)
        else:
            text = _format_double(value)
            append(b"$%d\r\n%b\r\n" % (len(text), text))
    elif isinstance(value, (KVNetError, ErrorReply)):
        append(encode_error(value))
    elif isinstance(value, int):  # int subclasses (IntEnum ...)
        append(b":%d\r\n" % int(value))
    else:
        raise TypeError(f"no RESP encoding for {t.__name__}")


def _format_double(x: float) -> bytes:
    if math.isnan(x):
        return b"nan"
    if math.isinf(x):
        return b"inf" if x > 0 else b"-inf"
    return repr(x).encode() if x != int(x) or abs(x) >= 1e17 else b"%d" % int(x)
