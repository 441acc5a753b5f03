"""Batched requests: the items one loop iteration sends to a peer leave as one request, and
its answer is split back into one answer per item (the direct lane's mput/mget; docs/peer.md).

Both sides of the batch format live here: `Batcher` joins items, `Fanout` splits an answer,
`answer_batch` builds one. The connection (kvnet/peer/protocol.py) only sends and completes
the batch as one request.
"""
import logging

from kvnet.errors import PeerError
from kvnet.peer.errors import RemoteError

log = logging.getLogger("kvnet.peer")

BATCH_BYTES = 1 << 20  # a batch leaves early once its items hold this much
BATCH_ITEMS = 1024  # ... or this many items
ANSWER_BYTES = 16 << 20  # answer_batch defers the items whose answers would go above this
DEFERRED = "Deferred"  # the error code of a deferred item
DEFERRED_MESSAGE = "answer too big to join the batch's"
MAX_BATCH = 100_000  # answer_batch refuses a batch of more items

# Each batch type and the type its items are asked as alone (an item the peer deferred).
ALONE = {"mput": "put", "mget": "get"}


def deliver(cb, peer, exc, value):
    """Complete one request: ``cb(peer, exc, value)``; a callback's exception is the caller's
    bug, logged, so the other answers of the same read still count."""
    try:
        cb(peer, exc, value)
    except Exception:
        log.exception("peer %s: request callback failed", peer)


def item_error(exc):
    """A batch item's error as its answer carries it: [code, message]."""
    return [exc.__class__.__name__, str(exc) or exc.__class__.__name__]


def answer_batch(fn, items, max_items=MAX_BATCH, budget=ANSWER_BYTES):
    """A handler's answer to a batch: [values, {index: [code, message]}] of fn(item) for each
    item, an item's exception as its own error (the others still count). Once the bytes
    values so far pass `budget`, each further item with a bytes value is answered "Deferred"
    instead (the first is always answered): the asker sends it again alone, so one answer
    frame stays far below the frame limit."""
    if type(items) is not list or len(items) > max_items:
        raise PeerError(f"a batch must be a list of at most {max_items} items")
    values = []
    errors = {}
    size = 0
    for item in items:
        try:
            value = fn(item)
        except Exception as exc:
            errors[len(values)] = item_error(exc)
            values.append(None)
            continue
        if type(value) is bytes:
            size += len(value)
            if size > budget and values:
                errors[len(values)] = [DEFERRED, DEFERRED_MESSAGE]
                values.append(None)
                continue
        values.append(value)
    return [values, errors]


def malformed(payload, count):
    """Whether `payload` is not a batch answer of `count` items: [values, {index: error}]."""
    return type(payload) is not list or len(payload) != 2 or type(payload[0]) is not list \
        or len(payload[0]) != count or type(payload[1]) is not dict


def split_error(err):
    """An item's error as the answer carries it -> (code, message), whatever its shape."""
    if type(err) is list:
        return tuple((err + ["", ""])[:2])
    return "Error", repr(err)


class _Batch:
    """The items of one type joined in this loop iteration, and their callbacks."""

    __slots__ = ("items", "callbacks", "size", "timeout")

    def __init__(self, timeout):
        self.items = []
        self.callbacks = []
        self.size = 0
        self.timeout = timeout


class Batcher:
    """One connection's batches of this loop iteration, by type. `conn` sends each batch as
    one request with `conn.send_tracked(type, items, callback, timeout)` and flushes with
    `conn._flush()`; `loop` runs the end-of-iteration send."""

    __slots__ = ("conn", "loop", "batches")

    def __init__(self, conn, loop):
        self.conn = conn
        self.loop = loop
        self.batches = {}

    def add(self, rtype, item, callback, timeout):
        """Join `item` to this iteration's batch of `rtype` (a key of ALONE): the batch leaves
        at the next iteration, or at once when its items hold BATCH_BYTES or BATCH_ITEMS.
        An item's size is the len() of its "c" (a clock), when it is a dict that has one; an
        item of BATCH_BYTES or more goes alone, after the batch before it. ``callback(peer,
        exc, value)`` is called once, with the item's value or its error."""
        raw = item.get("c") if type(item) is dict else None
        size = 0 if raw is None else len(raw)
        batches = self.batches
        batch = batches.get(rtype)
        if batch is not None and batch.size + size >= BATCH_BYTES:
            del batches[rtype]              # the batch so far first, this item after it
            self.send(rtype, batch)
            batch = None
        if batch is None:
            if rtype not in ALONE:
                raise ValueError(f"{rtype!r} is not a batch type (one of {sorted(ALONE)})")
            if not batches:
                self.loop.call_soon(self.send_all)
            batch = batches[rtype] = _Batch(timeout)
        batch.items.append(item)
        batch.callbacks.append(callback)
        batch.size += size
        if batch.size >= BATCH_BYTES or len(batch.items) >= BATCH_ITEMS:
            del batches[rtype]
            self.send(rtype, batch)
        return True

    def send_all(self):
        batches, self.batches = self.batches, {}
        for rtype, batch in batches.items():
            self.send(rtype, batch)
        self.conn._flush()

    def send(self, rtype, batch):
        """Send a batch accepted earlier, even above the write high-water mark (a soft limit:
        its items were taken while writes flowed, as a request() would have waited)."""
        fanout = Fanout(self.conn, rtype, batch)
        try:
            self.conn.send_tracked(rtype, batch.items, fanout, batch.timeout)
        except Exception as exc:      # closed meanwhile, or a frame above the limit
            fanout(self.conn.peer_id, exc, None)


class Fanout:
    """The callback of one batch request: each item's answer (or error) to its own callback;
    an item the peer deferred is asked again alone, as ALONE[type]."""

    __slots__ = ("conn", "type", "items", "callbacks", "timeout")

    def __init__(self, conn, rtype, batch):
        self.conn = conn
        self.type = rtype
        self.items = batch.items
        self.callbacks = batch.callbacks
        self.timeout = batch.timeout

    def __call__(self, peer, exc, payload):
        callbacks = self.callbacks
        if exc is None and malformed(payload, len(callbacks)):
            exc = RemoteError(f"node {peer} answered batch {self.type!r} with a malformed "
                              "answer", code="ProtocolError", remote_message="malformed")
        if exc is not None:
            for cb in callbacks:
                deliver(cb, peer, exc, None)
            return
        values, errors = payload
        if not errors:              # the common case: every item answered (deliver, inlined)
            for cb, value in zip(callbacks, values):
                try:
                    cb(peer, None, value)
                except Exception:   # the caller's bug: the other answers still count
                    log.exception("peer %s: request callback failed", peer)
            return
        for i, cb in enumerate(callbacks):
            err = errors.get(i)
            if err is None:
                deliver(cb, peer, None, values[i])
                continue
            code, message = split_error(err)
            if code == DEFERRED:
                self.alone(i, cb)
                continue
            deliver(cb, peer, RemoteError(f"node {peer} failed request {self.type!r}: {code}: "
                                          f"{message}", code=code, remote_message=message), None)

    def alone(self, i, cb):
        conn = self.conn
        try:
            conn.send_tracked(ALONE[self.type], self.items[i], cb, self.timeout)
        except Exception as exc:
            deliver(cb, conn.peer_id, exc, None)
