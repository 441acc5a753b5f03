"""The cost of DURABLE k (issue 19 part I; docs/storage.md, "A durable write"): KV.PUT with and
without `DURABLE 1/2/3`, on a 3-node cluster (N=3, W=2) with fsync=never and one with
fsync=interval, side by side.

Both clusters are started first and stay up; each round runs every variant against node1 of
each cluster (`redis-benchmark -c C -n R -r 100000 KV.PUT key:__rand_int__ <100 bytes> ...`),
the order of the variants and of the clusters alternating between rounds, so a burst of load
on this shared machine falls on all alike. Each variant's rate is divided by the plain KV.PUT's
of the same cluster and round; the table gives the medians over the rounds.

    python benchmarks/durable_k.py                     # 3 rounds of 20,000 KV.PUTs a variant
    python benchmarks/durable_k.py --rounds 5 --requests 50000 --clients 50

Before the rounds it prints this machine's fdatasync p50 / p99 (4 KiB appended then
fdatasync'd in the clusters' data directory): a durable write costs about one group commit
round per node, and a virtual disk acknowledges a flush much faster than a real one.
"""
import argparse
import csv
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvnet.testing import LocalCluster  # noqa: E402

VARIANTS = {"plain": [], "DURABLE 1": ["DURABLE", "1"], "DURABLE 2": ["DURABLE", "2"],
            "DURABLE 3": ["DURABLE", "3"]}
VALUE = "x" * 100


def fdatasync_latency(directory, count=1000, size=4096):
    """(p50, p99) in ms of `size` bytes appended then fdatasync'd, `count` times."""
    import time

    path = os.path.join(directory, "fdatasync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    lat = []
    try:
        for _ in range(count):
            os.write(fd, b"\0" * size)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1e3)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def redis_benchmark(port, extra, requests, clients, timeout):
    """{'rps', 'p50_ms', 'p99_ms'} of one `redis-benchmark --csv` run of KV.PUT, or
    {'error': ...} (a reply error counts: redis-benchmark stops at the first)."""
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n", str(requests),
           "-c", str(clients), "-r", "100000", "--csv",
           "KV.PUT", "key:__rand_int__", VALUE, "W", "2", *extra]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if "error" in (res.stderr + res.stdout).lower():
        return {"error": (res.stderr or res.stdout)[-300:].strip()}
    for rec in csv.DictReader(io.StringIO(res.stdout)):
        try:
            return {"rps": float(rec["rps"]), "p50_ms": float(rec["p50_latency_ms"]),
                    "p99_ms": float(rec["p99_latency_ms"])}
        except (KeyError, ValueError):
            break
    return {"error": f"exit {res.returncode}: {(res.stderr or res.stdout)[-300:].strip()}"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20_000, help="redis-benchmark -n")
    ap.add_argument("--clients", type=int, default=50, help="redis-benchmark -c")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per benchmark run")
    args = ap.parse_args()
    if shutil.which("redis-benchmark") is None:
        sys.exit("redis-benchmark not found: install the Debian package redis-tools")

    with tempfile.TemporaryDirectory(prefix="ringkv-durable-k-") as work:
        probe = fdatasync_latency(work)
        clusters = {m: LocalCluster(os.path.join(work, m), fsync=m, request_timeout_ms=5000)
                    for m in ("never", "interval")}
        rows = []                       # [{(mode, variant): result}] per round
        try:
            for c in clusters.values():
                os.makedirs(c.data_dir, exist_ok=True)
                c.start(timeout=120)
            for mode, c in clusters.items():
                print(f"warm-up: {mode} ...", file=sys.stderr, flush=True)
                redis_benchmark(c.ports[0], [], args.requests, args.clients, args.timeout)
            for k in range(args.rounds):
                modes = list(clusters) if k % 2 == 0 else list(reversed(clusters))
                variants = list(VARIANTS) if k % 2 == 0 else list(reversed(VARIANTS))
                got = {}
                for variant in variants:
                    for mode in modes:
                        print(f"round {k + 1}: fsync={mode} {variant} ...", file=sys.stderr,
                              flush=True)
                        got[mode, variant] = redis_benchmark(
                            clusters[mode].ports[0], VARIANTS[variant], args.requests,
                            args.clients, args.timeout)
                rows.append(got)
        finally:
            for c in clusters.values():
                c.stop()
    report(rows, list(clusters), args, probe)


def report(rows, modes, args, probe):
    print(f"KV.PUT key:__rand_int__ <100 bytes> W 2 [DURABLE k], redis-benchmark -c "
          f"{args.clients} -n {args.requests} -r 100000, 3 nodes, N=3, against node1; "
          f"{args.rounds} rounds, variants and clusters interleaved; ratio: to plain KV.PUT "
          "of the same cluster and round (median over the rounds)")
    print(f"this machine's fdatasync (4 KiB appended, then fdatasync): p50 {probe[0]:.3f} ms, "
          f"p99 {probe[1]:.3f} ms")
    print()
    print("| fsync | variant | KV.PUT/s (median) | p50 ms | p99 ms | ratio to plain | per round |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        for variant in VARIANTS:
            res = [r[mode, variant] for r in rows]
            ok = [x for x in res if "rps" in x]
            if not ok:
                print(f"| {mode} | {variant} | error: {res[0].get('error')} | | | | |")
                continue
            ratios = [r[mode, variant]["rps"] / r[mode, "plain"]["rps"] for r in rows
                      if "rps" in r[mode, variant] and "rps" in r[mode, "plain"]]
            per = ", ".join(f"{x:.2f}" for x in ratios)
            print(f"| {mode} | {variant} | {statistics.median(x['rps'] for x in ok):,.0f} | "
                  f"{statistics.median(x['p50_ms'] for x in ok):.2f} | "
                  f"{statistics.median(x['p99_ms'] for x in ok):.2f} | "
                  f"{statistics.median(ratios):.2f}x | {per} |")


if __name__ == "__main__":
    main()
