"""Fuzzing a running node with random and mutated RESP and peer frames (issue 5, section 5).

The node must stay up, answer other clients and keep every stored value; each example is
followed by those checks. The cluster runs in a background thread, the fuzzer speaks through
blocking sockets with short timeouts. asyncio debug mode stays off: it makes each three-node
check about eight times slower.
"""
import asyncio
import logging
import os
import socket
import struct
import threading
import time

import hiredis
import msgpack
import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kvcore import versions as V
from kvnet.config import load
from kvnet.errors import ProtocolError
from kvnet.node import Node
from kvnet.peer.errors import RemoteError
from kvnet.peer.framing import Kind
from kvnet.peer.protocol import connect
from kvnet.resp.parser import RequestParser
from kvnet.testing import free_ports

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class _Errors(logging.Handler):
    """Collects ERROR records of kvnet: the node logs one only for a bug."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)


class Target:
    """Three nodes in one loop on a background thread; node 0 is the one fuzzed."""

    def __init__(self, tmp_path):
        ports = free_ports(6)
        self.ports, self.peer_ports = ports[:3], ports[3:]
        members = [f"n{i}@{HOST}:{self.peer_ports[i]}" for i in range(3)]
        self.cfgs = [load(name=f"n{i}", port=self.ports[i], peer_port=self.peer_ports[i],
                          members=members, data_dir=str(tmp_path / f"n{i}"), fsync="never",
                          request_timeout_ms=3000, allow_flush=False)
                     for i in range(3)]
        self.loop_errors = []
        self.log = _Errors()
        self.nodes = []
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, ctx: self.loop_errors.append(ctx))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.peer = None        # an authenticated peer connection, made on first use

    def call(self, coro, timeout=15):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self):
        logging.getLogger("kvnet").addHandler(self.log)
        self.thread.start()

        async def start():
            for cfg in self.cfgs:
                self.nodes.append(await Node(cfg).start())
        self.call(start(), 30)

    def stop(self):
        async def stop():
            if self.peer is not None:
                self.peer.close()
            for node in self.nodes:
                await node.stop()
        try:
            if self.thread.is_alive():
                self.call(stop(), 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.loop.is_running():
                self.loop.close()
            logging.getLogger("kvnet").removeHandler(self.log)

    def open_connections(self):
        """(RESP client connections, inbound peer connections) of node 0."""
        async def count():
            node = self.nodes[0]
            return len(node.resp.connections), len(node.pool._server.connections)
        return self.call(count())

    def partitions(self):
        """Partition numbers each node has opened."""
        async def parts():
            return [list(n.replica.partitions) for n in self.nodes]
        return self.call(parts())


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    t = Target(tmp_path_factory.mktemp("fuzz"))
    t.start()
    good = redis.Redis(host=HOST, port=t.ports[0], socket_timeout=5, single_connection_client=True)
    try:
        # Random names: no fuzz input can name (and legitimately delete) a stored key.
        t.known = {os.urandom(8).hex().encode(): os.urandom(size)
                   for size in [0, 1, 7, 100, 1000, 65536, 2, 3, 5, 10, 20, 50]}
        assert good.mset(t.known)
        t.good, t.good_id = good, good.client_id()
        t.baseline = t.open_connections()
        yield t
    finally:
        good.close()
        t.stop()


def healthy(t):
    """Node 0 answers a new client, the long-lived client still works, nothing stored changed."""
    assert t.thread.is_alive()
    with socket.create_connection((HOST, t.ports[0]), timeout=5) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert s.recv(64) == b"+PONG\r\n"
    assert t.good.ping()
    assert t.good.client_id() == t.good_id     # the same connection: redis-py did not redial
    keys = list(t.known)
    assert t.good.mget(keys) == [t.known[k] for k in keys]
    assert not t.loop_errors, t.loop_errors
    assert not t.log.records, [r.getMessage() for r in t.log.records]


def settle(t):
    """Every connection the fuzzer opened is gone again (nothing leaks on the node)."""
    deadline = time.monotonic() + 20          # generous: CI machines may be loaded
    while t.open_connections() != t.baseline:
        assert time.monotonic() < deadline, (t.open_connections(), t.baseline)
        time.sleep(0.02)


def exchange(port, data, half_close=True, timeout=10.0):
    """Send data on a new connection (then half-close), read until the node closes; the bytes read."""
    out = bytearray()
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:          # the node may close first (framing lost): fine
            pass
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"node kept the connection open; read {bytes(out)!r}"
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                raise AssertionError(f"node kept the connection open; read {bytes(out)!r}") from None
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    return bytes(out)


# ---- RESP ------------------------------------------------------------------------------------

def resp_command(args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


fuzz_keys = st.binary(min_size=1, max_size=12).map(lambda b: b"fz:" + b)
small = st.binary(max_size=20)
resp_commands = st.one_of(
    st.tuples(st.just(b"PING")),
    st.tuples(st.just(b"ECHO"), small),
    st.tuples(st.just(b"GET"), fuzz_keys),
    st.tuples(st.just(b"SET"), fuzz_keys, small),
    st.tuples(st.just(b"SET"), fuzz_keys, small, st.sampled_from([b"EX", b"PX", b"NX", b"GET"]), small),
    st.tuples(st.just(b"MGET"), fuzz_keys, fuzz_keys),
    st.tuples(st.just(b"MSET"), fuzz_keys, small, fuzz_keys),
    st.tuples(st.just(b"DEL"), fuzz_keys),
    st.tuples(st.just(b"EXISTS"), fuzz_keys),
    st.tuples(st.just(b"KV.GET"), fuzz_keys, st.just(b"R"), st.sampled_from([b"0", b"1", b"9", b"all", b"x"])),
    st.tuples(st.just(b"KV.PUT"), fuzz_keys, small, st.just(b"CONTEXT"), small),
    st.tuples(st.just(b"KV.DEL"), fuzz_keys, st.just(b"W"), st.sampled_from([b"-1", b"one", b"4"])),
    st.tuples(st.just(b"SCAN"), st.sampled_from([b"0", b"18446744073709551615", b"-1", b"99999999999999999999"]),
              st.just(b"COUNT"), st.sampled_from([b"0", b"1", b"100000000", b"-5"])),
    st.tuples(st.just(b"SCAN"), st.just(b"0"), st.just(b"MATCH"), st.binary(max_size=12)),
    st.tuples(st.just(b"HELLO"), st.sampled_from([b"2", b"3", b"4", b"x"])),
    st.tuples(st.just(b"CLIENT"), st.sampled_from([b"SETNAME", b"LIST", b"KILL", b"ID"]), small),
    st.tuples(st.just(b"COMMAND"), st.sampled_from([b"DOCS", b"INFO", b"COUNT"]), small),
    st.tuples(st.just(b"CONFIG"), st.sampled_from([b"GET", b"SET"]), small, small),
    st.tuples(st.sampled_from([b"INFO", b"DBSIZE", b"TYPE", b"TTL", b"SELECT", b"KV.RING",
                               b"KV.PREFLIST", b"KV.STATUS", b"FLUSHDB", b"AUTH", b"QUIT"]), small),
)
huge = st.sampled_from([b"-1", b"-2", b"0", b"536870912", b"536870913", b"1048577", b"2147483648",
                        b"9223372036854775807", b"18446744073709551616", b"99999999999999999999999",
                        b"1e3", b"+5", b" 5", b"", b"0x10"])


@st.composite
def mutated_resp(draw):
    """Valid commands, then a few edits: bytes flipped, inserted, deleted, headers lied about."""
    data = bytearray(b"".join(resp_command(c) for c in draw(st.lists(resp_commands, min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "header", "truncate", "prefix"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"\r\n", b"*", b"$"]))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 6))]
        elif op == "header":
            # Replace the number of one `*N` or `$N` header.
            heads = [i for i, c in enumerate(data) if c in b"*$"]
            if heads:
                i = draw(st.sampled_from(heads)) + 1
                j = data.find(b"\r\n", i)
                if j > 0:
                    data[i:j] = draw(huge)
        elif op == "truncate":
            del data[pos:]
        else:
            data[0:0] = draw(st.sampled_from([
                b"*1\r\n" * 64,                                   # deep nesting
                b"*1048577\r\n", b"*1048576\r\n$1\r\nx\r\n",      # too many / many args
                b"%1\r\n", b"~1\r\n", b">1\r\n", b"_\r\n", b"#t\r\n", b":1\r\n", b"+OK\r\n",
                b"\"unbalanced 'quote\r\n", b"ECHO \"\\x4g\"\r\n", b"\r\n\r\n", b"\x00" * 10 + b"\n",
                b"SET \"a\"b c\r\n", b"x" * 70000,               # quotes, oversize inline
            ]))
    return bytes(data)


def resp_exchange(port, data):
    """Send data; the node's replies, checked: well-formed RESP, and a protocol error ends them.

    Input the parser refuses must make the node reply and close by itself; other input (maybe a
    command cut short) is followed by a half-close, which may drop replies still in flight.
    """
    try:
        RequestParser().feed(data)
        refused = False
    except ProtocolError as exc:
        # A QUIT before the bad bytes closes the connection first: no error reply then.
        refused = not any(type(c) is list and c and c[0].lower() == b"quit" for c in exc.commands)
    event("refused by the parser" if refused else "parsed (or cut short)")
    got = exchange(port, data, half_close=not refused)
    reader = hiredis.Reader(notEnoughData=Ellipsis)
    reader.feed(got + b"+end\r\n")   # a reply cut short would swallow this sentinel
    replies = []
    while (r := reader.gets()) is not Ellipsis:
        replies.append(r)
    assert replies.pop() == b"end", f"a reply is cut short: {got!r}"
    if refused:
        assert replies and isinstance(replies[-1], hiredis.ReplyError), got
        assert str(replies[-1]).startswith("ERR Protocol error"), got


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_to_resp(target, data):
    resp_exchange(target.ports[0], data)
    healthy(target)


@FUZZ
@given(data=mutated_resp())
def test_mutated_resp_commands(target, data):
    resp_exchange(target.ports[0], data)
    healthy(target)


def test_resp_fuzzing_left_nothing_behind(target):
    settle(target)
    healthy(target)


# ---- peer protocol, unauthenticated ------------------------------------------------------------

def frame(body, length=None):
    return struct.pack(">I", len(body) if length is None else length) + body


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=4) | st.integers(-2**63, 2**64 - 1), inner, max_size=4),
    max_leaves=10,
)
envelopes = st.tuples(
    st.sampled_from(list(Kind)) | st.integers(-3, 12),
    st.sampled_from([0, 1, 2**32 - 1, 2**32, -1]) | st.integers(0, 10),
    st.none() | st.sampled_from(["get", "put", "coord_put", "scan", "mscan", "count", "info", "flush"])
    | st.text(max_size=8) | st.integers(-2**63, 2**64 - 1),
    msgpack_values,
)


@st.composite
def hello_payloads(draw):
    """HELLO maps, valid or one field off; a valid one moves the node on to AUTH."""
    hello = {"versions": [1, 1], "node": "fuzzer", "nonce": draw(st.binary(min_size=32, max_size=32))}
    field = draw(st.sampled_from([None, "versions", "node", "nonce", "extra"]))
    if field == "extra":
        hello[draw(st.text(max_size=4))] = draw(msgpack_values)
    elif field is not None:
        odd = st.sampled_from([[0, 1], [2, 9], [1, 2**64 - 1], "n0", "n1", "", "x" * 256,
                               b"short", b"\x00" * 64, b"\x00" * 65])
        hello[field] = draw(msgpack_values | odd)
    return hello


@st.composite
def peer_streams(draw):
    kind = draw(st.sampled_from(["raw", "frames", "hello", "length"]))
    if kind == "raw":
        return draw(st.binary(max_size=300))
    if kind == "length":   # oversize, empty and lying length prefixes
        body = msgpack.packb(list(draw(envelopes)))
        length = draw(st.sampled_from([0, 1, 2**26, 2**26 + 1, 2**32 - 1, len(body) + 1, len(body) - 1]))
        return frame(body, max(length, 0)) + draw(st.binary(max_size=20))
    frames = []
    if kind == "hello":
        frames.append(frame(msgpack.packb([Kind.HELLO, 0, None, draw(hello_payloads())])))
        frames.append(frame(msgpack.packb([Kind.AUTH, 0, None, draw(st.binary(max_size=40) | msgpack_values)])))
    frames += [frame(msgpack.packb(list(e))) for e in draw(st.lists(envelopes, max_size=4))]
    return b"".join(frames)


def expect_peer_refusal(got):
    """The node sent its HELLO, then perhaps one ERROR frame, then closed."""
    assert len(got) >= 4, got
    size = struct.unpack(">I", got[:4])[0]
    hello = msgpack.unpackb(got[4:4 + size])
    assert hello[0] == Kind.HELLO and hello[2] is None, hello
    rest = got[4 + size:]
    if rest:
        size = struct.unpack(">I", rest[:4])[0]
        assert len(rest) == 4 + size, rest
        err = msgpack.unpackb(rest[4:])
        assert err[0] == Kind.ERROR and err[1] == 0, err


@FUZZ
@given(data=peer_streams())
def test_unauthenticated_peer_frames(target, data):
    expect_peer_refusal(exchange(target.peer_ports[0], data))
    healthy(target)


def test_peer_fuzzing_left_nothing_behind(target):
    settle(target)
    healthy(target)


# ---- peer protocol, authenticated: malformed requests ------------------------------------------

def _peer(t):
    if t.peer is None:
        cfg = t.cfgs[0]
        t.peer = t.call(connect(HOST, cfg.peer_address[1], "fuzzer", cfg.cluster_secret, timeout=5))
    return t.peer


# Any integer: a partition off the ring, or not the key's, must be refused (it once opened a
# partition outside the ring, and DBSIZE then undercounted on every node).
partitions = st.integers(-(2 ** 63), 2 ** 64 - 1) | st.integers(0, 255) | st.none() | st.floats() | st.text(max_size=4) \
    | st.binary(max_size=4) | st.lists(st.integers(0, 255), max_size=2)
keys_or_junk = fuzz_keys | st.sampled_from([b"", b"k" * 9000]) | msgpack_values
clock = V.encode(V.new(V.sibling(b"v", 1)))
context = V.encode_context(V.join(V.new(V.sibling(b"v", 1))))
blobs = (st.binary(max_size=40) | st.sampled_from([clock, clock[:-1], clock + b"\x00", context])
         | msgpack_values)
# Every handler's fields (kvnet/replicahandlers.py), each from a mix of good values and junk.
request_fields = {
    "p": partitions,
    "k": keys_or_junk,
    "c": blobs | st.sampled_from([0, 2**64 - 1, -1, 2**64 - 1]),
    "n": st.sampled_from([0, 1, -1, 2**63, 2**64 - 1]) | msgpack_values,
    "v": st.binary(max_size=20) | msgpack_values,
    "ts": st.integers(-2**63, 2**64 - 1) | msgpack_values,
    "ctx": st.none() | blobs,
    "ow": st.booleans() | msgpack_values,
    "w": st.sampled_from([0, 1, 2, 3, 4, -1, "all"]) | msgpack_values,
    "ps": st.lists(st.integers(0, 255), max_size=4) | st.lists(partitions, max_size=3)
    | st.just(list(range(256))) | st.just(list(range(257))) | msgpack_values,
    "m": st.none() | st.binary(max_size=12) | st.sampled_from([b"*", b"[", b"\\", b"x" * 70_000])
    | msgpack_values,
}


# The fields each handler reads; `flush` is left out: it ignores its payload and empties the store.
handler_fields = {"get": ["p", "k"], "put": ["p", "k", "c"], "scan": ["p", "c", "n"], "count": [],
                  "info": [], "coord_put": ["p", "k", "v", "ts", "ctx", "ow", "w"],
                  "mscan": ["ps", "c", "n", "m"]}


@st.composite
def peer_requests(draw):
    """A request whose fields are each good or junk, maybe one missing; or any payload at all."""
    type_ = draw(st.sampled_from([*handler_fields, "mput", "mget", "nope", "_handle", ""]))
    if type_ in ("mput", "mget"):     # the direct lane's batches: a list of put / get payloads
        if draw(st.booleans()):
            return type_, draw(msgpack_values)
        items = draw(st.lists(st.just(None), max_size=3))
        return type_, [draw(_request_payload(type_[1:])) for _ in items]
    return type_, draw(_request_payload(type_))


@st.composite
def _request_payload(draw, type_):
    fields = handler_fields.get(type_, ["p"])
    shape = draw(st.sampled_from(["fields", "fields", "fields", "one missing", "anything"]))
    if shape == "anything":
        return draw(msgpack_values)
    payload = draw(st.fixed_dictionaries({f: request_fields[f] for f in fields}))
    if shape == "one missing" and payload:
        del payload[draw(st.sampled_from(sorted(payload)))]
    return payload


@FUZZ
@given(req=peer_requests())
def test_malformed_peer_requests(target, req):
    """An authenticated peer's malformed request gets an error response (or a harmless answer)."""
    type_, payload = req
    peer = _peer(target)
    try:
        target.call(peer.request(type_, payload, timeout=5))
        event(f"{type_}: answered")
    except RemoteError as exc:
        event(f"{type_}: {exc.code}")
    assert peer.is_ready
    healthy(target)
    q = target.nodes[0].ring.q
    for opened in target.partitions():
        assert all(isinstance(p, int) and 0 <= p < q for p in opened), opened


def test_node_still_whole_after_fuzzing(target):
    if target.peer is not None:
        target.peer.close()
    settle(target)
    healthy(target)
    assert target.good.dbsize() >= len(target.known)
    for port in target.ports:
        c = redis.Redis(host=HOST, port=port, socket_timeout=5)
        try:
            for k, v in target.known.items():
                assert c.execute_command("KV.GET", k, "R", "ALL")[1] == [v]
        finally:
            c.close()
