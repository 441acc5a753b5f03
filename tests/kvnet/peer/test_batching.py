"""kvnet/peer/batching.py without a socket: how items join batches, how a batch's answer is
built and split back per item, and a batch's round trip through frames as bytes."""
import pytest

from kvnet.errors import PeerError
from kvnet.peer import batching as B
from kvnet.peer.errors import ConnectionLost, RemoteError
from kvnet.peer.framing import FrameReader, Kind, encode_frame


class Loop:
    def __init__(self):
        self.soon = []

    def call_soon(self, fn):
        self.soon.append(fn)

    def run(self):
        soon, self.soon = self.soon, []
        for fn in soon:
            fn()


class Conn:
    """What a Batcher and a Fanout use of a PeerConnection: send_tracked, _flush, peer_id."""

    peer_id = "b"

    def __init__(self):
        self.sent, self.flushes, self.fail = [], 0, None

    def send_tracked(self, rtype, payload, callback, timeout):
        if self.fail is not None:
            raise self.fail
        self.sent.append((rtype, payload, callback, timeout))

    def _flush(self):
        self.flushes += 1


def recorder():
    calls = {}

    def cb(i):
        def callback(peer, exc, value):
            assert i not in calls, f"item {i} completed twice"
            calls[i] = (peer, exc, value)
        return callback
    return calls, cb


def test_the_items_of_one_iteration_leave_as_one_request_per_type():
    loop, conn = Loop(), Conn()
    batcher = B.Batcher(conn, loop)
    calls, cb = recorder()
    for i in range(3):
        assert batcher.add("mput", {"n": i}, cb(i), 5)
    assert batcher.add("mget", {"n": 9}, cb(9), 2)
    assert conn.sent == [] and len(loop.soon) == 1          # one end-of-iteration send
    loop.run()
    assert [(t, p, to) for t, p, _, to in conn.sent] == [
        ("mput", [{"n": 0}, {"n": 1}, {"n": 2}], 5), ("mget", [{"n": 9}], 2)]
    assert conn.flushes == 1 and batcher.batches == {}
    assert batcher.add("mput", {"n": 3}, cb(3), 5) and len(loop.soon) == 1   # a new iteration


def test_a_full_batch_leaves_early_and_a_big_item_goes_alone_after_the_batch_before_it():
    loop, conn = Loop(), Conn()
    batcher = B.Batcher(conn, loop)
    _, cb = recorder()
    third = b"x" * (B.BATCH_BYTES // 3)
    for i in range(4):
        batcher.add("mput", {"c": third}, cb(i), 5)
    assert [len(p) for _, p, _, _ in conn.sent] == [3]      # the fourth would pass the limit
    conn.sent.clear()
    for i in range(B.BATCH_ITEMS):
        batcher.add("mget", {"k": i}, cb(i), 5)
    assert [len(p) for _, p, _, _ in conn.sent] == [B.BATCH_ITEMS]
    conn.sent.clear()
    batcher.add("mget", {"k": 0}, cb(0), 5)
    batcher.add("mget", {"c": b"x" * B.BATCH_BYTES}, cb(1), 5)
    batcher.add("mget", {"k": 2}, cb(2), 5)
    loop.run()
    # the batch before the big item, the big item at once; then this iteration's rest
    assert [(t, [len(i.get("c", b"")) for i in p]) for t, p, _, _ in conn.sent] == [
        ("mget", [0]), ("mget", [B.BATCH_BYTES]), ("mput", [B.BATCH_BYTES // 3]),
        ("mget", [0])]


def test_only_known_batch_types_are_joined():
    batcher = B.Batcher(Conn(), Loop())
    with pytest.raises(ValueError, match="'inv' is not a batch type"):
        batcher.add("inv", {}, lambda *a: None, 5)
    assert B.ALONE == {"mput": "put", "mget": "get"}


def test_a_batch_that_cannot_be_sent_fails_each_item_once():
    loop, conn = Loop(), Conn()
    batcher = B.Batcher(conn, loop)
    calls, cb = recorder()
    batcher.add("mput", {"n": 1}, cb(0), 5)
    batcher.add("mput", {"n": 2}, cb(1), 5)
    conn.fail = ConnectionLost("connection to b is closed")
    loop.run()
    assert [type(calls[i][1]) for i in (0, 1)] == [ConnectionLost, ConnectionLost]


def _fanout(conn, n, rtype="mget"):
    batch = B._Batch(5)
    calls, cb = recorder()
    for i in range(n):
        batch.items.append({"k": i})
        batch.callbacks.append(cb(i))
    return B.Fanout(conn, rtype, batch), calls


def test_an_answer_is_split_into_each_items_value_or_error():
    conn = Conn()
    fanout, calls = _fanout(conn, 4)
    fanout("b", None, [[b"a", None, None, b"d"],
                       {1: ["KeyTooLarge", "key of 9 bytes"], 2: [B.DEFERRED, B.DEFERRED_MESSAGE]}])
    assert calls[0] == ("b", None, b"a") and calls[3] == ("b", None, b"d")
    exc = calls[1][1]
    assert isinstance(exc, RemoteError) and exc.code == "KeyTooLarge"
    assert str(exc) == "node b failed request 'mget': KeyTooLarge: key of 9 bytes"
    assert 2 not in calls                              # deferred: asked again alone, as "get"
    ((rtype, item, cb, timeout),) = conn.sent
    assert (rtype, item, timeout) == ("get", {"k": 2}, 5)
    cb("b", None, b"c")
    assert calls[2] == ("b", None, b"c")


@pytest.mark.parametrize("answer", [None, [[1], {}], [[1, 2]], [[1, 2], []], ([1, 2], {})])
def test_a_malformed_answer_fails_every_item(answer):
    fanout, calls = _fanout(Conn(), 2)
    fanout("b", None, answer)
    assert [calls[i][1].code for i in (0, 1)] == ["ProtocolError", "ProtocolError"]


def test_a_failed_batch_fails_every_item_and_an_odd_error_is_still_an_error():
    fanout, calls = _fanout(Conn(), 2)
    fanout("b", ConnectionLost("gone"), None)
    assert [str(calls[i][1]) for i in (0, 1)] == ["gone", "gone"]
    fanout, calls = _fanout(Conn(), 2)
    fanout("b", None, [[1, None], {1: "not a list"}])
    assert calls[0] == ("b", None, 1) and calls[1][1].code == "Error"
    assert B.split_error(["Code"]) == ("Code", "") and B.split_error(7) == ("Error", "7")


def test_answer_batch_answers_each_item_and_refuses_what_is_not_a_batch():
    assert B.answer_batch(lambda x: x * 2, [1, 2]) == [[2, 4], {}]
    assert B.answer_batch(lambda x: 1 // x, [1, 0]) == [
        [1, None], {1: ["ZeroDivisionError", "integer division or modulo by zero"]}]
    with pytest.raises(PeerError):
        B.answer_batch(lambda x: x, {"a": 1})
    with pytest.raises(PeerError):
        B.answer_batch(lambda x: x, [1, 2, 3], max_items=2)
    assert B.answer_batch(lambda n: b"y" * n, [5, 5, 5], budget=6) == [
        [b"yyyyy", None, None], {1: [B.DEFERRED, "answer too big to join the batch's"],
                                 2: [B.DEFERRED, "answer too big to join the batch's"]}]


def test_a_batch_round_trip_as_bytes():
    """Items joined, sent as one REQUEST frame, answered by answer_batch in one RESPONSE
    frame, split back: each item's callback once, through bytes alone."""
    loop, conn = Loop(), Conn()
    batcher = B.Batcher(conn, loop)
    calls, cb = recorder()
    store = {b"k0": b"v0", b"k2": b"v2"}
    for i in range(3):
        batcher.add("mget", {"k": b"k%d" % i}, cb(i), 5)
    loop.run()
    ((rtype, items, fanout, _),) = conn.sent
    wire = encode_frame((Kind.REQUEST, 7, rtype, items))
    (request,) = FrameReader(1 << 20).feed(wire)

    def read(item):
        if item["k"] == b"k1":
            raise KeyError("k1")
        return store[item["k"]]
    reply = encode_frame((Kind.RESPONSE, request.req_id, None,
                          B.answer_batch(read, request.payload)))
    (response,) = FrameReader(1 << 20).feed(reply)
    fanout("b", None, response.payload)
    assert calls[0] == ("b", None, b"v0") and calls[2] == ("b", None, b"v2")
    assert calls[1][1].code == "KeyError" and calls[1][2] is None
