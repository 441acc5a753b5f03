"""Serving peers: the inbound requests of one connection run through its `Inbound` (a handler's
synchronous side, its first step inline, a Task only for one that suspends, at most
max_inflight at once), and `serve_peers` accepts connections. See docs/peer.md.
"""
import asyncio
import collections
import contextvars
import logging

from kvnet.errors import PeerError, ProtocolError
from kvnet.peer.core import CLOSED, READY
from kvnet.peer.errors import ConnectionLost
from kvnet.stepping import LATER, finish

log = logging.getLogger("kvnet.peer")

DEFAULT_MAX_INFLIGHT = 256  # inbound requests handled at once per connection
DEFAULT_MAX_CONNECTIONS = 512  # inbound peer connections per server
# What a response that cannot be sent raises: unencodable, or above the message limit.
_UNSENDABLE = (TypeError, ValueError, PeerError, ProtocolError)

_current_peer = contextvars.ContextVar("ringkv_current_peer", default=None)


def current_peer():
    """Inside a request handler: the node id of the peer that sent the request."""
    return _current_peer.get()


class Inbound:
    """The requests and notifications one connection serves. ``handler`` is ``async
    handler(type, payload) -> payload``, with an optional synchronous side ``handler.now(type,
    payload)`` that returns the answer or LATER; ``conn`` is the PeerConnection, through which
    answers go (``send_response``, ``send_error``, ``_drain``) and reading pauses."""

    __slots__ = ("conn", "handler", "now", "max_inflight", "inline", "tasks", "backlog",
                 "read_paused")

    def __init__(self, conn, handler, max_inflight=DEFAULT_MAX_INFLIGHT):
        self.conn = conn
        self.handler = handler
        self.now = getattr(handler, "now", None)
        self.max_inflight = max_inflight
        self.inline = 0             # answers built inline since the last flush (the conn resets)
        self.tasks = set()          # running handler tasks
        self.backlog = collections.deque()  # handler coroutines waiting for a free slot
        self.read_paused = False

    def request(self, rtype, req_id, payload, write_paused):
        now = self.now
        if now is not None and not write_paused and not self.backlog \
                and self.inline < self.max_inflight:
            # the handler's synchronous side: no coroutine, no context switch (start's bounds)
            conn = self.conn
            try:
                result = now(rtype, payload)
            except Exception as exc:
                self.inline += 1
                conn.send_error(req_id, exc.__class__.__name__, str(exc) or exc.__class__.__name__)
                return
            if result is not LATER:
                self.inline += 1
                try:
                    conn.send_response(req_id, result)
                except _UNSENDABLE as exc:
                    # unencodable, or above the frame limit: this request fails, not the link
                    conn.send_error(req_id, "EncodeError", f"response to {rtype!r} not sent: {exc}")
                return
        self.start(self.serve(rtype, req_id, payload))

    def notify(self, rtype, payload):
        self.start(self.serve(rtype, None, payload))

    def start(self, coro):
        """Run a handler's first step here: most answer at once (a replica's read or write),
        and only one that suspends becomes a Task (kvnet/stepping.py)."""
        if self.backlog or len(self.tasks) >= self.max_inflight \
                or self.inline >= self.max_inflight:
            # In arrival order behind the ones waiting for a slot; and at most max_inflight
            # answers built inline per flush: the rest go through the slots, which pause
            # reading, so one read full of requests cannot buffer unbounded replies.
            self.spawn(coro)
            return
        self.inline += 1
        conn = self.conn
        token = _current_peer.set(conn.peer_id)
        try:
            try:
                yielded = coro.send(None)
            except StopIteration:
                return
            except (Exception, asyncio.CancelledError):
                # serve answers handler errors itself: this is a bug (or a cancelled future
                # awaited); the other frames of this read must still be served
                log.exception("peer %s: request handling failed", conn.peer_id)
                return
            if conn.state is CLOSED:    # the handler closed this connection: nobody
                coro.close()                # is left to answer, and close() ran already
                return
            self.spawn(finish(coro, yielded))       # the Task copies this context
        finally:
            _current_peer.reset(token)

    def spawn(self, coro):
        if len(self.tasks) >= self.max_inflight:
            # Frames already read in the same chunk wait here; reading is paused.
            self.backlog.append(coro)
            return
        task = self.conn._loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.task_done)
        if len(self.tasks) >= self.max_inflight and not self.read_paused:
            self.read_paused = True
            self.conn._transport.pause_reading()  # backpressure: the peer's writes now block

    def task_done(self, task):
        self.tasks.discard(task)
        conn = self.conn
        if self.backlog and conn.state is not CLOSED:
            self.spawn(self.backlog.popleft())
        if self.read_paused and not self.backlog and len(self.tasks) <= self.max_inflight // 2:
            self.read_paused = False
            if not conn._transport.is_closing():
                conn._transport.resume_reading()

    def close(self):
        """The connection closes: running handlers are cancelled, waiting ones dropped."""
        while self.backlog:  # never started: nobody could get their answers
            self.backlog.popleft().close()
        for task in list(self.tasks):
            task.cancel()

    async def serve(self, rtype, req_id, payload):
        conn = self.conn
        _current_peer.set(conn.peer_id)  # this task's own context copy
        try:
            result = await self.handler(rtype, payload)
        except Exception as exc:
            if req_id is None:
                log.warning("peer %s: notification %r handler failed: %r", conn.peer_id, rtype, exc)
                return
            await self.reply(conn.send_error, req_id, type(exc).__name__,
                             str(exc) or type(exc).__name__)
            return
        if req_id is None:
            return
        try:
            await self.reply(conn.send_response, req_id, result)
        except _UNSENDABLE as exc:
            await self.reply(conn.send_error, req_id, "EncodeError",
                             f"response to {rtype!r} not sent: {exc}")

    async def reply(self, send, *args):
        conn = self.conn
        if conn.state is not READY:
            return  # the connection went away: nobody to answer
        if conn._write_paused:
            try:
                await conn._drain(None, "response")
            except ConnectionLost:
                return
            if conn.state is not READY:
                return
        send(*args)


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
    host, port, node_id, secret, handler, *, pool=None, max_connections=DEFAULT_MAX_CONNECTIONS,
    ssl=None, **opts
):
    """Accept peer connections on host:port (port 0: any free port, see ``.port``); with `ssl`
    (tls_cluster: a context requiring the peer's certificate) only over TLS.

    Inbound connections serve ``handler``; with ``pool`` (a PeerPool) they are
    also offered to it, so this node's requests to that peer reuse them.
    """
    # (imported here: the connection builds its Inbound from this module)
    from kvnet.peer.protocol import PeerConnection, check_options

    loop = asyncio.get_running_loop()
    opts = check_options(opts)
    if ssl is not None:
        opts["frame_mac"] = False           # TLS authenticates the frames (no MAC of ours)
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

    server = await loop.create_server(factory, host, port, ssl=ssl)
    return PeerServer(server, conns)
