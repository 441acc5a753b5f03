"""The RESP front door: an asyncio Protocol from bytes to commands to replies (docs/resp.md).

Per connection, commands start in arrival order and replies leave in that order. A command
that completes without suspending is answered without a Task. One that suspends (a quorum
round trip) runs as a Task while the commands behind it start too, as long as each touches
one key that no command still running touches (GET, SET, KV.GET/PUT/DEL, ...): so a pipelined
GET still sees the SET of the same key before it. Any other command (multi-key, keyspace-wide,
connection state) is a barrier: it starts when everything before it is done, and nothing
starts before it is done. Commands running beside an earlier one of their connection are
capped server-wide (MAX_RUN_AHEAD), so a saturated node does not pile up work that would only
wait (and time out): each connection still always has its first command running. The door's
plain GETs and SETs on the direct lane (kvnet/localdoor.pyx) count apart, up to MAX_LANE_AHEAD:
each is one item of a batch to the replicas, settled from its answer, so a pipeline's lane
commands are in flight together, answered by one batch and their replies written at once.
Reading pauses while the transport's write buffer is above its high-water mark or too many
commands wait, so a client that does not read its replies cannot grow the server's memory.
Until a connection authenticates, its commands are parsed one at a time within Redis' limits
before AUTH (10 arguments of 16 KiB) and it must authenticate within `auth_timeout` seconds;
the commands partly received on all connections together stay within `max_input` bytes
(docs/security.md).

Replies are written once per loop iteration, after every connection that became readable in it
has run its commands (as Redis writes in `beforeSleep`): a client such as redis-benchmark,
waiting on many connections, is then woken once per burst of replies instead of once per reply,
and on a virtual machine each wake-up is an inter-processor interrupt.
"""
import asyncio
import collections
import logging

from kvnet.errors import ProtocolError
from kvnet.resp.commands import Commands
from kvnet.resp.parser import (MAX_ARGS, MAX_BULK, MAX_COMMAND, MAX_INLINE, PREAUTH_LIMITS,
                               RequestParser)
from kvnet.resp.replies import encode, encode_error
from kvnet.stepping import COROUTINE_TYPES, FUTURE_TYPES, ReplyFuture, finish

__all__ = ["RespServer", "RespProtocol", "serve", "options_from"]

log = logging.getLogger("kvnet.resp")

MAX_CLIENTS = 10_000
IDLE_TIMEOUT = 3600.0        # seconds; 0 or None: never
MAX_PENDING = 1024           # commands read but not yet answered, per connection
WRITE_HIGH_WATER = 1 << 20   # bytes buffered for one client before reading pauses
FLUSH_SIZE = 64 << 10        # write replies out at least this often within one batch
MAX_IN_FLIGHT = 128          # suspended commands running at once, per connection
MAX_RUN_AHEAD = 64           # commands running beside an earlier one of their connection,
                             # server-wide: a saturated node keeps its queue (and latency) short
MAX_LANE_AHEAD = 4096        # ... of them the door's direct-lane GETs and SETs, server-wide,
                             # counted apart: each is a peer batch's item, not a Task
TLS_HANDSHAKE_TIMEOUT = 10.0 # seconds a TLS client has to finish its handshake
AUTH_TIMEOUT = 10.0          # seconds a connection has to authenticate, when it must; 0: any
MAX_INPUT = 256 << 20        # bytes of commands partly received, all connections together
BULK_ROOM = 64 << 10         # a bulk may pass the largest value, key or context by this much


class RespProtocol:
    """One client connection (an asyncio protocol by its methods: compiled, kvnet/compiled.py,
    it is an extension type, which cannot derive from a Python class)."""

    def __init__(self, server):
        self.server = server
        self.commands = server.commands
        self.loop = server.loop
        self.parser = RequestParser(**server.parser_limits)
        self.transport = None
        self.session = None
        self._queue = collections.deque()   # commands (or a ProtocolError) waiting to run
        self._slots = collections.deque()   # replies in order from the first command in
                                            # flight: bytes, or a _Waiting (its .data once done)
        self._running = {}                  # Task or future -> its _Waiting
        self._keys = {}                     # key -> commands in flight on it
        self._barrier = False               # a barrier command is in flight
        self._key_of = server.commands.key_of
        self._out = []                      # encoded replies not yet written
        self._out_size = 0
        self._flush_queued = False          # in server.unflushed, written at the iteration's end
        self._in_run = False                # _run is on the stack
        self._write_paused = False
        self._reading = True
        self._closed = False
        self._idle_handle = None
        self._auth_handle = None
        self._last_read = 0.0
        self._in_buf = 0                    # this connection's share of server.input_bytes

    # ---- transport callbacks -----------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        server = self.server
        if len(server.connections) >= server.max_clients:
            self.commands.stats["rejected_connections"] += 1
            transport.write(b"-ERR max number of clients reached\r\n")
            transport.close()
            self._closed = True
            return
        server.connections.add(self)
        transport.set_write_buffer_limits(high=server.write_high_water)
        self.session = self.commands.open_session(_addr(transport.get_extra_info("peername")),
                                                  _addr(transport.get_extra_info("sockname")))
        self._last_read = self.loop.time()
        if server.idle_timeout:
            self._idle_handle = self.loop.call_later(server.idle_timeout, self._check_idle)
        if not self.session.authenticated:
            parser = self.parser
            for name, value in server.preauth_limits.items():
                setattr(parser, name, value)
            parser.preauth = True
            if server.auth_timeout:
                self._auth_handle = self.loop.call_later(server.auth_timeout, self._auth_expired)

    def connection_lost(self, exc):
        self._closed = True
        self.server.connections.discard(self)
        if self.session is not None:
            self.commands.close_session(self.session)
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self._auth_handle is not None:
            self._auth_handle.cancel()
        if self._in_buf:
            self.server.input_bytes -= self._in_buf
            self._in_buf = 0
        for task in list(self._running):
            task.cancel()
            if type(task) is ReplyFuture:   # no done callback: its bookkeeping now
                task.on_settled(task)
        self._queue.clear()
        self._slots.clear()

    def eof_received(self):
        return None     # close the transport (asyncio.Protocol's default)

    def pause_writing(self):
        self._write_paused = True
        self._update_reading()

    def resume_writing(self):
        self._write_paused = False
        if self._queue:
            self.loop.call_soon(self._run)
        if self.parser.preauth:
            self.loop.call_soon(self._next_preauth)
        self._update_reading()

    def data_received(self, data):
        if self._closed:
            return
        self._last_read = self.loop.time()
        door = self.server.door
        if door is not None and not self._queue and not self._running \
                and not self._write_paused and not self.parser._buf and type(data) is bytes:
            # the node's own GETs and SETs straight from the bytes (LocalDoor.receive)
            pos, added = door.receive(self.session, data, self._out,
                                      FLUSH_SIZE - self._out_size, self.server.door_limits)
            if pos:
                self._out_size += added
                if not self._flush_queued:
                    self._flush_queued = True
                    self.server.flush_later(self)
                if self._out_size >= FLUSH_SIZE:
                    self._flush()  # may call pause_writing()
                if pos == len(data):
                    return
                data = data[pos:]
        self._feed(data)
        if self.parser.preauth:
            self._next_preauth()

    def _feed(self, data):
        """Parse `data` and run the commands it completes; count the bytes left in the parser
        against the server's input budget. Whether it completed any."""
        parser = self.parser
        try:
            cmds = parser.feed(data)
        except ProtocolError as exc:
            cmds = list(exc.commands)
            cmds.append(exc)
        size = len(parser._buf)
        if size != self._in_buf:
            server = self.server
            server.input_bytes += size - self._in_buf
            self._in_buf = size
            if size and server.input_bytes > server.max_input:
                self._over_budget()
                return False
        if not cmds:
            return False
        self._queue.extend(cmds)
        self._run()
        return True

    def _next_preauth(self):
        """Commands of a connection not yet authenticated come from the parser one by one
        (RequestParser.preauth): run the next ones, with an authenticated connection's limits
        as soon as it is (AUTH or HELLO ... AUTH ran). Every command before AUTH answers at
        once (NOAUTH, or AUTH itself): the queue is empty between two unless writing paused,
        and resume_writing() comes back here."""
        parser = self.parser
        while parser.preauth and not self._closed and not self._queue:
            if self.session.authenticated:
                for name, value in self.server.parser_limits.items():
                    setattr(parser, name, value)
                parser.preauth = False
                if self._auth_handle is not None:
                    self._auth_handle.cancel()
                    self._auth_handle = None
            if not parser._buf or not self._feed(b""):  # the next command, or all of
                return                                  # them once authenticated

    def _over_budget(self):
        self.commands.stats["rejected_input"] = self.commands.stats.get("rejected_input", 0) + 1
        log.warning("client %s closed: client input buffers over max_client_input_bytes (%d)",
                    self.session.addr, self.server.max_input)
        self._out.append(b"-ERR client input buffers are over this node's budget "
                         b"(max_client_input_bytes): connection closed\r\n")
        self._close_after_flush()

    def _auth_expired(self):
        self._auth_handle = None
        if self._closed or self.session.authenticated:
            return
        self._out.append(b"-ERR authentication timeout: the connection did not authenticate "
                         b"in time (auth_timeout_s)\r\n")
        self._close_after_flush()

    # ---- running commands --------------------------------------------------------------------

    def _run(self):
        """Start queued commands in order until one must wait (see the module docstring), the
        queue empties, the client stops reading (write buffer above high water) or QUIT.
        Not re-entered: a command of this connection that settles another one's ReplyFuture
        while it runs only fills that reply's slot, and this loop goes on in order."""
        if self._closed or self._in_run:
            return
        self._in_run = True
        try:
            self._run_queued()
        finally:
            self._in_run = False

    def _run_queued(self):
        queue = self._queue
        session = self.session
        dispatch = self.commands.dispatch
        slots = self._slots
        out = self._out
        door = self.server.door
        while queue and not self._closed:
            if self._write_paused:  # resume_writing() continues
                break
            started = data = on_lane = None
            if door is not None and not self._running:
                added, started = door.take(session, queue, out, FLUSH_SIZE - self._out_size)
                if added:
                    self._out_size += added
                    if self._out_size >= FLUSH_SIZE and started is None:
                        self._flush()  # may call pause_writing()
                        continue
                if started is None and not queue:
                    break
            if started is not None:  # the door popped a command and left it in flight
                reply, key = started
                argv = None
            else:
                argv = queue[0]
                if type(argv) is not list:      # a ProtocolError: framing is lost
                    if self._running:   # the replies before the error go first
                        break
                    queue.popleft()
                    out.append(encode_error(argv))
                    self._close_after_flush()
                    return
                if self._running:
                    if self._barrier or len(self._running) >= MAX_IN_FLIGHT:
                        break
                    server = self.server
                    general = server.run_ahead < server.max_run_ahead
                    lane = door is not None and server.lane_ahead < server.max_lane_ahead
                    if not (general or lane):
                        break
                    key = self._key_of(argv)
                    if key is None or key in self._keys:
                        break           # a barrier, or the same key as a command in flight
                    # beside a command in flight (a pipeline behind a lane command): the
                    # door's plain GET or SET, else the general path
                    reply = door.one(session, argv) if lane else None
                    if reply is None:
                        if not general:     # only the door's commands pass the cap
                            break
                        queue.popleft()
                        reply = dispatch(session, argv)
                    else:
                        queue.popleft()
                        if type(reply) is bytes:    # encoded already: in order below
                            data = reply
                        else:               # on the lane: counted in lane_ahead
                            on_lane = reply
                else:
                    key = None          # computed only when the command suspends
                    queue.popleft()
                    reply = dispatch(session, argv)
            if type(reply) in COROUTINE_TYPES:
                try:
                    yielded = reply.send(None)
                except StopIteration as stop:
                    reply = stop.value
                    self.commands.count(session.slot, session.started)
                else:
                    if not self._running:
                        key = self._key_of(argv)
                    self._start_task(reply, yielded, key)
                    continue
            elif type(reply) in FUTURE_TYPES:  # Commands.dispatch, or the door
                if not reply.done():
                    if key is None and argv is not None:
                        key = self._key_of(argv)
                    self._track(reply, key, session.pending, on_lane is reply)
                    continue
                self.commands.count(session.slot, session.started)
                reply = self.commands.settle(session.pending, reply)
            if data is None:
                data = encode(reply, session.protocol)
            if slots:               # behind a reply still running
                slots.append(data)
                continue
            out.append(data)
            self._out_size += len(data)
            if session.closing:
                self._close_after_flush()
                return
            if self._out_size >= FLUSH_SIZE:
                self._flush()  # may call pause_writing()
        if out and not self._flush_queued:
            self._flush_queued = True
            self.server.flush_later(self)
        if not self._reading or self._write_paused or len(queue) >= self.server.max_pending:
            self._update_reading()      # (only when it may change something: a call less)

    def _start_task(self, coro, yielded, key):
        self._track(self.loop.create_task(finish(coro, yielded)), key)

    def _track(self, task, key, cmd=None, lane=False):
        """Hold a place in reply order for a command still running (its Task, or the backend
        future of `cmd`; `lane`: the door's, on the direct lane); its reply is written when it
        and every one ahead of it are done."""
        ahead = 0
        if self._running:               # beside an earlier command of this connection
            if lane:
                ahead = AHEAD_LANE
                self.server.lane_ahead += 1
            else:
                ahead = AHEAD
                self.server.run_ahead += 1
        waiting = _Waiting(self, key, ahead, cmd)
        waiting.slot = self.session.slot        # counted once answered (Commands.count)
        waiting.started = self.session.started
        self._slots.append(waiting)
        self._running[task] = waiting
        if key is None:
            self._barrier = True
        else:
            self._keys[key] = self._keys.get(key, 0) + 1
        if type(task) is ReplyFuture:   # answered as soon as it is settled, not a round later
            task.on_settled = waiting
        else:
            task.add_done_callback(waiting)

    def _task_done(self, task, waiting):
        if self._running.pop(task, None) is None:   # released already
            return
        if waiting.ahead == AHEAD:
            self.server.run_ahead -= 1
        elif waiting.ahead == AHEAD_LANE:
            self.server.lane_ahead -= 1
        key = waiting.key
        if key is None:
            self._barrier = False
        else:
            left = self._keys.pop(key) - 1
            if left:
                self._keys[key] = left
        if self._closed or task.cancelled():
            return
        session = self.session
        self.commands.count(waiting.slot, waiting.started)
        if waiting.cmd is not None:     # a backend's future: its errors are replies
            reply = self.commands.settle(waiting.cmd, task)
        else:
            exc = task.exception()
            if exc is not None:  # execute() returns errors; this is a bug, so drop the client
                log.error("command task failed", exc_info=exc)
                self.transport.abort()
                return
            reply = task.result()
        waiting.data = encode(reply, session.protocol)
        slots = self._slots
        out = self._out
        while slots:
            data = slots[0]
            if type(data) is not bytes:
                data = data.data
                if data is None:        # still running
                    break
            slots.popleft()
            out.append(data)
            self._out_size += len(data)
        if session.closing and not slots:
            self._close_after_flush()
            return
        self._run()

    def _flush(self):
        out = self._out
        self._out_size = 0
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _close_after_flush(self):
        self._flush()
        self._closed = True
        self._queue.clear()
        self.transport.close()  # sends what is buffered, then closes

    def _update_reading(self):
        if self._closed:
            return
        pause = self._write_paused or len(self._queue) >= self.server.max_pending
        if pause and self._reading:
            self._reading = False
            self.transport.pause_reading()
        elif not pause and not self._reading:
            self._reading = True
            self.transport.resume_reading()

    def _check_idle(self):
        self._idle_handle = None
        if self._closed:
            return
        timeout = self.server.idle_timeout
        idle = self.loop.time() - self._last_read
        if idle >= timeout and not self._running and not self._queue and not self._out:
            self.transport.close()
            return
        self._idle_handle = self.loop.call_later(max(timeout - idle, 0.1), self._check_idle)


def _addr(name):
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return str(name or "")


AHEAD = 1           # _Waiting.ahead: beside an earlier command, counted in run_ahead;
AHEAD_LANE = 2      # ... a direct-lane command of the door, counted in lane_ahead (0: neither)


class _Waiting:
    """A command of a connection still running: its place in reply order (`data`, its
    encoded reply once it is done), the key it holds (None: a barrier), whether it runs
    beside an earlier command (AHEAD or AHEAD_LANE: the server's run_ahead or lane_ahead
    counts it) and, when it is a backend's future, its Command. Called with its Task or future
    once that is done (a done callback, or ReplyFuture.on_settled): one object per command
    instead of a slot list, an entry tuple and a bound method."""

    __slots__ = ("conn", "key", "ahead", "cmd", "data", "slot", "started")

    def __init__(self, conn, key, ahead, cmd):
        self.conn = conn
        self.key = key
        self.ahead = ahead
        self.cmd = cmd
        self.data = None
        self.slot = -1
        self.started = 0

    def __call__(self, task):
        self.conn._task_done(task, self)


class RespServer:
    """A listening RESP server bound to one backend; `close()` stops it and its connections."""

    def __init__(self, backend, *, password=None, users=(), allow_flush=True,
                 max_clients=MAX_CLIENTS, idle_timeout=IDLE_TIMEOUT, auth_timeout=AUTH_TIMEOUT,
                 max_input=MAX_INPUT, max_pending=MAX_PENDING,
                 write_high_water=WRITE_HIGH_WATER, max_bulk=MAX_BULK, max_args=MAX_ARGS,
                 max_inline=MAX_INLINE, max_command=MAX_COMMAND, max_run_ahead=MAX_RUN_AHEAD,
                 max_lane_ahead=MAX_LANE_AHEAD, config=None, loop=None):
        self.loop = loop or asyncio.get_running_loop()
        self.max_run_ahead = max_run_ahead
        self.run_ahead = 0          # commands running beside an earlier one of their connection
        self.max_lane_ahead = max_lane_ahead
        self.lane_ahead = 0         # ... of them the door's on the direct lane (not in run_ahead)
        self.backend = backend
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout or 0
        self.max_pending = max_pending
        self.write_high_water = write_high_water
        self.parser_limits = {"max_bulk": max_bulk, "max_args": max_args,
                              "max_inline": max_inline, "max_command": max_command}
        # before AUTH: Redis' limits, or the ones above where they are smaller
        self.preauth_limits = {k: min(v, self.parser_limits[k]) for k, v in PREAUTH_LIMITS.items()}
        self.auth_timeout = auth_timeout or 0
        self.max_input = max_input
        self.input_bytes = 0        # bytes of commands partly received, all connections
        self.commands = Commands(backend, password=password, users=users,
                                 allow_flush=allow_flush, max_clients=max_clients,
                                 idle_timeout=self.idle_timeout, config=config)
        self.commands.parser_limits = self.parser_limits
        self.door_limits = (max_bulk, max_args, max_command)    # LocalDoor.receive's
        self.door = backend.local_door(self.commands)
        self.connections = set()
        self.unflushed = []         # connections whose replies wait for the iteration's end
        self.server = None
        self.tls_server = None      # the TLS listener (tls_port), when there is one

    def flush_later(self, conn):
        """Queue `conn`'s replies for one write after this iteration's callbacks (call_soon runs
        after the I/O callbacks the loop is still dispatching)."""
        unflushed = self.unflushed
        if not unflushed:
            self.loop.call_soon(self._flush_unflushed)
        unflushed.append(conn)

    def _flush_unflushed(self):
        conns = self.unflushed
        self.unflushed = []
        for conn in conns:
            conn._flush_queued = False
            if conn._closed:
                continue
            try:
                conn._flush()
            except Exception:   # one broken transport must not hold the others' replies
                log.exception("writing replies failed")
                conn.transport.abort()

    async def start(self, host="127.0.0.1", port=0, *, tls_port=0, ssl=None, **kwargs):
        """Listen on host:port (None: no plaintext listener) and, with `ssl` (an SSLContext,
        kvnet/tlsconfig.py), on host:tls_port speaking TLS; both serve the same commands. A
        TLS connection is the same RespProtocol over asyncio's TLS transport: the plaintext
        listener's connections run no TLS code."""
        if port is None and ssl is None:
            raise ValueError("no listener: give a port, or ssl and tls_port")
        if port is not None:
            self.server = await self.loop.create_server(lambda: RespProtocol(self), host, port,
                                                        **kwargs)
        if ssl is not None:
            try:
                self.tls_server = await self.loop.create_server(
                    lambda: RespProtocol(self), host, tls_port, ssl=ssl,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT, **kwargs)
            except BaseException:
                await self.close()
                raise
        self.commands.tcp_port = self.port
        return self

    @property
    def port(self) -> int:
        """The plaintext port (the TLS one when there is no plaintext listener)."""
        server = self.server if self.server is not None else self.tls_server
        return server.sockets[0].getsockname()[1]

    @property
    def tls_port(self) -> int:
        """The TLS port, or 0."""
        return 0 if self.tls_server is None else self.tls_server.sockets[0].getsockname()[1]

    @property
    def sockets(self):
        return [s for srv in (self.server, self.tls_server) if srv is not None
                for s in srv.sockets]

    async def close(self):
        """Stop listening, close every connection, wait until the listeners are gone."""
        listeners = [srv for srv in (self.server, self.tls_server) if srv is not None]
        for srv in listeners:
            srv.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for srv in listeners:
            await srv.wait_closed()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


def options_from(cfg) -> dict:
    """RespServer's options from a node's settings (kvnet/config.py, docs/security.md): its
    users, timeouts and limits; a bulk may be a value, key or context (kvnet/payload.py) and a
    little more, a command as big as the input budget."""
    from kvnet.payload import MAX_CONTEXT_BYTES
    return {"password": cfg.default_password, "users": cfg.users,
            "allow_flush": cfg.allow_flush, "max_clients": cfg.max_connections,
            "idle_timeout": cfg.idle_timeout_s, "auth_timeout": cfg.auth_timeout_s,
            "max_input": cfg.max_client_input_bytes,
            "max_bulk": max(cfg.max_value_bytes, cfg.max_key_bytes, MAX_CONTEXT_BYTES) + BULK_ROOM,
            "max_command": min(MAX_COMMAND, cfg.max_client_input_bytes)}


async def serve(backend, host="127.0.0.1", port=0, password=None, *, tls_port=0, ssl=None,
                **options) -> RespServer:
    """Start a RESP server for `backend` on host:port (port 0: any free port; see `.port`;
    None: no plaintext port) and, with `ssl`, on host:tls_port over TLS (see `.tls_port`)."""
    server = RespServer(backend, password=password, **options)
    return await server.start(host, port, tls_port=tls_port, ssl=ssl)
