"""A TCP proxy with faults: `FaultProxy`, and `free_ports` to place it.

One proxy forwards one directed link (127.0.0.1:port -> target) and can cut it (blackhole or
refuse) and slow it (every chunk held `delay_ms` before it is forwarded). The test toolkit's
`LocalCluster(proxied=True)` puts one on every node-to-node link (kvnet/testing/), and so
does `kvnode dev --faults`, driven from the shell by `kvctl fault` (docs/operations.md).
Standard library only: `kvnode dev` runs it on an install without the test extras.
"""
import asyncio
import random
import socket
import struct
import threading

_PORT_FLOOR = 10_000
_rng = random.SystemRandom()      # not the global random, which hypothesis seeds per example


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count):
    """`count` distinct ports free on 127.0.0.1 right now, taken below the kernel's ephemeral
    range where there is room: a port of that range can become the local end of an outgoing
    connection (a peer's dial, a client's) before a node binds it, or before a killed node is
    restarted on it minutes later."""
    socks, ports = [], []
    low = _ephemeral_low()
    try:
        tries = 0
        while len(ports) < count and low - _PORT_FLOOR > 1000 and tries < 20 * count + 100:
            tries += 1
            port = _rng.randrange(_PORT_FLOOR, low)
            if port in ports:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            ports.append(port)
        while len(ports) < count:             # no room below the range: the kernel's choice
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


MAX_DELAY_MS = 60_000


class FaultProxy:
    """A TCP proxy on 127.0.0.1 forwarding to `target_port`, with faults.

    - `cut()` (mode "blackhole"): nothing passes either way. Open connections stop forwarding
      (bytes wait in the kernel buffers, as TCP retransmits across a real partition), new
      connections are accepted but not connected onward, so the sender sees timeouts, never a
      refusal. `heal()` forwards what was held and connects the held connections.
    - `cut("refuse")`: the listener closes (new connections are refused) and open connections
      are reset. `heal()` listens again on the same port.
    - `slow(ms)`: every chunk read from either side is held `ms` milliseconds (from when it was
      read) before it is written on, in order; `slow(0)` (or `heal()`) ends it. The added delay
      is per direction, so a request and its reply take 2 * ms more.
    - `bytes_up` (client to target), `bytes_down`, `accepted` (connections) count what passed.

    It runs an asyncio loop in a daemon thread; `close()` (idempotent) stops it.
    """

    def __init__(self, target_port, target_host="127.0.0.1", port=0, name=None):
        self.target = (target_host, target_port)
        self.name = name or f"proxy->{target_port}"
        self.mode = None                    # None (forwarding), "blackhole" or "refuse"
        self.delay_ms = 0                   # slow(): each chunk's added delay, per direction
        self.bytes_up = self.bytes_down = self.accepted = 0
        self.port = None
        self._closed = False
        self._socks = {}                    # every open socket, both sides: its StreamWriter
        self._tasks = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.name, daemon=True)
        self._thread.start()
        try:
            # A port below the ephemeral range (free_ports), not the kernel's choice: heal()
            # after cut("refuse") binds it again, and meanwhile a node's refused dials take
            # ephemeral ports as their local ends.
            for attempt in range(20):
                try:
                    self._call(self._setup(port or free_ports(1)[0]))
                    break
                except OSError:
                    if port or attempt == 19:
                        raise
        except BaseException:
            self._stop_loop()
            raise

    # -- control (from any thread) --

    def cut(self, mode="blackhole"):
        if mode not in ("blackhole", "refuse"):
            raise ValueError(f"mode is 'blackhole' or 'refuse', not {mode!r}")
        self._call(self._cut(mode))
        return self

    def heal(self):
        """Forward again (see cut) and end any slow()."""
        self._call(self._heal())
        return self

    def slow(self, delay_ms):
        """Hold every chunk delay_ms milliseconds (0 to MAX_DELAY_MS) before forwarding it."""
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, (int, float)) \
                or not 0 <= delay_ms <= MAX_DELAY_MS:
            raise ValueError(f"a delay is 0 to {MAX_DELAY_MS} ms, not {delay_ms!r}")
        self._call(self._slow(delay_ms))
        return self

    def stats(self):
        return {"mode": self.mode, "delay_ms": self.delay_ms, "accepted": self.accepted,
                "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                "sockets": len(self._socks)}

    def close(self):
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._shutdown())
        except Exception:
            pass
        self._stop_loop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<FaultProxy {self.name} :{self.port} -> :{self.target[1]} {self.mode or 'open'}>"

    def _call(self, coro, timeout=10):
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError(f"{self.name} is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _stop_loop(self):
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # -- on the loop --

    async def _setup(self, port):
        self._open = asyncio.Event()
        self._open.set()
        self._retimed = asyncio.get_running_loop().create_future()
        self._server = None
        await self._listen(port)

    async def _listen(self, port):
        # Our own accept loop (not start_server): every accepted socket is ours at once, so
        # close() and cut("refuse") can reset it even before its handler has run.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._server = sock
        self.port = sock.getsockname()[1]
        self._acceptor = asyncio.get_running_loop().create_task(self._accept_loop(sock))

    async def _unlisten(self):
        if self._server is not None:
            self._acceptor.cancel()
            try:
                await self._acceptor
            except (asyncio.CancelledError, OSError):
                pass
            self._server.close()
            self._server = None

    async def _accept_loop(self, sock):
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            self.accepted += 1
            self._socks[conn] = None
            t = loop.create_task(self._handle(conn))
            self._tasks.add(t)

    def _close_sock(self, sock, reset):
        """Close one of our sockets (through its transport if it has one); reset: send RST."""
        writer = self._socks.pop(sock, None)
        if reset:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        if writer is not None:
            writer.transport.abort() if reset else writer.close()
        else:
            sock.close()

    def _reset_all(self):
        for t in list(self._tasks):
            t.cancel()
        for s in list(self._socks):
            self._close_sock(s, True)

    async def _cut(self, mode):
        self.mode = mode
        self._open.clear()
        if mode == "refuse":
            await self._unlisten()
            self._reset_all()                # both sides see a reset

    async def _heal(self):
        if self.mode == "refuse" and self._server is None:
            await self._listen(self.port)
        self.mode = None
        self._open.set()
        await self._slow(0)

    async def _slow(self, delay_ms):
        self.delay_ms = delay_ms
        retimed, self._retimed = self._retimed, asyncio.get_running_loop().create_future()
        retimed.set_result(None)            # held chunks look at the new delay

    async def _shutdown(self):
        await self._unlisten()
        self._reset_all()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    async def _wait_open(self):
        while not self._open.is_set():
            await self._open.wait()

    async def _handle(self, conn):
        uwriter = cwriter = None
        upstream = None
        try:
            if self.mode == "refuse" or self._closed:
                return
            await self._wait_open()              # blackholed: accepted, held, not connected on
            creader, cwriter = await asyncio.open_connection(sock=conn)
            self._socks[conn] = cwriter
            upstream = socket.socket()
            upstream.setblocking(False)
            self._socks[upstream] = None
            await asyncio.get_running_loop().sock_connect(upstream, self.target)
            ureader, uwriter = await asyncio.open_connection(sock=upstream)
            self._socks[upstream] = uwriter
            await asyncio.gather(self._pump(creader, uwriter, "up"),
                                 self._pump(ureader, cwriter, "down"))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for s in (conn, upstream):
                if s is not None and s in self._socks:
                    self._close_sock(s, self.mode == "refuse" or self._closed)
            self._tasks.discard(asyncio.current_task())

    async def _pump(self, reader, writer, direction):
        """Forward one direction: at once while the link is open, not slowed and nothing waits
        on its delay line; else through the line, which _deliver writes out. A bounded line:
        a slowed link holds at most 64 chunks, then stops reading (TCP pushes back)."""
        loop = asyncio.get_running_loop()
        line = asyncio.Queue(64)
        held = [0]                                # chunks on the line or being written from it
        sender = loop.create_task(self._deliver(line, writer, direction, held))
        try:
            while True:
                await self._wait_open()
                data = await reader.read(65536)
                if not data:
                    break
                if not held[0] and not self.delay_ms and self._open.is_set():
                    self._count(direction, data)  # the common case: no task hop
                    writer.write(data)
                    await writer.drain()
                    continue
                held[0] += 1
                await line.put((loop.time(), data))
            await line.put(None)
            await sender                          # what is on the line still goes out
        except OSError:
            pass
        finally:
            sender.cancel()
            writer.close()                        # a close ends both directions (no half-close)
            await asyncio.gather(sender, return_exceptions=True)   # no task left pending

    def _count(self, direction, data):
        if direction == "up":
            self.bytes_up += len(data)
        else:
            self.bytes_down += len(data)

    async def _deliver(self, line, writer, direction, held):
        """Write each chunk once it is due (its read time + delay_ms, the delay as it is now:
        slow(0) or heal() lets held chunks go) and the link is open, in order. After a failed
        write it closes the writer (which ends the other direction, then this one's reader)
        and only empties the line."""
        loop = asyncio.get_running_loop()
        broken = False
        while True:
            item = await line.get()
            if item is None:
                return
            read_at, data = item
            try:
                if broken:
                    continue
                while True:
                    wait = read_at + self.delay_ms / 1000.0 - loop.time()
                    if wait <= 0:
                        break
                    await asyncio.wait([self._retimed], timeout=wait)
                await self._wait_open()          # cut while held: hold the chunk
                self._count(direction, data)
                writer.write(data)
                await writer.drain()
            except OSError:
                broken = True
                writer.close()
            finally:
                held[0] -= 1
