"""ringkv nodes side by side with redis-server under redis-benchmark, plus the Python client.

One run starts each server in turn on free 127.0.0.1 ports (redis-server, one ringkv
node with N=1, a 3-node ringkv cluster with N=3 R=W=2), runs the same redis-benchmark
workloads against it, stops it, and prints rps, p50, p99 and the ratios to redis-server,
then each client's one-request-at-a-time latency and throughput (docs/performance.md).

    python benchmarks/compare_node.py --requests 200000
    python benchmarks/compare_node.py --requests 100000 --rounds 3    # interleaved

With --rounds K > 1 every server is started first and stays up (idle while the others are
measured); each round runs each workload against redis-server, the node and the cluster one
after the other, so a minute of load on this shared machine falls on all of them alike. The
tables then show each figure's median over the rounds, and each ratio is the median of the
rounds' own ratios (each round's ringkv figure over the same round's redis-server one), with
every round's ratio listed after the targets.
"""
import argparse
import csv
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvnet.testing import LocalCluster, free_ports, ping  # noqa: E402

# Workloads as data: (label, extra redis-benchmark arguments).
WORKLOADS = [("no pipelining", []), ("-P 16", ["-P", "16"])]
BASE_ARGS = ["-t", "set,get", "-d", "100", "-c", "50", "-r", "100000"]
VALUE = b"x" * 100


# ---- one driver per competitor: start() -> port, stop(), client_rows() ---------------------

class RedisServer:
    name = "redis-server"

    def __init__(self, workdir):
        self.workdir = workdir
        self.proc = None
        self.port = None

    @staticmethod
    def available():
        return shutil.which("redis-server") is not None

    def start(self):
        self.port = free_ports(1)[0]
        log = open(os.path.join(self.workdir, "redis-server.log"), "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self.workdir, "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 15
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: see {self.workdir}/redis-server.log")
            time.sleep(0.05)
        return self.port

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client_rows(self, ops):
        import redis

        r = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            return [("redis-py -> redis-server",
                     measure_client(lambda k: r.set(k, VALUE), lambda k: r.get(k), ops))]
        finally:
            r.close()


class RingkvCluster:
    """A LocalCluster; redis-benchmark talks to node1, which coordinates or forwards."""

    def __init__(self, workdir, nodes, n, r, w, name):
        self.name = name
        self.workdir = workdir
        self.cluster = LocalCluster(workdir, nodes=nodes, n=n, r=r, w=w, fsync="never")

    def start(self):
        self.cluster.start()
        return self.cluster.ports[0]

    def stop(self):
        self.cluster.stop()

    def pids(self):
        return [p.pid for p in self.cluster.procs if p is not None]

    def client_rows(self, ops):
        from kvnet.client import Client

        rows = []
        routes = [True, False] if len(self.cluster.ports) > 1 else [True]
        for route in routes:
            c = Client("127.0.0.1", self.cluster.ports[0], route=route)
            try:
                label = f"kvnet Client -> {self.name}" + ("" if len(routes) == 1 else
                                                          (", routed" if route else ", node1"))
                rows.append((label, measure_client(lambda k: c.put(k, VALUE), lambda k: c.get(k), ops)))
            finally:
                c.close()
        return rows


# ---- measurement ---------------------------------------------------------------------------

def measure_client(put, get, ops):
    """One request at a time: per-op latency (us) and ops/s for `ops` puts then `ops` gets."""
    keys = [b"pyclient:%08d" % i for i in range(ops)]
    for k in keys[:min(200, ops)]:          # warm up connections, the ring, the code paths
        put(k)
        get(k)
    out = {}
    for opname, fn in (("put", put), ("get", get)):
        lat = []
        clock = time.perf_counter_ns
        t0 = clock()
        for k in keys:
            t = clock()
            fn(k)
            lat.append(clock() - t)
        total = (clock() - t0) / 1e9
        lat.sort()
        out[opname] = {"ops_per_s": ops / total, "p50_us": pct(lat, 50) / 1e3,
                       "p99_us": pct(lat, 99) / 1e3, "mean_us": statistics.fmean(lat) / 1e3}
    return out


def pct(sorted_values, p):
    i = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


def redis_benchmark(port, requests, extra, timeout):
    """{'SET': {...}, 'GET': {...}} from `redis-benchmark --csv` (7.x prints p50 and p99 there)."""
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n", str(requests),
           *BASE_ARGS, *extra, "--csv"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    rows = {}
    for rec in csv.DictReader(io.StringIO(res.stdout)):
        if rec.get("test") in ("SET", "GET"):
            rows[rec["test"]] = {"rps": float(rec["rps"]), "p50_ms": float(rec["p50_latency_ms"]),
                                 "p99_ms": float(rec["p99_latency_ms"])}
    if len(rows) < 2:
        return {"error": f"exit {res.returncode}: {(res.stderr or res.stdout)[-500:].strip()}"}
    return rows


# ---- report --------------------------------------------------------------------------------

def print_tables(results, clients, args):
    print(f"redis-benchmark {' '.join(BASE_ARGS)} -n {args.requests} (key space 100,000, "
          f"100-byte values) after {args.warmup:,} unmeasured SETs; ringkv fsync=never, "
          "benchmark connected to node1")
    ref = results.get("redis-server", {})
    for label, _ in WORKLOADS:
        print(f"\n{label}")
        head = (f"{'server':<22}{'op':<5}{'rps':>11}{'p50 ms':>9}{'p99 ms':>9}"
                f"{'p99/p50':>9}{'x redis':>9}")
        print(head)
        print("-" * len(head))
        for name, per in results.items():
            r = per.get(label, {"error": "not run"})
            if "error" in r:
                print(f"{name:<22}{'-':<5}  {r['error']}")
                continue
            for op in ("SET", "GET"):
                x = r[op]
                base = ref.get(label, {}).get(op) if isinstance(ref.get(label), dict) else None
                value = _ratio(x, base)
                ratio = "-" if value is None else f"{value:.2f}x"
                print(f"{name:<22}{op:<5}{x['rps']:>11,.0f}{x['p50_ms']:>9.3f}{x['p99_ms']:>9.3f}"
                      f"{x['p99_ms'] / x['p50_ms'] if x['p50_ms'] else 0:>8.1f}x{ratio:>9}")
    if clients:
        print(f"\nPython clients, one connection (per node), one request at a time, "
              f"{args.client_ops:,} puts then gets of distinct keys")
        head = f"{'client -> server':<46}{'op':<5}{'ops/s':>9}{'p50 us':>9}{'p99 us':>9}"
        print(head)
        print("-" * len(head))
        for label, m in clients:
            for op in ("put", "get"):
                x = m[op]
                print(f"{label:<46}{op:<5}{x['ops_per_s']:>9,.0f}{x['p50_us']:>9.0f}{x['p99_us']:>9.0f}")
    print_targets(results)


def print_targets(results):
    """The issue's targets, checked on this run's numbers (both SET and GET must pass)."""
    ref = results.get("redis-server", {})
    one = results.get("ringkv N=1", {})
    three = results.get("ringkv 3 nodes R=W=2", {})
    checks = []

    def ratio(per, label, op):
        a, b = per.get(label, {}), ref.get(label, {})
        if op not in a or op not in b:
            return None
        return _ratio(a[op], b[op])

    for op in ("SET", "GET"):
        x = three.get("no pipelining", {}).get(op)
        checks += [
            (f"single node >= 0.70x redis, no pipelining, {op}", ratio(one, "no pipelining", op), 0.70),
            (f"3-node cluster >= 0.30x redis, no pipelining, {op}", ratio(three, "no pipelining", op), 0.30),
            (f"3-node cluster p99 <= 3x its p50, no pipelining, {op}",
             x and x["p99_ms"] / x["p50_ms"], -3.0),          # negative bound: an upper bound
            (f"single node >= 0.25x redis, -P 16, {op}", ratio(one, "-P 16", op), 0.25),
        ]
    print("\ntargets (issue 5, section 6)")
    for label, value, bound in checks:
        if value is None:
            verdict = "not measured"
        else:
            ok = value <= -bound if bound < 0 else value >= bound
            verdict = f"{value:.2f}x  {'met' if ok else 'MISSED'}"
        print(f"  {label:<56}{verdict}")
    for name, per in results.items():
        for label, ops in per.items():
            for op, x in ops.items():
                if isinstance(x, dict) and "ratios" in x:
                    print(f"  rounds: {name}, {label}, {op}: "
                          + " ".join(f"{r:.2f}x" for r in x["ratios"]))


def _started(srv, per, args, timeout):
    """srv started and warmed up: its port; None (its rows an error) if it did not start."""
    try:
        port = srv.start()
    except Exception as exc:      # report it and go on with the other servers
        for label, _ in WORKLOADS:
            per[label] = {"error": f"did not start: {exc}"}
        return None
    if args.warmup > 0:           # not measured: opens ringkv's partition stores
        redis_benchmark(port, args.warmup, ["-t", "set"], timeout)
    return port


def rounds(servers, results, clients, args, timeout):
    """--rounds: every server up at once, the workloads interleaved round by round; results
    become each figure's median, with the rounds' own ratios to redis-server kept."""
    ports = {srv.name: _started(srv, results[srv.name], args, timeout) for srv in servers}
    runs = {name: {label: [] for label, _ in WORKLOADS} for name in ports}
    for k in range(args.rounds):
        for label, extra in WORKLOADS:
            for srv in servers:
                if ports[srv.name] is None:
                    continue
                print(f"round {k + 1}: {srv.name}: redis-benchmark {label} ...",
                      file=sys.stderr, flush=True)
                runs[srv.name][label].append(
                    redis_benchmark(ports[srv.name], args.requests, extra, timeout))
    ref = runs.get("redis-server")
    for name, per in runs.items():
        for label, got in per.items():
            if not got:
                continue
            bad = next((r for r in got if "error" in r), None)
            if bad is not None:
                results[name][label] = bad
                continue
            agg = {}
            for op in ("SET", "GET"):
                agg[op] = {f: statistics.median(r[op][f] for r in got)
                           for f in ("rps", "p50_ms", "p99_ms")}
                if ref and name != "redis-server" and all("error" not in r for r in ref[label]):
                    agg[op]["ratios"] = [r[op]["rps"] / b[op]["rps"]
                                         for r, b in zip(got, ref[label])]
            results[name][label] = agg
    if args.client_ops > 0:
        for srv in servers:
            if ports[srv.name] is not None:
                print(f"{srv.name}: Python client ...", file=sys.stderr, flush=True)
                clients.extend(srv.client_rows(args.client_ops))


def _ratio(x, base):
    """x's ratio to redis-server: the median of the rounds' own ratios when there were rounds."""
    if "ratios" in x:
        return statistics.median(x["ratios"])
    return x["rps"] / base["rps"] if base and "rps" in base else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000, help="redis-benchmark -n (default 200000)")
    ap.add_argument("--warmup", type=int, default=20_000,
                    help="unmeasured SETs sent to each server first (default 20000)")
    ap.add_argument("--client-ops", type=int, default=20_000,
                    help="puts (and gets) per Python client measurement (default 20000)")
    ap.add_argument("--servers", default="redis,single,cluster",
                    help="comma-separated subset of redis,single,cluster")
    ap.add_argument("--dir", default=None, help="where node data and logs go (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument("--rounds", type=int, default=1,
                    help="K > 1: all servers up at once, workloads interleaved K times, medians")
    args = ap.parse_args(argv)

    if shutil.which("redis-benchmark") is None:
        print("redis-benchmark not found: install the Debian package redis-tools "
              "(apt-get install redis-tools)", file=sys.stderr)
        return 2
    wanted = [s for s in args.servers.split(",") if s]
    top = tempfile.mkdtemp(prefix="ringkv-cmpnode-", dir=args.dir)
    timeout = 120 + args.requests / 1000     # a stalled server must not hang the run
    results, clients = {}, []
    servers = []
    try:
        for key in wanted:
            wd = os.path.join(top, key)
            os.makedirs(wd)
            if key == "redis":
                if not RedisServer.available():
                    print("redis-server not found: skipping its column (install the Debian "
                          "package redis-server: apt-get install redis-server; the benchmark "
                          "starts its own on a free port)", file=sys.stderr)
                    continue
                srv = RedisServer(wd)
            elif key == "single":
                srv = RingkvCluster(wd, 1, 1, 1, 1, "ringkv N=1")
            elif key == "cluster":
                srv = RingkvCluster(wd, 3, 3, 2, 2, "ringkv 3 nodes R=W=2")
            else:
                ap.error(f"unknown server {key!r}")
            results[srv.name] = {}
            servers.append(srv)
        if args.rounds > 1:
            rounds(servers, results, clients, args, timeout)
        else:
            for srv in servers:
                try:
                    port = _started(srv, results[srv.name], args, timeout)
                    if port is None:
                        continue
                    for label, extra in WORKLOADS:
                        print(f"{srv.name}: redis-benchmark {label} ...", file=sys.stderr,
                              flush=True)
                        results[srv.name][label] = redis_benchmark(port, args.requests, extra,
                                                                   timeout)
                    if args.client_ops > 0:
                        print(f"{srv.name}: Python client ...", file=sys.stderr, flush=True)
                        clients.extend(srv.client_rows(args.client_ops))
                finally:
                    srv.stop()
    finally:
        for srv in servers:
            srv.stop()
        shutil.rmtree(top, ignore_errors=True)
    print_tables(results, clients, args)
    if args.json:
        print(json.dumps({"results": results, "clients": clients}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
