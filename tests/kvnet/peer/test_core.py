"""PeerProtocolCore with bytes alone: two cores wired to each other's _write."""
import msgpack
import pytest

from kvnet.errors import PeerError, ProtocolError
from kvnet.peer.core import PeerProtocolCore, State
from kvnet.peer.errors import AuthenticationError, ConnectionLost, VersionMismatch
from kvnet.peer.framing import FrameReader, Kind, encode_frame

SECRET = b"cluster-secret-for-tests"


class Core(PeerProtocolCore):
    """Records what the core writes and every hook it calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.out = []
        self.events = []
        self.sent = FrameReader(max_frame_size=1 << 30)   # parses what it wrote (pump)

    def _write(self, data):
        self.out.append(bytes(data))

    def _on_ready(self):
        self.events.append(("ready",))

    def _on_request(self, type, req_id, payload):
        self.events.append(("request", type, req_id, payload))

    def _on_response(self, req_id, payload):
        self.events.append(("response", req_id, payload))

    def _on_error_response(self, req_id, code, message):
        self.events.append(("error", req_id, code, message))

    def _on_notify(self, type, payload):
        self.events.append(("notify", type, payload))

    def _on_close(self, exc):
        self.events.append(("close", exc))


def pump(a, b, limit=100):
    """Deliver written bytes both ways until both are quiet; returns the frames each sent."""
    sent = {id(a): [], id(b): []}
    for _ in range(limit):
        moved = False
        for src, dst in ((a, b), (b, a)):
            while src.out:
                data = src.out.pop(0)
                sent[id(src)] += src.sent.feed(data)
                dst.feed_data(data)
                moved = True
        if not moved:
            return sent[id(a)], sent[id(b)]
    raise AssertionError("cores never went quiet")


def pair(secret_a=SECRET, secret_b=SECRET, versions_a=(1, 1), versions_b=(1, 1), **kw):
    dialer = Core("node-a", secret_a, initiator=True, versions=versions_a, **kw)
    acceptor = Core("node-b", secret_b, initiator=False, versions=versions_b)
    dialer.start_handshake()
    acceptor.start_handshake()
    return dialer, acceptor


def connected():
    a, b = pair()
    pump(a, b)
    assert a.state is State.READY and b.state is State.READY
    a.events.clear()
    b.events.clear()
    return a, b


def closed_with(core):
    (event,) = [e for e in core.events if e[0] == "close"]
    return event[1]


def test_handshake_and_auth_success():
    a, b = pair()
    assert a.state is State.HELLO and b.state is State.HELLO
    sent_a, sent_b = pump(a, b)
    assert a.state is State.READY and b.state is State.READY
    assert (a.peer_id, b.peer_id) == ("node-b", "node-a")
    assert a.version == b.version == 1
    assert a.events == [("ready",)] and b.events == [("ready",)]
    assert [f.kind for f in sent_a] == [Kind.HELLO, Kind.AUTH]
    assert [f.kind for f in sent_b] == [Kind.HELLO, Kind.AUTH]
    for frame in sent_a + sent_b:  # the secret never travels
        assert SECRET not in msgpack.packb(frame.payload)
    # each side's proof differs (no reflection)
    assert sent_a[1].payload != sent_b[1].payload and len(sent_a[1].payload) == 32


def test_version_negotiation_picks_highest_common():
    # (b without frame MACs: wanting them, it would speak version 4 and up only;
    # tests/kvnet/peer/test_frame_mac.py)
    a = Core("node-a", SECRET, initiator=True, versions=(1, 3))
    b = Core("node-b", SECRET, initiator=False, versions=(2, 5), frame_mac=False)
    a.start_handshake()
    b.start_handshake()
    pump(a, b)
    assert a.state is State.READY and a.version == b.version == 3


def test_request_response_error_notify_ping():
    a, b = connected()
    r1 = a.send_request("get", [b"k1"])
    r2 = a.send_request("get", [b"k2"])
    assert r1 != r2 and a.pending == 2
    pump(a, b)
    assert b.events == [("request", "get", r1, [b"k1"]), ("request", "get", r2, [b"k2"])]
    b.send_response(r2, b"v2")  # out of order
    b.send_error(r1, "KeyError", "no k1")
    pump(a, b)
    assert a.events == [("response", r2, b"v2"), ("error", r1, "KeyError", "no k1")]
    assert a.pending == 0
    b.send_notify("gossip", {"hb": 1})
    p = a.send_ping()
    pump(a, b)
    assert a.events[-2:] == [("notify", "gossip", {"hb": 1}), ("response", p, None)]
    # the acceptor may send requests too, with its own ids
    r3 = b.send_request("put", 1)
    pump(a, b)
    assert ("request", "put", r3, 1) in a.events


def test_late_response_after_forget_is_dropped():
    a, b = connected()
    r = a.send_request("slow")
    a.forget(r)
    pump(a, b)
    b.send_response(r, "late")
    pump(a, b)
    assert a.events == [] and a.late_responses == 1 and a.state is State.READY


def test_wrong_secret_refused_and_acceptor_never_proves():
    a, b = pair(secret_b=b"another secret")
    sent_a, sent_b = pump(a, b)
    assert a.state is State.CLOSED and b.state is State.CLOSED
    assert isinstance(closed_with(b), AuthenticationError)
    assert isinstance(closed_with(a), AuthenticationError)  # told by b's ERROR frame
    assert "wrong cluster secret" in str(closed_with(b))
    assert Kind.AUTH not in [f.kind for f in sent_b]  # no proof given to an unproven dialer
    assert sent_b[-1].kind is Kind.ERROR and sent_b[-1].type == "auth"
    assert ("ready",) not in a.events + b.events


def test_wrong_secret_on_dialer_side_of_a_bad_acceptor():
    """An acceptor that sends a bad proof is refused by the dialer."""
    a, b = pair()
    # deliver HELLOs and the dialer's AUTH, then forge the acceptor's AUTH
    b.feed_data(a.out.pop(0))
    a.feed_data(b.out.pop(0))  # b's HELLO; a now sends AUTH
    b.feed_data(a.out.pop(0))  # b verifies, proves, READY
    assert b.state is State.READY
    b.out.clear()
    a.feed_data(encode_frame((Kind.AUTH, 0, None, b"\x00" * 32)))
    assert a.state is State.CLOSED and isinstance(closed_with(a), AuthenticationError)


@pytest.mark.parametrize("kind", [Kind.REQUEST, Kind.NOTIFY, Kind.RESPONSE, Kind.PING])
def test_frame_before_auth_refused(kind):
    a, b = pair()
    b.feed_data(a.out.pop(0))  # a's HELLO: b now waits for AUTH
    assert b.state is State.AUTH
    b.feed_data(encode_frame((kind, 1, "get" if kind is not Kind.RESPONSE else None, b"k")))
    assert b.state is State.CLOSED
    exc = closed_with(b)
    assert isinstance(exc, ProtocolError) and "before authentication" in str(exc)
    assert all(e[0] != "request" for e in b.events)
    last = FrameReader().feed(b.out[-1])[-1]
    assert last.kind is Kind.ERROR and last.type == "protocol"


def test_frame_before_hello_refused():
    a, b = pair()
    b.feed_data(encode_frame((Kind.REQUEST, 1, "get", b"k")))
    assert b.state is State.CLOSED and isinstance(closed_with(b), ProtocolError)


def test_auth_before_hello_refused():
    a, b = pair()
    b.feed_data(encode_frame((Kind.AUTH, 0, None, b"\x00" * 32)))
    assert b.state is State.CLOSED and isinstance(closed_with(b), ProtocolError)


def test_version_mismatch():
    a, b = pair(versions_a=(2, 2), versions_b=(1, 1))
    pump(a, b)
    assert a.state is State.CLOSED and b.state is State.CLOSED
    for core in (a, b):
        exc = closed_with(core)
        assert isinstance(exc, VersionMismatch)
        assert "incompatible peer protocol" in str(exc)
    assert "1..1" in str(closed_with(a)) and "2..2" in str(closed_with(a))


def test_expected_peer_mismatch():
    a, b = pair(expected_peer="node-z")
    pump(a, b)
    assert a.state is State.CLOSED
    assert "expected node 'node-z'" in str(closed_with(a))


def test_same_node_id_refused():
    a = Core("n", SECRET, initiator=True)
    b = Core("n", SECRET, initiator=False)
    a.start_handshake()
    b.start_handshake()
    pump(a, b)
    assert a.state is State.CLOSED and "our own node id" in str(closed_with(a))


def test_replayed_nonce_refused():
    a, b = pair()
    hello = FrameReader().feed(b.out[0])[0]
    forged = dict(hello.payload, nonce=a._nonce, node="node-x")
    a.feed_data(encode_frame((Kind.HELLO, 0, None, forged)))
    assert a.state is State.CLOSED and isinstance(closed_with(a), AuthenticationError)


@pytest.mark.parametrize(
    "payload",
    [
        "hi",
        {"versions": [1], "node": "x", "nonce": b"\x01" * 32},
        {"versions": [1, 1], "node": "", "nonce": b"\x01" * 32},
        {"versions": [1, 1], "node": "x", "nonce": b"\x01" * 3},
        {"versions": [2, 1], "node": "x", "nonce": b"\x01" * 32},
    ],
)
def test_malformed_hello(payload):
    a, b = pair()
    b.feed_data(encode_frame((Kind.HELLO, 0, None, payload)))
    assert b.state is State.CLOSED and isinstance(closed_with(b), ProtocolError)


def test_garbage_and_oversize_close():
    a, b = connected()
    b.feed_data(b"\x00\x00\x00\x01\xc1")
    assert b.state is State.CLOSED and isinstance(closed_with(b), ProtocolError)
    a, b = connected()
    b.feed_data(b"\xff\xff\xff\xff")
    assert b.state is State.CLOSED and "exceeds" in str(closed_with(b))
    pump(a, b)  # a learns why
    assert a.state is State.CLOSED and "exceeds" in str(closed_with(a))


def test_handshake_frames_after_ready_refused():
    a, b = connected()
    b.feed_data(encode_frame((Kind.HELLO, 0, None, {})))
    assert b.state is State.CLOSED and "after authentication" in str(closed_with(b))


def test_send_before_ready_and_after_close():
    a, b = pair()
    with pytest.raises(PeerError, match="not ready"):
        a.send_request("get")
    a.close()
    with pytest.raises(ConnectionLost):
        a.send_request("get")
    a.feed_data(b"\xc1" * 10)  # ignored once closed
    assert [e[0] for e in a.events] == ["close"]


def test_connection_closed_once():
    a, b = connected()
    a.send_request("get")
    a.connection_closed(OSError("reset"))
    a.connection_closed(None)
    a.close()
    assert [e[0] for e in a.events] == ["close"]
    assert isinstance(closed_with(a), ConnectionLost) and "reset" in str(closed_with(a))
    assert a.pending == 0


def test_request_ids_wrap_and_skip_pending():
    a, b = connected()
    a._next_id = 2**32 - 2
    ids = [a.send_request("t") for _ in range(3)]
    assert ids == [2**32 - 1, 1, 2]
    a._next_id = 0
    assert a.send_request("t") == 3  # 1 and 2 still pending


def test_bad_arguments():
    with pytest.raises(ValueError):
        Core("", SECRET, initiator=True)
    with pytest.raises(ValueError):
        Core("n", b"", initiator=True)
    assert Core("n", "str secret", initiator=True)._secret == b"str secret"


# ---- chunked messages (protocol version 3) ------------------------------------------------------

def small_frames(versions_a=(1, 3), versions_b=(1, 3), frame=256, message=100_000):
    a = Core("node-a", SECRET, initiator=True, versions=versions_a, max_frame_size=frame,
             max_message_size=message)
    b = Core("node-b", SECRET, initiator=False, versions=versions_b, max_frame_size=frame,
             max_message_size=message)
    a.start_handshake()
    b.start_handshake()
    pump(a, b)
    assert a.state is State.READY and b.state is State.READY
    a.events.clear()
    b.events.clear()
    return a, b


def test_messages_above_the_frame_limit_travel_in_chunks_both_ways():
    a, b = small_frames()
    assert a.version == 3
    big = bytes(range(256)) * 40                      # 10 KiB through 256-byte frames
    r = a.send_request("put", {"c": big})
    small = a.send_request("get", b"k")               # after it, whole
    sent_a, _ = pump(a, b)
    assert [f.kind for f in sent_a].count(Kind.CHUNK) > 40
    assert b.events == [("request", "put", r, {"c": big}), ("request", "get", small, b"k")]
    b.send_response(r, [big, big])
    b.send_notify("note", big)
    pump(a, b)
    assert a.events == [("response", r, [big, big]), ("notify", "note", big)]
    assert a.state is State.READY and b.state is State.READY


def test_a_message_above_the_message_limit_fails_on_its_sender():
    a, b = small_frames(message=5000)
    with pytest.raises(ProtocolError, match="message of .* exceeds the limit of 5000"):
        a.send_request("put", b"x" * 6000)
    assert a.state is State.READY


def test_a_peer_of_version_2_gets_no_chunks():
    a, b = small_frames(versions_b=(1, 2))
    assert a.version == 2
    with pytest.raises(ProtocolError, match="frame of .* exceeds the limit of 256"):
        a.send_request("put", b"x" * 1000)


def test_a_chunk_on_a_version_2_connection_closes_it():
    a, b = small_frames(versions_b=(1, 2))
    b.feed_data(encode_frame((Kind.CHUNK, 0, None, [10, b"abc"])))
    assert b.state is State.CLOSED
    assert "CHUNK frame on a connection of protocol version 2" in str(closed_with(b))


def test_a_chunked_message_above_the_receivers_limit_closes_the_connection():
    a, b = small_frames(message=100_000)
    b.max_message_size = 2000           # (as a node configured with a smaller limit)
    a.send_request("put", b"x" * 5000)
    pump(a, b)
    assert b.state is State.CLOSED
    assert "exceeds the limit of 2000" in str(closed_with(b))
    assert not [e for e in b.events if e[0] == "request"]


def test_a_chunk_before_authentication_is_refused():
    a, b = pair()
    b.feed_data(a.out.pop(0))
    b.feed_data(encode_frame((Kind.CHUNK, 0, None, [10, b"abc"])))
    assert b.state is State.CLOSED and "before authentication" in str(closed_with(b))


def test_a_listener_takes_only_small_frames_before_the_dialer_authenticated():
    """A stranger dialing the peer port cannot announce a big frame (docs/security.md): the
    listening end refuses a header above HANDSHAKE_MAX_FRAME until READY, then takes frames
    up to max_frame_size as before."""
    from kvnet.peer.core import HANDSHAKE_MAX_FRAME
    big = HANDSHAKE_MAX_FRAME + 1
    b = Core("node-b", SECRET, initiator=False)
    b.start_handshake()
    b.feed_data(big.to_bytes(4, "big"))
    assert b.state is State.CLOSED and "exceeds the limit of 16384" in str(closed_with(b))
    a, b = connected()                  # after the handshake: big frames again
    payload = b"x" * (2 * HANDSHAKE_MAX_FRAME)
    req = a.send_request("put", payload)
    pump(a, b)
    assert b.events == [("request", "put", req, payload)]
    # the dialer reads the listener's frames at full size from the start
    d = Core("node-a", SECRET, initiator=True)
    assert d._reader.max_frame_size == d.max_frame_size
