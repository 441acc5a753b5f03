"""RESP request parser: feed(bytes) -> commands, no sockets (docs/design.md, habit 1; docs/resp.md).

hiredis builds the argument lists; a header-only scan in front of it finds where each command
ends, so limits are enforced as soon as a header names a size (as Redis does) rather than after
the bytes arrived, and inline commands (`PING` typed into telnet) are split here.
"""
import hiredis

from kvcore._native import select
from kvnet.errors import ProtocolError

# Complete well-formed multibulk commands are taken in C; the Python scan below handles the
# rest (inline commands, incomplete ones, errors) with the same results (fastparse.pyx).
_take_commands = select("kvnet.resp.fastparse", "kvnet.resp.fastparse_py").take_commands

__all__ = ["RequestParser", "split_inline", "MAX_BULK", "MAX_ARGS", "MAX_INLINE", "MAX_COMMAND",
           "PREAUTH_LIMITS"]

MAX_BULK = 512 * 1024 * 1024      # proto-max-bulk-len
MAX_ARGS = 1024 * 1024            # Redis' multibulk length limit
MAX_INLINE = 64 * 1024            # PROTO_INLINE_MAX_SIZE: inline lines and header lines
MAX_COMMAND = 1024 * 1024 * 1024  # client-query-buffer-limit: bytes of one command
# Before AUTH, as Redis 6.2 and later: 10 arguments of 16 KiB at most (CVE-2021-32675).
PREAUTH_LIMITS = {"max_bulk": 16 * 1024, "max_args": 10, "max_inline": MAX_INLINE,
                  "max_command": 10 * (16 * 1024 + 32) + 32}

_STAR = 42    # b"*"
_DOLLAR = 36  # b"$"


class RequestParser:
    """Incremental parser of client requests (RESP multibulk or inline).

    `feed(data)` returns the commands completed so far, each a list of bytes (possibly empty
    commands are dropped, as Redis does). On malformed or oversized input it raises
    ProtocolError with `.commands` set to the commands completed before the bad bytes; the
    framing is lost then, and the parser refuses further input.

    With `preauth` set (a connection not yet authenticated), feed() returns at most one
    command and keeps the rest: the server runs it (an AUTH may raise the limits) before
    `feed(b"")` parses the next; a limit then fails with Redis' "unauthenticated" wording.
    """

    __slots__ = ("max_bulk", "max_args", "max_inline", "max_command", "preauth",
                 "_buf", "_pos", "_reader", "_need", "_scan", "_failed")

    def __init__(self, max_bulk=MAX_BULK, max_args=MAX_ARGS, max_inline=MAX_INLINE,
                 max_command=MAX_COMMAND):
        self.max_bulk = max_bulk
        self.max_args = max_args
        self.max_inline = max_inline
        self.max_command = max_command
        self.preauth = False
        self._buf = bytearray()
        self._reader = hiredis.Reader()
        # Scan state of the command at the start of the buffer, kept across feeds so a large
        # bulk arriving in pieces is not rescanned: (offset reached, args left) or None.
        self._scan = None
        self._need = 0     # buffer length needed before scanning again is worthwhile
        self._failed = None

    def buffered(self) -> int:
        """Bytes received but not yet part of a complete command."""
        return len(self._buf)

    def feed(self, data) -> list:
        if self._failed is not None:
            raise ProtocolError(self._failed)
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            return []
        commands = []
        pos = 0
        n = len(buf)
        single = self.preauth
        try:
            while pos < n:
                if single and commands:
                    break
                if buf[pos] == _STAR:
                    if self._scan is None and not single:
                        end = _take_commands(buf, pos, n, self.max_bulk, self.max_args,
                                             self.max_inline, self.max_command, commands)
                        if end != pos:
                            pos = end
                            continue
                    end = self._scan_multibulk(buf, pos, n)
                    if end < 0:
                        break
                    # One command the C scan did not take (an empty or odd one): hiredis
                    # builds it, then the C scan gets the next.
                    self._extract(buf, pos, end, 1, commands)
                    pos = end
                else:
                    end = buf.find(b"\n", pos)
                    if end < 0:
                        if n - pos > self.max_inline:
                            raise ProtocolError("Protocol error: too big inline request")
                        break
                    if end - pos > self.max_inline:
                        raise ProtocolError("Protocol error: too big inline request")
                    args = split_inline(bytes(buf[pos:end]))
                    pos = end + 1
                    if args:
                        if len(args) > self.max_args:
                            raise ProtocolError("Protocol error: invalid multibulk length")
                        commands.append(args)
        except ProtocolError as exc:
            self._failed = str(exc)
            del buf[:]
            exc.commands = commands
            raise
        if pos:
            del buf[:pos]
        return commands

    def _extract(self, buf, start, end, count, commands):
        reader = self._reader
        reader.feed(buf, start, end - start)
        gets = reader.gets
        try:
            for _ in range(count):
                cmd = gets()
                if cmd:  # `*0` and `*-1` are empty commands: ignored
                    commands.append(cmd)
        except hiredis.ProtocolError as exc:  # the scan validated the frame; this is a guard
            raise ProtocolError(f"Protocol error: {exc}") from None

    def _line_int(self, buf, pos, n, what):
        """(value, offset after CRLF) of the header line at buf[pos] ('*' or '$'), None if cut."""
        eol = buf.find(b"\r\n", pos, min(n, pos + self.max_inline + 2))
        if eol < 0:
            if n - pos > self.max_inline:
                raise ProtocolError(f"Protocol error: too big {what} count string")
            return None
        digits = buf[pos + 1:eol]
        if not digits.removeprefix(b"-").isdigit() or len(digits) > 20:
            raise ProtocolError("Protocol error: invalid %s length"
                                % ("multibulk" if what == "mbulk" else what))
        return int(digits), eol + 2

    def _scan_multibulk(self, buf, pos, n):
        """End offset of the complete command at buf[pos], or -1 if more bytes are needed."""
        state = self._scan
        if state is None:
            head = self._line_int(buf, pos, n, "mbulk")
            if head is None:
                return -1
            count, off = head
            if count > self.max_args:
                raise ProtocolError("Protocol error: unauthenticated multibulk length"
                                    if self.preauth else "Protocol error: invalid multibulk length")
            if count <= 0:
                return off
            left = count
        else:
            off, left = state[0] + pos, state[1]
        find = buf.find
        max_bulk = self.max_bulk
        limit = pos + self.max_command
        while left:
            if off >= n:
                return self._suspend(pos, off, left, off + 1)
            if buf[off] != _DOLLAR:
                raise ProtocolError(f"Protocol error: expected '$', got '{chr(buf[off])}'")
            # Inline fast path of _line_int: digits only (hiredis re-checks the frame).
            eol = find(b"\r\n", off, off + 24)
            if eol < 0:
                head = self._line_int(buf, off, n, "bulk")
                if head is None:
                    return self._suspend(pos, off, left, n + 1)
                size, body = head
            else:
                digits = buf[off + 1:eol]
                if not digits.isdigit():
                    raise ProtocolError("Protocol error: invalid bulk length")
                size, body = int(digits), eol + 2
            if size > max_bulk or size < 0:
                raise ProtocolError("Protocol error: unauthenticated bulk length"
                                    if self.preauth and size > max_bulk
                                    else "Protocol error: invalid bulk length")
            end = body + size + 2
            if end > limit:
                raise ProtocolError(f"Protocol error: command exceeds {self.max_command} bytes")
            if end > n:
                return self._suspend(pos, off, left, end)
            if buf[end - 2] != 13 or buf[end - 1] != 10:
                raise ProtocolError("Protocol error: bulk string not terminated by CRLF")
            off = end
            left -= 1
        self._scan = None
        self._need = 0
        return off

    def _suspend(self, pos, off, left, need):
        # Only the command at the head of the buffer can be incomplete; after the caller drops
        # the consumed prefix it starts at 0, so keep offsets relative to it.
        self._scan = (off - pos, left)
        self._need = need - pos
        return -1


def split_inline(line: bytes) -> list:
    """Arguments of an inline command, with Redis' quoting rules (sdssplitargs)."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if b'"' not in line and b"'" not in line:
        return line.split()
    args = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \t\r\n\v\f":
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        inq = insq = False
        while True:
            if inq:
                if i >= n:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                c = line[i]
                if c == 92 and i + 3 < n and line[i + 1] == 120 and _ishex(line[i + 2:i + 4]):
                    cur.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in b" \t\r\n\v\f":
                        raise ProtocolError("Protocol error: unbalanced quotes in request")
                    i += 1
                    break
                else:
                    cur.append(c)
            elif insq:
                if i >= n:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                c = line[i]
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in b" \t\r\n\v\f":
                        raise ProtocolError("Protocol error: unbalanced quotes in request")
                    i += 1
                    break
                else:
                    cur.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in b" \t\r\n\v\f":
                    break
                if c == 34:
                    inq = True
                elif c == 39:
                    insq = True
                else:
                    cur.append(c)
            i += 1
        args.append(bytes(cur))


_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def _ishex(two: bytes) -> bool:
    return len(two) == 2 and all(c in b"0123456789abcdefABCDEF" for c in two)
