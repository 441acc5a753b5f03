"""How long a merge holds its caller's thread (in a node: the event loop), by step.

    python benchmarks/merge_pause.py [--merges 50] [--keys 1000] [--value-bytes 100]

A store like a partition of a node under a small hot key set: `--keys` keys overwritten
until 128 KiB of records are dead (the merge policy's default minimum), then merged the way
kvnet/compaction.py merges: the steps on the loop timed, the copy in a worker thread not.
Prints the median and p99 per step over `--merges` merges, in milliseconds, and the share of
the time spent in system calls that wait for the disk (fdatasync of this machine, measured
beside it: a virtual disk that acknowledges a flush in about 0.1-0.2 ms; a real disk is
slower, and so is every step that syncs)."""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from kvcore.storage.store import LogStore  # noqa: E402


def _ms(xs, q):
    xs = sorted(xs)
    return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))]


def fdatasync_times(path, n=200):
    out = []
    fd = os.open(os.path.join(path, "fsync-probe"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(n):
            os.pwrite(fd, b"x" * 100, i * 100)
            t = time.perf_counter()
            os.fdatasync(fd)
            out.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(os.path.join(path, "fsync-probe"))
    return out


def run(merges, keys, value_bytes, fsync):
    steps = {}
    with tempfile.TemporaryDirectory(prefix="ringkv-merge-pause-") as d:
        s = LogStore(os.path.join(d, "p"), fsync=fsync)
        value = os.urandom(value_bytes)
        i = 0
        for _ in range(merges):
            while True:
                data, live = s.sizes()
                if data - live >= 128 << 10:
                    break
                s.put(b"key-%06d" % (i % keys), value)
                i += 1
            job = timed(steps, "begin (loop)", s.begin_merge)
            job.run()                                          # (a worker thread in a node)
            timed(steps, "finish (loop)", lambda: s.finish_merge(job))
        s.close()
        probe = fdatasync_times(d)
    return steps, probe


def timed(steps, name, fn):
    t = time.perf_counter()
    out = fn()
    steps.setdefault(name, []).append(time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--merges", type=int, default=50)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--fsync", default="interval")
    a = ap.parse_args()
    steps, probe = run(a.merges, a.keys, a.value_bytes, a.fsync)
    print(f"{a.merges} merges of a store with {a.keys} hot keys, {a.value_bytes}-byte values, "
          f"128 KiB dead each, fsync={a.fsync}")
    print(f"| step | median ms | p99 ms |\n|---|---|---|")
    for name, xs in steps.items():
        print(f"| {name} | {_ms(xs, 0.5):.3f} | {_ms(xs, 0.99):.3f} |")
    total = [b + f for b, f in zip(steps["begin (loop)"], steps["finish (loop)"])]
    print(f"| both | {_ms(total, 0.5):.3f} | {_ms(total, 0.99):.3f} |")
    print(f"this machine's fdatasync of 100 bytes: p50 {_ms(probe, 0.5):.3f} ms, "
          f"p99 {_ms(probe, 0.99):.3f} ms")


if __name__ == "__main__":
    main()
