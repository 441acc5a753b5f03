"""A node that runs for months: disk, file descriptors, memory, throughput and latency of a
3-node cluster under hot overwrites and then a big keyspace, with compaction on (default
settings) and, side by side in the same run, off (`merge_concurrency = 0`).

Two clusters run at once, each 3 nodes, N=3, W=2, fsync=interval, Q=256, 100-byte values
(default settings; cluster B differs only in merge_concurrency = 0). Phases:

1. hot: 1,000 keys overwritten by `redis-benchmark -t set -r 1000 -c 50 -d 100`, in windows
   of --window seconds that alternate between the two clusters (so load on this shared
   machine falls on both alike), for --hot-minutes each;
2. big: --keys keys written once in order, then overwritten once, pipelined, to each cluster;
3. idle: --idle seconds without writes (merges finish), then a last sample.

After every window it samples, per node: disk as `du` counts it (st_blocks of every file of
the data directory), open fds (/proc/PID/fd), RSS; and prints a table. The last lines give
the goals of docs/storage.md against what was measured, and --plot PATH writes a PNG
(matplotlib, from the `bench` extra) of disk, fds, throughput and p99 over time.

    python benchmarks/soak.py --hot-minutes 10 --keys 1000000 --plot docs/soak.png
"""
import argparse
import csv
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import redis  # noqa: E402

from kvnet.testing import LocalCluster  # noqa: E402

VALUE = b"v" * 100
Q = 256
DEAD_FRACTION = 0.4          # the defaults these goals are written for (docs/storage.md)
PARTITION_SLACK = 256 << 10


def du_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def bench_window(port, seconds, keyspace):
    """One redis-benchmark run of about `seconds` (a request count from the last rate):
    (rps, p50 ms, p99 ms)."""
    n = max(5000, int(bench_window.rate.get(port, 20_000) * seconds))
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-c", "50", "-d",
                          "100", "-r", str(keyspace), "-n", str(n), "--csv"],
                         capture_output=True, text=True, timeout=seconds * 20 + 60).stdout
    rows = list(csv.reader(io.StringIO(out)))
    head, row = rows[0], rows[1]
    d = dict(zip(head, row))
    rps = float(d["rps"])
    bench_window.rate[port] = rps
    return rps, float(d["p50_latency_ms"]), float(d["p99_latency_ms"])


bench_window.rate = {}


def write_keys(port, keys, tag):
    r = redis.Redis(port=port, socket_timeout=60)
    try:
        for s in range(0, keys, 1000):
            pipe = r.pipeline(transaction=False)
            for i in range(s, min(s + 1000, keys)):
                pipe.set(b"big:%08d" % i, tag + VALUE[len(tag):])
            pipe.execute()
    finally:
        r.close()


def live_bytes(cluster, i):
    info = cluster.info(i, "ringkv", timeout=30)
    return int(info.get("storage_live_bytes", 0))


class Soak:
    def __init__(self, workdir):
        self.clusters = {
            "merges on": LocalCluster(os.path.join(workdir, "on"), nodes=3, fsync="interval",
                                      request_timeout_ms=2000, ring_size=Q),
            "merges off": LocalCluster(os.path.join(workdir, "off"), nodes=3, fsync="interval",
                                       request_timeout_ms=2000, ring_size=Q,
                                       extra=["--merge-concurrency", "0"]),
        }
        self.samples = []            # dicts: t, name, phase, rps, p50, p99, disk, fds, rss
        self.t0 = time.monotonic()

    def sample(self, name, phase, rps=None, p50=None, p99=None):
        c = self.clusters[name]
        row = {"t": time.monotonic() - self.t0, "name": name, "phase": phase, "rps": rps,
               "p50": p50, "p99": p99}
        row["disk"] = [du_bytes(c.data_dir_of(i)) for i in range(3)]
        row["fds"] = [fds(p.pid) for p in c.procs]
        row["rss"] = [rss(p.pid) for p in c.procs]
        self.samples.append(row)
        mb = [d / 2 ** 20 for d in row["disk"]]
        print(f"{row['t']:7.0f}s  {name:<10} {phase:<5} "
              f"{'' if rps is None else f'{rps:9,.0f}':>9} "
              f"{'' if p99 is None else f'{p99:6.2f}':>6}  "
              f"disk MiB {' '.join(f'{m:7.1f}' for m in mb)}  "
              f"fds {' '.join(map(str, row['fds']))}  "
              f"rss MiB {' '.join(f'{r / 2 ** 20:5.0f}' for r in row['rss'])}", flush=True)
        return row

    def run(self, hot_minutes, window, keys, idle):
        for c in self.clusters.values():
            c.start(timeout=120)
        print(f"{'t':>8}  {'cluster':<10} {'phase':<5} {'SET/s':>9} {'p99 ms':>6}  "
              "per node: disk (du), open fds, RSS", flush=True)
        end = time.monotonic() + hot_minutes * 60 * len(self.clusters)
        while time.monotonic() < end:
            for name, c in self.clusters.items():
                rps, p50, p99 = bench_window(c.ports[0], window, 1000)
                self.sample(name, "hot", rps, p50, p99)
        self.hot_end = {name: self.samples[-1 - k] for k, name in
                        enumerate(reversed(list(self.clusters)))}
        for name, c in self.clusters.items():
            t = time.monotonic()
            write_keys(c.ports[0], keys, b"1")
            write_keys(c.ports[0], keys, b"2")
            rate = 2 * keys / (time.monotonic() - t)
            self.sample(name, "big", rate)
        time.sleep(idle)
        for name in self.clusters:
            self.sample(name, "idle")
        self.live = {name: [live_bytes(c, i) for i in range(3)]
                     for name, c in self.clusters.items()}

    def stop(self):
        for c in self.clusters.values():
            c.stop()

    def report(self):
        hot = {name: [s for s in self.samples if s["name"] == name and s["phase"] == "hot"]
               for name in self.clusters}
        on, off = hot["merges on"], hot["merges off"]
        rps_on, rps_off = statistics.median(s["rps"] for s in on), statistics.median(s["rps"] for s in off)
        p99_on, p99_off = statistics.median(s["p99"] for s in on), statistics.median(s["p99"] for s in off)
        disk_hot = max(max(s["disk"]) for s in on)
        last = [s for s in self.samples if s["name"] == "merges on"][-1]
        first = on[0]
        live = self.live["merges on"]
        bound = [lv / (1 - DEAD_FRACTION) + PARTITION_SLACK * Q for lv in live]
        print()
        print("goals (docs/storage.md), cluster with merges on:")
        print(f"  hot phase disk per node at most 64 MiB: max {disk_hot / 2 ** 20:.1f} MiB")
        print("  after idle, disk at most live / 0.6 + 256 KiB x 256 per node: "
              + ", ".join(f"{d / 2 ** 20:.1f} <= {b / 2 ** 20:.1f} MiB"
                          for d, b in zip(last["disk"], bound)))
        print(f"  fds at most 2 x 256 + 200 = 712 per node: max {max(max(s['fds']) for s in on + [last])}")
        growth = [(b - a) / a for a, b in zip(on[1]["rss"] if len(on) > 1 else first["rss"],
                                                on[-1]["rss"]) if a]
        print("  RSS flat within 10 % over the hot phase: "
              + ", ".join(f"{g:+.1%}" for g in growth))
        print(f"  hot SET/s: {rps_on:,.0f} merges on, {rps_off:,.0f} off: {rps_on / rps_off:.2f}x "
              "(goal at least 0.8x)")
        print(f"  hot p99: {p99_on:.2f} ms on, {p99_off:.2f} ms off: {p99_on / p99_off:.2f}x "
              "(goal at most 2x)")

    def plot(self, path):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
        for name, style in (("merges on", "-"), ("merges off", "--")):
            rows = [s for s in self.samples if s["name"] == name]
            t = [s["t"] / 60 for s in rows]
            axes[0].plot(t, [max(s["disk"]) / 2 ** 20 for s in rows], style, label=name)
            axes[1].plot(t, [max(s["fds"]) for s in rows], style, label=name)
            hot = [s for s in rows if s["rps"] is not None and s["phase"] == "hot"]
            axes[2].plot([s["t"] / 60 for s in hot], [s["rps"] for s in hot], style, label=name)
            axes[3].plot([s["t"] / 60 for s in hot], [s["p99"] for s in hot], style, label=name)
        for ax, label in zip(axes, ("disk per node, max (MiB, du)", "open fds per node, max",
                                    "hot SET/s (redis-benchmark)", "hot SET p99 (ms)")):
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            ax.legend()
        axes[-1].set_xlabel("minutes")
        fig.suptitle("ringkv soak: 3 nodes, N=3, W=2, 100-byte values (benchmarks/soak.py)")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        print(f"plot written to {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hot-minutes", type=float, default=10.0, help="per cluster")
    ap.add_argument("--window", type=float, default=10.0, help="seconds per load window")
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds without writes at the end")
    ap.add_argument("--plot", default=None, help="write a PNG plot here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        soak = Soak(d)
        try:
            soak.run(args.hot_minutes, args.window, args.keys, args.idle)
        finally:
            soak.stop()
        soak.report()
        if args.plot:
            soak.plot(args.plot)


if __name__ == "__main__":
    main()
