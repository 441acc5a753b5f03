"""The C request scan (kvnet/resp/fastparse.pyx) changes speed, never results: the parser with
it and the parser with its twin (the Python scan alone) give the same commands, the same
errors and keep the same bytes buffered, for valid, mutated and garbage input in any chunks."""
import pytest
from hypothesis import given, settings, strategies as st

from kvnet.errors import ProtocolError
from kvnet.resp import fastparse_py, parser
from kvnet.resp.parser import RequestParser

try:
    from kvnet.resp import fastparse
except ImportError:               # RINGKV_NO_EXTENSIONS=1 builds: nothing to compare
    fastparse = None

pytestmark = pytest.mark.skipif(fastparse is None, reason="kvnet.resp.fastparse not built")


def resp(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


LIMITS = dict(max_bulk=64, max_args=6, max_inline=32, max_command=200)


def run(take, data, cuts, limits):
    """(commands, error text or None, bytes left buffered) with `take` as the C scan."""
    saved = parser._take_commands
    parser._take_commands = take
    try:
        p = RequestParser(**limits)
        out = []
        pos = 0
        try:
            for c in cuts + [len(data)]:
                out += p.feed(data[pos:c])
                pos = max(pos, c)
        except ProtocolError as exc:
            return out + list(exc.commands), str(exc), None
        return out, None, p.buffered()
    finally:
        parser._take_commands = saved


def same(data, cuts, limits):
    cuts = sorted(c for c in cuts if 0 <= c <= len(data))
    a = run(fastparse.take_commands, data, cuts, limits)
    b = run(fastparse_py.take_commands, data, cuts, limits)
    assert a == b
    return a


args = st.lists(st.binary(max_size=80), min_size=0, max_size=8)


@settings(max_examples=300)
@given(st.lists(args, max_size=8), st.lists(st.integers(0, 2000), max_size=6),
       st.sampled_from([LIMITS, {}]))
def test_valid_pipelines(commands, cuts, limits):
    data = b"".join(resp(*c) for c in commands)
    same(data, cuts, limits)


@settings(max_examples=500)
@given(st.lists(args, min_size=1, max_size=5), st.lists(st.tuples(st.integers(0, 2000),
       st.sampled_from([b"*", b"$", b"\r", b"\n", b"0", b"9", b"-", b"x", b" ", b"00", b""])),
       min_size=1, max_size=4), st.lists(st.integers(0, 2000), max_size=4),
       st.sampled_from([LIMITS, {}]))
def test_mutated_pipelines(commands, edits, cuts, limits):
    data = bytearray(b"".join(resp(*c) for c in commands))
    for at, piece in edits:
        at = min(at, len(data))
        data[at:at + 1] = piece            # replace one byte (or delete it)
    same(bytes(data), cuts, limits)


@settings(max_examples=300)
@given(st.lists(st.sampled_from([b"*", b"$", b"\r\n", b"1", b"3", b"-", b"x", b"0", b"PING\r\n",
                                 b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"*0\r\n", b"*-1\r\n",
                                 b"$000000000000000000001\r\n", b"*00000000000000000002\r\n"]),
                max_size=30), st.lists(st.integers(0, 300), max_size=5),
       st.sampled_from([LIMITS, {}]))
def test_garbage(pieces, cuts, limits):
    same(b"".join(pieces), cuts, limits)


@pytest.mark.parametrize("data", [
    resp(b"SET", b"k", b"v" * 65),                      # bulk above max_bulk
    resp(*[b"a"] * 7),                                  # more args than max_args
    resp(b"SET", b"k" * 60, b"v" * 60, b"w" * 60, b"x" * 60),   # above max_command
    b"*000000000000000000000000000001\r\n$1\r\na\r\n",  # header above max_inline
    b"*1\r\n$0000000000000000000001\r\na\r\n",         # long (legal) digit runs: Python's
    b"*1\r\n$1\r\naXY",                                 # not CRLF-terminated
    b"*1\r\n$01\r\na\r\n",                               # leading zeros: hiredis refuses
    b"*01\r\n$1\r\na\r\n",
    b"*1\r\n$00\r\n\r\n",
])
def test_limits_and_odd_headers_agree(data):
    same(data, [], LIMITS)


def test_takes_canonical_commands_and_stops_at_the_rest():
    data = bytearray(resp(b"SET", b"k", b"v") + resp(b"GET", b"k") + b"PING\r\n" + resp(b"X"))
    out = []
    end = fastparse.take_commands(data, 0, len(data), 1 << 20, 100, 1 << 16, 1 << 30, out)
    assert out == [[b"SET", b"k", b"v"], [b"GET", b"k"]]
    assert data[end:].startswith(b"PING")
    cut = resp(b"SET", b"k", b"v")
    out = []
    assert fastparse.take_commands(bytearray(cut[:-1]), 0, len(cut) - 1, 1 << 20, 100,
                                   1 << 16, 1 << 30, out) == 0 and out == []
