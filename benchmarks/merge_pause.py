"""How long a merge holds its caller's thread (in a node: the event loop), by step.

    python benchmarks/merge_pause.py [--merges 50] [--rounds 3] [--keys 1000] [--value-bytes 100]

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


def run(merges, keys, value_bytes, fsync, split):
    """split: the node's way (kvnet/compaction.py): a seal_later store, the disk work of each
    step in the worker thread (here: run on this thread, untimed); otherwise begin_merge and
    finish_merge do it all on the caller's thread, as before."""
    steps = {}
    with tempfile.TemporaryDirectory(prefix="ringkv-merge-pause-") as d:
        s = LogStore(os.path.join(d, "p"), fsync=fsync, seal_later=split)
        value = os.urandom(value_bytes)
        i = 0
        for _ in range(merges):
            while True:
                data, live = s.sizes()
                if data - live >= 128 << 10:
                    break
                s.put(b"key-%06d" % (i % keys), value)
                i += 1
            if split:
                timed(steps, "roll (loop)", s.roll)
                s.seal_pending()                                   # worker thread
                job = timed(steps, "begin (loop)", lambda: s.begin_merge(roll=False))
                job.run()                                          # worker thread
                job.install()                                      # worker thread
                timed(steps, "finish (loop)", lambda: s.finish_merge(job, cleanup=False))
                job.cleanup()                                      # worker thread
            else:
                job = timed(steps, "begin (loop)", s.begin_merge)
                job.run()                                          # worker thread
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
    ap.add_argument("--fsync", default="never", help="the store's own (a node's: never; "
                    "its group commit syncs)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    print(f"{a.merges} merges x {a.rounds} rounds of a store with {a.keys} hot keys, "
          f"{a.value_bytes}-byte values, 128 KiB dead each; milliseconds the caller's thread "
          f"(a node's event loop) is held per merge")
    rows = {}
    probes = []
    for _ in range(a.rounds):                  # interleaved: the disk's mood is shared
        for split in (False, True):
            steps, probe = run(a.merges, a.keys, a.value_bytes, a.fsync, split)
            probes += probe
            per = [sum(xs) for xs in zip(*steps.values())]
            rows.setdefault(split, []).extend(per)
    print("| merge | median ms | p99 ms | max ms |\n|---|---|---|---|")
    for split, name in ((False, "before: begin_merge + finish_merge do the file work"),
                        (True, "now: roll + begin + finish on the loop, file work in a thread")):
        xs = rows[split]
        print(f"| {name} | {_ms(xs, 0.5):.3f} | {_ms(xs, 0.99):.3f} | {1000 * max(xs):.3f} |")
    print(f"this machine's fdatasync of 100 bytes meanwhile: p50 {_ms(probes, 0.5):.3f} ms, "
          f"p99 {_ms(probes, 0.99):.3f} ms (a virtual disk; a real one is slower, and so is "
          f"every merge step that syncs)")


if __name__ == "__main__":
    main()
