"""PeerConnection: the asyncio driver of PeerProtocolCore (asyncpg's protocol.pyx role).

It adds only futures per request id, timeouts, flow control and handler tasks;
``connect`` dials a peer and ``serve_peers`` accepts them. See docs/peer.md.
"""
import asyncio
import collections
import contextvars
import logging

from kvnet.errors import PeerError, ProtocolError
from kvnet.peer.core import CLOSED, READY, PeerProtocolCore
from kvnet.peer.errors import ConnectionLost, PeerTimeout, PeerUnavailable, RemoteError
from kvnet.peer.framing import DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE
from kvnet.stepping import LATER, finish

log = logging.getLogger("kvnet.peer")

DEFAULT_HANDSHAKE_TIMEOUT = 5.0
DEFAULT_MAX_INFLIGHT = 256  # inbound requests handled at once per connection
DEFAULT_MAX_CONNECTIONS = 512  # inbound peer connections per server
_CLOSE_GRACE = 1.0  # seconds a closing transport may spend flushing before it is aborted
_DEADLINE_GRAIN = 0.02  # callback requests time out up to this late (one timer for them all)
_NEVER = float("inf")
BATCH_BYTES = 1 << 20  # a batch_request batch leaves early once its items hold this much
BATCH_ITEMS = 1024  # ... or this many items
ANSWER_BYTES = 16 << 20  # answer_batch defers the items whose answers would go above this
DEFERRED = "Deferred"  # the error code of a deferred item
DEFERRED_MESSAGE = "answer too big to join the batch's"
MAX_BATCH = 100_000  # answer_batch refuses a batch of more items

_current_peer = contextvars.ContextVar("ringkv_current_peer", default=None)


def current_peer():
    """Inside a request handler: the node id of the peer that sent the request."""
    return _current_peer.get()


class PeerConnection(PeerProtocolCore):
    """One authenticated, multiplexed connection to a peer (an asyncio protocol by its methods:
    compiled, kvnet/compiled.py, it is an extension type, which cannot derive from a Python
    class such as asyncio.Protocol).

    ``handler`` is ``async handler(type, payload) -> payload`` for inbound
    requests and notifications (None: this end serves nothing).
    """

    def __init__(
        self,
        node_id,
        secret,
        handler=None,
        *,
        initiator,
        expected_peer=None,
        max_frame_size=DEFAULT_MAX_FRAME_SIZE,
        handshake_timeout=DEFAULT_HANDSHAKE_TIMEOUT,
        max_inflight=DEFAULT_MAX_INFLIGHT,
        max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
        loop=None,
    ):
        super().__init__(
            node_id, secret, initiator=initiator, expected_peer=expected_peer,
            max_frame_size=max_frame_size, max_message_size=max_message_size
        )
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self._loop = loop or asyncio.get_running_loop()
        self._handler = handler
        # handler.now(type, payload): the answer without a coroutine, or LATER (optional)
        self._handler_now = getattr(handler, "now", None)
        self._handshake_timeout = handshake_timeout
        self._max_inflight = max_inflight
        self._transport = None
        self._wbuf = None  # frames waiting for this iteration's flush
        self._inline = 0  # handlers answered inline since the last flush (_start)
        self.peername = None
        self._waiters = {}  # req_id -> (future, timer handle or None, request type)
        self._callbacks = {}  # req_id -> (callback, type, timeout, deadline): request_callback
        self._deadline_timer = None  # when the earliest of them (or later) is due
        self._deadline_at = _NEVER
        self._batches = {}  # type -> _Batch of this loop iteration (batch_request)
        self._tasks = set()  # running handler tasks
        self._backlog = collections.deque()  # handler coroutines waiting for a free slot
        self._ready_fut = self._loop.create_future()
        self._closed_fut = self._loop.create_future()
        self._timers = []  # handshake / abort timers
        self._write_paused = False
        self._drain_waiters = collections.deque()
        self._read_paused = False
        self._ready_callbacks = []
        self._close_callbacks = []
        self.refuse_reason = None  # set before connection_made to turn the peer away

    def __repr__(self):
        role = "dialed" if self.initiator else "accepted"
        return f"<PeerConnection {self.node_id}->{self.peer_id} {role} {self.state.value}>"

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport):
        self._transport = transport
        self.peername = transport.get_extra_info("peername")
        if self.refuse_reason is not None:
            self.close(ConnectionLost(self.refuse_reason))
            return
        self._timers.append(self._loop.call_later(self._handshake_timeout, self._handshake_expired))
        self.start_handshake()

    def data_received(self, data):
        self.feed_data(data)

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc):
        self.connection_closed(exc)
        for timer in self._timers:
            timer.cancel()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)

    def pause_writing(self):
        self._write_paused = True

    def resume_writing(self):
        self._write_paused = False
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # -- core hooks -----------------------------------------------------------

    def _write(self, data):
        # Frames written in one loop iteration leave in one send() (fewer syscalls under load).
        if self._wbuf is None:
            self._wbuf = [data]
            self._loop.call_soon(self._flush)
        else:
            self._wbuf.append(data)

    def _flush(self):
        self._inline = 0
        buf, self._wbuf = self._wbuf, None
        if buf and self._transport is not None and not self._transport.is_closing():
            self._transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def _write_parts(self, parts):
        # A chunked message (PeerProtocolCore._send): the frames queued before it leave first,
        # then its buffers one by one, each a view of the message's body; the transport keeps
        # what it cannot send at once (joining them would copy the message once more).
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        buf, self._wbuf = self._wbuf, None
        if buf:
            transport.write(buf[0] if len(buf) == 1 else b"".join(buf))
        for part in parts:
            transport.write(part)

    def _on_ready(self):
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if not self._ready_fut.done():
            self._ready_fut.set_result(self)
        for cb in self._ready_callbacks:
            cb(self)

    def _on_response(self, req_id, payload):
        entry = self._callbacks.pop(req_id, None)
        if entry is not None:
            self._call_back(entry[0], None, payload)
            return
        entry = self._waiters.pop(req_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(payload)

    def _on_error_response(self, req_id, code, message):
        callback = self._callbacks.pop(req_id, None)
        entry = self._waiters.pop(req_id, None) if callback is None else callback
        if entry is None:
            return
        type_ = entry[1] if callback is not None else entry[2]
        exc = RemoteError(
            f"node {self.peer_id} failed request {type_!r}: {code}: {message}",
            code=code,
            remote_message=message,
        )
        if callback is not None:
            self._call_back(callback[0], exc, None)
        elif not entry[0].done():
            entry[0].set_exception(exc)

    def _call_back(self, callback, exc, payload):
        _call(callback, self.peer_id, exc, payload)

    def _on_request(self, type, req_id, payload):
        if self._handler is None:
            self.send_error(req_id, "NoHandler", f"node {self.node_id} serves no peer requests")
            return
        now = self._handler_now
        if now is not None and not self._write_paused and not self._backlog \
                and self._inline < self._max_inflight:
            # the handler's synchronous side: no coroutine, no context switch (_start's bounds)
            try:
                result = now(type, payload)
            except Exception as exc:
                self._inline += 1
                self.send_error(req_id, exc.__class__.__name__, str(exc) or exc.__class__.__name__)
                return
            if result is not LATER:
                self._inline += 1
                try:
                    self.send_response(req_id, result)
                except (TypeError, ValueError, PeerError, ProtocolError) as exc:
                    # unencodable, or above the frame limit: this request fails, not the link
                    self.send_error(req_id, "EncodeError", f"response to {type!r} not sent: {exc}")
                return
        self._start(self._serve(type, req_id, payload))

    def _on_notify(self, type, payload):
        if self._handler is not None:
            self._start(self._serve(type, None, payload))

    def _start(self, coro):
        """Run a handler's first step here: most answer at once (a replica's read or write),
        and only one that suspends becomes a Task (kvnet/stepping.py)."""
        if self._backlog or len(self._tasks) >= self._max_inflight \
                or self._inline >= self._max_inflight:
            # In arrival order behind the ones waiting for a slot; and at most max_inflight
            # answers built inline per flush: the rest go through the slots, which pause
            # reading, so one read full of requests cannot buffer unbounded replies.
            self._spawn(coro)
            return
        self._inline += 1
        token = _current_peer.set(self.peer_id)
        try:
            try:
                yielded = coro.send(None)
            except StopIteration:
                return
            except (Exception, asyncio.CancelledError):
                # _serve answers handler errors itself: this is a bug (or a cancelled future
                # awaited); the other frames of this read must still be served
                log.exception("peer %s: request handling failed", self.peer_id)
                return
            if self.state is CLOSED:  # the handler closed this connection: nobody
                coro.close()                # is left to answer, and close() ran already
                return
            self._spawn(finish(coro, yielded))      # the Task copies this context
        finally:
            _current_peer.reset(token)

    def _on_close(self, exc):
        while self._backlog:  # never started: nobody could get their answers
            self._backlog.popleft().close()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        failure = exc if isinstance(exc, PeerError) else ConnectionLost(
            f"connection to {self.peer_id or 'peer'} closed" + (f": {exc}" if exc else "")
        )
        if not self._ready_fut.done():
            self._ready_fut.set_exception(failure)
            self._ready_fut.exception()  # retrieved: inbound connections have no awaiter
        waiters, self._waiters = self._waiters, {}
        for req_id, (fut, timer, type_) in waiters.items():
            if timer is not None:
                timer.cancel()
            if not fut.done():
                lost = ConnectionLost(
                    f"connection to node {self.peer_id} closed before it answered {type_!r} "
                    f"(request {req_id}): {failure}"
                )
                fut.set_exception(lost)
        callbacks, self._callbacks = self._callbacks, {}
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        for req_id, (callback, type_, _, _) in callbacks.items():
            self._call_back(callback, ConnectionLost(
                f"connection to node {self.peer_id} closed before it answered {type_!r} "
                f"(request {req_id}): {failure}"), None)
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionLost(f"connection to {self.peer_id or 'peer'} closed"))
        if self._transport is None:
            self._closed_fut.set_result(None)
        elif not self._transport.is_closing():
            self._flush()
            self._transport.close()  # flushes a last ERROR frame, then connection_lost
            self._timers.append(self._loop.call_later(_CLOSE_GRACE, self._transport.abort))
        for cb in self._close_callbacks:
            try:
                cb(self, exc)
            except Exception:
                log.exception("peer close callback failed")
        if exc is not None and self.initiator is False and not isinstance(exc, ConnectionLost):
            log.warning("peer connection from %s refused: %s", self.peername, exc)

    # -- public API -----------------------------------------------------------

    def add_ready_callback(self, cb):
        """``cb(conn)`` when the handshake succeeds."""
        self._ready_callbacks.append(cb)

    def add_close_callback(self, cb):
        """``cb(conn, exc)`` once, when the connection closes for any reason."""
        self._close_callbacks.append(cb)

    @property
    def is_ready(self):
        return self.state is READY

    @property
    def write_paused(self):
        """The transport's write buffer is above its high-water mark: requests wait for it."""
        return self._write_paused

    async def wait_ready(self):
        """Return self once authenticated; raise the PeerError that ended the handshake."""
        return await asyncio.shield(self._ready_fut)

    async def request(self, type, payload=None, *, timeout=None):
        """Send a request and return the peer's response payload.

        Raises RemoteError (the handler failed there), PeerTimeout (also a
        TimeoutError) or ConnectionLost; all are PeerError.
        """
        if self._write_paused:
            timeout = await self._drain(timeout, f"request {type!r}")
        req_id = self.send_request(type, payload)
        return await self._wait_answer(req_id, type, timeout)

    def request_future(self, type, payload=None, *, timeout=None):
        """`request` without a coroutine: send now and return the future of the answer (or
        None while the write buffer is full: use `request`, which waits for it to drain). The
        coordinator fans out to replicas through this, with callbacks instead of Tasks."""
        if self._write_paused:
            return None
        req_id = self.send_request(type, payload)
        fut = self._loop.create_future()
        timer = None
        if timeout is not None:
            timer = self._loop.call_later(timeout, self._expire, req_id, timeout)
        self._waiters[req_id] = (fut, timer, type)
        fut.add_done_callback(lambda f: self._settled(req_id, timer))
        return fut

    def request_callback(self, type, payload, callback, timeout):
        """`request_future` without a future or a timer of its own, for fan-outs on the hot
        path (the coordinator's direct lane): sends now and calls ``callback(peer_id, exc,
        payload)`` once, with exc None and the answer, or with the PeerError that ended it
        (a RemoteError, a PeerTimeout up to _DEADLINE_GRAIN late, ConnectionLost). Returns
        False, sending nothing, while the write buffer is full. timeout None: no deadline."""
        if self._write_paused:
            return False
        self._send_with_callback(type, payload, callback, timeout)
        return True

    def _send_with_callback(self, type_, payload, callback, timeout):
        req_id = self.send_request(type_, payload)
        deadline = _NEVER if timeout is None else self._loop.time() + timeout
        self._callbacks[req_id] = (callback, type_, timeout, deadline)
        if deadline < self._deadline_at:    # the first, or a shorter timeout than the rest
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._deadline_at = deadline
            self._deadline_timer = self._loop.call_at(deadline, self._expire_callbacks)

    def _expire_callbacks(self):
        """One timer for every callback request: fails the overdue ones among those still
        out (answered ones have left _callbacks, so this scans only what is in flight), then
        sleeps until the next deadline, at least _DEADLINE_GRAIN away."""
        self._deadline_timer = None
        self._deadline_at = _NEVER
        now = self._loop.time()
        overdue = [req_id for req_id, entry in self._callbacks.items() if entry[3] <= now]
        for req_id in overdue:
            if self.state is CLOSED:   # a callback closed it: _on_close called the rest
                return
            entry = self._callbacks.pop(req_id, None)
            if entry is not None:
                self.forget(req_id)
                self._call_back(entry[0], PeerTimeout(
                    f"node {self.peer_id} did not answer {entry[1]!r} within {entry[2]:g} s"), None)
        callbacks = self._callbacks
        if not callbacks or self.state is CLOSED:
            return
        soonest = min(entry[3] for entry in callbacks.values())
        if soonest == _NEVER:
            return
        at = max(soonest, now + _DEADLINE_GRAIN)
        if at < self._deadline_at:      # (a callback's new request may have set one already)
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._deadline_at = at
            self._deadline_timer = self._loop.call_at(at, self._expire_callbacks)

    def batch_request(self, rtype, item, callback, timeout):
        """Join `item` to this loop iteration's batch of `rtype` requests: the batch leaves as
        one request (rtype, [items]) at the next iteration, or at once when its items hold
        BATCH_BYTES or BATCH_ITEMS, and the peer's handler answers [values, {index: [code,
        message]}] (answer_batch). ``callback(peer_id, exc, value)`` is called once per item,
        as by request_callback (RemoteError for the item's own error; an item the peer
        deferred, its answer being too big to join the others, is asked again on its own
        as rtype without its first letter: "mget" -> "get"). For the direct lane's replica
        writes and reads: one frame each way per peer per iteration instead of one per key.
        Returns False, sending nothing, while the write buffer is full. An item's size is
        the len() of its "c" (a clock), when it is a dict that has one; an item of
        BATCH_BYTES or more goes alone."""
        if self._write_paused:
            return False
        if self.state is not READY:
            self._check_ready()               # raises
        raw = item.get("c") if type(item) is dict else None
        size = 0 if raw is None else len(raw)
        batch = self._batches.get(rtype)
        if batch is not None and batch.size + size >= BATCH_BYTES:
            del self._batches[rtype]          # the batch so far first, this item after it
            self._send_batch(rtype, batch)
            batch = None
        if batch is None:
            if not self._batches:
                self._loop.call_soon(self._send_batches)
            batch = self._batches[rtype] = _Batch(timeout)
        batch.items.append(item)
        batch.callbacks.append(callback)
        batch.size += size
        if batch.size >= BATCH_BYTES or len(batch.items) >= BATCH_ITEMS:
            del self._batches[rtype]
            self._send_batch(rtype, batch)
        return True

    def _send_batches(self):
        batches, self._batches = self._batches, {}
        for type_, batch in batches.items():
            self._send_batch(type_, batch)
        self._flush()

    def _send_batch(self, type_, batch):
        """Send a batch accepted earlier, even above the write high-water mark (a soft limit:
        its items were taken while writes flowed, as a request() would have waited)."""
        fanout = _Fanout(self, type_, batch)
        try:
            self._send_with_callback(type_, batch.items, fanout, batch.timeout)
        except Exception as exc:      # closed meanwhile, or a frame above the limit
            fanout(self.peer_id, exc, None)

    def _settled(self, req_id, timer):
        if timer is not None:
            timer.cancel()
        if self._waiters.pop(req_id, None) is not None:  # cancelled by the caller
            self.forget(req_id)

    async def ping(self, *, timeout=None):
        """Round-trip time in seconds of a PING answered by the peer's core."""
        if self._write_paused:
            timeout = await self._drain(timeout, "ping")
        start = self._loop.time()
        await self._wait_answer(self.send_ping(), "ping", timeout)
        return self._loop.time() - start

    async def notify(self, type, payload=None):
        """Send a one-way message (after waiting for the write buffer to drain)."""
        if self._write_paused:
            await self._drain(None, f"notification {type!r}")
        self.send_notify(type, payload)

    def close(self, exc=None):
        """Close now: running handlers are cancelled, waiting requests fail."""
        for task in list(self._tasks):
            task.cancel()
        if self.state is READY and exc is None:
            try:  # tell the peer it was deliberate: its waiters fail with ConnectionLost
                self.send_error(0, "closing", f"node {self.node_id} closed the connection")
            except Exception:
                pass
        super().close(exc)

    async def wait_closed(self):
        await asyncio.shield(self._closed_fut)

    # -- internals ------------------------------------------------------------

    async def _wait_answer(self, req_id, type_, timeout):
        fut = self._loop.create_future()
        timer = None
        if timeout is not None:
            timer = self._loop.call_later(timeout, self._expire, req_id, timeout)
        self._waiters[req_id] = (fut, timer, type_)
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            if self._waiters.pop(req_id, None) is not None:  # cancelled by the caller
                self.forget(req_id)

    def _expire(self, req_id, timeout):
        entry = self._waiters.pop(req_id, None)
        if entry is None:
            return
        self.forget(req_id)
        if not entry[0].done():
            entry[0].set_exception(
                PeerTimeout(f"node {self.peer_id} did not answer {entry[2]!r} within {timeout:g} s")
            )

    async def _drain(self, timeout, what):
        """Wait while the transport's write buffer is above its high-water mark.

        Returns the part of ``timeout`` left (None stays None).
        """
        start = self._loop.time()
        while self._write_paused:
            self._check_ready()
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            if timeout is None:
                await waiter
                continue
            left = timeout - (self._loop.time() - start)
            try:
                await asyncio.wait_for(waiter, max(left, 0))
            except TimeoutError:
                raise PeerTimeout(
                    f"{what} to node {self.peer_id}: write buffer still full after {timeout:g} s"
                ) from None
        if timeout is None:
            return None
        return max(timeout - (self._loop.time() - start), 0)

    def _spawn(self, coro):
        if len(self._tasks) >= self._max_inflight:
            # Frames already read in the same chunk wait here; reading is paused.
            self._backlog.append(coro)
            return
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        if len(self._tasks) >= self._max_inflight and not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()  # backpressure: the peer's writes now block

    def _task_done(self, task):
        self._tasks.discard(task)
        if self._backlog and self.state is not CLOSED:
            self._spawn(self._backlog.popleft())
        if self._read_paused and not self._backlog and len(self._tasks) <= self._max_inflight // 2:
            self._read_paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    async def _serve(self, type_, req_id, payload):
        _current_peer.set(self.peer_id)  # this task's own context copy
        try:
            result = await self._handler(type_, payload)
        except Exception as exc:
            if req_id is None:
                log.warning("peer %s: notification %r handler failed: %r", self.peer_id, type_, exc)
                return
            await self._reply(self.send_error, req_id, type(exc).__name__, str(exc) or type(exc).__name__)
            return
        if req_id is None:
            return
        try:
            await self._reply(self.send_response, req_id, result)
        except (TypeError, ValueError, PeerError, ProtocolError) as exc:  # unencodable or oversize
            await self._reply(self.send_error, req_id, "EncodeError", f"response to {type_!r} not sent: {exc}")

    async def _reply(self, send, *args):
        if self.state is not READY:
            return  # the connection went away: nobody to answer
        if self._write_paused:
            try:
                await self._drain(None, "response")
            except ConnectionLost:
                return
            if self.state is not READY:
                return
        send(*args)

    def _handshake_expired(self):
        if self.state is not READY and self.state is not CLOSED:
            self.close(
                PeerTimeout(
                    f"peer handshake with {self.peername} not done within {self._handshake_timeout:g} s"
                )
            )


def _opts(kwargs):
    allowed = {"max_frame_size", "max_message_size", "handshake_timeout", "max_inflight"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"unknown peer connection options: {sorted(unknown)}")
    return kwargs


async def connect(host, port, node_id, secret, handler=None, *, expected_peer=None, timeout=5.0, **opts):
    """Dial a peer and complete the handshake; returns a ready PeerConnection.

    Raises PeerUnavailable (cannot connect), PeerTimeout, AuthenticationError,
    VersionMismatch or another PeerError naming the cause.
    """
    loop = asyncio.get_running_loop()
    opts = _opts(opts)
    opts.setdefault("handshake_timeout", timeout)
    conn = PeerConnection(
        node_id, secret, handler, initiator=True, expected_peer=expected_peer, loop=loop, **opts
    )
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: conn, host, port)
            await conn.wait_ready()
    except TimeoutError as exc:
        conn.close()
        if isinstance(exc, PeerTimeout):
            raise
        raise PeerTimeout(f"connecting to peer at {host}:{port} took more than {timeout:g} s") from None
    except OSError as exc:
        conn.close()
        raise PeerUnavailable(f"cannot connect to peer at {host}:{port}: {exc.strerror or exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


class PeerServer:
    """The listening side: accepted connections and the asyncio server."""

    def __init__(self, server, connections):
        self._server = server
        self.connections = connections  # live inbound PeerConnections

    @property
    def sockets(self):
        return self._server.sockets

    @property
    def port(self):
        return self._server.sockets[0].getsockname()[1]

    def close(self):
        """Stop listening and close every inbound connection."""
        self._server.close()
        for conn in list(self.connections):
            conn.close()

    async def wait_closed(self):
        conns = list(self.connections)
        await asyncio.gather(*(c.wait_closed() for c in conns))
        await self._server.wait_closed()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()
        await self.wait_closed()


async def serve_peers(
    host, port, node_id, secret, handler, *, pool=None, max_connections=DEFAULT_MAX_CONNECTIONS, **opts
):
    """Accept peer connections on host:port (port 0: any free port, see ``.port``).

    Inbound connections serve ``handler``; with ``pool`` (a PeerPool) they are
    also offered to it, so this node's requests to that peer reuse them.
    """
    loop = asyncio.get_running_loop()
    opts = _opts(opts)
    conns = set()
    PeerConnection(node_id, secret, initiator=False, loop=loop)  # validate arguments now

    def factory():
        conn = PeerConnection(node_id, secret, handler, initiator=False, loop=loop, **opts)
        if len(conns) >= max_connections:
            conn.refuse_reason = f"too many peer connections (limit {max_connections})"
            log.warning("peer connection refused: %s", conn.refuse_reason)
            return conn
        conns.add(conn)
        conn.add_close_callback(lambda c, exc: conns.discard(c))
        if pool is not None:
            conn.add_ready_callback(pool.adopt)
        return conn

    server = await loop.create_server(factory, host, port)
    return PeerServer(server, conns)


def item_error(exc):
    """A batch item's error as its answer carries it: [code, message]."""
    return [exc.__class__.__name__, str(exc) or exc.__class__.__name__]


def answer_batch(fn, items, max_items=MAX_BATCH, budget=ANSWER_BYTES):
    """A handler's answer to a batch_request batch: [values, {index: [code, message]}] of
    fn(item) for each item, an item's exception as its own error (the others still count).
    Once the bytes values so far pass `budget`, each further item with a bytes value is
    answered "Deferred" instead (the first is always answered): the asker sends it again
    alone, so one answer frame stays far below the frame limit."""
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


class _Batch:
    __slots__ = ("items", "callbacks", "size", "timeout")

    def __init__(self, timeout):
        self.items = []
        self.callbacks = []
        self.size = 0
        self.timeout = timeout


class _Fanout:
    """The callback of one batch request: each item's answer (or error) to its own callback;
    an item the peer deferred is asked again alone."""

    __slots__ = ("conn", "type", "items", "callbacks", "timeout")

    def __init__(self, conn, type_, batch):
        self.conn = conn
        self.type = type_
        self.items = batch.items
        self.callbacks = batch.callbacks
        self.timeout = batch.timeout

    def __call__(self, peer, exc, payload):
        callbacks = self.callbacks
        if exc is None:
            if type(payload) is not list or len(payload) != 2 or type(payload[0]) is not list \
                    or len(payload[0]) != len(callbacks) or type(payload[1]) is not dict:
                exc = RemoteError(f"node {peer} answered batch {self.type!r} with a malformed "
                                  "answer", code="ProtocolError", remote_message="malformed")
        if exc is not None:
            for cb in callbacks:
                _call(cb, peer, exc, None)
            return
        values, errors = payload
        if not errors:              # the common case: every item answered (_call, inlined)
            for cb, value in zip(callbacks, values):
                try:
                    cb(peer, None, value)
                except Exception:   # the caller's bug: the other answers still count
                    log.exception("peer %s: request callback failed", peer)
            return
        for i, cb in enumerate(callbacks):
            err = errors.get(i)
            if err is None:
                _call(cb, peer, None, values[i])
                continue
            code, message = (err + ["", ""])[:2] if type(err) is list else ("Error", repr(err))
            if code == DEFERRED:
                self._alone(i, cb)
                continue
            _call(cb, peer, RemoteError(f"node {peer} failed request {self.type!r}: {code}: "
                                        f"{message}", code=code, remote_message=message), None)

    def _alone(self, i, cb):
        conn = self.conn
        try:
            conn._send_with_callback(self.type[1:], self.items[i], cb, self.timeout)
        except Exception as exc:
            _call(cb, conn.peer_id, exc, None)


def _call(cb, peer, exc, value):
    try:
        cb(peer, exc, value)
    except Exception:   # the caller's bug: the other answers of this read still count
        log.exception("peer %s: request callback failed", peer)
