"""Server and connection commands: AUTH, HELLO, CLIENT, COMMAND, CONFIG, INFO (docs/resp.md).

Their replies follow Redis 7 field by field, because clients read them at connect time
(redis-py's HELLO and CLIENT SETINFO, redis-cli's COMMAND DOCS, redis-benchmark's CONFIG GET).
"""
import os
import platform
import resource
import sys
import time

from kvnet.acl import acl_rules
from kvnet.errors import CommandError, NoAuth
from kvnet.metrics import latency_percentiles
from kvnet.resp.glob import compile_glob
from kvnet.resp.replies import OK, ErrorReply, Simple, Verbatim

REDIS_VERSION = "7.2.0"
RINGKV_VERSION = "0.1.0"
_RUN_ID = os.urandom(20).hex()
_BAD_NAME_CHARS = set(range(0, 33)) | {127}


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


# ---- AUTH and HELLO ---------------------------------------------------------------------------

async def cmd_auth(ctx, s, argv):
    if len(argv) > 3:
        raise CommandError("syntax error")
    if len(argv) == 2:
        if ctx.open:
            raise CommandError("AUTH <password> called without any password configured for the "
                               "default user. Are you sure your configuration is correct?")
        ctx.authenticate(s, b"default", argv[1])
    else:
        ctx.authenticate(s, argv[1], argv[2])
    return OK


async def cmd_hello(ctx, s, argv):
    proto = None
    if len(argv) > 1:
        try:
            proto = int(argv[1])
        except ValueError:
            raise CommandError("Protocol version is not an integer or out of range") from None
        if proto not in (2, 3):
            return ErrorReply("NOPROTO unsupported protocol version")
    auth = name = None
    i = 2
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"AUTH" and i + 2 < len(argv):
            auth = (argv[i + 1], argv[i + 2])
            i += 3
        elif opt == b"SETNAME" and i + 1 < len(argv):
            name = argv[i + 1]
            i += 2
        else:
            raise CommandError(f"Syntax error in HELLO option '{_text(argv[i])}'")
    if auth is not None:
        ctx.authenticate(s, *auth)
    if not s.authenticated:
        raise NoAuth("HELLO must be called with the client already authenticated, otherwise the "
                     "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the "
                     "client and select the RESP protocol version at the same time")
    if name is not None:
        _set_name(s, name)
    if proto is not None:
        s.protocol = proto
    return {"server": "redis", "version": REDIS_VERSION, "proto": s.protocol, "id": s.id,
            "mode": "standalone", "role": "master", "modules": []}


# ---- CLIENT -----------------------------------------------------------------------------------

def _set_name(s, name: bytes) -> None:
    if any(c in _BAD_NAME_CHARS for c in name):
        raise CommandError("Client names cannot contain spaces, newlines or special characters.")
    s.name = name


async def cmd_client_setname(ctx, s, argv):
    _set_name(s, argv[2])
    return OK


async def cmd_client_getname(ctx, s, argv):
    return s.name or None


async def cmd_client_id(ctx, s, argv):
    return s.id


async def cmd_client_setinfo(ctx, s, argv):
    attr = argv[2].upper()
    if attr not in (b"LIB-NAME", b"LIB-VER"):
        raise CommandError(f"Unrecognized option '{_text(argv[2])}'")
    if any(c in _BAD_NAME_CHARS for c in argv[3]):
        raise CommandError(f"{_text(attr)} cannot contain spaces, newlines or special characters.")
    if attr == b"LIB-NAME":
        s.lib_name = argv[3]
    else:
        s.lib_ver = argv[3]
    return OK


def client_line(s, now=None) -> str:
    """One CLIENT LIST line, with Redis' field names (values we do not track are zero)."""
    now = time.time() if now is None else now
    return (f"id={s.id} addr={s.addr} laddr={s.laddr} fd=-1 name={_text(s.name)} "
            f"age={int(now - s.created)} idle={int(now - s.last_active)} flags=N db={s.db} "
            "sub=0 psub=0 ssub=0 multi=-1 watch=0 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 "
            "rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r "
            f"cmd={s.last_command} user={_text(s.user)} redir=-1 resp={s.protocol} "
            f"lib-name={_text(s.lib_name)} lib-ver={_text(s.lib_ver)}")


async def cmd_client_info(ctx, s, argv):
    return Verbatim(client_line(s) + "\n")


async def cmd_client_list(ctx, s, argv):
    sessions = list(ctx.sessions.values())
    if len(argv) > 2:
        opt = argv[2].upper()
        if opt == b"ID" and len(argv) > 3:
            ids = set()
            for raw in argv[3:]:
                try:
                    ids.add(int(raw))
                except ValueError:
                    raise CommandError("Invalid client ID") from None
            sessions = [x for x in sessions if x.id in ids]
        elif opt == b"TYPE" and len(argv) == 4:
            if argv[3].lower() not in (b"normal", b"master", b"replica", b"pubsub"):
                raise CommandError(f"Unknown client type '{_text(argv[3])}'")
            if argv[3].lower() != b"normal":
                sessions = []
        else:
            raise CommandError("syntax error")
    now = time.time()
    return Verbatim("".join(client_line(x, now) + "\n" for x in sessions))


async def cmd_client_ok(ctx, s, argv):
    return OK


async def cmd_client_help(ctx, s, argv):
    return [Simple(line) for line in (
        "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "GETNAME", "    Return the name of the current connection.",
        "ID", "    Return the ID of the current connection.",
        "INFO", "    Return information about the current client connection.",
        "LIST [TYPE normal] [ID id ...]", "    Return information about client connections.",
        "SETINFO <LIB-NAME|LIB-VER> <value>", "    Set client library name or version.",
        "SETNAME <name>", "    Assign the name <name> to the current connection.",
        "NO-EVICT|NO-TOUCH (ON|OFF)", "    Accepted and ignored.",
        "HELP", "    Print this help.")]


# ---- ACL (the read-only part: users are configured, docs/security.md) --------------------

async def cmd_acl_whoami(ctx, s, argv):
    return s.user


async def cmd_acl_users(ctx, s, argv):
    return [b"default"] + sorted(ctx.users)


async def cmd_acl_list(ctx, s, argv):
    lines = []
    if ctx.default_digest is not None or ctx.open:
        lines.append(acl_rules("default", ctx.default_digest, 3))
    else:
        lines.append("user default off nopass resetchannels -@all")
    for name in sorted(ctx.users):
        u = ctx.users[name]
        lines.append(acl_rules(u.name, u.digest, u.level))
    return lines


async def cmd_acl_help(ctx, s, argv):
    return [Simple(line) for line in (
        "ACL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "WHOAMI", "    Return the current connection username.",
        "USERS", "    List all the configured usernames.",
        "LIST", "    Show users details in config file format.",
        "HELP", "    Print this help.",
        "Users and their roles come from the node's configuration (docs/security.md).")]


# ---- COMMAND ----------------------------------------------------------------------------------

def command_info(c) -> list:
    """COMMAND INFO's entry: name, arity, flags, first/last/step, ACL categories, tips, key
    specs, subcommands (Redis 7)."""
    subs = [command_info(x) for x in (c.subcommands or {}).values()]
    return [c.name.encode(), c.arity, {Simple(f) for f in sorted(c.flags)}, c.first, c.last,
            c.step, {Simple(x) for x in c.categories}, [], [], subs]


async def cmd_command(ctx, s, argv):
    return [command_info(c) for c in ctx.table.values()]


async def cmd_command_count(ctx, s, argv):
    return len(ctx.table)


async def cmd_command_info(ctx, s, argv):
    names = argv[2:] or list(ctx.table)
    return [command_info(ctx.table[n.lower()]) if n.lower() in ctx.table else None for n in names]


async def cmd_command_docs(ctx, s, argv):
    # Empty: redis-cli falls back to its built-in help; docs/resp.md documents the commands.
    return {}


async def cmd_command_list(ctx, s, argv):
    return [name for name in ctx.table]


async def cmd_command_help(ctx, s, argv):
    return [Simple(line) for line in (
        "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "(no subcommand)", "    Return details about all commands.",
        "COUNT", "    Return the total number of commands.",
        "DOCS [<command-name> ...]", "    Return documentation (empty in ringkv).",
        "INFO [<command-name> ...]", "    Return details about the given commands.",
        "LIST", "    Return the names of all commands.",
        "HELP", "    Print this help.")]


# ---- CONFIG -----------------------------------------------------------------------------------

def config_values(ctx) -> dict:
    """What CONFIG GET reports: Redis' names with ringkv's effective values (as strings)."""
    parser_limits = getattr(ctx, "parser_limits", {})
    values = {
        "bind": "127.0.0.1", "port": str(ctx.tcp_port), "databases": "1", "save": "",
        "appendonly": "no", "appendfsync": "everysec", "maxmemory": "0",
        "maxmemory-policy": "noeviction", "maxclients": str(ctx.max_clients),
        "timeout": str(int(ctx.idle_timeout or 0)), "cluster-enabled": "no",
        "protected-mode": "no", "io-threads": "1", "tcp-keepalive": "300",
        "proto-max-bulk-len": str(parser_limits.get("max_bulk", 512 * 1024 * 1024)),
        "client-query-buffer-limit": str(parser_limits.get("max_command", 1024 * 1024 * 1024)),
        "slowlog-log-slower-than": "10000", "notify-keyspace-events": "", "lua-time-limit": "5000",
        "busy-reply-threshold": "5000", "replica-read-only": "yes", "daemonize": "no",
        "loglevel": "notice", "hz": "10",
    }
    # Redis answers the password itself; ringkv keeps only its SHA-256 digest, so it answers
    # that in ACL's `#<hex>` form (which requirepass also accepts), or "" for no password.
    digest = getattr(ctx, "default_digest", None)
    values["requirepass"] = "" if digest is None else f"#{digest}"
    values.update(ctx.extra_config)
    return values


async def cmd_config_get(ctx, s, argv):
    values = config_values(ctx)
    out = {}
    for pattern in argv[2:]:
        match = compile_glob(pattern.lower())
        for name, value in values.items():
            if name not in out and match(name.encode()):
                out[name] = value
    return out


async def cmd_config_set(ctx, s, argv):
    raise CommandError("CONFIG SET is not supported by ringkv: settings come from the node's "
                       "configuration and apply at start")


async def cmd_config_rewrite(ctx, s, argv):
    raise CommandError("CONFIG REWRITE is not supported by ringkv")


async def cmd_config_resetstat(ctx, s, argv):
    for k in ctx.stats:
        ctx.stats[k] = 0
    return OK


async def cmd_config_help(ctx, s, argv):
    return [Simple(line) for line in (
        "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "GET <pattern> [<pattern> ...]", "    Return parameters matching the glob-like patterns.",
        "RESETSTAT", "    Reset statistics reported by the INFO command.",
        "HELP", "    Print this help.")]


# ---- INFO -------------------------------------------------------------------------------------

_DEFAULT_SECTIONS = ("server", "clients", "memory", "persistence", "stats", "replication",
                     "cpu", "cluster", "keyspace", "ringkv")
# as Redis 7: latencystats only when asked for by name, or with all / everything
_ALL_SECTIONS = _DEFAULT_SECTIONS[:7] + ("latencystats",) + _DEFAULT_SECTIONS[7:]


async def info_sections(ctx, s) -> dict:
    """section name -> list of (field, value), in Redis' order."""
    now = time.time()
    uptime = int(now - ctx.started)
    uname = platform.uname()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = usage.ru_maxrss * 1024
    keys = await ctx.backend.dbsize_estimate()
    ringkv = await ctx.backend.info_section()
    return {
        "server": [
            ("redis_version", REDIS_VERSION), ("redis_git_sha1", "00000000"), ("redis_git_dirty", 0),
            ("redis_build_id", "0"), ("redis_mode", "standalone"),
            ("os", f"{uname.system} {uname.release} {uname.machine}"),
            ("arch_bits", 64 if sys.maxsize > 2**32 else 32), ("multiplexing_api", "asyncio"),
            ("atomicvar_api", "none"), ("gcc_version", "0.0.0"),
            ("process_id", os.getpid()), ("process_supervised", "no"), ("run_id", _RUN_ID),
            ("tcp_port", ctx.tcp_port), ("server_time_usec", int(now * 1e6)),
            ("uptime_in_seconds", uptime), ("uptime_in_days", uptime // 86400), ("hz", 10),
            ("configured_hz", 10), ("lru_clock", int(now) & 0xFFFFFF),
            ("executable", sys.executable), ("config_file", ""), ("io_threads_active", 0),
            ("ringkv_version", RINGKV_VERSION)],
        "clients": [
            ("connected_clients", len(ctx.sessions)), ("cluster_connections", 0),
            ("maxclients", ctx.max_clients), ("client_recent_max_input_buffer", 0),
            ("client_recent_max_output_buffer", 0), ("blocked_clients", 0),
            ("tracking_clients", 0), ("clients_in_timeout_table", 0), ("total_blocking_keys", 0)],
        "memory": [
            ("used_memory", rss), ("used_memory_human", _human(rss)), ("used_memory_rss", rss),
            ("used_memory_rss_human", _human(rss)), ("maxmemory", 0), ("maxmemory_human", "0B"),
            ("maxmemory_policy", "noeviction"), ("mem_allocator", "libc")],
        "persistence": [
            ("loading", 0), ("async_loading", 0), ("rdb_changes_since_last_save", 0),
            ("rdb_bgsave_in_progress", 0), ("rdb_last_bgsave_status", "ok"),
            ("aof_enabled", 0), ("aof_rewrite_in_progress", 0)],
        "stats": [
            ("total_connections_received", ctx.stats["total_connections_received"]),
            ("total_commands_processed", ctx.stats["total_commands_processed"]),
            ("instantaneous_ops_per_sec", 0),
            ("rejected_connections", ctx.stats["rejected_connections"]),
            ("expired_keys", 0), ("evicted_keys", 0), ("keyspace_hits", 0), ("keyspace_misses", 0),
            ("pubsub_channels", 0), ("pubsub_patterns", 0),
            ("total_error_replies", ctx.stats["total_error_replies"])],
        "replication": [
            ("role", "master"), ("connected_slaves", 0), ("master_failover_state", "no-failover"),
            ("master_replid", _RUN_ID), ("master_repl_offset", 0)],
        "cpu": [
            ("used_cpu_sys", f"{usage.ru_stime:.6f}"), ("used_cpu_user", f"{usage.ru_utime:.6f}"),
            ("used_cpu_sys_children", "0.000000"), ("used_cpu_user_children", "0.000000")],
        # Redis 7's latency percentiles per command, from the front door's histograms
        # (kvnet/reqstats.pyx; docs/observability.md)
        "latencystats": latency_percentiles(ctx.reqstats),
        "cluster": [("cluster_enabled", 0)],
        "keyspace": [("db0", f"keys={keys},expires=0,avg_ttl=0")] if keys else [],
        "ringkv": list(ringkv.items()),
    }


def _human(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "B" else f"{n:.2f}{unit}"
        n /= 1024
    return f"{n}"


async def cmd_info(ctx, s, argv):
    wanted = [a.decode("ascii", "replace").lower() for a in argv[1:]]
    sections = await info_sections(ctx, s)
    if any(w in ("all", "everything") for w in wanted):
        names = list(_ALL_SECTIONS)
    elif not wanted or "default" in wanted:
        names = list(_DEFAULT_SECTIONS)
    else:
        names = [n for n in _ALL_SECTIONS if n in wanted]
    parts = []
    for name in names:
        lines = ["# CPU" if name == "cpu" else f"# {name.capitalize()}"]
        lines.extend(f"{k}:{v}" for k, v in sections[name])
        parts.append("\r\n".join(lines) + "\r\n")
    return Verbatim("\r\n".join(parts))


# ---- the entries ------------------------------------------------------------------------------

def commands(Command) -> list:
    C = Command
    conn = ["@slow", "@connection"]
    client_subs = {
        b"setname": C("client|setname", 3, ["noscript", "loading", "stale"], 0, 0, 0, cmd_client_setname, "connection", conn),
        b"getname": C("client|getname", 2, ["noscript", "loading", "stale"], 0, 0, 0, cmd_client_getname, "connection", conn),
        b"id": C("client|id", 2, ["noscript", "loading", "stale"], 0, 0, 0, cmd_client_id, "connection", conn),
        b"setinfo": C("client|setinfo", 4, ["noscript", "loading", "stale"], 0, 0, 0, cmd_client_setinfo, "connection", conn),
        b"info": C("client|info", 2, ["noscript", "loading", "stale"], 0, 0, 0, cmd_client_info, "connection", conn),
        b"list": C("client|list", -2, ["admin", "noscript", "loading", "stale"], 0, 0, 0, cmd_client_list, "connection", conn),
        b"no-evict": C("client|no-evict", 3, ["admin", "noscript", "loading", "stale"], 0, 0, 0, cmd_client_ok, "connection", conn),
        b"no-touch": C("client|no-touch", 3, ["noscript", "loading", "stale"], 0, 0, 0, cmd_client_ok, "connection", conn),
        b"help": C("client|help", 2, ["loading", "stale"], 0, 0, 0, cmd_client_help, "connection", conn),
    }
    command_subs = {
        b"count": C("command|count", 2, ["loading", "stale"], 0, 0, 0, cmd_command_count, "server", conn),
        b"info": C("command|info", -2, ["loading", "stale"], 0, 0, 0, cmd_command_info, "server", conn),
        b"docs": C("command|docs", -2, ["loading", "stale"], 0, 0, 0, cmd_command_docs, "server", conn),
        b"list": C("command|list", -2, ["loading", "stale"], 0, 0, 0, cmd_command_list, "server", conn),
        b"help": C("command|help", 2, ["loading", "stale"], 0, 0, 0, cmd_command_help, "server", conn),
    }
    admin = ["admin", "noscript", "loading", "stale"]
    config_subs = {
        b"get": C("config|get", -3, admin, 0, 0, 0, cmd_config_get, "server", ["@admin", "@slow", "@dangerous"]),
        b"set": C("config|set", -4, admin, 0, 0, 0, cmd_config_set, "server", ["@admin", "@slow", "@dangerous"]),
        b"rewrite": C("config|rewrite", 2, admin, 0, 0, 0, cmd_config_rewrite, "server", ["@admin", "@slow", "@dangerous"]),
        b"resetstat": C("config|resetstat", 2, admin, 0, 0, 0, cmd_config_resetstat, "server", ["@admin", "@slow", "@dangerous"]),
        b"help": C("config|help", 2, ["loading", "stale"], 0, 0, 0, cmd_config_help, "server", ["@slow"]),
    }
    acl_subs = {
        b"whoami": C("acl|whoami", 2, ["noscript", "loading", "stale"], 0, 0, 0, cmd_acl_whoami, "server", ["@slow"]),
        b"users": C("acl|users", 2, admin, 0, 0, 0, cmd_acl_users, "server", ["@admin", "@slow", "@dangerous"]),
        b"list": C("acl|list", 2, admin, 0, 0, 0, cmd_acl_list, "server", ["@admin", "@slow", "@dangerous"]),
        b"help": C("acl|help", 2, ["loading", "stale"], 0, 0, 0, cmd_acl_help, "server", ["@slow"]),
    }
    return [
        C("acl", -2, [], 0, 0, 0, None, "server", [], acl_subs),
        C("auth", -2, ["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"], 0, 0, 0,
          cmd_auth, "connection", ["@fast", "@connection"]),
        C("hello", -1, ["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"], 0, 0, 0,
          cmd_hello, "connection", ["@fast", "@connection"]),
        C("client", -2, [], 0, 0, 0, None, "connection", [], client_subs),
        C("command", -1, ["loading", "stale"], 0, 0, 0, cmd_command, "server", conn, command_subs),
        C("config", -2, [], 0, 0, 0, None, "server", [], config_subs),
        C("info", -1, ["loading", "stale"], 0, 0, 0, cmd_info, "server", ["@slow", "@dangerous"]),
    ]
