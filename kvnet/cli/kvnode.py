"""kvnode: run one ringkv node (`start`) or a local development cluster (`dev`).

    kvnode dev                       # 3 nodes on 127.0.0.1:7379-7381, data in ./ringkv-data
    kvnode start --config node.toml  # one node from a TOML file and/or flags
    kvnode add                       # one more node next to `kvnode dev`, joined to its ring
"""
import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from kvnet.config import NodeConfig, load
from kvnet.errors import ConfigError
from kvnet.probe import ping

_FLAGS = [  # (flag, config field, type, help)
    ("--name", "name", str, "node id (default node1)"),
    ("--host", "host", str, "client (RESP) address (default 127.0.0.1)"),
    ("--port", "port", int, "client port (default 7379)"),
    ("--peer-host", "peer_host", str, "peer address (default 127.0.0.1)"),
    ("--peer-port", "peer_port", int, "peer port (default: client port + 10000)"),
    ("--data-dir", "data_dir", str, "data directory"),
    ("--members", "members", str, "comma-separated name@host:peer_port of every member"),
    ("--zone", "zone", str, "zone label"),
    ("--ring-size", "ring_size", int, "partitions Q (power of two, default 256)"),
    ("--n", "n", int, "replicas per key (default 3)"),
    ("--r", "r", int, "default read quorum (default 2)"),
    ("--w", "w", int, "default write quorum (default 2)"),
    ("--fsync", "fsync", str, "always | interval | never (default interval)"),
    ("--sync-interval-ms", "sync_interval_ms", int, "interval fsync period"),
    ("--request-timeout-ms", "request_timeout_ms", int, "replica request timeout"),
    ("--max-connections", "max_connections", int, "client connection limit"),
    ("--password", "password", str, "clients must AUTH with this"),
    ("--cluster-secret", "cluster_secret", str, "shared secret nodes prove to each other"),
    ("--gossip-interval-ms", "gossip_interval_ms", int, "gossip round period (default 1000)"),
    ("--phi-threshold", "phi_threshold", float, "failure detector threshold (default 8)"),
    ("--hint-replay-interval-ms", "hint_replay_interval_ms", int, "hint replay period"),
    ("--ae-interval-ms", "ae_interval_ms", int, "pause between anti-entropy exchanges"),
    ("--tombstone-grace-s", "tombstone_grace_s", int, "grace before confirmed tombstones are reaped"),
]


def _start(args):
    overrides = {field: getattr(args, field) for _, field, _, _ in _FLAGS}
    if args.no_flush:
        overrides["allow_flush"] = False
    if args.no_ae:
        overrides["ae_enabled"] = False
    if args.join:
        overrides["join"] = True
    try:
        cfg = load(args.config, **overrides)
    except ConfigError as exc:
        print(f"kvnode: bad configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {cfg.name} %(levelname)s %(message)s")
    _use_uvloop()

    def ready(node):
        print(f"{cfg.name}: ready on {cfg.host}:{node.resp.port} (peers {cfg.peer_address[0]}:"
              f"{cfg.peer_address[1]}, data in {cfg.data_dir})", flush=True)

    try:
        from kvnet.node import run

        outcome = asyncio.run(run(cfg, ready))
    except OSError as exc:
        print(f"kvnode: {cfg.name} cannot start: {exc}", file=sys.stderr)
        return 1
    if outcome == "left":
        print(f"{cfg.name}: handed off its partitions and left the cluster", flush=True)
        return EXIT_LEFT
    return 0


EXIT_LEFT = 3        # `kvnode start` exit code after the node left the ring (kvctl leave)


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


def dev_commands(nodes, base_port, data_dir, n, fsync, extra=()):
    """The `kvnode start` command line of each node of a local dev cluster."""
    names = [f"node{i + 1}" for i in range(nodes)]
    members = ",".join(f"{nm}@127.0.0.1:{base_port + 10000 + i}" for i, nm in enumerate(names))
    cmds = []
    for i, nm in enumerate(names):
        cmds.append([sys.executable, "-m", "kvnet.cli.kvnode", "start", "--name", nm,
                     "--port", str(base_port + i), "--peer-port", str(base_port + 10000 + i),
                     "--data-dir", os.path.join(data_dir, nm), "--members", members,
                     "--n", str(min(n, nodes)), "--r", str(min(2, n, nodes)),
                     "--w", str(min(2, n, nodes)), "--fsync", fsync, *extra])
    return cmds


def _dev(args):
    if not 1 <= args.nodes <= 64:
        print("kvnode dev: --nodes must be from 1 to 64", file=sys.stderr)
        return 2
    ports = [args.base_port + i for i in range(args.nodes)]
    busy = [p for p in ports + [p + 10000 for p in ports] if not _port_free(p)]
    if busy:
        print(f"kvnode dev: port{'s' if len(busy) > 1 else ''} {', '.join(map(str, busy))} in use "
              "(another cluster running? choose --base-port)", file=sys.stderr)
        return 1
    os.makedirs(args.data_dir, exist_ok=True)
    procs = [subprocess.Popen(cmd) for cmd in
             dev_commands(args.nodes, args.base_port, args.data_dir, args.n, args.fsync)]
    stopping = _stop_on_signals()
    deadline = time.monotonic() + 60
    waiting = set(range(args.nodes))
    while waiting and not stopping() and time.monotonic() < deadline:
        for i in list(waiting):
            if procs[i].poll() is not None:
                print(f"kvnode dev: node{i + 1} exited with {procs[i].returncode}", file=sys.stderr)
                stopping.set()
            elif ping(ports[i]):
                waiting.discard(i)
        time.sleep(0.1)
    if not stopping() and not waiting:
        for i, p in enumerate(ports):
            print(f"node{i + 1}: 127.0.0.1:{p}  (redis-cli -p {p})  data in "
                  f"{os.path.join(args.data_dir, f'node{i + 1}')}", flush=True)
        print(f"ringkv dev cluster of {args.nodes} nodes is up; Ctrl-C stops it.", flush=True)
    elif waiting and not stopping():
        print("kvnode dev: nodes did not become ready in 60 s", file=sys.stderr)
        stopping.set()
    _supervise(procs, stopping, "the cluster")
    return _stop_all(procs)


class _Flag:
    """A flag set by SIGINT/SIGTERM (or by the supervisor); call it to read it."""

    def __init__(self):
        self.value = False

    def set(self, *_):
        self.value = True

    def __call__(self):
        return self.value


def _stop_on_signals():
    flag = _Flag()
    signal.signal(signal.SIGINT, flag.set)
    signal.signal(signal.SIGTERM, flag.set)
    return flag


def _supervise(procs, stopping, what):
    """Wait until stopping() or a node exits on its own (which stops `what`); a node that left
    the ring (exit code EXIT_LEFT) is let go."""
    gone = set()
    while not stopping():
        for i, pr in enumerate(procs):
            if i in gone or pr.poll() is None:
                continue
            if pr.returncode == EXIT_LEFT:
                print(f"kvnode: node{i + 1} left the cluster", flush=True)
                gone.add(i)
                continue
            print(f"kvnode: node{i + 1} exited with {pr.returncode}; stopping {what}", file=sys.stderr)
            return
        if len(gone) == len(procs):
            return
        time.sleep(0.2)


def _add(args):
    """Start one more node next to a `kvnode dev` cluster and join it (one command)."""
    from kvnet.client import Client

    seed_port = args.base_port
    if not ping(seed_port):
        print(f"kvnode add: no node answers on 127.0.0.1:{seed_port}; start `kvnode dev` first",
              file=sys.stderr)
        return 1
    c = Client("127.0.0.1", seed_port)
    try:
        ring_nodes = [n["name"] for n in c.ring()["nodes"]]
        index = args.index or 1 + max(int(n[4:]) for n in ring_nodes
                                      if n.startswith("node") and n[4:].isdigit())
        name = f"node{index}"
        port, peer = args.base_port + index - 1, args.base_port + 10000 + index - 1
        if not (_port_free(port) and _port_free(peer)):
            print(f"kvnode add: port {port} or {peer} is in use", file=sys.stderr)
            return 1
        members = f"node1@127.0.0.1:{seed_port + 10000},{name}@127.0.0.1:{peer}"
        cmd = [sys.executable, "-m", "kvnet.cli.kvnode", "start", "--name", name, "--port", str(port),
               "--peer-port", str(peer), "--data-dir", os.path.join(args.data_dir, name),
               "--members", members, "--fsync", args.fsync, "--join"]
        proc = subprocess.Popen(cmd)
        stopping = _stop_on_signals()
        deadline = time.monotonic() + 60
        while not ping(port):
            if proc.poll() is not None or time.monotonic() > deadline or stopping():
                print(f"kvnode add: {name} did not start", file=sys.stderr)
                return _stop_all([proc])
            time.sleep(0.1)
        if name not in ring_nodes:
            deadline = time.monotonic() + 30
            while True:                   # the claimant must see it up through gossip first
                try:
                    c.cluster("join", name)
                    break
                except Exception as exc:
                    if time.monotonic() > deadline:
                        print(f"kvnode add: cannot stage the join: {exc}", file=sys.stderr)
                        return _stop_all([proc])
                    time.sleep(0.3)
            res = c.cluster("commit")
            print(f"{name}: joining on 127.0.0.1:{port} (redis-cli -p {port}); ring epoch "
                  f"{res['epoch']}, {res['transfers']} partition transfers (`kvctl transfers`)",
                  flush=True)
        else:
            print(f"{name}: restarted on 127.0.0.1:{port} (already a member)", flush=True)
        print("Ctrl-C stops this node (use `kvctl leave` first to take it out of the ring).",
              flush=True)
        _supervise([proc], stopping, "it")
        return _stop_all([proc])
    finally:
        c.close()


def _stop_all(procs, grace=15.0):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    print("ringkv nodes stopped.", flush=True)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="kvnode", description="Run ringkv nodes.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="run one node")
    st.add_argument("--config", help="TOML file of settings (docs/config.md)")
    for flag, field, typ, help_ in _FLAGS:
        st.add_argument(flag, dest=field, type=typ, default=None, help=help_)
    st.add_argument("--no-flush", action="store_true", help="refuse FLUSHDB/FLUSHALL")
    st.add_argument("--no-ae", action="store_true", help="run no anti-entropy exchanges")
    st.add_argument("--join", action="store_true",
                    help="join a running cluster (seeds in --members); then `kvctl commit`")
    dv = sub.add_parser("dev", help="run a local cluster, one process per node")
    dv.add_argument("--nodes", type=int, default=3)
    dv.add_argument("--base-port", type=int, default=NodeConfig.port)
    dv.add_argument("--data-dir", default="./ringkv-data")
    dv.add_argument("--n", type=int, default=3)
    dv.add_argument("--fsync", default="interval", choices=["always", "interval", "never"])
    ad = sub.add_parser("add", help="start one more node next to `kvnode dev` and join it")
    ad.add_argument("--base-port", type=int, default=NodeConfig.port)
    ad.add_argument("--data-dir", default="./ringkv-data")
    ad.add_argument("--index", type=int, default=None, help="node number (default: next free)")
    ad.add_argument("--fsync", default="interval", choices=["always", "interval", "never"])
    args = ap.parse_args(argv)
    return {"start": _start, "dev": _dev, "add": _add}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
