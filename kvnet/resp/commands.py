"""The RESP command table and dispatch, free of I/O (docs/resp.md lists every command).

`Commands.execute(session, argv)` checks the name, arity and authentication as Redis does
(in that order), runs the handler against the `Backend`, and returns a reply value for
kvnet.resp.replies.encode; errors come back as values too (KVNetError or ErrorReply), so a
bad command never breaks the connection. Server-side commands (INFO, CLIENT, COMMAND,
CONFIG, HELLO, AUTH) live in kvnet/resp/admin.py.
"""
import hmac
import itertools
import logging
import time

from kvcore._native import NO_EXTENSIONS, select
from kvcore.versions import InvalidContext
from kvnet.errors import CommandError, KVNetError, NoAuth, NoPerm, WrongArity, WrongPass
from kvnet.resp import admin
from kvnet.acl import ADMIN, NONE, digest_of, required_level
from kvnet.resp.backend import LATER
from kvnet.resp.replies import OK, PONG, ErrorReply, Simple
from kvnet.stepping import COROUTINE_TYPES, FUTURE_TYPES

__all__ = ["Command", "Commands", "Session", "REDIS_VERSION", "unknown_command"]

_ReqStats = select("kvnet.reqstats", "kvnet.reqstats_py").ReqStats

log = logging.getLogger("kvnet.resp")

REDIS_VERSION = admin.REDIS_VERSION
MAX_SCAN_COUNT = 100_000
_SET_OPTIONS = {"EX", "PX", "EXAT", "PXAT", "NX", "XX", "KEEPTTL", "GET", "IFEQ"}
_U64 = (1 << 64) - 1


class Command:
    """One table entry, in the shape COMMAND INFO reports (Redis 7)."""

    __slots__ = ("name", "arity", "flags", "first", "last", "step", "handler", "group",
                 "categories", "subcommands", "now", "then", "level")

    def __init__(self, name, arity, flags, first, last, step, handler, group="generic",
                 categories=(), subcommands=None, now=None, then=None):
        self.name = name
        # now(ctx, session, argv): the reply when it is known without waiting, LATER (the
        # coroutine `handler` runs then), or a Future the backend settles: `then` maps its
        # result to the reply (Commands.dispatch).
        self.now = now
        self.then = then
        self.arity = arity
        self.flags = frozenset(flags)
        self.first, self.last, self.step = first, last, step
        self.handler = handler
        self.group = group
        self.categories = tuple(categories)
        self.subcommands = subcommands  # {b"setname": Command(name="client|setname"), ...}
        self.level = required_level(self)   # the role it needs (kvnet/acl.py)

    def arity_ok(self, argc: int) -> bool:
        a = self.arity
        return argc == a if a > 0 else argc >= -a

    def __repr__(self):
        return f"Command({self.name!r}, {self.arity})"


class Session:
    """Per-connection state: protocol, name, id, authentication (its user and the level of
    its role, kvnet/acl.py), database, closing."""

    __slots__ = ("id", "addr", "laddr", "protocol", "name", "authenticated", "db", "created",
                 "last_active", "last_command", "closing", "lib_name", "lib_ver", "pending",
                 "slot", "started", "user", "level")

    def __init__(self, id, addr="", laddr="", authenticated=True):
        self.id = id
        self.addr = addr
        self.laddr = laddr
        self.protocol = 2
        self.name = b""
        self.authenticated = authenticated
        self.user = b"default"
        self.level = ADMIN if authenticated else NONE
        self.db = 0
        self.created = self.last_active = time.time()
        self.last_command = "NULL"
        self.closing = False   # set by QUIT: the server closes after this reply
        self.lib_name = b""
        self.lib_ver = b""
        self.pending = None    # the command of the backend future dispatch() returned last
        # the request counts' slot and start (time.monotonic_ns) of the command dispatch()
        # returned last unfinished (a future or coroutine): the server counts it once answered
        self.slot = -1
        self.started = 0


def unknown_command(argv) -> ErrorReply:
    """Redis' exact text: the name and the first arguments, each quoted and followed by a space."""
    args = ""
    for a in argv[1:]:
        if len(args) >= 128:
            break
        args += "'%s' " % _text(a)[:128 - len(args)]
    return ErrorReply(f"ERR unknown command '{_text(argv[0])[:128]}', with args beginning with: {args}")


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


class Commands:
    """The command table bound to a backend and this server's settings."""

    def __init__(self, backend, *, password=None, users=(), allow_flush=True, tcp_port=0,
                 max_clients=10000, idle_timeout=0, config=None, node_name="ringkv"):
        self.backend = backend
        self.password = password.encode() if isinstance(password, str) else password
        # the default user's password digest (None: no password); the named users
        self.default_digest = None if password is None else digest_of(password)
        self.users = {u.name.encode(): u for u in users}
        # without a password the default user needs none, unless named users exist: then it
        # is off, and every connection must AUTH as one of them (docs/security.md)
        self.open = password is None and not self.users
        self.allow_flush = allow_flush
        self.tcp_port = tcp_port
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.node_name = node_name
        self.extra_config = dict(config or {})
        self.started = time.time()
        self.sessions = {}
        self._ids = itertools.count(1)
        self.stats = {"total_connections_received": 0, "total_commands_processed": 0,
                      "rejected_connections": 0, "total_error_replies": 0}
        self.table = build_table()
        # Exact-case lookups first: clients send upper or lower case names.
        self._names = dict(self.table)
        self._names.update((k.upper(), v) for k, v in self.table.items())
        self._key_pos = dict(_KEY_POSITION)
        self._key_pos.update((k.upper(), v) for k, v in _KEY_POSITION.items())
        # request counts and latency histograms per (command, quorum), in C arrays
        # (kvnet/reqstats.pyx; the compiled door adds to the same ones, kvnet/localdoor.pyx)
        self.reqstats = _ReqStats()
        cfg = getattr(backend, "cfg", None)
        self._defaults = {"r": f"r={cfg.r}" if cfg is not None else "r=default",
                          "w": f"w={cfg.w}" if cfg is not None else "w=default"}
        self._slots = {}        # Command -> slot, for the commands whose quorum is fixed
        # bound once: dispatch() calls it on every command (an attribute lookup less)
        self._slot_get = self._slots.get

    # ---- sessions ----------------------------------------------------------------------------

    def open_session(self, addr="", laddr="") -> Session:
        s = Session(next(self._ids), addr, laddr, authenticated=self.open)
        self.sessions[s.id] = s
        self.stats["total_connections_received"] += 1
        return s

    def close_session(self, session: Session) -> None:
        self.sessions.pop(session.id, None)

    def authenticate(self, session: Session, user: bytes, password: bytes) -> None:
        """AUTH and HELLO AUTH: log `session` in as `user` with its role, or raise WrongPass
        (Redis' words; a failed attempt leaves the session as it was)."""
        if user == b"default":
            digest = self.default_digest
            if digest is None and self.open:
                level = ADMIN           # no password: any password works, as in Redis
            elif digest is None or not hmac.compare_digest(digest_of(password), digest):
                raise WrongPass("invalid username-password pair or user is disabled.")
            else:
                level = ADMIN
        else:
            u = self.users.get(user)
            if u is None or not u.check(password):
                raise WrongPass("invalid username-password pair or user is disabled.")
            level = u.level
        session.authenticated = True
        session.user = user
        session.level = level

    # ---- dispatch ----------------------------------------------------------------------------

    def key_of(self, argv):
        """What a pipelined command may run alongside (kvnet/resp/server.py): its one key, ()
        for a command that touches no key and no connection state, or None for a barrier
        (several keys, the whole keyspace, connection state, or a name not known here)."""
        name = argv[0]
        pos = self._key_pos.get(name)
        if pos is None:
            pos = self._key_pos.get(name.lower())
            if pos is None:
                return None
        if pos == 0 or len(argv) < 2:
            return ()              # no key (or an arity error, answered at once)
        if pos < 0 and len(argv) != 2:
            return None            # DEL / EXISTS of several keys
        return argv[1]

    def lookup(self, argv):
        """(command, None) or (None, error reply) for argv, with Redis' checks and messages."""
        cmd = self._names.get(argv[0])
        if cmd is None:
            cmd = self.table.get(argv[0].lower())
            if cmd is None:
                return None, unknown_command(argv)
        if not cmd.arity_ok(len(argv)):
            return None, WrongArity(f"wrong number of arguments for '{cmd.name}' command")
        if cmd.subcommands is not None and len(argv) > 1:
            sub = cmd.subcommands.get(argv[1].lower())
            if sub is None:
                return None, ErrorReply(f"ERR unknown subcommand '{_text(argv[1])[:128]}'. "
                                        f"Try {cmd.name.upper()} HELP.")
            if not sub.arity_ok(len(argv)):
                return None, WrongArity(f"wrong number of arguments for '{sub.name}' command")
            cmd = sub
        return cmd, None

    async def execute(self, session: Session, argv: list):
        """The reply value for one command (errors are returned, not raised)."""
        reply = self.dispatch(session, argv)
        if type(reply) in COROUTINE_TYPES:
            slot, started = session.slot, session.started
            reply = await reply
            _count(self.reqstats, slot, started)
            return reply
        if type(reply) in FUTURE_TYPES:
            cmd, slot, started = session.pending, session.slot, session.started
            try:
                await reply
            except Exception:
                pass                # settle() makes it the error reply
            _count(self.reqstats, slot, started)
            return self.settle(cmd, reply)
        return reply

    def slot_of(self, cmd, argv=None):
        """The request counts' slot of `cmd` (of argv: a KV.* command's R or W option)."""
        slot = self._slots.get(cmd)
        if slot is not None:
            return slot
        rw = _QUORUM_OF.get(cmd.name)
        label = "none" if rw is None else self._defaults[rw]
        if cmd.name in _QUORUM_OPTION:
            if argv is not None:
                label = _quorum_label(argv, rw, label)
            return self.reqstats.slot(cmd.name, label)
        slot = self._slots[cmd] = self.reqstats.slot(cmd.name, label)
        return slot

    def count(self, slot, started):
        """A command of `slot` dispatched at `started` (time.monotonic_ns) is answered."""
        _count(self.reqstats, slot, started)

    def dispatch(self, session: Session, argv: list):
        """execute() without a coroutine where it can: the reply value when the command
        completes at once (its `now` path); a backend's Future when the backend settles it
        from callbacks (then `session.pending` is the command, and `settle(cmd, future)` the
        reply once it is done); else a coroutine of the reply."""
        self.stats["total_commands_processed"] += 1
        cmd = self._names.get(argv[0])
        # The common case inline (a known name in upper or lower case, no subcommand, the
        # right arity); lookup() does every check and message otherwise.
        if cmd is None or cmd.subcommands is not None or not (
                len(argv) == cmd.arity if cmd.arity > 0 else len(argv) >= -cmd.arity):
            cmd, err = self.lookup(argv)
            if cmd is None:
                self.stats["total_error_replies"] += 1
                return err
        if cmd.level > session.level or not session.authenticated:
            if not session.authenticated:
                if "no_auth" not in cmd.flags:
                    self.stats["total_error_replies"] += 1
                    return NoAuth("Authentication required.")
            else:
                self.stats["total_error_replies"] += 1
                return NoPerm(f"User {_text(session.user)} has no permissions to run the "
                              f"'{cmd.name}' command")
        session.last_command = cmd.name
        session.last_active = time.time()
        reqstats = self.reqstats
        started = _now(reqstats)
        slot = self._slot_get(cmd)
        if slot is None:
            slot = self.slot_of(cmd, argv)
        now = cmd.now
        if now is not None:
            try:
                reply = now(self, session, argv)
            except Exception as exc:
                _count(reqstats, slot, started)
                return self._error_reply(cmd, exc)
            if reply is not LATER:
                if type(reply) in FUTURE_TYPES:
                    session.pending = cmd
                    session.slot = slot
                    session.started = started
                else:
                    _count(reqstats, slot, started)
                return reply
        session.slot = slot
        session.started = started
        return self._handle(cmd, session, argv)

    def settle(self, cmd, fut):
        """The reply of a done backend future of `cmd` (dispatch): `cmd.then` of its result,
        or the error reply of its exception."""
        if fut.cancelled():
            return ErrorReply("ERR request cancelled")
        exc = fut.exception()
        if exc is not None:
            return self._error_reply(cmd, exc)
        return fut.result() if cmd.then is None else cmd.then(fut.result())

    async def _handle(self, cmd, session, argv):
        try:
            return await cmd.handler(self, session, argv)
        except Exception as exc:
            return self._error_reply(cmd, exc)

    def _error_reply(self, cmd, exc):
        self.stats["total_error_replies"] += 1
        if isinstance(exc, KVNetError):
            return exc
        if isinstance(exc, InvalidContext):
            return CommandError(f"invalid context: {exc}")
        # a bug must not take the connection down
        log.error("command %s failed", cmd.name, exc_info=exc)
        return ErrorReply(f"ERR internal error in '{cmd.name}': {type(exc).__name__}")


# Commands that may run concurrently with other commands of the same pipeline: 1 = the key is
# argv[1], -1 = only when argv[1] is the one key, 0 = no key and no connection state.
_KEY_POSITION = {
    b"get": 1, b"set": 1, b"type": 1, b"ttl": 1, b"pttl": 1,
    b"kv.get": 1, b"kv.put": 1, b"kv.del": 1, b"kv.preflist": 1,
    b"del": -1, b"exists": -1,
    b"ping": 0, b"echo": 0,
}


# The request counts' quorum label (kvnet/reqstats.pyx): the R or W a command reads or writes
# with; the KV.* commands' R or W option, when given, instead of the node's default.
_QUORUM_OF = {"get": "r", "mget": "r", "exists": "r", "type": "r", "ttl": "r", "pttl": "r",
              "kv.get": "r", "set": "w", "del": "w", "mset": "w", "kv.put": "w", "kv.del": "w"}
_QUORUM_OPTION = frozenset(("kv.get", "kv.put", "kv.del"))


# The compiled ReqStats, whose methods the compiled module calls in C (commands.pxd types
# `rs`); None with RINGKV_NO_EXTENSIONS=1, where Commands holds the Python twin (which this
# module, compiled or not, calls as Python).
_TYPED = None if NO_EXTENSIONS else _ReqStats


def _now(reqstats):
    """The request counts' clock, time.monotonic_ns's (one C call compiled, where
    time.monotonic_ns() is a Python call)."""
    if type(reqstats) is _TYPED:
        rs = reqstats
        return rs.now()
    return reqstats.now()


def _count(reqstats, slot, started):
    """One command of `slot` dispatched at `started` (_now) is answered."""
    if type(reqstats) is _TYPED:
        rs = reqstats
        rs.record(slot, started)
    else:
        reqstats.record(slot, started)


def _quorum_label(argv, rw, default):
    """`r=<R>` / `w=<W>` of a KV.* command's option (ONE, QUORUM, ALL or 1 to 99), else
    `default` (labels stay few whatever a client sends)."""
    opt = rw.encode()
    for i in range(len(argv) - 2, 1, -1):
        if argv[i].lower() == opt:
            val = argv[i + 1].lower()
            if val in (b"one", b"quorum", b"all") or (val.isdigit() and 0 < len(val) < 3
                                                      and int(val) > 0):
                return f"{rw}={val.decode()}"
            break
    return default


# ---- argument helpers -------------------------------------------------------------------------

def _int(b: bytes, lo=None, hi=None) -> int:
    try:
        v = int(b)
    except ValueError:
        raise CommandError("value is not an integer or out of range") from None
    if (lo is not None and v < lo) or (hi is not None and v > hi) or not b.strip(b"-").isdigit():
        raise CommandError("value is not an integer or out of range")
    return v


def _quorum(opt: str, b: bytes):
    name = b.lower()
    if name in (b"one", b"quorum", b"all"):
        return name.decode()
    if b.isdigit() and 0 < len(b) < 10 and int(b) >= 1:
        return int(b)
    raise CommandError(f"{opt} must be a number >= 1 or ONE, QUORUM or ALL, got '{_text(b)}'")


def _kv_options(argv, start, allowed):
    """KEYWORD [value] options of the KV.* commands -> dict; STRICT takes no value; R, W and
    DURABLE take a number or ONE, QUORUM or ALL."""
    out = {}
    i = start
    while i < len(argv):
        opt = argv[i].upper().decode("ascii", "replace")
        if opt not in allowed:
            raise CommandError(f"syntax error: unknown option '{_text(argv[i])}' "
                               f"(expected {', '.join(sorted(allowed))})")
        if opt == "STRICT":
            out["strict"] = True
            i += 1
            continue
        if i + 1 >= len(argv):
            raise CommandError(f"syntax error: {opt} needs a value")
        val = argv[i + 1]
        if opt in ("R", "W", "DURABLE"):
            out[opt.lower()] = _quorum(opt, val)
        else:
            out[opt.lower()] = val
        i += 2
    return out


# ---- data commands ----------------------------------------------------------------------------

def ping_now(ctx, s, argv):
    if len(argv) > 2:
        raise WrongArity("wrong number of arguments for 'ping' command")
    return PONG if len(argv) == 1 else argv[1]


async def cmd_ping(ctx, s, argv):
    return ping_now(ctx, s, argv)


async def cmd_echo(ctx, s, argv):
    return argv[1]


def get_now(ctx, s, argv):
    return ctx.backend.get_lww_now(argv[1])


def cmd_get(ctx, s, argv):
    # Returns the backend's coroutine for execute() to await: one coroutine less per GET.
    return ctx.backend.get_lww(argv[1])


def set_now(ctx, s, argv):
    if len(argv) > 3:
        _set_options(argv)
    done = ctx.backend.set_overwrite_now(argv[1], argv[2])
    return OK if done is None else done      # or LATER, or the future of the write


def _ok(_):
    return OK


def _set_options(argv):
    for opt in argv[3:]:
        name = opt.upper().decode("ascii", "replace")
        if name in _SET_OPTIONS:
            raise CommandError(f"SET option {name} is not supported by ringkv")
        raise CommandError("syntax error")


async def cmd_set(ctx, s, argv):
    _set_options(argv)
    await ctx.backend.set_overwrite(argv[1], argv[2])
    return OK


async def cmd_del(ctx, s, argv):
    n = 0
    backend = ctx.backend
    for key in argv[1:]:
        if await backend.delete_overwrite(key):
            n += 1
    return n


async def cmd_exists(ctx, s, argv):
    return await ctx.backend.exists(argv[1:])


async def cmd_mget(ctx, s, argv):
    return await ctx.backend.mget(argv[1:])


async def cmd_mset(ctx, s, argv):
    if len(argv) % 2 == 0:
        raise WrongArity("wrong number of arguments for 'mset' command")
    await ctx.backend.mset([(argv[i], argv[i + 1]) for i in range(1, len(argv), 2)])
    return OK


async def cmd_select(ctx, s, argv):
    db = _int(argv[1])
    if db != 0:
        raise CommandError("DB index is out of range (ringkv has one database, 0)")
    return OK


async def cmd_dbsize(ctx, s, argv):
    return await ctx.backend.dbsize_estimate()


async def cmd_scan(ctx, s, argv):
    raw = argv[1]
    if not raw.isdigit() or len(raw) > 20 or int(raw) > _U64:
        raise CommandError("invalid cursor")
    cursor = int(raw)
    match, count, type_ok = None, 10, True
    i = 2
    while i < len(argv):
        opt = argv[i].upper()
        if i + 1 >= len(argv):
            raise CommandError("syntax error")
        if opt == b"MATCH":
            match = argv[i + 1]
            if match == b"*":
                match = None
        elif opt == b"COUNT":
            count = _int(argv[i + 1])
            if count < 1:
                raise CommandError("syntax error")
            count = min(count, MAX_SCAN_COUNT)
        elif opt == b"TYPE":
            type_ok = argv[i + 1].lower() == b"string"  # every ringkv value is a string
        else:
            raise CommandError("syntax error")
        i += 2
    nxt, keys = await ctx.backend.scan(cursor, match, count)
    return [b"%d" % nxt, keys if type_ok else []]


async def cmd_flush(ctx, s, argv):
    name = argv[0].upper().decode("ascii", "replace")
    if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError("syntax error")
    if not ctx.allow_flush:
        raise CommandError(f"{name} is disabled on this node (allow_flush is off in its config)")
    await ctx.backend.flush()
    return OK


async def cmd_quit(ctx, s, argv):
    s.closing = True
    return OK


async def cmd_type(ctx, s, argv):
    return Simple("string" if await ctx.backend.get_lww(argv[1]) is not None else "none")


async def cmd_ttl(ctx, s, argv):
    return -1 if await ctx.backend.get_lww(argv[1]) is not None else -2


# ---- KV.* commands ----------------------------------------------------------------------------

async def cmd_kv_get(ctx, s, argv):
    opts = _kv_options(argv, 2, {"R", "STRICT"})
    reply = await ctx.backend.get(argv[1], r=opts.get("r"), strict=opts.get("strict", False))
    return [reply.context, kv_values(reply.siblings)]


def kv_values(siblings) -> list:
    """KV.GET's values: newest first; tombstones as nulls, and no values at all when every
    sibling is a tombstone (the key reads as not found)."""
    if not any(sib.value is not None for sib in siblings):
        return []
    ordered = sorted(siblings, key=lambda x: (x.timestamp, x.value is None, x.value or b""),
                     reverse=True)
    return [sib.value for sib in ordered]


async def cmd_kv_put(ctx, s, argv):
    opts = _kv_options(argv, 3, {"CONTEXT", "W", "STRICT", "DURABLE"})
    return await ctx.backend.put(argv[1], argv[2], context=opts.get("context") or None,
                                 w=opts.get("w"), strict=opts.get("strict", False),
                                 durable=opts.get("durable"))


async def cmd_kv_del(ctx, s, argv):
    opts = _kv_options(argv, 2, {"CONTEXT", "W", "STRICT", "DURABLE"})
    return await ctx.backend.delete(argv[1], context=opts.get("context") or None,
                                    w=opts.get("w"), strict=opts.get("strict", False),
                                    durable=opts.get("durable"))


# KV.TRACE's commands, and the options each takes after its key (and value)
_TRACED = {"get": None, "set": None, "del": None, "kv.get": (2, {"R", "STRICT"}),
           "kv.put": (3, {"CONTEXT", "W", "STRICT"}), "kv.del": (2, {"CONTEXT", "W", "STRICT"})}


async def cmd_kv_trace(ctx, s, argv):
    """KV.TRACE command [args ...]: run one GET, SET, DEL, KV.GET, KV.PUT or KV.DEL through
    the coordinator's general path and reply what it did, replica by replica (the backend's
    trace(); docs/observability.md, "KV.TRACE"). It needs the role of the command it runs."""
    args = argv[1:]
    inner = ctx.table.get(args[0].lower())
    if inner is None or inner.name not in _TRACED:
        raise CommandError(f"KV.TRACE runs GET, SET, DEL, KV.GET, KV.PUT or KV.DEL, not "
                           f"'{_text(args[0])[:128]}'")
    if not inner.arity_ok(len(args)):
        raise WrongArity(f"wrong number of arguments for '{inner.name}' command")
    if inner.level > s.level:
        raise NoPerm(f"User {_text(s.user)} has no permissions to run the '{inner.name}' "
                     "command")
    trace = getattr(ctx.backend, "trace", None)
    if trace is None:
        raise CommandError("KV.TRACE needs a ringkv node: this backend has no coordinator")
    name = inner.name
    value = args[2] if name in ("set", "kv.put") else None
    opts = {}
    if name == "set" and len(args) > 3:
        _set_options(args)
    elif name == "del" and len(args) > 2:
        raise CommandError("KV.TRACE DEL takes one key")
    elif _TRACED[name] is not None:
        start, allowed = _TRACED[name]
        opts = _kv_options(args, start, allowed)
    shown = [name.upper(), _text(args[1])[:128]]
    if value is not None:
        shown.append(f"<{len(value)} bytes>")
    shown.extend(_text(a)[:64] for a in args[3 if value is not None else 2:])
    return await trace(name, args[1], value, opts.get("context") or None,
                       opts.get("r", opts.get("w")), opts.get("strict", False), " ".join(shown))


async def cmd_kv_stats(ctx, s, argv):
    """KV.STATS: this node's read staleness per R and canary convergence per W."""
    telemetry = getattr(ctx.backend, "telemetry", None)
    if telemetry is None:
        raise CommandError("KV.STATS needs a ringkv node: this backend keeps no such counts")
    return await telemetry()


async def cmd_kv_ring(ctx, s, argv):
    return await ctx.backend.ring_info()


async def cmd_kv_preflist(ctx, s, argv):
    return await ctx.backend.preflist(argv[1])


async def cmd_kv_status(ctx, s, argv):
    return await ctx.backend.status()


async def cmd_kv_cluster(ctx, s, argv):
    if len(argv) > 3:
        raise CommandError("syntax error: KV.CLUSTER JOIN|LEAVE|REMOVE|CLEAR node, PLAN, COMMIT "
                           "or TRANSFERS")
    return await ctx.backend.cluster_admin(_text(argv[1]), _text(argv[2]) if len(argv) > 2 else None)


async def cmd_kv_compact(ctx, s, argv):
    if len(argv) > 2:
        raise CommandError("syntax error: KV.COMPACT [partition]")
    part = None
    if len(argv) == 2:
        part = _int(argv[1])
        if part < 0:
            raise CommandError("partition must be a non-negative integer")
    return await ctx.backend.compact(part)


# ---- the table --------------------------------------------------------------------------------

def build_table() -> dict:
    """name (lowercase bytes) -> Command."""
    C = Command
    R, W, F = "readonly", "write", "fast"
    cmds = [
        C("ping", -1, [F, "stale", "loading"], 0, 0, 0, cmd_ping, "connection", ["@fast", "@connection"],
          now=ping_now),
        C("echo", 2, [F, "stale", "loading"], 0, 0, 0, cmd_echo, "connection", ["@fast", "@connection"]),
        C("get", 2, [R, F], 1, 1, 1, cmd_get, "string", ["@read", "@string", "@fast"], now=get_now),
        C("set", -3, [W, "denyoom"], 1, 1, 1, cmd_set, "string", ["@write", "@string", "@slow"],
          now=set_now, then=_ok),
        C("del", -2, [W], 1, -1, 1, cmd_del, "generic", ["@keyspace", "@write", "@slow"]),
        C("exists", -2, [R, F], 1, -1, 1, cmd_exists, "generic", ["@keyspace", "@read", "@fast"]),
        C("mget", -2, [R, F], 1, -1, 1, cmd_mget, "string", ["@read", "@string", "@fast"]),
        C("mset", -3, [W, "denyoom"], 1, -1, 2, cmd_mset, "string", ["@write", "@string", "@slow"]),
        C("type", 2, [R, F], 1, 1, 1, cmd_type, "generic", ["@keyspace", "@read", "@fast"]),
        C("ttl", 2, [R, F], 1, 1, 1, cmd_ttl, "generic", ["@keyspace", "@read", "@fast"]),
        C("pttl", 2, [R, F], 1, 1, 1, cmd_ttl, "generic", ["@keyspace", "@read", "@fast"]),
        C("select", 2, ["loading", "stale", F], 0, 0, 0, cmd_select, "connection", ["@fast", "@connection"]),
        C("dbsize", 1, [R, F], 0, 0, 0, cmd_dbsize, "server", ["@keyspace", "@read", "@fast"]),
        C("scan", -2, [R], 0, 0, 0, cmd_scan, "generic", ["@keyspace", "@read", "@slow"]),
        C("flushdb", -1, [W], 0, 0, 0, cmd_flush, "server", ["@keyspace", "@write", "@slow", "@dangerous"]),
        C("flushall", -1, [W], 0, 0, 0, cmd_flush, "server", ["@keyspace", "@write", "@slow", "@dangerous"]),
        C("quit", -1, ["no_auth", "allow_busy", F, "loading", "stale"], 0, 0, 0, cmd_quit,
          "connection", ["@fast", "@connection"]),
        C("kv.get", -2, [R], 1, 1, 1, cmd_kv_get, "ringkv", ["@read", "@slow"]),
        C("kv.put", -3, [W, "denyoom"], 1, 1, 1, cmd_kv_put, "ringkv", ["@write", "@slow"]),
        C("kv.del", -2, [W], 1, 1, 1, cmd_kv_del, "ringkv", ["@write", "@slow"]),
        C("kv.ring", 1, [R, "stale"], 0, 0, 0, cmd_kv_ring, "ringkv", ["@read", "@slow"]),
        C("kv.preflist", 2, [R, "stale"], 1, 1, 1, cmd_kv_preflist, "ringkv", ["@read", "@slow"]),
        C("kv.status", 1, [R, "stale"], 0, 0, 0, cmd_kv_status, "ringkv", ["@read", "@slow"]),
        C("kv.cluster", -2, ["admin", "stale"], 0, 0, 0, cmd_kv_cluster, "ringkv",
          ["@admin", "@slow", "@dangerous"]),
        C("kv.compact", -1, ["admin"], 0, 0, 0, cmd_kv_compact, "ringkv", ["@admin", "@slow"]),
        # readonly: KV.TRACE itself needs the read role; its handler asks the traced
        # command's role on top (write for SET, DEL, KV.PUT, KV.DEL)
        C("kv.trace", -3, [R], 2, 2, 1, cmd_kv_trace, "ringkv", ["@read", "@slow"]),
        C("kv.stats", 1, [R, "stale"], 0, 0, 0, cmd_kv_stats, "ringkv", ["@read", "@slow"]),
    ]
    cmds.extend(admin.commands(Command))
    return {c.name.encode(): c for c in cmds}
