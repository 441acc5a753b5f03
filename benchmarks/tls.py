"""One node's plaintext and TLS client ports side by side under redis-benchmark, in one run.

    python benchmarks/tls.py --requests 100000 --rounds 3

Starts one node (LocalCluster(tls=True), N=R=W=1, fsync=never) serving both ports, and in
each round runs SET and GET (100-byte values, 50 connections, -P 1 and -P 16) against the
plaintext port, then the same against the TLS port (`redis-benchmark --tls`, with the client
certificate), so load on a shared machine hits both alike. Prints rps, p50, p99 and the node's
CPU time per request, then the medians and TLS over plaintext. redis-benchmark opens its
connections once per run, so the handshakes are not what is measured: the per-request cost of
encrypting is (docs/security.md).
"""
import argparse
import csv
import io
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvnet.testing import LocalCluster  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
OPS = ("SET", "GET")


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def bench(port, requests, pipeline, pid, tls_args=()):
    """{'SET': (rps, p50, p99, cpu us per request), 'GET': ...}"""
    out = {}
    for test in ("set", "get"):
        before = cpu(pid)
        res = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), *tls_args,
                              "-t", test, "-d", "100", "-c", "50", "-r", "100000", "-n",
                              str(requests), "-P", str(pipeline), "--csv"],
                             capture_output=True, text=True, timeout=900)
        used = (cpu(pid) - before) * 1e6 / requests
        for r in csv.DictReader(io.StringIO(res.stdout)):
            out[r["test"]] = (float(r["rps"]), float(r["p50_latency_ms"]),
                              float(r["p99_latency_ms"]), used)
        if test.upper() not in out:
            raise RuntimeError(f"redis-benchmark gave no {test} result: "
                               f"{(res.stdout + res.stderr)[-500:]!r}")
    return out


def row(label, res):
    return label.ljust(14) + " | ".join(
        f"{op} {res[op][0]:>9,.0f} rps p50 {res[op][1]:5.2f} p99 {res[op][2]:6.2f} "
        f"cpu {res[op][3]:5.1f}us" for op in OPS)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pipelines", default="1,16")
    args = ap.parse_args()
    pipelines = [int(p) for p in args.pipelines.split(",")]
    with tempfile.TemporaryDirectory(prefix="ringkv-tls-bench-") as d:
        with LocalCluster(d, nodes=1, n=1, r=1, w=1, tls=True) as c:
            pid = c.procs[0].pid
            cl = c.pki.client()
            tls = ["--tls", "--cacert", cl["cacert"], "--cert", cl["cert"], "--key", cl["key"]]
            bench(c.ports[0], 20_000, 16, pid)             # warm-up: the keys exist
            results = {(p, k): [] for p in pipelines for k in ("plain", "tls")}
            for rnd in range(args.rounds):
                for p in pipelines:
                    plain = bench(c.ports[0], args.requests, p, pid)
                    over = bench(c.tls_ports[0], args.requests, p, pid, tls)
                    results[p, "plain"].append(plain)
                    results[p, "tls"].append(over)
                    print(row(f"r{rnd + 1} -P{p} plain", plain), flush=True)
                    print(row(f"r{rnd + 1} -P{p} TLS", over), flush=True)
    print(f"\nmedians over {args.rounds} round(s); TLS/plain = median of each round's ratio")
    for p in pipelines:
        for kind in ("plain", "tls"):
            runs = results[p, kind]
            med = {op: tuple(statistics.median(r[op][i] for r in runs) for i in range(4))
                   for op in OPS}
            print(row(f"-P{p} {kind}", med))
        ratios = {op: [t[op][i] / q[op][i] for q, t in zip(results[p, "plain"], results[p, "tls"])]
                  for op in OPS for i in (0,)}
        cpu_ratios = {op: [t[op][3] / q[op][3] for q, t in zip(results[p, "plain"],
                                                             results[p, "tls"])] for op in OPS}
        print(f"-P{p} TLS/plain   " + " | ".join(
            f"{op} rps {statistics.median(ratios[op]):.2f}x cpu "
            f"{statistics.median(cpu_ratios[op]):.2f}x" for op in OPS))


if __name__ == "__main__":
    main()
