"""PeerConnection: the asyncio driver of PeerProtocolCore (asyncpg's protocol.pyx role).

It adds transport callbacks, write coalescing, flow control and the completion of requests:
every request out is a slot (callback, type, timeout, deadline) that its answer, its deadline
(one timer per connection) or the connection's close completes once; futures are callbacks
too. Batching is kvnet/peer/batching.py, serving inbound requests kvnet/peer/serving.py;
``connect`` dials a peer. See docs/peer.md.
"""
import asyncio
import collections
import logging

from kvnet.errors import PeerError
from kvnet.peer import batching, serving
from kvnet.peer.batching import deliver
from kvnet.peer.core import CLOSED, READY, PeerProtocolCore
from kvnet.peer.errors import ConnectionLost, PeerTimeout, PeerUnavailable, RemoteError
from kvnet.peer.framing import DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE
from kvnet.peer.serving import DEFAULT_MAX_INFLIGHT

log = logging.getLogger("kvnet.peer")

DEFAULT_HANDSHAKE_TIMEOUT = 5.0
_CLOSE_GRACE = 1.0  # seconds a closing transport may spend flushing before it is aborted
_DEADLINE_GRAIN = 0.02  # requests time out up to this late (one timer for them all)
_NEVER = float("inf")


class _Settle:
    """The callback of a request a future waits for: settles the future once (a cancelled
    one is left as it is)."""

    __slots__ = ("fut",)

    def __init__(self, fut):
        self.fut = fut

    def __call__(self, peer, exc, payload):
        fut = self.fut
        if fut.done():
            return
        if exc is None:
            fut.set_result(payload)
        else:
            fut.set_exception(exc)


class PeerConnection(PeerProtocolCore):
    """One authenticated, multiplexed connection to a peer (an asyncio protocol by its methods:
    compiled, kvnet/compiled.py, it is an extension type, which cannot derive from a Python
    class such as asyncio.Protocol).

    ``handler`` is ``async handler(type, payload) -> payload`` for inbound
    requests and notifications (None: this end serves nothing), served by a
    serving.Inbound.
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
        frame_mac=True,
        loop=None,
    ):
        super().__init__(
            node_id, secret, initiator=initiator, expected_peer=expected_peer,
            max_frame_size=max_frame_size, max_message_size=max_message_size,
            frame_mac=frame_mac
        )
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self._loop = loop or asyncio.get_running_loop()
        self._inbound = None if handler is None else serving.Inbound(self, handler, max_inflight)
        self._batcher = batching.Batcher(self, self._loop)
        self._handshake_timeout = handshake_timeout
        self._transport = None
        self._wbuf = None  # frames waiting for this iteration's flush
        self.peername = None
        self._slots = {}  # req_id -> (callback, type, timeout, deadline): every request out
        self._deadline_timer = None  # when the earliest deadline (or later) is due
        self._deadline_at = _NEVER
        self._ready_fut = self._loop.create_future()
        self._closed_fut = self._loop.create_future()
        self._timers = []  # handshake / abort timers
        self._write_paused = False
        self._drain_waiters = collections.deque()
        self._ready_callbacks = []
        self._close_callbacks = []
        self.refuse_reason = None  # set before connection_made to turn the peer away
        self.received = 0  # data_received calls: PeerPool's idle sweep sees use by it

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
        self.received += 1
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
        if self._inbound is not None:
            self._inbound.inline = 0
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
        slot = self._slots.pop(req_id, None)
        if slot is not None:
            try:                            # (deliver, inlined: every answer comes here)
                slot[0](self.peer_id, None, payload)
            except Exception:
                log.exception("peer %s: request callback failed", self.peer_id)

    def _on_error_response(self, req_id, code, message):
        slot = self._slots.pop(req_id, None)
        if slot is not None:
            deliver(slot[0], self.peer_id, RemoteError(
                f"node {self.peer_id} failed request {slot[1]!r}: {code}: {message}",
                code=code, remote_message=message), None)

    def _on_request(self, type, req_id, payload):
        if self._inbound is None:
            self.send_error(req_id, "NoHandler", f"node {self.node_id} serves no peer requests")
            return
        self._inbound.request(type, req_id, payload, self._write_paused)

    def _on_notify(self, type, payload):
        if self._inbound is not None:
            self._inbound.notify(type, payload)

    def _on_close(self, exc):
        if self._inbound is not None:
            self._inbound.close()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        failure = exc if isinstance(exc, PeerError) else ConnectionLost(
            f"connection to {self.peer_id or 'peer'} closed" + (f": {exc}" if exc else "")
        )
        if not self._ready_fut.done():
            self._ready_fut.set_exception(failure)
            self._ready_fut.exception()  # retrieved: inbound connections have no awaiter
        self._fail_slots(failure)
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
        return await self._await_slot(self.send_request(type, payload), type, timeout)

    def request_future(self, type, payload=None, *, timeout=None):
        """`request` without a coroutine: send now and return the future of the answer (or
        None while the write buffer is full: use `request`, which waits for it to drain). The
        coordinator fans out to replicas through this. A cancelled future's request stays
        out until its answer, its deadline or the close, which find nobody to tell."""
        if self._write_paused:
            return None
        fut = self._loop.create_future()
        self.send_tracked(type, payload, _Settle(fut), timeout)
        return fut

    def request_callback(self, type, payload, callback, timeout):
        """`request_future` without a future, for fan-outs on the hot path: sends now and
        calls ``callback(peer_id, exc, payload)`` once, with exc None and the answer, or with
        the PeerError that ended it (a RemoteError, a PeerTimeout up to _DEADLINE_GRAIN late,
        ConnectionLost). Returns False, sending nothing, while the write buffer is full.
        timeout None: no deadline."""
        if self._write_paused:
            return False
        self.send_tracked(type, payload, callback, timeout)
        return True

    def send_tracked(self, rtype, payload, callback, timeout):
        """Send a request whatever the write buffer and track it in a slot: ``callback(peer_id,
        exc, payload)`` once, as by request_callback (batching sends its batches so)."""
        self._track(self.send_request(rtype, payload), rtype, callback, timeout)

    def batch_request(self, rtype, item, callback, timeout):
        """Join `item` to this loop iteration's batch of `rtype` requests ("mput" or "mget",
        kvnet/peer/batching.py): the batch leaves as one request (rtype, [items]), and
        ``callback(peer_id, exc, value)`` is called once per item, as by request_callback.
        For the direct lane's replica writes and reads: one frame each way per peer per
        iteration instead of one per key. Returns False, sending nothing, while the write
        buffer is full."""
        if self._write_paused:
            return False
        if self.state is not READY:
            self._check_ready()               # raises
        return self._batcher.add(rtype, item, callback, timeout)

    async def ping(self, *, timeout=None):
        """Round-trip time in seconds of a PING answered by the peer's core."""
        if self._write_paused:
            timeout = await self._drain(timeout, "ping")
        start = self._loop.time()
        await self._await_slot(self.send_ping(), "ping", timeout)
        return self._loop.time() - start

    async def notify(self, type, payload=None):
        """Send a one-way message (after waiting for the write buffer to drain)."""
        if self._write_paused:
            await self._drain(None, f"notification {type!r}")
        self.send_notify(type, payload)

    def close(self, exc=None):
        """Close now: running handlers are cancelled, waiting requests fail."""
        if self.state is READY and exc is None:
            try:  # tell the peer it was deliberate: its waiters fail with ConnectionLost
                self.send_error(0, "closing", f"node {self.node_id} closed the connection")
            except Exception:
                pass
        super().close(exc)

    async def wait_closed(self):
        await asyncio.shield(self._closed_fut)

    # -- completion: one slot per request out ----------------------------------

    def _track(self, req_id, type_, callback, timeout):
        deadline = _NEVER if timeout is None else self._loop.time() + timeout
        self._slots[req_id] = (callback, type_, timeout, deadline)
        if deadline < self._deadline_at:    # the first, or a shorter timeout than the rest
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._deadline_at = deadline
            self._deadline_timer = self._loop.call_at(deadline, self._expire)

    async def _await_slot(self, req_id, type_, timeout):
        fut = self._loop.create_future()
        self._track(req_id, type_, _Settle(fut), timeout)
        try:
            return await fut
        finally:
            if self._slots.pop(req_id, None) is not None:  # cancelled by the caller
                self.forget(req_id)

    def _expire(self):
        """The one deadline timer: fails the overdue requests among those still out (answered
        ones have left _slots, so this scans only what is in flight), forgetting their ids
        (a late answer is counted and dropped), then sleeps until the next deadline, at
        least _DEADLINE_GRAIN away."""
        self._deadline_timer = None
        self._deadline_at = _NEVER
        now = self._loop.time()
        overdue = [req_id for req_id, slot in self._slots.items() if slot[3] <= now]
        for req_id in overdue:
            if self.state is CLOSED:   # a callback closed it: _on_close failed the rest
                return
            slot = self._slots.pop(req_id, None)
            if slot is not None:
                self.forget(req_id)
                deliver(slot[0], self.peer_id, PeerTimeout(
                    f"node {self.peer_id} did not answer {slot[1]!r} within {slot[2]:g} s"), None)
        slots = self._slots
        if not slots or self.state is CLOSED:
            return
        soonest = min(slot[3] for slot in slots.values())
        if soonest == _NEVER:
            return
        at = max(soonest, now + _DEADLINE_GRAIN)
        if at < self._deadline_at:      # (a callback's new request may have set one already)
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._deadline_at = at
            self._deadline_timer = self._loop.call_at(at, self._expire)

    def _fail_slots(self, failure):
        slots, self._slots = self._slots, {}
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        for req_id, slot in slots.items():
            deliver(slot[0], self.peer_id, ConnectionLost(
                f"connection to node {self.peer_id} closed before it answered {slot[1]!r} "
                f"(request {req_id}): {failure}"), None)

    # -- internals ------------------------------------------------------------

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

    def _handshake_expired(self):
        if self.state is not READY and self.state is not CLOSED:
            self.close(
                PeerTimeout(
                    f"peer handshake with {self.peername} not done within {self._handshake_timeout:g} s"
                )
            )


def check_options(kwargs):
    """The connection options a pool or server passes on, refusing unknown ones."""
    allowed = {"max_frame_size", "max_message_size", "handshake_timeout", "max_inflight",
               "frame_mac"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"unknown peer connection options: {sorted(unknown)}")
    return kwargs


async def connect(host, port, node_id, secret, handler=None, *, expected_peer=None, timeout=5.0,
                  ssl=None, **opts):
    """Dial a peer and complete the handshake; returns a ready PeerConnection. With `ssl` (an
    SSLContext: tls_cluster, kvnet/tlsconfig.py) the connection is TLS first, and the
    handshake runs over it as over plain TCP; its frames then carry no MAC of ours (TLS
    authenticates them), whatever ``frame_mac`` says.

    Raises PeerUnavailable (cannot connect), PeerTimeout, AuthenticationError,
    VersionMismatch or another PeerError naming the cause.
    """
    loop = asyncio.get_running_loop()
    opts = check_options(opts)
    opts.setdefault("handshake_timeout", timeout)
    if ssl is not None:
        opts["frame_mac"] = False
    conn = PeerConnection(
        node_id, secret, handler, initiator=True, expected_peer=expected_peer, loop=loop, **opts
    )
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: conn, host, port, ssl=ssl)
            await conn.wait_ready()
    except TimeoutError as exc:
        conn.close()
        if isinstance(exc, PeerTimeout):
            raise
        raise PeerTimeout(f"connecting to peer at {host}:{port} took more than {timeout:g} s") from None
    except OSError as exc:   # (ssl.SSLError too: a TLS handshake refused)
        conn.close()
        raise PeerUnavailable(f"cannot connect to peer at {host}:{port}: {exc.strerror or exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn

