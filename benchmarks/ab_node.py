"""Several ringkv checkouts side by side under redis-benchmark, with redis-server, in one run.

    python benchmarks/ab_node.py --requests 50000 ../before . ../proposal
    python benchmarks/ab_node.py --rounds 3 --config both --nodes 3 ../before .
    python benchmarks/ab_node.py --rounds 4 --nodes 3 --tests set --pipelines 16 \
        --requests 200000 ../before .        # one test, longer runs: a closer look

Each checkout's nodes run from its own directory (`python -m kvnet.cli.kvnode` with that
directory as the working directory, so its kvnet/kvcore are the ones imported; compiled
extensions must be built there); this script's own directory provides kvnet.testing, so it
runs against older checkouts too. Rounds alternate between the checkouts, so load on a shared
machine hits them alike. Two configurations (--config):

- tuned (the default): a LocalCluster (`kvnode start` per node), fsync=never, and a warm-up of
  --warmup SETs before the measured runs;
- default: what a user runs first, a fresh `kvnode dev --nodes K --fsync interval` (interval
  is its default) on an empty data directory and free ports, measured the moment it says it is
  up, with no warm-up;
- both: each round runs each checkout in both (all checkouts in one, then all in the other).

--nodes 1 is N=R=W=1, --nodes 3 is N=3, R=W=2 in both. redis-server (no persistence) is the
reference: it is measured at the start of every round, and "x redis" is a ringkv rate over
that round's redis-server rate. Besides rps, p50 and p99, it prints the CPU time (user +
system, summed over the node processes; not `kvnode dev`'s supervisor, which only polls) per
request, which moves far less with the machine's load than rps does, and how many times per
request redis-benchmark went to sleep waiting for a reply (its voluntary context switches, from
getrusage): each is a wake-up the server paid for, an inter-processor interrupt on a virtual
machine. At the end: the medians over the rounds per checkout and configuration, and each
checkout's median over the first checkout's (the "before") in the same configuration.
"""
import argparse
import csv
import io
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvnet.testing import (LocalCluster, OutputReader, dev_base_port, free_ports,  # noqa: E402
                           pin_cpu, ping)

TICK = os.sysconf("SC_CLK_TCK")
OPS = ("SET", "GET")
BENCH_TIMEOUT = 900             # seconds for one redis-benchmark run: a hung node ends the run


def cpu_split(pids):
    """[(user seconds, system seconds)] of each process."""
    out = []
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out.append((int(fields[11]) / TICK, int(fields[12]) / TICK))
    return out


def bench(port, requests, pipeline, pids=(), prefix=(), split=None, ops=None):
    """{'SET': (rps, p50, p99, cpu us per request, benchmark sleeps per request), 'GET': ...},
    one test at a time; split[op]: each process's (user, system) us per request."""
    out = {}
    ops = OPS if ops is None else ops
    for test in ops:
        before = cpu_split(pids)
        sleeps = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw
        res = subprocess.run([*prefix, "redis-benchmark", "-h", "127.0.0.1", "-p", str(port),
                              "-t", test, "-d", "100", "-c", "50", "-r", "100000", "-n",
                              str(requests), "-P", str(pipeline), "--csv"],
                             capture_output=True, text=True, timeout=BENCH_TIMEOUT)
        used = [((u1 - u0) * 1e6 / requests, (s1 - s0) * 1e6 / requests)
                for (u0, s0), (u1, s1) in zip(before, cpu_split(pids))]
        cpu = sum(u + s for u, s in used) if pids else float("nan")
        sleeps = (resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw - sleeps) / requests
        for r in csv.DictReader(io.StringIO(res.stdout)):
            out[r["test"]] = (float(r["rps"]), float(r["p50_latency_ms"]),
                              float(r["p99_latency_ms"]), cpu, sleeps)
            if split is not None:
                split[r["test"]] = used
    missing = [op for op in ops if op not in out]
    if missing:
        raise RuntimeError(f"redis-benchmark on port {port} gave no {'/'.join(missing)} result: "
                           f"{(res.stdout + res.stderr)[-500:]!r}")
    return out


def pin(pids, bench_prefix):
    """node1 alone on CPU 0; the other nodes and redis-benchmark on CPU 1."""
    for i, pid in enumerate(pids):
        pin_cpu(pid, 0 if i == 0 else 1)
    bench_prefix.extend(["taskset", "-c", "1"])


def row(label, res, ref):
    cells = []
    for p in sorted(res):
        for op in OPS:
            rps, p50, p99, cpu, sleeps = res[p][op]
            ratio = rps / ref[p][op][0] if ref else 1.0
            cpu_txt = "" if cpu != cpu else f" cpu {cpu:5.0f}us"
            cells.append(f"-P{p:<2} {op} {rps:>8,.0f} {ratio:4.2f}x p50 {p50:6.2f} p99 {p99:7.2f}"
                         f"{cpu_txt} zz {sleeps:4.2f}")
    print(f"{label:<34}" + " | ".join(cells), flush=True)


# ---- the two configurations: each yields (client port of node1, node pids), stops on exit ----

class Tuned:
    """A LocalCluster (`kvnode start` per node), fsync=never, warmed up with --warmup SETs."""

    name = "tuned"

    def __init__(self, args):
        self.nodes, self.warmup = args.nodes, args.warmup
        self.n, self.rw = (1, 1) if args.nodes == 1 else (3, 2)

    def describe(self):
        return (f"tuned: LocalCluster of {self.nodes} `kvnode start` node(s), N={self.n} "
                f"R=W={self.rw}, fsync=never, {self.warmup:,}-SET warm-up")

    def start(self, checkout, data_dir):
        here = os.getcwd()
        os.chdir(checkout)           # LocalCluster's nodes run `python -m` from here
        try:
            self.cl = LocalCluster(data_dir, nodes=self.nodes, n=self.n, r=self.rw, w=self.rw,
                                   fsync="never").start()
        finally:
            os.chdir(here)
        return self.cl.ports[0], [p.pid for p in self.cl.procs]

    def warm(self, port, prefix):
        bench(port, self.warmup, 1, prefix=prefix, ops=("SET",))

    def stop(self):
        self.cl.stop()


_NODE_LINE = re.compile(r"^(node\d+): 127\.0\.0\.1:(\d+)\s+pid (\d+)")


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


class Default:
    """A fresh `kvnode dev --nodes K` (fsync=interval, its default) on an empty data directory
    and free ports, started from the checkout's directory as the README starts it; measured as
    soon as it prints that it is up (no warm-up)."""

    name = "default"

    def __init__(self, args):
        self.nodes = args.nodes

    def describe(self):
        rw = 1 if self.nodes == 1 else 2
        return (f"default: a fresh `kvnode dev --nodes {self.nodes} --fsync interval` "
                f"(N={min(3, self.nodes)} R=W={rw}), empty data directory, no warm-up")

    def start(self, checkout, data_dir):
        base = dev_base_port(self.nodes)
        # its own session: on a failure the whole group (supervisor and nodes) can be killed
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvnet.cli.kvnode", "dev", "--nodes", str(self.nodes),
             "--base-port", str(base), "--data-dir", os.path.join(data_dir, "data"),
             "--fsync", "interval"],
            cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        try:
            lines = OutputReader(self.proc).until("is up", timeout=180)
            pids = {}
            for ln in lines:
                m = _NODE_LINE.match(ln)
                if m:
                    pids[m.group(1)] = int(m.group(3))
            pids = [pids[k] for k in sorted(pids, key=lambda k: int(k[4:]))]
            if len(pids) != self.nodes:         # a checkout that prints no pids
                pids = sorted(_children(self.proc.pid))
            if len(pids) != self.nodes:
                raise RuntimeError(f"kvnode dev in {checkout}: {len(pids)} node pids found, "
                                   f"{self.nodes} expected: {lines[-10:]}")
        except BaseException:
            self.stop()
            raise
        return base, pids

    def warm(self, port, prefix):
        pass

    def stop(self):
        """Ctrl-C, as a user stops it (every node closes cleanly); SIGKILL to the whole group
        after 60 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                if self.proc.wait(60) == 0:
                    return                 # it stopped every node itself
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)     # what is left of the group it started
        except ProcessLookupError:
            pass
        self.proc.wait()


CONFIGS = {"tuned": (Tuned,), "default": (Default,), "both": (Tuned, Default)}


# ---- the summary -------------------------------------------------------------------------------

def medians(results, checkouts, configs, pipelines, rounds):
    """The medians over the rounds of rps and CPU per request for each checkout and
    configuration, and each over the first checkout's median in the same configuration."""
    print(f"\nmedians over {rounds} round(s); (x before) = over the first checkout's median "
          f"({checkouts[0]}) in the same configuration; x redis = median of each round's rate "
          "over that round's redis-server", flush=True)
    for cfg in configs:
        first = None
        for co in checkouts:
            med = {}
            for p in pipelines:
                for op in OPS:
                    runs = results[cfg, co][p][op]
                    med[p, op] = (statistics.median(r[0] for r in runs),
                                  statistics.median(r[3] for r in runs),
                                  statistics.median(r[5] for r in runs))
            first = first or med
            cells = []
            for (p, op), (rps, cpu, xr) in med.items():
                rps0, cpu0, _ = first[p, op]
                cells.append(f"-P{p:<2} {op} {rps:>8,.0f} ({rps / rps0:5.3f}x) cpu {cpu:5.1f}us "
                             f"({cpu / cpu0:5.3f}x) {xr:4.2f}x redis")
            print(f"{cfg + ' ' + co:<34}" + " | ".join(cells), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="+")
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--warmup", type=int, default=20_000,
                    help="SETs before the measured runs (tuned configuration only)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=1, choices=(1, 3))
    ap.add_argument("--config", default="tuned", choices=sorted(CONFIGS),
                    help="tuned: LocalCluster, fsync=never, warm-up (the default); default: a "
                    "fresh `kvnode dev`, fsync=interval, no warm-up; both: each in every round")
    ap.add_argument("--pipelines", default="1,16")
    ap.add_argument("--tests", default="set,get",
                    help="the redis-benchmark tests to run: set, get or both (set,get)")
    ap.add_argument("--split", action="store_true",
                    help="also print each node's user + system CPU per request")
    ap.add_argument("--pin", action="store_true",
                    help="node1 alone on CPU 0, the rest (and redis-benchmark) on CPU 1")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.requests < 1:
        ap.error("--rounds and --requests must be at least 1")
    try:
        pipelines = [int(p) for p in args.pipelines.split(",")]
    except ValueError:
        ap.error(f"--pipelines takes numbers separated by commas, not {args.pipelines!r}")
    global OPS
    OPS = tuple(t.strip().upper() for t in args.tests.split(","))
    if not OPS or any(op not in ("SET", "GET") for op in OPS):
        ap.error(f"--tests takes set, get or set,get, not {args.tests!r}")
    missing = [co for co in args.checkouts if not os.path.isdir(os.path.join(co, "kvnet"))]
    if missing:
        ap.error(f"not a ringkv checkout (no kvnet/ inside): {', '.join(missing)}")
    configs = [c(args) for c in CONFIGS[args.config]]
    results = {(cfg.name, co): {p: {op: [] for op in OPS} for p in pipelines}
               for cfg in configs for co in args.checkouts}
    with tempfile.TemporaryDirectory(prefix="ringkv-ab-") as d:
        port = free_ports(1)[0]
        rs = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
        try:
            while not ping(port):
                if rs.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {rs.returncode}")
                time.sleep(0.05)
            bench(port, args.warmup, 1, ops=("SET",))
            print(f"ringkv: {args.nodes} node(s); benchmark on node1; cpu = node CPU per "
                  f"request, all node processes; zz = redis-benchmark's sleeps per request",
                  flush=True)
            for cfg in configs:
                print(cfg.describe(), flush=True)
            for rnd in range(args.rounds):
                ref = {p: bench(port, args.requests, p, [rs.pid]) for p in pipelines}
                row(f"redis-server (round {rnd + 1})", ref, None)
                for cfg in configs:
                    for co in args.checkouts:
                        run_one(cfg, co, d, args, pipelines, ref, results)
        finally:
            rs.terminate()
            rs.wait()
    medians(results, args.checkouts, [c.name for c in configs], pipelines, args.rounds)


def run_one(cfg, co, d, args, pipelines, ref, results):
    node1, pids = cfg.start(co, tempfile.mkdtemp(dir=d))
    try:
        prefix = []
        if args.pin:
            pin(pids, prefix)
        cfg.warm(node1, prefix)
        splits = {p: {} for p in pipelines}
        res = {p: bench(node1, args.requests, p, pids, prefix, splits[p]) for p in pipelines}
    finally:
        cfg.stop()
    label = co if len(CONFIGS[args.config]) == 1 else f"{cfg.name} {co}"
    row(label, res, ref)
    for p in pipelines:
        for op in OPS:
            results[cfg.name, co][p][op].append(res[p][op] + (res[p][op][0] / ref[p][op][0],))
    if args.split:
        for p in pipelines:
            print("    -P%-2d " % p + " | ".join(
                f"{op} " + " ".join(f"n{i + 1} {u:.0f}+{s_:.0f}us"
                                    for i, (u, s_) in enumerate(used))
                for op, used in splits[p].items()), flush=True)


if __name__ == "__main__":
    main()
