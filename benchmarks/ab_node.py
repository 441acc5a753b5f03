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

from kvnet.testing import LocalCluster, free_ports, ping  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def bench(port, requests, pipeline, pids=()):
    """{'SET': (rps, p50, p99, cpu us per request, benchmark sleeps per request), 'GET': ...},
    one test at a time."""
    out = {}
    for test in ("set", "get"):
        before = cpu_seconds(pids)
        sleeps = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw
        res = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", test,
                              "-d", "100", "-c", "50", "-r", "100000", "-n", str(requests),
                              "-P", str(pipeline), "--csv"], capture_output=True, text=True)
        cpu = (cpu_seconds(pids) - before) * 1e6 / requests if pids else float("nan")
        sleeps = (resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw - sleeps) / requests
        for r in csv.DictReader(io.StringIO(res.stdout)):
            out[r["test"]] = (float(r["rps"]), float(r["p50_latency_ms"]),
                              float(r["p99_latency_ms"]), cpu, sleeps)
    return out


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
                    bench(cl.ports[0], args.warmup, 1)
                    row(co, {p: bench(cl.ports[0], args.requests, p, pids) for p in pipelines}, ref)
                finally:
                    cl.stop()


if __name__ == "__main__":
    main()
