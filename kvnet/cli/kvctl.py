"""kvctl: look at and use a ringkv cluster from the shell.

    kvctl status                 members: routing state, liveness, heartbeat age, partitions, suspects
    kvctl ring                   ring epoch, Q, N and ownership counts
    kvctl preflist KEY           the replicas of a key
    kvctl get KEY                context and every sibling
    kvctl put KEY VALUE [--context HEX] [--w W] [--durable K]
    kvctl del KEY [--context HEX] [--durable K]
    kvctl join|leave|remove NODE stage a membership change (docs/operations.md)
    kvctl clear NODE             unstage it
    kvctl plan                   staged changes, partitions and bytes that would move
    kvctl commit                 apply the staged changes (partitions move in the background)
    kvctl transfers [--watch]    progress of the partition transfers of a ring change
    kvctl trace get|put|del KEY [VALUE] [--r R] [--w W] [--context HEX] [--strict]
                                 what the coordinator did, replica by replica (KV.TRACE)
    kvctl stats [--here]         stale reads per R, canary convergence per W (every member,
                                 or only the node at --port)
    kvctl fault kill|pause|resume NODE, cut|heal NODE [PEER], slow NODE [PEER] --ms D, status
                                 drive `kvnode dev --faults` (found with --data-dir, not --port)

A node's TLS port: `kvctl --port 6380 --tls --cacert ca.crt [--cert client.crt --key
client.key] status` (or RINGKV_TLS=1, RINGKV_TLS_CACERT, RINGKV_TLS_CERT, RINGKV_TLS_KEY;
docs/security.md).

Tables are drawn with rich; `--json` (before or after the subcommand) prints the data the
command fetched as one JSON document instead (docs/cluster.md has the shape). Errors (no
answer in time, a refused connection, a missing or wrong password, the node's own error
replies) are one line on stderr, `kvctl: ...`, with exit status 1; bad arguments exit 2.
"""
import argparse
import json
import os
import re
import sys
import time
from collections import Counter

import redis
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from kvnet.cli.devfaults import OPS as FAULT_OPS
from kvnet.cli.devfaults import NoDevCluster, request
from kvnet.client import Client
from kvnet.faultproxy import MAX_DELAY_MS

OK, FAILED, USAGE = 0, 1, 2
NOT_A_TERMINAL_WIDTH = 500     # piped or captured output: rows are never wrapped (greppable)


# ---- arguments ---------------------------------------------------------------------------------

def _host(text):
    if not text or any(ch.isspace() for ch in text):
        raise argparse.ArgumentTypeError(f"not a host name or address: {text!r}")
    return text


def _port(text):
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, not {port}")
    return port


def _seconds(text):
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < s <= 3600:
        raise argparse.ArgumentTypeError(f"seconds must be more than 0 and at most 3600, not {text}")
    return s


def _hex(text):
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a context is the hex string `kvctl get` prints, not {text!r}") from None


# kvctl's TLS flags as environment variables (the RINGKV_* prefix of the node's settings)
TLS_ENV = {"tls": "RINGKV_TLS", "cacert": "RINGKV_TLS_CACERT", "cert": "RINGKV_TLS_CERT",
           "key": "RINGKV_TLS_KEY"}


def _env_flag(name):
    v = os.environ.get(name, "").strip().lower()
    return v in ("1", "true", "yes", "on")


def tls_options(args):
    """Client's TLS keywords from kvctl's flags: {} without TLS."""
    if not (args.tls or args.tls_cacert or args.tls_cert or args.tls_key):
        return {}
    return dict(tls=True, cacert=args.tls_cacert, cert=args.tls_cert, key=args.tls_key)


def _parser():
    ap = argparse.ArgumentParser(prog="kvctl", description="Inspect and use a ringkv cluster.")
    ap.add_argument("--host", type=_host, default="127.0.0.1", help="a node's client address (default 127.0.0.1)")
    ap.add_argument("--port", type=_port, default=7379, help="its client port (default 7379)")
    ap.add_argument("--user", default=os.environ.get("RINGKV_USER") or None,
                    help="a user name of the nodes (AUTH user password; default: "
                         "RINGKV_USER, else the default user)")
    ap.add_argument("--password", default=os.environ.get("RINGKV_PASSWORD") or None,
                    help="the nodes' client password (AUTH; default: RINGKV_PASSWORD, the "
                         "variable a node reads its own from)")
    ap.add_argument("--timeout", type=_seconds, default=10.0,
                    help="seconds to wait for a connection or an answer (default 10)")
    ap.add_argument("--json", action="store_true", help="print the data as JSON, no table")
    tls = ap.add_argument_group("TLS (a node's tls_port; docs/security.md); each also a variable")
    tls.add_argument("--tls", action="store_true", default=_env_flag(TLS_ENV["tls"]),
                     help=f"speak TLS ({TLS_ENV['tls']}=1; implied by --cacert, --cert, --key)")
    tls.add_argument("--cacert", dest="tls_cacert", metavar="FILE",
                     default=os.environ.get(TLS_ENV["cacert"]),
                     help=f"CA certificate file the node's certificate is verified against "
                     f"(default: the system's; {TLS_ENV['cacert']})")
    tls.add_argument("--cert", dest="tls_cert", metavar="FILE",
                     default=os.environ.get(TLS_ENV["cert"]),
                     help=f"client certificate file, for tls_auth_clients yes ({TLS_ENV['cert']})")
    tls.add_argument("--key", dest="tls_key", metavar="FILE",
                     default=os.environ.get(TLS_ENV["key"]),
                     help=f"the client certificate's private key file ({TLS_ENV['key']})")
    # --json after the subcommand too: SUPPRESS keeps the global value when it is not given
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the data as JSON, no table")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name, help_):
        return sub.add_parser(name, help=help_, parents=[common], description=help_)

    add("status", "members and their state")
    add("ring", "ring epoch, Q, N and ownership")
    add("preflist", "the replicas of a key").add_argument("key")
    g = add("get", "context and all siblings of a key")
    g.add_argument("key")
    g.add_argument("--r", default=None, help="read quorum: a number, one, quorum or all")
    pt = add("put", "write a value (a sibling unless --context)")
    pt.add_argument("key")
    pt.add_argument("value")
    pt.add_argument("--context", type=_hex, default=None, help="hex context from `kvctl get`")
    pt.add_argument("--w", default=None, help="write quorum: a number, one, quorum or all")
    durable_help = ("acknowledged only once K distinct nodes have fsynced the write, whatever "
                    "their fsync setting (DURABLE K): a number, one, quorum or all")
    pt.add_argument("--durable", default=None, metavar="K", help=durable_help)
    d = add("del", "delete a key")
    d.add_argument("key")
    d.add_argument("--context", type=_hex, default=None, help="hex context from `kvctl get`")
    d.add_argument("--durable", default=None, metavar="K", help=durable_help)
    for op, help_ in (("join", "stage the join of a node started with `kvnode start --join`"),
                      ("leave", "stage a live node's leave (it hands off, then exits)"),
                      ("remove", "stage the removal of a dead node"),
                      ("clear", "unstage a node's change")):
        add(op, help_).add_argument("node")
    rl = add("relayout", "stage a zone relayout: every preference list in N zones again after "
             "joins and leaves wore the zone spacing off (then plan, commit)")
    rl.add_argument("--cancel", action="store_true", help="unstage it")
    add("plan", "what the staged changes would move")
    add("commit", "apply the staged changes")
    cp = add("compact", "merge the node's partitions now (the node at --port; see --all)")
    cp.add_argument("--partition", type=int, default=None, help="only this partition")
    cp.add_argument("--all", action="store_true", help="every member of the ring, in turn")
    t = add("transfers", "partition transfers of the ring change in progress")
    t.add_argument("--watch", action="store_true",
                   help="follow them, a progress bar per moving partition, until the ring settles")
    t.add_argument("--interval", type=_seconds, default=1.0,
                   help="seconds between two looks with --watch (default 1)")
    tr = add("trace", "run a read or write with KV.TRACE: who was asked, what each replied")
    tr.add_argument("op", choices=("get", "put", "del"), metavar="OP",
                    help="get (KV.GET), put (KV.PUT) or del (KV.DEL)")
    tr.add_argument("key")
    tr.add_argument("value", nargs="?", default=None, help="put: the value")
    tr.add_argument("--r", default=None, help="get: read quorum (a number, one, quorum, all)")
    tr.add_argument("--w", default=None, help="put, del: write quorum")
    tr.add_argument("--context", type=_hex, default=None, help="put, del: hex context")
    tr.add_argument("--strict", action="store_true", help="primaries only")
    st = add("stats", "stale reads per R and canary convergence per W (docs/observability.md)")
    st.add_argument("--here", action="store_true",
                    help="only the node at --port (default: every member of the ring)")
    f = add("fault", "drive the fault injector of `kvnode dev --faults` (docs/operations.md)")
    f.add_argument("action", choices=FAULT_OPS, metavar="ACTION",
                   help="kill, pause or resume NODE; cut, heal or slow its links (only those "
                   "to PEER when given); status")
    f.add_argument("node", nargs="?", metavar="NODE")
    f.add_argument("peer", nargs="?", metavar="PEER")
    f.add_argument("--ms", type=_millis, default=None, help="slow: the delay added each way")
    f.add_argument("--data-dir", default="./ringkv-data",
                   help="the data directory of `kvnode dev --faults` (default ./ringkv-data)")
    return ap


def _millis(text):
    try:
        ms = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of milliseconds: {text!r}") from None
    if not 0 <= ms <= MAX_DELAY_MS:
        raise argparse.ArgumentTypeError(f"--ms is 0 to {MAX_DELAY_MS}, not {text}")
    return int(ms) if ms == int(ms) else ms


def _trace_usage(args):
    """What is wrong with a `kvctl trace` command line, or None."""
    if args.op == "put" and args.value is None:
        return "put needs a VALUE"
    if args.op != "put" and args.value is not None:
        return f"{args.op} takes no VALUE"
    if args.op == "get" and (args.w is not None or args.context is not None):
        return "get takes --r, not --w or --context"
    if args.op != "get" and args.r is not None:
        return f"{args.op} takes --w, not --r"
    return None


def trace_command(args):
    """The KV.TRACE arguments of `kvctl trace`."""
    cmd = ["KV." + args.op.upper(), args.key] + ([args.value] if args.op == "put" else [])
    if args.context:
        cmd += ["CONTEXT", args.context]
    if args.r is not None:
        cmd += ["R", args.r]
    if args.w is not None:
        cmd += ["W", args.w]
    return cmd + (["STRICT"] if args.strict else [])


def _fault_usage(args):
    """What is wrong with a `kvctl fault` command line, or None."""
    if args.action == "status":
        if args.node is not None:
            return "status takes no NODE"
    elif args.node is None:
        return f"{args.action} needs a NODE (node1, node2, ...)"
    if args.peer is not None and args.action in ("kill", "pause", "resume"):
        return f"{args.action} acts on a node: give no PEER"
    if args.action == "slow" and args.ms is None:
        return "slow needs --ms, the delay in milliseconds added each way"
    if args.action != "slow" and args.ms is not None:
        return "--ms goes with slow only"
    return None


def fault(args, out, err):
    """`kvctl fault ...`: one request to the dev supervisor (kvnet/cli/devfaults.py)."""
    bad = _fault_usage(args)
    if bad:
        print(f"kvctl fault: {bad}", file=err)
        return USAGE
    try:
        reply = request(args.data_dir, args.action, args.node, args.peer, args.ms,
                        timeout=args.timeout)
    except NoDevCluster as exc:
        print(f"kvctl: {exc}", file=err)
        return FAILED
    if not reply["ok"]:
        print(f"kvctl: fault {args.action}: {reply.get('error')}", file=err)
        return FAILED
    if args.json:
        _print_json({"said": reply.get("said", ""), **reply.get("status", {})}, out)
        return OK
    con = _console(out)
    if reply.get("said"):
        con.print(reply["said"], soft_wrap=True)
    if args.action == "status":
        st = reply.get("status", {})
        t = _table("node", "state", "pid", "port")
        for name, row in st.get("nodes", {}).items():
            t.add_row(name, row["state"], str(row["pid"] or "-"), str(row["port"]))
        _show(con, t)
        t = _table("link", "proxy port", "state", "delay ms>", "connections>", "bytes up>",
                   "bytes down>")
        for ln in st.get("links", []):
            t.add_row(f"{ln['from']} -> {ln['to']}", str(ln["port"]), ln["mode"] or "open",
                      f"{ln['delay_ms']:g}", str(ln["accepted"]), f"{ln['bytes_up']:,}",
                      f"{ln['bytes_down']:,}")
        _show(con, t)
    return OK


# ---- output helpers ------------------------------------------------------------------------------

def _console(out):
    con = Console(file=out, highlight=False, markup=False, emoji=False)
    if not con.is_terminal:
        con.width = NOT_A_TERMINAL_WIDTH
    return con


def _show(con, renderable):
    """Print a table; in a pipe or a file without the cells' trailing padding."""
    if con.is_terminal:
        con.print(renderable)
        return
    with con.capture() as cap:
        con.print(renderable)
    con.file.write("".join(line.rstrip() + "\n" for line in cap.get().splitlines()))


def _table(*columns):
    """A plain table; columns named "name>" are right-aligned (numbers)."""
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for c in columns:
        right = c.endswith(">")
        t.add_column(c.rstrip(">"), justify="right" if right else "left", no_wrap=right)
    return t


def _jsonable(x):
    """Bytes as UTF-8 text when they decode, else {"hex": ...}; containers recursively."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        try:
            return bytes(x).decode()
        except UnicodeDecodeError:
            return {"hex": bytes(x).hex()}
    if isinstance(x, dict):
        return {_key(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _key(k):
    if isinstance(k, (bytes, bytearray)):
        try:
            return bytes(k).decode()
        except UnicodeDecodeError:
            return bytes(k).hex()
    return k if isinstance(k, str) else str(k)


def _print_json(data, out, compact=False):
    sep = (",", ":") if compact else None
    print(json.dumps(_jsonable(data), separators=sep, indent=None if compact else 2), file=out)
    out.flush()


def _show_value(v):
    if v is None:
        return "(deleted)"
    try:
        return v.decode()
    except UnicodeDecodeError:
        return repr(v)


def _size(n):
    if n is None:
        return "?"
    if n < 1000:
        return f"{n} B"
    n = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if round(n, 1) < 1000 or unit == "TB":
            break
    return f"{n:.1f} {unit}"


def _of(done, est, fmt=str):
    return fmt(done) if est is None else f"{fmt(done)}/{fmt(est)}"


# ---- errors --------------------------------------------------------------------------------------

_CONNECTING = re.compile(r"^Error -?\d+ connecting to \S+:\d+\.\s*(.*)$", re.S)


def _one_line(text):
    return " ".join(str(text).split()).rstrip(".") or "no message"


def error_line(exc, where, password=None, timeout=None, user=None):
    """The one line kvctl prints for an error talking to `where` (host:port)."""
    msg = _one_line(exc)
    if isinstance(exc, redis.AuthenticationError) or (
            isinstance(exc, redis.ResponseError) and msg.startswith(("NOAUTH", "WRONGPASS"))):
        if "without any password configured" in msg or "no password is set" in msg:
            return f"{where} has no password set; leave out --password ({msg})"
        if password is None:
            return f"{where} needs a password (NOAUTH: {msg}); give it with --password"
        if user is not None:
            return f"{where} refused user {user} with this password (WRONGPASS: {msg})"
        return f"{where} refused the password (WRONGPASS: {msg})"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return f"{where} refused the command (NOPERM: {msg}); a user with another role may run it"
    if isinstance(exc, redis.TimeoutError):
        after = f" within {timeout:g} s" if timeout else ""
        return f"{where} did not answer{after} (timed out: {msg})"
    if isinstance(exc, redis.ConnectionError):
        m = _CONNECTING.match(str(exc).strip())
        if m:
            return f"cannot connect to {where}: {_one_line(m.group(1))}"
        return f"{where}: connection failed: {msg}"
    if isinstance(exc, redis.ResponseError):
        return f"{where}: {msg}"
    if isinstance(exc, redis.RedisError):
        return f"{where}: {type(exc).__name__}: {msg}"
    if isinstance(exc, OSError):
        return f"{where}: {exc.strerror or msg}"
    return f"{where}: unexpected {type(exc).__name__}: {msg}"


# ---- main ----------------------------------------------------------------------------------------

def main(argv=None, out=None, err=None):
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    args = _parser().parse_args(argv)         # bad arguments: usage on stderr, SystemExit(2)
    if args.cmd == "fault":                   # the dev supervisor, not a node
        try:
            return fault(args, out, err)
        except BrokenPipeError:
            return FAILED
    if args.cmd == "trace" and _trace_usage(args):
        print(f"kvctl trace: {_trace_usage(args)}", file=err)
        return USAGE
    where = f"{args.host}:{args.port}"
    try:
        c = Client(args.host, args.port, password=args.password, username=args.user,
                   socket_timeout=args.timeout,
                   retries=0, **tls_options(args))  # a command line: no retry, no backoff
    except (OSError, ValueError) as exc:      # a TLS file missing
        print(f"kvctl: {exc}", file=err)
        return FAILED
    try:
        if args.cmd == "transfers" and args.watch:
            return watch_transfers(c, out, interval=args.interval, as_json=args.json)
        _run(c, args, out)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:                   # `kvctl ... | head`: the reader has gone
        if out is sys.stdout:                 # and no second error when Python flushes it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILED
    except Exception as exc:
        print(f"kvctl: {error_line(exc, where, args.password, args.timeout, args.user)}",
              file=err)
        return FAILED
    finally:
        try:
            c.close()
        except Exception:
            pass
    return OK


def _run(c, args, out):
    as_json = args.json
    con = None if as_json else _console(out)
    shown = {"status": (c.status, _show_status), "ring": (c.ring, _show_ring),
             "preflist": (lambda: c.preflist(args.key),
                          lambda pl, con: _show_preflist(args.key, pl, con)),
             "plan": (lambda: c.cluster("plan"), _show_plan),
             "transfers": (lambda: c.cluster("transfers"), _show_transfers)}
    if args.cmd in shown:
        fetch, show = shown[args.cmd]
        data = fetch()
        if as_json:
            _print_json(data, out)
        else:
            show(data, con)
    elif args.cmd == "get":
        obj = c.get(args.key, r=args.r)
        if as_json:
            _print_json({"key": obj.key, "context": obj.context.hex(), "found": obj.found,
                         "values": obj.values}, out)
        else:
            con.print(f"context {obj.context.hex()}", soft_wrap=True)
            if not obj.found:
                con.print("(not found)")
            for v in obj.values:
                con.print(_show_value(v), soft_wrap=True)
    elif args.cmd in ("put", "del"):
        if args.cmd == "put":
            ctx = c.put(args.key, args.value, context=args.context, w=args.w,
                        durable=args.durable)
        else:
            ctx = c.delete(args.key, context=args.context, durable=args.durable)
        if as_json:
            _print_json({"key": args.key, "context": ctx.hex()}, out)
        else:
            con.print(f"context {ctx.hex()}", soft_wrap=True)
    elif args.cmd in ("join", "leave", "remove", "clear"):
        res = c.cluster(args.cmd, args.node)
        if as_json:
            _print_json(res, out)
        else:
            staged = res["staged"]
            con.print("staged: " + (", ".join(f"{op} {n}" for n, op in sorted(staged.items()))
                                    or "nothing"), soft_wrap=True)
            con.print("next: `kvctl plan`, then `kvctl commit`")
    elif args.cmd == "relayout":
        res = c.cluster("relayout", "cancel" if args.cancel else None)
        if as_json:
            _print_json(res, out)
        elif args.cancel:
            con.print("relayout unstaged")
        else:
            con.print("staged: a zone relayout; next: `kvctl plan`, then `kvctl commit`")
    elif args.cmd == "compact":
        res = _compact(c, args)
        if as_json:
            _print_json(res, out)
        else:
            for r in res:
                con.print(f"{r['node']}: {r['partitions']} partitions merged, "
                          f"{r['bytes_reclaimed']:,} bytes reclaimed", soft_wrap=True)
    elif args.cmd == "trace":
        t = c.trace(*trace_command(args))
        if as_json:
            _print_json(t, out)
        else:
            show_trace(t, con)
    elif args.cmd == "stats":
        res = _stats(c, args)
        if as_json:
            _print_json(res, out)
        else:
            show_stats(res, con)
    elif args.cmd == "commit":
        res = c.cluster("commit")
        if as_json:
            _print_json(res, out)
        else:
            con.print(f"committed: ring epoch {res['epoch']}, {res['transfers']} partition "
                      "transfers; follow them with `kvctl transfers --watch`", soft_wrap=True)


COMPACT_TIMEOUT = 3600.0     # seconds `kvctl compact` waits for a node's merges


def _stats(c, args):
    """KV.STATS of the node at --port, or of every ring member (a member that does not
    answer is a row with its error)."""
    if args.here:
        return [c.stats()]
    out = []
    for n in c.ring()["nodes"]:
        if not n.get("port"):
            out.append({"node": n["name"], "error": "no client address known"})
            continue
        one = Client(n["host"], n["port"], password=args.password, username=args.user,
                     route=False, socket_timeout=args.timeout, retries=0, **tls_options(args))
        try:
            out.append(one.stats())
        except Exception as exc:
            out.append({"node": n["name"], "error": _one_line(exc)})
        finally:
            one.close()
    return out


def _compact(c, args):
    """KV.COMPACT on the node at --port, or (--all) on every ring member through its client
    address, one after another."""
    nodes = ([(n["host"], n["port"]) for n in c.ring()["nodes"]] if args.all
             else [(args.host, args.port)])
    out = []
    for host, port in nodes:          # a merge of a big node takes a while: wait for it
        one = Client(host, port, password=args.password, username=args.user, route=False,
                     socket_timeout=max(args.timeout, COMPACT_TIMEOUT), retries=0,
                     **tls_options(args))
        try:
            out.append(one.compact(args.partition))
        finally:
            one.close()
    return out


# ---- the tables ----------------------------------------------------------------------------------

def _show_status(st, con):
    con.print(f"node {st['node']}, ring epoch {st['ring_epoch']}")
    t = _table("member", "status", "route", "liveness", "heartbeat age>", "partitions>",
               "zone", "suspected by")
    for m in st["members"]:
        age = m.get("heartbeat_age_s")
        age = "-" if age is None else f"{float(age):.2f} s"
        t.add_row(m["name"], m.get("status") or "-", "up" if m["up"] else "down",
                  m.get("state") or "?", age, str(m["partitions"]), m.get("zone") or "-",
                  ", ".join(m.get("suspected_by") or []) or "-")
    _show(con, t)
    _show_zones(st.get("zones"), con)
    ae = st.get("antientropy")
    if ae:                  # what a node that was down is catching up (docs/operations.md)
        con.print(f"anti-entropy on {st['node']}: {ae['catchup_pending']} catch-up exchanges "
                  f"queued, {ae['exchanges']} exchanges run, {ae['keys_repaired']:,} keys "
                  "repaired into it", soft_wrap=True)


def _show_ring(ring, con):
    owned = Counter(ring["owners"])
    con.print(f"epoch {ring['epoch']}, Q={ring['q']}, N={ring['n']}")
    t = _table("node", "address", "route", "partitions>", "share>", "zone")
    for n in ring["nodes"]:
        where = f"{n['host']}:{n['port']}" if n.get("port") else "?"
        up = n.get("up")
        t.add_row(n["name"], where, "-" if up is None else ("up" if up else "down"),
                  str(owned[n["name"]]), f"{100.0 * owned[n['name']] / max(1, ring['q']):.1f}%",
                  n.get("zone") or "-")
    _show(con, t)
    _show_zones(ring.get("zones"), con)


def _show_zones(zones, con):
    """Per zone: its nodes, the partitions they own and their places in preference lists (a
    node without a zone counts under "-"); nothing when no member has a zone."""
    if not zones or all(z.get("zone") is None for z in zones):
        return
    t = _table("zone", "nodes", "partitions>", "replicas>")
    for z in zones:
        t.add_row(z.get("zone") or "-", ", ".join(z["nodes"]), str(z["partitions"]),
                  str(z["replicas"]))
    _show(con, t)


def _show_preflist(key, pl, con):
    con.print(f"key {key}: partition {pl[0]['partition'] if pl else '?'}", soft_wrap=True)
    t = _table("#>", "node", "role", "route")
    for i, r in enumerate(pl):
        t.add_row(str(i + 1), r["node"], "primary" if r.get("primary", True) else "fallback",
                  "up" if r["up"] else "down")
    _show(con, t)


def _show_plan(plan, con):
    staged = plan["staged"]
    if not staged and not plan.get("relayout"):
        con.print("nothing staged")
        return
    con.print("staged: " + ", ".join([f"{op} {n}" for n, op in sorted(staged.items())]
                                     + (["zone relayout"] if plan.get("relayout") else [])),
              soft_wrap=True)
    if plan.get("zone_problems"):
        con.print("after it, zone spacing still lacks: " + "; ".join(plan["zone_problems"]),
                  soft_wrap=True)
    con.print(f"{len(plan['transfers'])} partition transfers, about {plan['bytes']:,} bytes")
    received = Counter()
    for tr in plan["transfers"]:
        received[tr[1]] += tr[3] or 0
    t = _table("node", "receives>", "about bytes>", "owns after>")
    after = plan.get("owned_after") or {}
    for node in sorted(set(after) | set(plan["moves"])):
        t.add_row(node, str(plan["moves"].get(node, 0)), f"{received[node]:,}",
                  str(after.get(node, 0)))
    _show(con, t)
    for node, count in sorted(plan["moves"].items()):
        parts = sorted({tr[0] for tr in plan["transfers"] if tr[1] == node})
        con.print(f"  {node} receives {count} partition replicas: partitions "
                  f"{', '.join(map(str, parts))}", soft_wrap=True)


def _transfer_cells(r):
    return (str(r["partition"]), r["to"], r.get("source") or r.get("from") or "-", r["state"],
            _of(r.get("keys", 0), r.get("est_keys"), lambda n: f"{n:,}"),
            _of(r.get("bytes", 0), r.get("est_bytes"), lambda n: f"{n:,}"))


def _show_transfers(t, con):
    if not t["moving"]:
        con.print(f"ring epoch {t['epoch']}: settled, no transfers")
        return
    rows = t["transfers"]
    done = sum(1 for r in rows if r["state"] == "done")
    con.print(f"ring epoch {t['epoch']}: {done} of {len(rows)} transfers done")
    tab = _table("partition>", "to", "from", "state", "keys>", "bytes>")
    for r in rows:
        tab.add_row(*_transfer_cells(r))
    _show(con, tab)
    failed = [r for r in rows if r["state"] == "failed" and r.get("error")]
    for r in failed:
        con.print(f"partition {r['partition']} to {r['to']} failed (retried): {r['error']}",
                  soft_wrap=True)


def _ms(x):
    return "-" if x is None else f"{float(x):.3f}"


def _pct(part, whole):
    return "-" if not whole else f"{100.0 * part / whole:.2f}%"


def show_stats(rows, con):
    """kvctl stats: stale reads per R (each node's, then the cluster's), then convergence."""
    t = _table("node", "R>", "reads checked>", "stale>", "stale share>")
    totals = {}
    for row in rows:
        if "error" in row:
            con.print(f"{row['node']}: {row['error']}", soft_wrap=True)
            continue
        for r in row["reads"]:
            t.add_row(row["node"], str(r["r"]), f"{r['checked']:,}", f"{r['stale']:,}",
                      _pct(r["stale"], r["checked"]))
            tot = totals.setdefault(r["r"], [0, 0])
            tot[0] += r["checked"]
            tot[1] += r["stale"]
    if len(rows) > 1:
        for r, (checked, stale) in sorted(totals.items()):
            t.add_row("all", str(r), f"{checked:,}", f"{stale:,}", _pct(stale, checked))
    if totals:
        _show(con, t)
    else:
        con.print("no reads checked yet (reads coordinated by the general path and the "
                  "direct lane are; docs/observability.md)")
    t = _table("node", "W>", "canary writes>", "p50 ms>", "p99 ms>", "max ms>",
               "not converged>")
    conv = 0
    for row in rows:
        for c in row.get("convergence", []):
            conv += 1
            t.add_row(row["node"], str(c["w"]), f"{c['samples']:,}", _ms(c["p50_ms"]),
                      _ms(c["p99_ms"]), _ms(c["max_ms"]), str(c["unconverged"]))
    if conv:
        con.print("time from a canary write's acknowledgement until every replica held it:")
        _show(con, t)
    else:
        con.print("no canary writes (canary_interval_ms is 0: off)")


def show_trace(t, con):
    """kvctl trace: the command's outcome, then per step who was asked and what each said."""
    head = f"{t['command']} on {t['node']}: "
    head += f"error {t['error']}" if t.get("error") else "ok"
    con.print(f"{head} in {_ms(t['ms'])} ms", soft_wrap=True)
    if not t.get("error"):
        con.print(f"result: {_result_text(t['result'])}", soft_wrap=True)
    for i, s in enumerate(t["steps"], 1):
        _show_step(con, s, f"step {i}")


def _result_text(x):
    """A traced command's reply in a line: nil, text, 0x<hex> for bytes that are not UTF-8
    (a context), [a, b] for arrays."""
    if x is None:
        return "(nil)"
    if isinstance(x, (bytes, bytearray)):
        try:
            return bytes(x).decode()
        except UnicodeDecodeError:
            return "0x" + bytes(x).hex()
    if isinstance(x, list):
        return "[" + ", ".join(_result_text(v) for v in x) + "]"
    return str(x)


def _show_step(con, s, label):
    if s["op"] == "forward":
        con.print(f"{label}: forwarded to {s['to']} (it coordinates partition "
                  f"{s['partition']}): {s['outcome']} in {_ms(s['ms'])} ms", soft_wrap=True)
        for j, sub in enumerate(s.get("steps") or [], 1):
            _show_step(con, sub, f"{label}.{j} on {s['to']}")
        return
    letter = "R" if s["op"] == "get" else "W"
    need = s.get(letter.lower())
    con.print(f"{label}: {s['op']} of partition {s['partition']} by {s['coordinator']}, "
              f"{letter}={need} of N={s['n']}{' strict' if s.get('strict') else ''}: "
              f"{s['outcome']}, decided at {_ms(s['decided_ms'])} ms", soft_wrap=True)
    pl = ", ".join(p["node"] if p["role"] == "primary" else f"{p['node']} ({p['role']})"
                   for p in s["preflist"])
    con.print(f"  preference list: {pl}" + (f"; down: {', '.join(s['down'])}"
                                            if s.get("down") else ""), soft_wrap=True)
    tab = _table("replica", "role", "outcome", "version", "siblings>", "ms>",
                 f"counted to {letter}")
    for r in s["replies"]:
        tab.add_row(r["node"], r["role"], r["outcome"] + (f" (then {r['late']})"
                                                          if r.get("late") else ""),
                    r.get("clock", "-"), str(r.get("siblings", "-")), _ms(r["ms"]),
                    r["counted"])
    for node in s["asked"]:
        if not any(r["node"] == node for r in s["replies"]):
            tab.add_row(node, "-", "no reply yet", "-", "-", "-", "no")
    _show(con, tab)
    v = s.get("version") or {}
    if s["op"] == "get":
        m = s.get("merged") or {}
        con.print(f"  answer: {v.get('clock', '-')}; every reply merged: {m.get('clock', '-')}"
                  f"; stale answer: {s.get('stale', '-')}", soft_wrap=True)
        reps = s.get("repairs") or []
        con.print("  read repairs: " + (", ".join(
            f"{x['node']}{'' if x['for'] == '-' else ' for ' + x['for']} ({x['outcome']})"
            for x in reps) or "none"), soft_wrap=True)
    else:
        con.print(f"  new version: {v.get('clock', '-')}", soft_wrap=True)
        hints = s.get("hints") or []
        con.print("  hints written: " + (", ".join(f"{h['node']} for {h['for']}"
                                                  for h in hints) or "none"), soft_wrap=True)


# ---- transfers --watch ---------------------------------------------------------------------------

def watch_transfers(c, out, interval=1.0, as_json=False, console=None):
    """Follow the transfers until the ring settles (exit status 0; Ctrl-C: 0 too). On a
    terminal: a bar for the whole change and one per running transfer, redrawn in place; in a
    pipe or a file: a line per transfer that starts, ends or fails; with as_json: the
    transfers answer as one JSON line per look."""
    try:
        if as_json:
            while True:
                t = c.cluster("transfers")
                _print_json(t, out, compact=True)
                if not t["moving"]:
                    return OK
                time.sleep(interval)
        con = console or _console(out)
        if con.is_terminal:
            return _watch_live(c, con, interval)
        return _watch_lines(c, con, interval)
    except KeyboardInterrupt:
        return OK


def _watch_lines(c, con, interval):
    seen = {}
    epoch = None
    while True:
        t = c.cluster("transfers")
        if not t["moving"]:
            con.print(f"ring epoch {t['epoch']}: settled" + ("" if epoch is None else
                      f" (the change of epoch {epoch} is done)"))
            return OK
        if epoch != t["epoch"]:
            epoch = t["epoch"]
            done = sum(1 for r in t["transfers"] if r["state"] == "done")
            con.print(f"ring epoch {epoch}: {len(t['transfers'])} transfers, {done} done")
        for r in t["transfers"]:
            k = (r["partition"], r["to"])
            state = (r["state"], r.get("tries", 0))
            if seen.get(k) == state:
                continue
            seen[k] = state
            what = f"partition {r['partition']} -> {r['to']}"
            if r["state"] == "running":
                con.print(f"{what}: running (from {r.get('from') or '?'}; about "
                          f"{_of_est(r.get('est_keys'))} keys, {_size(r.get('est_bytes'))})")
            elif r["state"] == "done":
                con.print(f"{what}: done, {r['keys']:,} keys, {r['bytes']:,} bytes")
            elif r["state"] == "failed":
                con.print(f"{what}: failed ({r.get('error') or 'no reason given'}); it is retried",
                          soft_wrap=True)
        time.sleep(interval)


def _of_est(n):
    return "?" if n is None else f"{n:,}"


class _Bars:
    """The live view: one bar for the change (transfers done of all), one per running or
    failed transfer (keys sent of the estimate; bytes beside)."""

    def __init__(self, con):
        cols = (TextColumn("{task.description}"), BarColumn(bar_width=30), TaskProgressColumn(),
                TextColumn("{task.fields[keys]}"), TextColumn("{task.fields[size]}"),
                TextColumn("{task.fields[note]}"))
        self.progress = Progress(*cols, console=con, auto_refresh=False, expand=False)
        self.total = self.progress.add_task("all transfers", total=None, keys="", size="", note="")
        self.tasks = {}

    def update(self, t):
        rows = t["transfers"]
        done = sum(1 for r in rows if r["state"] == "done")
        self.progress.update(self.total, completed=done, total=max(1, len(rows)),
                             description=f"ring epoch {t['epoch']}: transfers",
                             keys=f"{done} of {len(rows)} done", size="", note="")
        shown = set()
        for r in rows:
            if r["state"] not in ("running", "failed"):
                continue
            k = (r["partition"], r["to"])
            shown.add(k)
            keys, est_k = r.get("keys", 0), r.get("est_keys")
            sent, est_b = r.get("bytes", 0), r.get("est_bytes")
            if est_k:
                completed, total = min(keys, est_k), est_k
            elif est_b:
                completed, total = min(sent, est_b), est_b
            else:
                completed, total = keys, None
            fields = dict(description=f"partition {r['partition']} -> {r['to']}",
                          keys=f"{_of(keys, est_k, lambda n: f'{n:,}')} keys",
                          size=f"{_size(sent)} of ~{_size(est_b)}" if est_b is not None else _size(sent),
                          note=(f"from {r.get('source') or r.get('from') or '?'}"
                                if r["state"] == "running" else f"failed: {r.get('error') or '?'}"))
            if k not in self.tasks:
                self.tasks[k] = self.progress.add_task(total=total, completed=completed, **fields)
            else:
                self.progress.update(self.tasks[k], total=total, completed=completed, **fields)
        for k in list(self.tasks):
            if k not in shown:
                self.progress.remove_task(self.tasks.pop(k))

    def settle(self, t):
        for k in list(self.tasks):
            self.progress.remove_task(self.tasks.pop(k))
        total = self.progress.tasks[0].total or 1
        self.progress.update(self.total, completed=total, total=total,
                             description=f"ring epoch {t['epoch']}: settled",
                             keys="every transfer done", size="", note="")


def _watch_live(c, con, interval):
    bars = _Bars(con)
    t = c.cluster("transfers")
    if not t["moving"]:
        con.print(f"ring epoch {t['epoch']}: settled, no transfers")
        return OK
    with bars.progress as live:              # redrawn in place by refresh()
        while True:
            if not t["moving"]:
                bars.settle(t)
                live.refresh()
                return OK
            bars.update(t)
            live.refresh()
            time.sleep(interval)
            t = c.cluster("transfers")


if __name__ == "__main__":
    sys.exit(main())
