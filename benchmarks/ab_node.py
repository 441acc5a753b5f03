"""Several ringkv checkouts side by side under redis-benchmark, with redis-server, in one run.

    python benchmarks/ab_node.py --requests 50000 ../before . ../proposal

Each checkout's node runs from its own directory (`python -m kvnet.cli.kvnode` with that
directory as the working directory, so its kvnet/kvcore are the ones imported; compiled
extensions must be built there). Rounds alternate between the checkouts, so load on a shared
machine hits them alike. Besides rps, p50 and p99, it prints the CPU time (user + system,
summed over the node processes) per request, which moves far less with the machine's load
than rps does, and how many times per request redis-benchmark went to sleep waiting for a
reply (its voluntary context switches, from getrusage): each is a wake-up the server paid for,
an inter-processor interrupt on a virtual machine.
"""
import argparse
import csv
import io
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvnet.testing import LocalCluster, free_ports, pin_cpu, ping  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_split(pids):
    """[(user seconds, system seconds)] of each process."""
    out = []
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out.append((int(fields[11]) / TICK, int(fields[12]) / TICK))
    return out


def bench(port, requests, pipeline, pids=(), prefix=(), split=None):
    """{'SET': (rps, p50, p99, cpu us per request, benchmark sleeps per request), 'GET': ...},
    one test at a time; split[op]: each process's (user, system) us per request."""
    out = {}
    for test in ("set", "get"):
        before = cpu_split(pids)
        sleeps = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw
        res = subprocess.run([*prefix, "redis-benchmark", "-h", "127.0.0.1", "-p", str(port),
                              "-t", test, "-d", "100", "-c", "50", "-r", "100000", "-n",
                              str(requests), "-P", str(pipeline), "--csv"],
                             capture_output=True, text=True)
        used = [((u1 - u0) * 1e6 / requests, (s1 - s0) * 1e6 / requests)
                for (u0, s0), (u1, s1) in zip(before, cpu_split(pids))]
        cpu = sum(u + s for u, s in used) if pids else float("nan")
        sleeps = (resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw - sleeps) / requests
        for r in csv.DictReader(io.StringIO(res.stdout)):
            out[r["test"]] = (float(r["rps"]), float(r["p50_latency_ms"]),
                              float(r["p99_latency_ms"]), cpu, sleeps)
            if split is not None:
                split[r["test"]] = used
    return out


def pin(pids, bench_prefix):
    """node1 alone on CPU 0; the other nodes and redis-benchmark on CPU 1."""
    for i, pid in enumerate(pids):
        pin_cpu(pid, 0 if i == 0 else 1)
    bench_prefix.extend(["taskset", "-c", "1"])


def row(label, res, ref):
    cells = []
    for p in sorted(res):
        for op in ("SET", "GET"):
            rps, p50, p99, cpu, sleeps = res[p][op]
            ratio = rps / ref[p][op][0] if ref else 1.0
            cpu_txt = "" if cpu != cpu else f" cpu {cpu:5.0f}us"
            cells.append(f"-P{p:<2} {op} {rps:>8,.0f} {ratio:4.2f}x p50 {p50:6.2f} p99 {p99:7.2f}"
                         f"{cpu_txt} zz {sleeps:4.2f}")
    print(f"{label:<34}" + " | ".join(cells), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="+")
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--warmup", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=1, choices=(1, 3))
    ap.add_argument("--pipelines", default="1,16")
    ap.add_argument("--split", action="store_true",
                    help="also print each node's user + system CPU per request")
    ap.add_argument("--pin", action="store_true",
                    help="node1 alone on CPU 0, the rest (and redis-benchmark) on CPU 1")
    args = ap.parse_args(argv)
    pipelines = [int(p) for p in args.pipelines.split(",")]
    n, rw = (1, 1) if args.nodes == 1 else (3, 2)
    with tempfile.TemporaryDirectory(prefix="ringkv-ab-") as d:
        port = free_ports(1)[0]
        rs = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
        try:
            while not ping(port):
                time.sleep(0.05)
            bench(port, args.warmup, 1)
            ref = {p: bench(port, args.requests, p, [rs.pid]) for p in pipelines}
            row("redis-server", ref, None)
        finally:
            rs.terminate()
            rs.wait()
        print(f"ringkv: {args.nodes} node(s), N={n} R=W={rw}, fsync=never; benchmark on node1; "
              f"cpu = node CPU per request, all node processes; zz = redis-benchmark's sleeps "
              f"per request", flush=True)
        here = os.getcwd()
        for _ in range(args.rounds):
            for co in args.checkouts:
                wd = tempfile.mkdtemp(dir=d)
                os.chdir(co)
                try:
                    cl = LocalCluster(wd, nodes=args.nodes, n=n, r=rw, w=rw, fsync="never").start()
                finally:
                    os.chdir(here)
                try:
                    pids = [p.pid for p in cl.procs]
                    prefix = []
                    if args.pin:
                        pin(pids, prefix)
                    bench(cl.ports[0], args.warmup, 1, prefix=prefix)
                    splits = {p: {} for p in pipelines}
                    row(co, {p: bench(cl.ports[0], args.requests, p, pids, prefix, splits[p])
                             for p in pipelines}, ref)
                    if args.split:
                        for p in pipelines:
                            print("    -P%-2d " % p + " | ".join(
                                f"{op} " + " ".join(f"n{i + 1} {u:.0f}+{s_:.0f}us"
                                                    for i, (u, s_) in enumerate(used))
                                for op, used in splits[p].items()), flush=True)
                finally:
                    cl.stop()


if __name__ == "__main__":
    main()
