"""Redis glob patterns (`*`, `?`, `[a-z]`, `[^x]`, `\\x`) on bytes, as stringmatchlen() does.

Used by SCAN MATCH (in backends, close to the data) and CONFIG GET; see docs/resp.md.
"""
import functools
import re

__all__ = ["compile_glob", "glob_match"]


@functools.lru_cache(maxsize=256)
def compile_glob(pattern: bytes):
    """A function key -> bool for a Redis glob pattern (bytes; str is encoded as UTF-8)."""
    if isinstance(pattern, str):
        pattern = pattern.encode()
    if pattern == b"*":
        return _always
    return re.compile(_translate(pattern), re.DOTALL).fullmatch


def glob_match(pattern, key) -> bool:
    return bool(compile_glob(pattern)(key))


def _always(key):
    return True


def _translate(p: bytes) -> bytes:
    out = []
    i, n = 0, len(p)
    while i < n:
        c = p[i:i + 1]
        i += 1
        if c == b"*":
            while i < n and p[i:i + 1] == b"*":
                i += 1
            out.append(b".*")
        elif c == b"?":
            out.append(b".")
        elif c == b"\\" and i < n:
            out.append(re.escape(p[i:i + 1]))
            i += 1
        elif c == b"[":
            negate = i < n and p[i:i + 1] == b"^"
            if negate:
                i += 1
            items = []
            while i < n and p[i:i + 1] != b"]":
                ch = p[i:i + 1]
                if ch == b"\\" and i + 1 < n:
                    items.append(re.escape(p[i + 1:i + 2]))
                    i += 2
                elif i + 2 < n and p[i + 1:i + 2] == b"-" and p[i + 2:i + 3] != b"]":
                    lo, hi = sorted((p[i:i + 1], p[i + 2:i + 3]))  # Redis accepts reversed ranges
                    items.append(re.escape(lo) + b"-" + re.escape(hi))
                    i += 3
                else:
                    items.append(re.escape(ch))
                    i += 1
            i += 1  # the closing "]" (an unclosed class runs to the end, as in Redis)
            if not items:
                out.append(b"[^\\s\\S]" if not negate else b"[\\s\\S]")
            else:
                out.append(b"[" + (b"^" if negate else b"") + b"".join(items) + b"]")
        else:
            out.append(re.escape(c))
    return b"".join(out)
