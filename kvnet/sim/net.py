"""A simulated network for SimLoop: streams between the nodes of one process, delivered by
timers, with latency, loss, cut links and crashed hosts (docs/simulation.md).

Every byte written reaches the other end in order, after the link's latency, as TCP would
deliver it; "loss" is what loss costs TCP, a retransmission delay (200 ms) on the write it
hits. A cut link is a partition longer than the peers' timeouts: its connections die (both
ends see them reset, what was in flight is gone) and a connect over it waits for the heal
or its own timeout. A crashed host's connections are reset at once at both ends.

Which node runs a piece of code is a context variable (`CURRENT`): each node's tasks and
the callbacks the network schedules for it run in that node's context, so a connect knows
its source and a cut knows which writes it holds.
"""
import asyncio
import collections
import contextvars
import errno

CURRENT = contextvars.ContextVar("ringkv_sim_node", default=None)
RETRANSMIT = 0.2              # seconds a lost segment costs (TCP's minimum RTO)


class _Sock:
    def __init__(self, addr):
        self._addr = addr

    def getsockname(self):
        return self._addr


class SimServer:
    """What create_server returns: close(), wait_closed(), sockets."""

    def __init__(self, net, factory, addr, owner):
        self.net, self.factory, self.addr, self.owner = net, factory, addr, owner
        self.sockets = [_Sock(addr)]
        self.closed = False

    def close(self):
        if not self.closed:
            self.closed = True
            if self.net.listeners.get(self.addr) is self:
                del self.net.listeners[self.addr]

    async def wait_closed(self):
        pass

    def is_serving(self):
        return not self.closed

    def get_loop(self):
        return self.net.loop


class SimTransport(asyncio.Transport):
    """One end of a simulated stream."""

    def __init__(self, net, host, peer_host, sockname, peername):
        super().__init__()
        self.net = net
        self.host, self.peer_host = host, peer_host
        self.sockname, self.peername = sockname, peername
        self.peer = None
        self.protocol = None
        self._closing = False
        self._lost = False
        self._paused = False
        self._inbox = []             # delivered while reading was paused
        self._next = 0.0             # this direction's last delivery time (in order)
        self._flight = collections.deque()   # written, not yet delivered, in order

    # -- asyncio.Transport --
    def get_extra_info(self, name, default=None):
        return {"peername": self.peername, "sockname": self.sockname}.get(name, default)

    def is_closing(self):
        return self._closing

    def set_protocol(self, protocol):
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol

    def is_reading(self):
        return not self._paused

    def pause_reading(self):
        self._paused = True

    def resume_reading(self):
        if self._paused:
            self._paused = False
            inbox, self._inbox = self._inbox, []
            for data in inbox:
                if not self._lost:
                    self.protocol.data_received(data)

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def get_write_buffer_size(self):
        return 0

    def get_write_buffer_limits(self):
        return (0, 0)

    def can_write_eof(self):
        return False

    def write(self, data):
        if self._closing or not data:
            return
        self.net._send(self, bytes(data))

    def writelines(self, list_of_data):
        self.write(b"".join(list_of_data))

    def close(self):
        if self._closing:
            return
        self._closing = True
        self.net._send(self, None)                  # the FIN, after the data before it
        self.net.loop.call_soon(self._connection_lost, None, context=self.net.context(self.host))

    def abort(self):
        if self._closing and self._lost:
            return
        self._closing = True
        self.net._reset(self)
        self._connection_lost(None)

    # -- delivery (the network calls these in this end's node context) --
    def _receive(self, data):
        if self._lost:
            return
        if data is None:                            # the other end closed
            self._closing = True
            self._connection_lost(None)
        elif self._paused:
            self._inbox.append(data)
        else:
            self.protocol.data_received(data)

    def _connection_lost(self, exc):
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self.net.transports.pop(self, None)
        try:
            self.protocol.connection_lost(exc)
        except Exception:
            pass


class SimNetwork:
    """Listeners by address, streams between them, link faults. `latency` (seconds, one
    way) and `jitter` (up to that much more) per write; `loss`: the share of writes that pay
    RETRANSMIT more."""

    def __init__(self, loop, rng, latency=0.0005, jitter=0.001, loss=0.0):
        self.loop, self.rng = loop, rng
        self.latency, self.jitter, self.loss = latency, jitter, loss
        self.listeners = {}          # (host, port) -> SimServer
        self.owners = {}             # (host, port) -> node name, from listen()
        self.contexts = {}           # node name -> its contextvars.Context
        self.cut_links = set()       # frozenset({a, b})
        self.slow_links = {}         # frozenset({a, b}) -> seconds more per write, each way
        self.down = set()            # crashed hosts: connects to them are refused
        # in creation order (a dict): a crash or cut walks them, drawing a delay from the
        # seeded generator for each, so their order must not be their addresses'
        self.transports = {}
        self._healed = None          # a future resolved at the next heal
        self.stats = {"connects": 0, "writes": 0, "bytes": 0, "lost": 0}
        self.trace = None            # fn(line) told of every delivery and reset (--trace)

    def context(self, host):
        ctx = self.contexts.get(host)
        if ctx is None:
            ctx = contextvars.Context()
            ctx.run(CURRENT.set, host)
            self.contexts[host] = ctx
        return ctx

    # -- the loop's create_server / create_connection --
    def listen(self, factory, host, port):
        owner = CURRENT.get()
        addr = (host, port)
        if addr in self.listeners:
            raise OSError(errno.EADDRINUSE, f"address {host}:{port} in use (simulated)")
        srv = self.listeners[addr] = SimServer(self, factory, addr, owner)
        self.owners[addr] = owner
        return srv

    async def connect(self, factory, host, port):
        src = CURRENT.get()
        dst = self.owners.get((host, port))
        while self._is_cut(src, dst):               # a SYN over a cut link: no answer yet
            if self._healed is None:
                self._healed = self.loop.create_future()
            await asyncio.shield(self._healed)
        await asyncio.sleep(self._delay(src, dst))
        srv = self.listeners.get((host, port))
        if srv is None or srv.closed or dst in self.down or src in self.down:
            raise ConnectionRefusedError(errno.ECONNREFUSED,
                                         f"connection refused by {host}:{port} (simulated)")
        self.stats["connects"] += 1
        local = (f"sim-{src}", 40000 + self.stats["connects"])
        a = SimTransport(self, src, dst, local, (host, port))
        b = SimTransport(self, dst, src, (host, port), local)
        a.peer, b.peer = b, a
        a.protocol = factory()
        b.protocol = self.context(dst).run(srv.factory)
        self.transports[a] = self.transports[b] = None
        self.context(dst).run(b.protocol.connection_made, b)
        a.protocol.connection_made(a)
        return a, a.protocol

    # -- delivery --
    def _delay(self, a=None, b=None):
        d = self.latency + self.jitter * self.rng.random()
        if self.slow_links and a != b:
            d += self.slow_links.get(frozenset((a, b)), 0.0)
        if self.loss and self.rng.random() < self.loss:
            self.stats["lost"] += 1
            d += RETRANSMIT
        return d

    def _is_cut(self, a, b):
        return a != b and frozenset((a, b)) in self.cut_links

    def _send(self, t, data):
        peer = t.peer
        if peer is None or peer._lost:
            return
        if data is not None:
            self.stats["writes"] += 1
            self.stats["bytes"] += len(data)
        if self._is_cut(t.host, t.peer_host):
            return                                  # (its connection is being reset)
        when = max(t._next, self.loop.time() + self._delay(t.host, t.peer_host))
        t._next = when
        # Each delivery takes the oldest write still in flight, so the bytes arrive in the
        # order they were written, as TCP's do, whatever order the loop runs deliveries due
        # at the same moment in (its own: the order they were set).
        t._flight.append(data)
        self.loop.call_at(when, self._deliver, t, context=self.context(t.peer_host))

    def _deliver(self, t):
        data = t._flight.popleft()
        if self._is_cut(t.host, t.peer_host):       # cut while in flight: gone
            return
        if self.trace is not None:
            self.trace(f"{self.loop.time():.6f} {t.host}>{t.peer_host} {t.sockname[1]} "
                       + ("FIN" if data is None else f"{len(data)} {data.hex()}")
                       + (" DROPPED" if t.peer._lost else ""))     # (its end is gone)
        t.peer._receive(data)

    def _reset(self, t):
        peer = t.peer
        if self.trace is not None:
            self.trace(f"{self.loop.time():.6f} {t.host}>{t.peer_host} {t.sockname[1]} RST")
        if peer is not None and not peer._lost:
            self.loop.call_at(self.loop.time() + self._delay(), peer._connection_lost,
                              ConnectionResetError(errno.ECONNRESET, "connection reset (simulated)"),
                              context=self.context(peer.host))

    # -- faults --
    def cut(self, a, b):
        """Cut the link between nodes a and b until heal(): a partition longer than the
        peers' timeouts, so its connections are dead (both ends see a reset, and whatever
        was in flight is gone) and a connect waits for the heal (or its own timeout)."""
        link = frozenset((a, b))
        self.cut_links.add(link)
        for t in list(self.transports):
            if frozenset((t.host, t.peer_host)) == link and not t._lost:
                t._closing = True
                self.loop.call_soon(t._connection_lost, ConnectionResetError(
                    errno.ETIMEDOUT, "connection timed out (simulated partition)"),
                    context=self.context(t.host))

    def slow(self, a, b, seconds):
        """Every write between nodes a and b takes `seconds` more, each way, until
        slow(a, b, 0) or heal(): a congested or overloaded link (still in order)."""
        link = frozenset((a, b))
        if seconds:
            self.slow_links[link] = seconds
        else:
            self.slow_links.pop(link, None)

    def heal(self, a=None, b=None):
        """Lift one cut (or every cut and every slow link): connects waiting on it go on."""
        if a is None:
            self.cut_links.clear()
            self.slow_links.clear()
        else:
            self.cut_links.discard(frozenset((a, b)))
        if self._healed is not None:
            fut, self._healed = self._healed, None
            fut.set_result(None)

    def crash(self, host):
        """The host's process is gone: its connections are reset at both ends, its
        listeners closed, connects to it refused until restart(host)."""
        self.down.add(host)
        for addr, srv in list(self.listeners.items()):
            if srv.owner == host:
                srv.close()
        for t in list(self.transports):
            if t.host == host:
                t._closing = True
                self._reset(t)
                self.context(host).run(t._connection_lost, ConnectionResetError(
                    errno.ECONNRESET, "the process is gone (simulated)"))

    def restart(self, host):
        self.down.discard(host)
