"""Profile one ringkv node (or node1 of a 3-node cluster) under redis-benchmark with py-spy.

    python benchmarks/profile_node.py --nodes 1 --test set --pipeline 1 --seconds 10
    NATIVE=1 python benchmarks/profile_node.py --nodes 3 --node 2 --pin   # node2, own core

Starts a LocalCluster (fsync=never), sends unmeasured SETs to open the partition stores,
then runs `py-spy record -f raw` (NATIVE=1: with --native) on node1 (or --node K) while
redis-benchmark runs, and prints the share of samples of the innermost frames and of each
function with its callees. --pin puts the profiled node alone on CPU 0 and every other
process on CPU 1 (taskset), so its samples are its own time on a core, not time spent
preempted by the others; `epoll_pwait` then shows how long it waited for work.
"""
import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvnet.testing import LocalCluster, pin_cpu  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--test", default="set")
    ap.add_argument("--pipeline", type=int, default=1)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--out", default=None, help="keep the raw py-spy output here")
    ap.add_argument("--node", type=int, default=1, help="which node to profile (1-based)")
    ap.add_argument("--pin", action="store_true", help="profiled node alone on CPU 0")
    args = ap.parse_args(argv)
    n = 1 if args.nodes == 1 else 3
    r = w = 1 if args.nodes == 1 else 2
    with tempfile.TemporaryDirectory(prefix="ringkv-prof-") as d:
        cl = LocalCluster(d, nodes=args.nodes, n=n, r=r, w=w, fsync="never").start()
        try:
            port = cl.ports[0]
            subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-d", "100", "-c", "50",
                            "-r", "100000", "-n", "20000", "-q"], capture_output=True)
            bench = subprocess.Popen(["redis-benchmark", "-p", str(port), "-t", args.test, "-d", "100",
                                      "-c", "50", "-r", "100000", "-n", "100000000", "-P",
                                      str(args.pipeline), "-q"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            target = cl.procs[args.node - 1]
            if args.pin:
                pin_cpu(target.pid, 0)
                for p in cl.procs + [bench]:
                    if p is not target:
                        pin_cpu(p.pid, 1)
            time.sleep(1)
            out = args.out or os.path.join(d, "prof.txt")
            subprocess.run(["py-spy", "record", "-p", str(target.pid), "-f", "raw", *(["--native"] if os.environ.get("NATIVE") else []),
                            "-r", str(args.rate), "-d", str(args.seconds), "-o", out],
                           stdout=subprocess.DEVNULL)
            bench.terminate()
            bench.wait()
            report(out, args.top)
        finally:
            cl.stop()


def report(path, top):
    inner = collections.Counter()
    total = 0
    incl = collections.Counter()
    for line in open(path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        count = int(count)
        frames = stack.split(";")
        total += count
        inner[frames[-1]] += count
        seen = set()
        for f in frames:
            name = f.split(" (")[0]
            if name not in seen:
                seen.add(name)
                incl[name] += count
    print(f"{total} samples")
    print("-- self (innermost frame) --")
    for f, c in inner.most_common(top):
        print(f"{100 * c / total:6.1f}%  {f}")
    print("-- inclusive (function) --")
    for f, c in incl.most_common(top):
        print(f"{100 * c / total:6.1f}%  {f}")


if __name__ == "__main__":
    main()
