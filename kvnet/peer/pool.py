"""PeerPool: one multiplexed connection per peer, dialed lazily, redialed with backoff, closed
when idle.

A pair of nodes shares one connection whichever side dialed it; see
docs/peer.md ("Connections per pair") for how simultaneous dials resolve. With an
`idle_timeout`, a connection that carried nothing either way for that long, with no request
of either side waiting on it, is closed, so a node holds connections to the peers it talks
to, not to every member (docs/peer.md, "Idle connections").
"""
import asyncio
import logging
import random

from kvnet.errors import PeerError
from kvnet.peer.errors import PeerTimeout, PeerUnavailable
from kvnet.peer.framing import DEFAULT_MAX_MESSAGE_SIZE, FrameMacError
from kvnet.peer.protocol import check_options, connect
from kvnet.peer.serving import serve_peers

log = logging.getLogger("kvnet.peer")

DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_BACKOFF_BASE = 0.1  # first retry delay after a failed dial, seconds
DEFAULT_BACKOFF_MAX = 5.0  # cap of the exponential backoff, seconds
DEFAULT_REQUEST_TIMEOUT = 5.0


class _Peer:
    __slots__ = ("conns", "connecting", "failures", "next_attempt", "last_error", "news_mark",
                 "marks")

    def __init__(self):
        self.conns = []  # ready connections, dialed or accepted
        self.connecting = None  # the dial in progress (a Task), shared by all waiters
        self.failures = 0  # consecutive failed dials
        self.next_attempt = 0.0  # loop time before which no dial is tried
        self.last_error = None
        self.news_mark = None  # `failures` when `redial` last dialed (None: not since a success)
        self.marks = {}  # conn -> (its use counters at a sweep, loop time they last changed)


def _retrieve(task):
    if not task.cancelled():
        task.exception()


class PeerPool:
    """Connections from node ``node_id`` to its peers; ``handler`` serves their requests."""

    def __init__(
        self,
        node_id,
        secret,
        handler=None,
        *,
        connect_timeout=DEFAULT_CONNECT_TIMEOUT,
        backoff_base=DEFAULT_BACKOFF_BASE,
        backoff_max=DEFAULT_BACKOFF_MAX,
        tls=None,
        idle_timeout=0.0,
        **opts,
    ):
        """``tls`` (tls_cluster): a kvnet.tlsconfig.NodeTLS, whose ``peers`` context the
        listener uses and whose ``peer_client()`` each dial uses (the newest after a reload)."""
        if not 0 < backoff_base <= backoff_max:
            raise ValueError("need 0 < backoff_base <= backoff_max")
        self._tls = tls
        if not idle_timeout >= 0:
            raise ValueError("need idle_timeout >= 0 (0: never close idle connections)")
        self.node_id = node_id
        self._secret = secret
        self._handler = handler
        self._connect_timeout = connect_timeout
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._opts = check_options(opts)
        self._idle_timeout = float(idle_timeout)
        self._sweeper = None  # the timer of the next idle sweep (None: none due)
        self._loop = None     # the loop it runs on (_running_loop)
        self._peers = {}
        self._sleepers = set()
        self._server = None
        self._closed = False
        self.mac_failures = 0  # connections closed on a frame that failed its MAC check

    @property
    def max_message_size(self):
        """The largest message this pool's connections send or take (docs/peer.md, "Limits")."""
        return self._opts.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE)

    def _running_loop(self):
        """The running loop, asked for once while it runs: asyncio.get_running_loop() makes a
        getpid() system call at each call (Python 3.11), a share of every request."""
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    # -- using peers ----------------------------------------------------------

    async def request(self, peer_id, addr, type, payload=None, timeout=DEFAULT_REQUEST_TIMEOUT):
        """Send ``type``/``payload`` to ``peer_id`` (dialing ``addr`` = (host, port) if needed).

        ``timeout`` bounds connecting and answering together. A request is
        never resent: on ConnectionLost the caller cannot know if it ran.
        """
        loop = self._running_loop()
        start = loop.time()
        conn = await self.connection(peer_id, addr, timeout)
        left = None if timeout is None else max(timeout - (loop.time() - start), 0.0)
        return await conn.request(type, payload, timeout=left)

    def request_future(self, peer_id, addr, type, payload=None, timeout=DEFAULT_REQUEST_TIMEOUT):
        """A future of `request`'s answer: sent at once on a ready connection (no Task), else a
        Task running `request` (dialing, backoff, a full write buffer)."""
        peer = self._peers.get(peer_id)
        conn = None if peer is None else self._best(peer_id, peer)
        if conn is not None:
            fut = conn.request_future(type, payload, timeout=timeout)
            if fut is not None:
                return fut
        return asyncio.ensure_future(self.request(peer_id, addr, type, payload, timeout))

    async def notify(self, peer_id, addr, type, payload=None, timeout=DEFAULT_REQUEST_TIMEOUT):
        conn = await self.connection(peer_id, addr, timeout)
        await conn.notify(type, payload)

    def get(self, peer_id):
        """The ready connection to ``peer_id`` requests would use now, or None."""
        peer = self._peers.get(peer_id)
        return None if peer is None else self._best(peer_id, peer)

    async def connection(self, peer_id, addr, timeout=None):
        """A ready connection to ``peer_id``, dialing ``addr`` if there is none.

        While a previous dial's backoff runs, waits for it if it ends within
        ``timeout``, else raises PeerUnavailable at once.
        """
        if peer_id == self.node_id:
            raise PeerError(f"node {peer_id} does not send peer requests to itself")
        loop = self._running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = _Peer()
        while True:
            if self._closed:
                raise PeerError("the peer pool is closed")
            conn = self._best(peer_id, peer)
            if conn is not None:
                return conn
            if peer.connecting is None:
                wait = peer.next_attempt - loop.time()
                if wait > 0:
                    if deadline is not None and loop.time() + wait > deadline:
                        raise PeerUnavailable(
                            f"node {peer_id} at {_fmt(addr)} is unreachable ({peer.last_error}); "
                            f"next attempt in {wait:.2f} s"
                        )
                    await self._sleep(wait)
                    continue
                self._start_dial(peer_id, addr, peer)
            task = peer.connecting
            try:
                if deadline is None:
                    await asyncio.shield(task)
                else:
                    await asyncio.wait_for(asyncio.shield(task), max(deadline - loop.time(), 0.0))
            except PeerError:
                raise
            except TimeoutError:
                raise PeerTimeout(
                    f"connecting to node {peer_id} at {_fmt(addr)} not done within {timeout:g} s"
                ) from None
            except asyncio.CancelledError:
                if task.cancelled() and self._closed and not asyncio.current_task().cancelling():
                    raise PeerError("the peer pool is closed") from None
                raise

    def adopt(self, conn):
        """Take a ready connection (accepted by serve_peers) into the pool."""
        if self._closed:
            conn.close()
            return
        peer = self._peers.get(conn.peer_id)
        if peer is None:
            peer = self._peers[conn.peer_id] = _Peer()
        peer.conns.append(conn)
        peer.failures, peer.next_attempt, peer.last_error = 0, 0.0, None
        peer.news_mark = None
        conn.add_close_callback(self._drop)
        if self._idle_timeout and self._sweeper is None:
            self._sweeper = self._running_loop().call_later(self._idle_timeout / 2,
                                                                  self._sweep)

    async def serve(self, host, port, **kwargs):
        """Accept peers on host:port, sharing their connections with this pool; closed with it."""
        if self._server is not None:
            raise PeerError("this pool already serves")
        self._server = await serve_peers(
            host, port, self.node_id, self._secret, self._handler, pool=self,
            ssl=None if self._tls is None else self._tls.peers, **{**self._opts, **kwargs}
        )
        return self._server

    def redial(self, peer_id, addr):
        """News that a peer in dial backoff is alive (a newer heartbeat through another member):
        dial it now rather than when the backoff ends, so routing, which avoids a peer after a
        failed dial (`reachable`), takes it back a round trip after it is up again (a restarted
        peer, or a cluster whose members started one after another). If that dial fails too
        (the peer is alive to others but refuses this node), no other starts on news until a
        dial of the backoff has failed as well: the dials stay at most twice the backoff's."""
        peer = self._peers.get(peer_id)
        if self._closed or peer is None or peer.failures == 0 or peer.conns \
                or peer.connecting is not None:
            return False
        if peer.news_mark is not None and peer.failures < peer.news_mark + 2:
            return False
        peer.news_mark, peer.next_attempt = peer.failures, self._running_loop().time()
        self._start_dial(peer_id, addr, peer)
        return True

    def _start_dial(self, peer_id, addr, peer):
        """The one dial of peer (peer.connecting) that every waiter shares."""
        peer.connecting = self._running_loop().create_task(self._dial(peer_id, addr, peer))
        peer.connecting.add_done_callback(_retrieve)

    def reachable(self, peer_id):
        """Cheap liveness hint for request routing: False from a failed dial to the peer until a
        connection to it is up again (a later dial, e.g. gossip's, or the peer dialing us). A
        peer never dialed counts as reachable. Expiring with the backoff instead would send
        requests back to a dead peer every few seconds until the failure detector marks it."""
        peer = self._peers.get(peer_id)
        return peer is None or peer.failures == 0 or bool(peer.conns)

    def status(self):
        """Per known peer: connections, consecutive failures, seconds to the next dial, last error."""
        now = self._running_loop().time()
        return {
            peer_id: {
                "connections": len(peer.conns),
                "connecting": peer.connecting is not None,
                "failures": peer.failures,
                "retry_in": max(peer.next_attempt - now, 0.0),
                "last_error": None if peer.last_error is None else str(peer.last_error),
            }
            for peer_id, peer in self._peers.items()
        }

    async def close(self):
        """Close every connection and the server; pending requests and dials fail."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        tasks, conns = [], []
        if self._server is not None:
            self._server.close()
        for peer in self._peers.values():
            if peer.connecting is not None:
                peer.connecting.cancel()
                tasks.append(peer.connecting)
            conns.extend(peer.conns)
        for conn in conns:
            conn.close()
        for fut in list(self._sleepers):
            if not fut.done():
                fut.set_result(None)
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.wait_closed() for c in conns))
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # -- internals ------------------------------------------------------------

    def _best(self, peer_id, peer):
        """A ready connection; with two (both nodes dialed at once), the one the lower id dialed.

        Both ends apply the same rule, so new traffic converges on one connection.
        """
        best = None
        for conn in peer.conns:
            if conn.is_ready:
                if conn.initiator == (self.node_id < peer_id):
                    return conn
                best = best or conn
        return best

    def _drop(self, conn, exc):
        if isinstance(exc, FrameMacError):
            self.mac_failures += 1
            log.error("peer %s (%s): connection closed: %s", conn.peer_id, conn.peername, exc)
        peer = self._peers.get(conn.peer_id)
        if peer is not None and conn in peer.conns:
            peer.conns.remove(conn)
        if peer is not None:
            peer.marks.pop(conn, None)

    def _sweep(self):
        """Close the connections idle for idle_timeout: nothing received (requests, answers,
        notifications: `received` counts them) and no request sent since the sweep that saw
        them so, none of ours awaiting an answer and none of the peer's being served. Runs
        every idle_timeout / 2 while the pool holds a connection, so a connection closes
        after one to one and a half idle_timeouts of silence."""
        self._sweeper = None
        if self._closed:
            return
        now = self._running_loop().time()
        idle = []
        left = False
        for peer in self._peers.values():
            marks = peer.marks
            for conn in peer.conns:
                left = True
                inbound = conn._inbound
                if conn._pending or (inbound is not None and (inbound.tasks or inbound.backlog)):
                    marks.pop(conn, None)                   # busy: not idle from now on
                    continue
                mark = (conn.received, conn._next_id)
                seen = marks.get(conn)
                if seen is None or seen[0] != mark:
                    marks[conn] = (mark, now)
                elif now - seen[1] >= self._idle_timeout:
                    idle.append(conn)
        for conn in idle:
            log.debug("closing the idle connection to %s", conn.peer_id)
            conn.close()
        if left:
            self._sweeper = self._running_loop().call_later(self._idle_timeout / 2,
                                                                  self._sweep)

    def backoff(self, failures):
        """Delay before the next dial after ``failures`` consecutive failures: exponential, capped, jittered."""
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** min(failures - 1, 32))
        return ceiling * random.uniform(0.5, 1.0)

    async def _dial(self, peer_id, addr, peer):
        host, port = addr
        try:
            conn = await connect(
                host,
                port,
                self.node_id,
                self._secret,
                self._handler,
                expected_peer=peer_id,
                timeout=self._connect_timeout,
                ssl=None if self._tls is None else self._tls.peer_client(),
                **self._opts,
            )
        except PeerError as exc:
            peer.failures += 1
            peer.next_attempt = self._running_loop().time() + self.backoff(peer.failures)
            peer.last_error = exc
            # one refused dial is routine while a cluster starts (members greet each other
            # before all listen); a second in a row is worth an operator's eye
            log.log(logging.INFO if peer.failures > 1 else logging.DEBUG,
                    "peer %s at %s: dial %d failed: %s", peer_id, _fmt(addr), peer.failures, exc)
            raise
        finally:
            peer.connecting = None
        self.adopt(conn)

    async def _sleep(self, delay):
        loop = self._running_loop()
        fut = loop.create_future()
        self._sleepers.add(fut)
        timer = loop.call_later(delay, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            timer.cancel()
            self._sleepers.discard(fut)


def _fmt(addr):
    return f"{addr[0]}:{addr[1]}"
