"""kvnode: run one ringkv node (`start`) or a local development cluster (`dev`).

    kvnode dev                       # 3 nodes on 127.0.0.1:7379-7381, data in ./ringkv-data
    kvnode dev --faults              # the same, every link through a proxy: `kvctl fault ...`
    kvnode start --config node.toml  # one node from a TOML file and/or flags
    kvnode add                       # one more node next to `kvnode dev`, joined to its ring
    kvnode dev --tls                 # TLS only (clients, peers), certificates in ./ringkv-data/tls
"""
import argparse
import asyncio
import os
import signal
import socket
import sys
import time

from kvnet import limits, logsetup
from kvnet.cli.devcluster import EXIT_LEFT, DevSupervisor, dev_env, dev_metrics_port, dev_secret
from kvnet.config import DEV_SECRET, SETTINGS, NodeConfig, env_name, flag_name, load, setting_type
from kvcore.errors import CorruptStore
from kvnet.errors import ConfigError
from kvnet.probe import ping

DEFAULT_DATA_DIR = "./ringkv-data"
TLS_DIR = "tls"               # `kvnode dev --tls`: the CA and certificates, in the data directory
MAX_FAULT_NODES = 16          # kvnet/cli/devfaults.py MAX_NODES (not imported without --faults)

def _add_setting_flags(ap):
    """One flag per setting of NodeConfig (docs/config.md): `--ring-size` for `ring_size`.
    A flag not given is None, so the file and RINGKV_* variables below it still count."""
    for f in SETTINGS:
        kw = {"dest": f.name, "default": None, "help": f.metadata["help"]}
        if setting_type(f) is bool:
            ap.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, **kw)
        else:
            ap.add_argument(flag_name(f.name), type=setting_type(f), **kw)
    # older spellings, kept for scripts that use them
    ap.add_argument("--no-flush", dest="allow_flush", action="store_false", default=None,
                    help=argparse.SUPPRESS)
    ap.add_argument("--no-ae", dest="ae_enabled", action="store_false", default=None,
                    help=argparse.SUPPRESS)


def _start(args):
    overrides = {f.name: getattr(args, f.name) for f in SETTINGS}
    try:
        cfg = load(args.config, environ=os.environ, **overrides)
    except ConfigError as exc:
        print(f"kvnode: bad configuration: {exc}", file=sys.stderr)
        return 2
    if cfg.cluster_secret == DEV_SECRET and not cfg.insecure_dev_secret:
        print(f"kvnode: {cfg.name} refuses to start with the built-in cluster secret: anyone who "
              "can reach its peer port could join the cluster. Set cluster_secret (TOML), "
              f"--cluster-secret or {env_name('cluster_secret')} to the same secret on every "
              "node, or give --insecure-dev-secret for a throwaway cluster on one machine.",
              file=sys.stderr)
        return 2
    logsetup.configure(cfg)
    _use_uvloop()

    def ready(node):
        tls = "" if not cfg.tls_port else f", TLS {node.resp.tls_port}" if cfg.port else " TLS"
        mutual = " mutual TLS" if cfg.tls_cluster else ""
        print(f"{cfg.name}: ready on {cfg.host}:{node.resp.port}{tls} (peers "
              f"{cfg.peer_address[0]}:{cfg.peer_address[1]}{mutual}, data in {cfg.data_dir})",
              flush=True)

    try:
        # a node may hold every partition (S <= N): leave room for all of them
        limits.raise_nofile(cfg.ring_size)
        limits.check_map_count(cfg.ring_size)
        from kvnet.node import run

        outcome = asyncio.run(run(cfg, ready))
    except ConfigError as exc:                # a TLS file that cannot be loaded
        print(f"kvnode: bad configuration: {exc}", file=sys.stderr)
        return 2
    except (OSError, CorruptStore) as exc:    # (a data directory of another format version)
        print(f"kvnode: {cfg.name} cannot start: {exc}", file=sys.stderr)
        return 1
    if outcome == "left":
        print(f"{cfg.name}: handed off its partitions and left the cluster", flush=True)
        return EXIT_LEFT
    return 0


def _use_uvloop():
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _port_free(port):
    """Whether a node could listen on port now. SO_REUSEADDR as the nodes' servers bind
    (asyncio sets it): a stopped cluster's connections lingering in TIME_WAIT leave the port
    free for them, so only a listener makes it busy."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# `kvnode dev` settings passed through to every node as they are given (flag, dest)
_DEV_PASS = ("password", "ring_size", "ae_interval_ms", "gossip_interval_ms", "log_level",
             "log_format")


def dev_names(nodes):
    return [f"node{i + 1}" for i in range(nodes)]


def dev_zones(spec, nodes):
    """`kvnode dev --zones`: the zone of each of `nodes` nodes, round-robin over the zones
    given as names (a,b,c) or as a count (3: z1, z2, z3); None without it. ValueError on a bad
    spec."""
    if spec is None:
        return None
    spec = spec.strip()
    if spec.isdigit():
        count = int(spec)
        if not 1 <= count <= 64:
            raise ValueError(f"a zone count is from 1 to 64, got {count}")
        zones = [f"z{k + 1}" for k in range(count)]
    else:
        zones = [z.strip() for z in spec.split(",")]
        if not all(zones) or len(set(zones)) != len(zones):
            raise ValueError(f"zones are distinct non-empty names, comma-separated, or a "
                             f"count, got {spec!r}")
    return [zones[i % len(zones)] for i in range(nodes)]


def dev_commands(nodes, base_port, data_dir, n, fsync, extra=(), members_of=None, pki=None,
                 zones=None):
    """The `kvnode start` command line of each node of a local dev cluster (the cluster secret
    comes in the environment: dev_env). members_of(i): node i's --members, when not the
    nodes' own peer ports (`--faults`: the proxies'). pki (`--tls`, a DevPKI): clients on
    TLS only, at the same ports, and mutual TLS between the nodes. zones (dev_zones): each
    node's --zone."""
    names = dev_names(nodes)
    members = ",".join(f"{nm}@127.0.0.1:{base_port + 10000 + i}" for i, nm in enumerate(names))
    cmds = []
    for i, nm in enumerate(names):
        cmds.append([sys.executable, "-m", "kvnet.cli.kvnode", "start", "--name", nm,
                     *_client_port_flags(base_port + i, pki, nm),
                     "--peer-port", str(base_port + 10000 + i),
                     "--metrics-port", str(dev_metrics_port(base_port + i)),
                     "--data-dir", os.path.join(data_dir, nm),
                     "--members", members if members_of is None else members_of(i),
                     "--n", str(min(n, nodes)), "--r", str(min(2, n, nodes)),
                     "--w", str(min(2, n, nodes)), "--fsync", fsync, *extra,
                     *(["--zone", zones[i]] if zones else [])])
    return names, cmds


def _client_port_flags(port, pki, name):
    if pki is None:
        return ["--port", str(port)]
    return ["--port", "0", "--tls-port", str(port), *pki.node_flags(name)]


def _dev_pki(args):
    """`--tls`: the dev cluster's CA and certificates in <data-dir>/tls (made on first use,
    kept), or None; raises RuntimeError without the cryptography package."""
    if not args.tls:
        return None
    from kvnet.testing.tls import DevPKI

    return DevPKI(os.path.join(args.data_dir, TLS_DIR))


def _connect_hint(args, pki):
    """How to reach a dev node: redis-cli's and kvctl's TLS flags ('' without --tls)."""
    if pki is None:
        return ""
    c = pki.client()
    return f"--tls --cacert {c['cacert']} --cert {c['cert']} --key {c['key']}"


def _passed_through(args):
    out = []
    for dest in _DEV_PASS:
        v = getattr(args, dest)
        if v is not None:
            out += [flag_name(dest), str(v)]
    return out


def _dev(args):
    if not 1 <= args.nodes <= 64:
        print("kvnode dev: --nodes must be from 1 to 64", file=sys.stderr)
        return 2
    if args.faults and not 2 <= args.nodes <= MAX_FAULT_NODES:
        print(f"kvnode dev: --faults takes 2 to {MAX_FAULT_NODES} nodes (a proxy per link)",
              file=sys.stderr)
        return 2
    try:
        args.zone_of = dev_zones(args.zones, args.nodes)
    except ValueError as exc:
        print(f"kvnode dev: --zones: {exc}", file=sys.stderr)
        return 2
    ports = [args.base_port + i for i in range(args.nodes)]
    busy = [p for p in ports + [p + 10000 for p in ports] + [dev_metrics_port(p) for p in ports]
            if not _port_free(p)]
    if busy:
        print(f"kvnode dev: port{'s' if len(busy) > 1 else ''} {', '.join(map(str, busy))} in use "
              "(another cluster running? choose --base-port)", file=sys.stderr)
        return 1
    os.makedirs(args.data_dir, exist_ok=True)
    faults = members_of = None
    if args.faults:
        from kvnet.cli.devfaults import DevFaults

        peer_ports = [p + 10000 for p in ports]
        faults = DevFaults(dev_names(args.nodes), peer_ports, taken=ports + peer_ports)
        members_of = lambda i: faults.members(i, peer_ports)  # noqa: E731
    try:
        return _supervise_dev(args, ports, faults, members_of)
    finally:
        if faults is not None:
            faults.close()


def _supervise_dev(args, ports, faults, members_of):
    try:
        pki = _dev_pki(args)
    except RuntimeError as exc:
        print(f"kvnode dev: --tls: {exc}", file=sys.stderr)
        return 1
    names, cmds = dev_commands(args.nodes, args.base_port, args.data_dir, args.n, args.fsync,
                               _passed_through(args), members_of, pki, args.zone_of)
    sup = DevSupervisor(names, cmds, ports, dev_env(dev_secret(args.data_dir)),
                        restart=not args.no_restart, control=faults,
                        ssl=None if pki is None else pki.context())
    args.pki = pki
    stopping = _stop_on_signals()
    try:
        _run_dev(args, ports, faults, sup, names, stopping)
    except BaseException:             # even after an error here, no node is left running
        sup.stop()
        raise
    return sup.stop()


def _run_dev(args, ports, faults, sup, names, stopping):
    if sup.start(stopping):
        pids = sup.pids()
        auth = f" -a {args.password}" if args.password else ""
        tls = _connect_hint(args, args.pki)
        for i, p in enumerate(ports):
            cli = f"redis-cli -p {p}{auth}{' --tls ...' if tls else ''}"
            print(f"{names[i]}: 127.0.0.1:{p}{' (TLS)' if tls else ''}  pid {pids[names[i]]}  "
                  f"({cli})  metrics http://127.0.0.1:{dev_metrics_port(p)}/metrics  "
                  f"data in {os.path.join(args.data_dir, names[i])}", flush=True)
        print(f"ringkv dev cluster of {args.nodes} nodes is up; Ctrl-C stops it.", flush=True)
        if tls:
            print(f"TLS only, clients and peers, with the CA and certificates in "
                  f"{args.pki.dir}. Connect with: redis-cli -p {ports[0]}{auth} {tls}", flush=True)
        some = pids[names[-1]]
        print(f"Try: kill -9 {some} (a node dies; the others keep serving and it is restarted"
              f"{'' if sup.restart else ' unless --no-restart'}), and watch `kvctl "
              f"{'' if args.base_port == NodeConfig.port else f'--port {args.base_port} '}"
              f"{tls + ' ' if tls else ''}status`.", flush=True)
        if faults is not None:
            faults.listen(args.data_dir)
            dd = "" if args.data_dir == DEFAULT_DATA_DIR else f" --data-dir {args.data_dir}"
            print(f"Faults: every link between nodes goes through a proxy. Try: kvctl fault cut "
                  f"{names[-1]}{dd}, then heal, pause, resume, kill, slow --ms 200, status "
                  "(docs/operations.md).", flush=True)
        sup.supervise(stopping)


class _Flag:
    """A flag set by SIGINT/SIGTERM (or by the supervisor); call it to read it."""

    def __init__(self):
        self.value = False

    def set(self, *_):
        self.value = True

    def __call__(self):
        return self.value


def _stop_on_signals():
    """SIGINT, SIGTERM and SIGHUP (its terminal closed) stop a dev cluster: the supervisor
    stops its nodes (a TLS node takes SIGHUP as a reload, and would outlive its terminal)."""
    flag = _Flag()
    signal.signal(signal.SIGINT, flag.set)
    signal.signal(signal.SIGTERM, flag.set)
    signal.signal(signal.SIGHUP, flag.set)
    return flag


def _add(args):
    """Start one more node next to a `kvnode dev` cluster and join it (one command)."""
    from kvnet.client import Client

    seed_port = args.base_port
    secret = dev_secret(args.data_dir, create=False)
    if secret is None:
        print(f"kvnode add: no dev cluster secret in {args.data_dir}; start `kvnode dev` with "
              "this --data-dir first", file=sys.stderr)
        return 1
    try:
        pki = _dev_pki(args)
    except RuntimeError as exc:
        print(f"kvnode add: --tls: {exc}", file=sys.stderr)
        return 1
    ssl = None if pki is None else pki.context()
    if not ping(seed_port, ssl=ssl):
        hint = "" if pki is not None or not os.path.isdir(os.path.join(args.data_dir, TLS_DIR)) \
            else " (a `kvnode dev --tls` cluster? give --tls)"
        print(f"kvnode add: no node answers on 127.0.0.1:{seed_port}{hint}; start `kvnode dev` "
              "first", file=sys.stderr)
        return 1
    c = Client("127.0.0.1", seed_port, password=args.password,
               **({} if pki is None else pki.client()))
    try:
        ring_nodes = [n["name"] for n in c.ring()["nodes"]]
        index = args.index or 1 + max(int(n[4:]) for n in ring_nodes
                                      if n.startswith("node") and n[4:].isdigit())
        name = f"node{index}"
        port, peer = args.base_port + index - 1, args.base_port + 10000 + index - 1
        metrics = dev_metrics_port(port)
        if not (_port_free(port) and _port_free(peer) and _port_free(metrics)):
            print(f"kvnode add: port {port}, {peer} or {metrics} is in use", file=sys.stderr)
            return 1
        members = f"node1@127.0.0.1:{seed_port + 10000},{name}@127.0.0.1:{peer}"
        cmd = [sys.executable, "-m", "kvnet.cli.kvnode", "start", "--name", name,
               *_client_port_flags(port, pki, name),
               "--peer-port", str(peer), "--metrics-port", str(metrics),
               "--data-dir", os.path.join(args.data_dir, name),
               "--members", members, "--fsync", args.fsync, "--join", *_passed_through(args),
               *(["--zone", args.zone] if args.zone else [])]
        sup = DevSupervisor([name], [cmd], [port], dev_env(secret), restart=not args.no_restart,
                            ssl=ssl)
        stopping = _stop_on_signals()
        if not sup.start(stopping):
            print(f"kvnode add: {name} did not start", file=sys.stderr)
            return sup.stop()
        if name not in ring_nodes:
            deadline = time.monotonic() + 30
            while True:                   # the claimant must see it up through gossip first
                try:
                    c.cluster("join", name)
                    break
                except Exception as exc:
                    if time.monotonic() > deadline:
                        print(f"kvnode add: cannot stage the join: {exc}", file=sys.stderr)
                        return sup.stop()
                    time.sleep(0.3)
            res = c.cluster("commit")
            print(f"{name}: joining on 127.0.0.1:{port} (redis-cli -p {port}"
                  f"{' ' + _connect_hint(args, pki) if pki else ''}, metrics "
                  f"http://127.0.0.1:{metrics}/metrics), pid "
                  f"{sup.pids()[name]}; ring epoch {res['epoch']}, {res['transfers']} partition "
                  "transfers (`kvctl transfers --watch`)", flush=True)
        else:
            print(f"{name}: restarted on 127.0.0.1:{port} (already a member)", flush=True)
        print("Ctrl-C stops this node (use `kvctl leave` first to take it out of the ring).",
              flush=True)
        sup.supervise(stopping)
        return sup.stop()
    finally:
        c.close()


def _dev_flags(ap):
    """The settings `kvnode dev` and `kvnode add` pass through to their nodes."""
    ap.add_argument("--base-port", type=int, default=NodeConfig.port)
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    ap.add_argument("--fsync", default="interval", choices=["always", "interval", "never"])
    ap.add_argument("--no-restart", action="store_true",
                    help="leave a node that exits down (default: restart it after a backoff)")
    ap.add_argument("--tls", action="store_true",
                    help="clients and peers over TLS only, with a CA and certificates made in "
                    "<data-dir>/tls on first use (docs/security.md)")
    helps = {f.name: f.metadata["help"] for f in SETTINGS}
    for dest in _DEV_PASS:
        ap.add_argument(flag_name(dest), dest=dest, default=None,
                        type=setting_type(next(f for f in SETTINGS if f.name == dest)),
                        help=helps[dest])


def parser():
    ap = argparse.ArgumentParser(prog="kvnode", description="Run ringkv nodes.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="run one node",
                        description="Run one node. Every setting is a flag here, a key of the "
                        "--config TOML file and a RINGKV_<SETTING> environment variable "
                        "(flags win over variables, variables over the file; docs/config.md).")
    st.add_argument("--config", help="TOML file of settings (docs/config.md)")
    _add_setting_flags(st)
    dv = sub.add_parser("dev", help="run a local cluster, one process per node")
    dv.add_argument("--nodes", type=int, default=3)
    dv.add_argument("--n", type=int, default=3)
    dv.add_argument("--faults", action="store_true",
                    help="a fault proxy on every link between the nodes, driven by `kvctl fault` "
                    "(docs/operations.md)")
    dv.add_argument("--zones", default=None,
                    help="give the nodes zones round-robin: names (a,b,c) or a count (3: z1, "
                    "z2, z3); the ring is spaced by zone (docs/cluster.md, \"Zones\")")
    _dev_flags(dv)
    ad = sub.add_parser("add", help="start one more node next to `kvnode dev` and join it")
    ad.add_argument("--index", type=int, default=None, help="node number (default: next free)")
    ad.add_argument("--zone", default=None, help="the new node's zone")
    _dev_flags(ad)
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    return {"start": _start, "dev": _dev, "add": _add}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
