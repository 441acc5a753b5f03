"""Instructions per read of the direct lane's DirectRead, checkouts side by side, under callgrind.

    python benchmarks/ir_lane.py ../before .

benchmarks/ir_node.py counts a node's front door with N=1, where a GET never reaches the
direct lane; this counts the lane's per-read object alone: for each read, a DirectRead is
made with the local replica's bytes and fed the two other primaries' replies (N=3), as the
peer connection's batch callbacks would, with no sockets and no event loop running. The
workloads: every reply equal (the common case), at R=1 and R=2; and R=1 with the other two
replicas newer (a stale read: the quorum, read repair's final() and, with staleness
telemetry, the comparison). The count includes the Python loop driving each read (the same
in every checkout), so compare the differences; the garbage collector is off while counting
(a collection falling in one workload moved it by 60 %). For each checkout a child process run from
its directory (its kvnet and compiled extensions) under `valgrind --tool=callgrind`;
time.sleep(0) between workloads cuts the counts into one dump each. Needs valgrind.
"""
import argparse
import gc
import os
import sys
import tempfile
import time

import _callgrind   # benchmarks/_callgrind.py (this script's folder is on sys.path)

WORKLOADS = [("equal", 1), ("equal", 2), ("stale", 1)]


def child(reads):
    sys.path.insert(0, os.getcwd())
    import asyncio

    from kvcore import versions as V
    from kvcore.ring import Ring
    from kvnet.coordinator import driver
    from kvnet.coordinator.preflist import preflist_for
    from kvnet.stepping import ReplyFuture

    class Cluster:
        name = "n0"
        loop = None

        def __init__(self):
            self.coord_stats = driver.new_coord_stats()

        def spawn(self, coro):
            coro.close()

        def reap_pending(self, p, key, raw):
            return False

    loop = asyncio.new_event_loop()
    cluster = Cluster()
    ring = Ring.create(["n0", "n1", "n2"], q=8, n=3)
    pl = preflist_for(ring, 0, lambda x: True)
    old = V.update(V.new(V.sibling(b"v" * 100, 10)), None, ("n0", 1, 1))
    new = V.update(V.new(V.sibling(b"w" * 100, 20)), old, ("n1", 1, 1))
    old_raw, new_raw = V.encode(old), V.encode(new)

    def run(kind, r):
        other = old_raw if kind == "equal" else new_raw
        for _ in range(reads):
            fut = ReplyFuture(loop=loop)
            read = driver.DirectRead(cluster, fut, 0, b"k", old_raw, 3, r, pl, 2)
            read("n1", None, other)
            read("n2", None, other)

    run("equal", 1)                     # warm-up
    gc.collect()
    gc.disable()                        # a collection's share would land in one workload
    for kind, r in WORKLOADS:
        time.sleep(0)                   # a dump: what came before
        run(kind, r)
        time.sleep(0)                   # a dump: this workload
    loop.close()


def measure(checkout, reads, out_dir):
    out = os.path.join(out_dir, os.path.basename(os.path.abspath(checkout)) or "root")
    counts = _callgrind.run([os.path.abspath(__file__), "--child", "--reads", str(reads)],
                            out, checkout)
    # dumps: 1 start-up and warm-up, then per workload one of it and one (empty) between
    return _callgrind.workloads(counts, len(WORKLOADS), reads)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="*", default=[os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))])
    ap.add_argument("--reads", type=int, default=3200, help="reads per workload")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.reads)
        return
    with tempfile.TemporaryDirectory(prefix="ringkv-callgrind-") as tmp:
        rows = [(c, measure(c, args.reads, tmp)) for c in args.checkouts]
    head = "  ".join(f"{kind:>6} R={r}" for kind, r in WORKLOADS)
    print(f"instructions per DirectRead (N=3, two remote replies; {args.reads} per workload)")
    print(f"{'checkout':40} {head}")
    _callgrind.print_rows(rows, cell=10)

if __name__ == "__main__":
    main()
