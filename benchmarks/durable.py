"""Durable writes (issue 17 item G): the same 3-node cluster shape with fsync=never and with
fsync=always, side by side, under `redis-benchmark -t set -c 50 -d 100 -r 100000`.

Both clusters (N=3, R=W=2, default settings otherwise) are started first and stay up; each
round runs the benchmark against node1 of one, then of the other (the first of each pair
alternates between rounds), so a burst of load on this shared machine falls on both alike.
The table lists every round's rps, p50 and p99 of each cluster, and the round's own ratio
always / never; the summary takes the medians. Before the rounds the script measures this
machine's fdatasync (4 KiB written then fdatasync'd, on a file in the clusters' data
directory) and prints its p50 and p99 beside the results: fsync=always costs what the disk
costs to acknowledge a flush, and a virtual disk answers much faster than a real one.

    python benchmarks/durable.py                       # 3 rounds of 100,000 SETs each
    python benchmarks/durable.py --rounds 5 --requests 200000
    python benchmarks/durable.py --with syncfs,fdatasync,nosync     # more clusters to compare

The fsync=always cluster runs the default settings: sync_method auto, which is the node-wide
journal with fsync=always (docs/storage.md, "The journal"). --with adds fsync=always clusters
to the same rounds: "syncfs" (sync_method syncfs: one syncfs of the data directory's file
system per round), "fdatasync" (one fdatasync per partition a round touched, as before issue
17) and "nosync" (its nodes load benchmarks/durable_hooks/sitecustomize.py: a round syncs
nothing, the request path's own cost).

It also times the ways a group commit could sync a round that touched K partitions, on K
files of 150-byte writes in the data directory: K fdatasyncs (sync_method fdatasync), one
syncfs (sync_method syncfs), and one fdatasync of a journal file the round's records are
appended to (sync_method journal).

Goals (docs/performance.md): fsync=always at least 10,000 SET/s, p99 at most 3x its p50, and
at least 0.35x fsync=never in the same round.
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
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvnet.testing import LocalCluster  # noqa: E402

BENCH_ARGS = ["-t", "set", "-c", "50", "-d", "100", "-r", "100000"]
GOAL_RPS, GOAL_TAIL, GOAL_RATIO = 10_000, 3.0, 0.35


def fdatasync_latency(directory, count=2000, size=4096):
    """(p50, p99) in ms of `size` bytes appended then fdatasync'd, `count` times, on a file
    in `directory` (removed after)."""
    path = os.path.join(directory, "fdatasync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    lat = []
    try:
        data = b"\0" * size
        for _ in range(count):
            os.write(fd, data)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1e3)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def sync_options(directory, files=32, rounds=200, record=150):
    """{K: {option: (p50, p99) ms}} for rounds that dirtied K of `files` files with one
    `record`-byte write each: an fdatasync per file, one syncfs, one journal fdatasync."""
    from kvcore.storage import syncfs as SF

    d = os.path.join(directory, "sync-options")
    os.makedirs(d)
    fds = [os.open(os.path.join(d, f"f{i}"), os.O_RDWR | os.O_CREAT, 0o644)
           for i in range(files)]
    jfd = os.open(os.path.join(d, "journal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    dfd = os.open(d, os.O_RDONLY)
    can_syncfs = SF.unsupported() is None
    data, offs, out = b"x" * record, [0] * files, {}

    def dirty(k):
        for i in range(k):
            os.pwrite(fds[i], data, offs[i])
            offs[i] += record

    def timed(k, fn):
        lat = []
        for _ in range(rounds):
            dirty(k)
            t = time.perf_counter()
            fn(k)
            lat.append((time.perf_counter() - t) * 1e3)
        lat.sort()
        return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]

    try:
        for k in (1, 8, files):
            row = out[k] = {}
            row["fdatasync x K"] = timed(k, lambda k: [os.fdatasync(fds[i]) for i in range(k)])
            if can_syncfs:
                row["syncfs"] = timed(k, lambda k: SF.syncfs(dfd))
            row["journal"] = timed(k, lambda k: (os.write(jfd, data * k), os.fdatasync(jfd)))
    finally:
        for fd in fds + [jfd, dfd]:
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)
    return out


def redis_benchmark(port, requests, timeout):
    """{'rps', 'p50_ms', 'p99_ms'} of one `redis-benchmark --csv` run, or {'error': ...}."""
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n", str(requests),
           *BENCH_ARGS, "--csv"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for rec in csv.DictReader(io.StringIO(res.stdout)):
        if rec.get("test") == "SET":
            return {"rps": float(rec["rps"]), "p50_ms": float(rec["p50_latency_ms"]),
                    "p99_ms": float(rec["p99_latency_ms"])}
    return {"error": f"exit {res.returncode}: {(res.stderr or res.stdout)[-500:].strip()}"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100_000, help="redis-benchmark -n")
    ap.add_argument("--warmup", type=int, default=20_000,
                    help="unmeasured SETs per cluster before the rounds")
    ap.add_argument("--with", dest="extra", default="",
                    help="more fsync=always clusters, comma-separated: syncfs, fdatasync, "
                         "nosync (see above)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per benchmark run")
    args = ap.parse_args()
    if shutil.which("redis-benchmark") is None:
        sys.exit("redis-benchmark not found: install the Debian package redis-tools")

    with tempfile.TemporaryDirectory(prefix="ringkv-durable-") as work:
        probe = fdatasync_latency(work)
        options = sync_options(work)
        clusters = {"never": LocalCluster(os.path.join(work, "never"), fsync="never"),
                    "always": LocalCluster(os.path.join(work, "always"), fsync="always")}
        hooks = os.path.join(os.path.dirname(os.path.abspath(__file__)), "durable_hooks")
        for name in filter(None, args.extra.split(",")):
            if name not in ("syncfs", "fdatasync", "nosync"):
                sys.exit(f"--with: unknown cluster {name!r}")
            c = clusters[f"always-{name}"] = LocalCluster(
                os.path.join(work, f"always-{name}"), fsync="always",
                extra=("--sync-method", "fdatasync" if name == "fdatasync" else "syncfs"))
            if name == "nosync":
                path = os.pathsep.join(filter(None, [hooks, c.env.get("PYTHONPATH")]))
                c.env = dict(c.env, PYTHONPATH=path, RINGKV_BENCH_SYNC=name)
        rows = []
        try:
            for c in clusters.values():
                os.makedirs(c.data_dir, exist_ok=True)
                c.start(timeout=120)
            for mode, c in clusters.items():
                print(f"warm-up: {mode} ...", file=sys.stderr, flush=True)
                redis_benchmark(c.ports[0], args.warmup, args.timeout)
            for k in range(args.rounds):
                order = list(clusters) if k % 2 == 0 else list(reversed(clusters))
                got = {}
                for mode in order:
                    print(f"round {k + 1}: fsync={mode} ...", file=sys.stderr, flush=True)
                    got[mode] = redis_benchmark(clusters[mode].ports[0], args.requests,
                                                args.timeout)
                rows.append(got)
        finally:
            for c in clusters.values():
                c.stop()
    report(rows, list(clusters), args, probe, options)


def report(rows, modes, args, probe, options):
    print(f"redis-benchmark {' '.join(BENCH_ARGS)} -n {args.requests}, 3 nodes, N=3 R=W=2, "
          "against node1; rounds interleaved (ratios are each round's own, to fsync=never)")
    print(f"this machine's fdatasync (4 KiB appended, then fdatasync, in the data directory): "
          f"p50 {probe[0]:.3f} ms, p99 {probe[1]:.3f} ms. This virtual disk acknowledges a "
          "flush in about 0.1-0.2 ms when the machine is quiet; a real disk is slower (an SSD "
          "without power-loss protection 0.5-5 ms, a spinning disk 5-10 ms), and "
          "fsync=always pays one flush per group commit round per node.")
    print()
    print("one round's sync, K files dirtied (p50 / p99 ms):")
    names = list(next(iter(options.values())))
    print("| K | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for k, row in options.items():
        print(f"| {k} | " + " | ".join(f"{row[n][0]:.3f} / {row[n][1]:.3f}" for n in names)
              + " |")
    print()
    head = " | ".join(f"{m} SET/s | p50 | p99" for m in modes)
    print(f"| round | {head} | " + " | ".join(f"{m}/never" for m in modes[1:]) + " |")
    print("|---|" + "---|---|---|" * len(modes) + "---|" * (len(modes) - 1))
    ratios = {m: [] for m in modes[1:]}
    tails = {m: [] for m in modes}
    rps = {m: [] for m in modes}
    for k, got in enumerate(rows):
        cells = []
        for m in modes:
            r = got[m]
            if "error" in r:
                cells.append(f"{r['error']} | | ")
                continue
            cells.append(f"{r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f}")
            rps[m].append(r["rps"])
            tails[m].append(r["p99_ms"] / r["p50_ms"])
        ratio_cells = []
        for m in modes[1:]:
            if "error" in got[m] or "error" in got["never"]:
                ratio_cells.append("")
                continue
            ratio = got[m]["rps"] / got["never"]["rps"]
            ratios[m].append(ratio)
            ratio_cells.append(f"{ratio:.2f}x")
        print(f"| {k + 1} | " + " | ".join(cells) + " | " + " | ".join(ratio_cells) + " |")
    print()
    for m in modes:
        if not rps[m]:
            continue
        line = (f"{m}: median {statistics.median(rps[m]):,.0f} SET/s, p99/p50 "
                f"{statistics.median(tails[m]):.1f}x")
        if m in ratios and ratios[m]:
            line += f", {statistics.median(ratios[m]):.2f}x fsync=never"
        print(line)
    if rps["always"] and ratios["always"]:
        a, t, r = (statistics.median(rps["always"]), statistics.median(tails["always"]),
                   statistics.median(ratios["always"]))
        print(f"goals for fsync=always: >= {GOAL_RPS:,} SET/s: "
              f"{'met' if a >= GOAL_RPS else 'MISSED'}; p99 <= {GOAL_TAIL:.0f}x p50: "
              f"{'met' if t <= GOAL_TAIL else 'MISSED'}; >= {GOAL_RATIO}x fsync=never: "
              f"{'met' if r >= GOAL_RATIO else 'MISSED'}")


if __name__ == "__main__":
    main()
