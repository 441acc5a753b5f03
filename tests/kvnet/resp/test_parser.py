"""RequestParser and the reply encoder, with bytes alone (docs/design.md, habit 1)."""
import re

import hiredis
import pytest
from hypothesis import given, strategies as st

from kvnet.errors import ProtocolError
from kvnet.resp.parser import RequestParser, split_inline
from kvnet.resp.replies import OK, ErrorReply, Simple, Verbatim, encode, encode_error
from kvnet.errors import NoAuth


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%b\r\n" % (len(a), a)
    return out


PIPELINE = (resp(b"GET", b"foo") + b"PING\r\n" + b"*0\r\n" + b'set a "b c\\x41" \'d\'\r\n'
            + resp(b"SET", b"k", b"\r\n\x00" * 5) + b"\r\n" + resp(b"ECHO", b""))
EXPECTED = [[b"GET", b"foo"], [b"PING"], [b"set", b"a", b"b cA", b"d"],
            [b"SET", b"k", b"\r\n\x00" * 5], [b"ECHO", b""]]


def test_whole_pipeline():
    p = RequestParser()
    assert p.feed(PIPELINE) == EXPECTED
    assert p.buffered() == 0


@pytest.mark.parametrize("cut", range(len(PIPELINE) + 1))
def test_split_at_every_byte(cut):
    p = RequestParser()
    assert p.feed(PIPELINE[:cut]) + p.feed(PIPELINE[cut:]) == EXPECTED


def test_one_byte_at_a_time():
    p = RequestParser()
    out = []
    for b in PIPELINE:
        out += p.feed(bytes([b]))
    assert out == EXPECTED and p.buffered() == 0


@given(st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=5), max_size=8),
       st.lists(st.integers(min_value=1, max_value=60), max_size=20))
def test_random_commands_random_chunks(commands, sizes):
    data = b"".join(resp(*c) for c in commands)
    p = RequestParser()
    out, pos = [], 0
    for n in sizes:
        out += p.feed(data[pos:pos + n])
        pos += n
    out += p.feed(data[pos:])
    assert out == commands


@pytest.mark.parametrize("data, message", [
    (b"*1\r\n:5\r\n", "expected '$', got ':'"),
    (b"*x\r\n", "invalid multibulk length"),
    (b"*1\r\n$-1\r\n", "invalid bulk length"),
    (b"*1\r\n$3\r\nabcXY", "not terminated by CRLF"),
    (b"*2000000\r\n", "invalid multibulk length"),
    (b'set a "b\r\n', "unbalanced quotes"),
])
def test_bad_protocol(data, message):
    p = RequestParser()
    with pytest.raises(ProtocolError, match=re.escape(message)) as info:
        p.feed(resp(b"PING") + data)
    assert info.value.commands == [[b"PING"]]
    assert info.value.resp().startswith("ERR Protocol error")
    with pytest.raises(ProtocolError):  # framing is lost: nothing more is accepted
        p.feed(resp(b"PING"))


def test_limits_refuse_headers_before_the_bytes_arrive():
    p = RequestParser(max_bulk=1000, max_args=3)
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        p.feed(b"*1\r\n$1001\r\n")
    p = RequestParser(max_args=3)
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        p.feed(b"*4\r\n")
    assert RequestParser(max_bulk=1000, max_args=3).feed(resp(b"a" * 1000, b"b", b"c")) \
        == [[b"a" * 1000, b"b", b"c"]]


def test_default_limit_is_512_mib():
    p = RequestParser()
    assert p.feed(b"*1\r\n$536870912\r\n") == []  # accepted header, waits for the body
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        RequestParser().feed(b"*1\r\n$536870913\r\n")


def test_command_size_and_inline_limits():
    p = RequestParser(max_command=100)
    with pytest.raises(ProtocolError, match="exceeds 100 bytes"):
        p.feed(b"*2\r\n$60\r\n" + b"x" * 60 + b"\r\n$60\r\n")
    p = RequestParser(max_inline=16)
    with pytest.raises(ProtocolError, match="too big inline"):
        p.feed(b"x" * 17)
    with pytest.raises(ProtocolError, match="too big mbulk count"):
        RequestParser(max_inline=16).feed(b"*" + b"1" * 20)


def test_big_bulk_in_pieces_is_not_rescanned():
    body = b"v" * 300_000
    data = resp(b"SET", b"k", body)
    p = RequestParser()
    out = []
    for i in range(0, len(data), 4096):
        out += p.feed(data[i:i + 4096])
    assert out == [[b"SET", b"k", body]]


def test_split_inline_quoting():
    assert split_inline(b"  a  b\t c\r") == [b"a", b"b", b"c"]
    assert split_inline(b'"a\\nb" \'it\\\'s\' ""') == [b"a\nb", b"it's", b""]
    with pytest.raises(ProtocolError, match="unbalanced"):
        split_inline(b'"abc"def')


# ---- replies ------------------------------------------------------------------------------------

def decode(data, proto):
    r = hiredis.Reader()
    r.feed(data)
    out = r.gets()
    assert r.gets() is False
    return out


@pytest.mark.parametrize("value, two, three", [
    (OK, b"+OK\r\n", b"+OK\r\n"),
    (Simple("a\r\nb"), b"+a  b\r\n", b"+a  b\r\n"),
    (b"ab", b"$2\r\nab\r\n", b"$2\r\nab\r\n"),
    ("é", b"$2\r\n\xc3\xa9\r\n", b"$2\r\n\xc3\xa9\r\n"),
    (None, b"$-1\r\n", b"_\r\n"),
    (7, b":7\r\n", b":7\r\n"),
    (True, b":1\r\n", b"#t\r\n"),
    (1.5, b"$3\r\n1.5\r\n", b",1.5\r\n"),
    (2.0, b"$1\r\n2\r\n", b",2\r\n"),
    ([b"a", None, 1], b"*3\r\n$1\r\na\r\n$-1\r\n:1\r\n", b"*3\r\n$1\r\na\r\n_\r\n:1\r\n"),
    ({"k": 1}, b"*2\r\n$1\r\nk\r\n:1\r\n", b"%1\r\n$1\r\nk\r\n:1\r\n"),
    ({Simple("x")}, b"*1\r\n+x\r\n", b"~1\r\n+x\r\n"),
    (Verbatim("hi"), b"$2\r\nhi\r\n", b"=6\r\ntxt:hi\r\n"),
    (ErrorReply("ERR bad"), b"-ERR bad\r\n", b"-ERR bad\r\n"),
    (NoAuth("Authentication required."), b"-NOAUTH Authentication required.\r\n",
     b"-NOAUTH Authentication required.\r\n"),
])
def test_encode(value, two, three):
    assert encode(value, 2) == two
    assert encode(value, 3) == three


def test_encoded_replies_parse():
    value = [b"x", [1, 2, [b"y"]], {"a": b"b"}, None, 3.25]
    assert decode(encode(value, 2), 2) == [b"x", [1, 2, [b"y"]], [b"a", b"b"], None, b"3.25"]
    assert decode(encode(value, 3), 3) == [b"x", [1, 2, [b"y"]], {b"a": b"b"}, None, 3.25]


def test_encode_error_and_unknown_type():
    assert encode_error("ERR x\ny") == b"-ERR x y\r\n"
    with pytest.raises(TypeError):
        encode(object())


@given(st.lists(st.sampled_from([b"*", b"$", b"\r\n", b"1", b"3", b"-", b"x", b'"', b" ", b":",
                                 b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"\n", b"0"]), max_size=40),
       st.integers(min_value=1, max_value=8))
def test_garbage_gives_commands_or_protocol_errors_only(pieces, chunk):
    data = b"".join(pieces)
    p = RequestParser(max_bulk=64, max_args=8, max_inline=32, max_command=256)
    try:
        for i in range(0, len(data), chunk):
            for cmd in p.feed(data[i:i + chunk]):
                assert cmd and all(type(a) is bytes for a in cmd)
    except ProtocolError as exc:
        assert exc.resp().startswith("ERR Protocol error")
    assert p.buffered() <= 256 + 64
