"""Reads and writes through the store's map cache, against another build side by side.

    python benchmarks/map_cache.py [--keys 400000] [--gets 200000] [--rounds 3]
                                   [--baseline DIR]

One store of `--keys` keys (16-byte keys, 100-byte values) in 1 MiB segments (about 60
sealed segments), and one of 20,000 keys all in its active segment (the case of
benchmarks/test_storage.py::test_get). Each row runs in a fresh process. First the best of
30 `get_many` calls of 20,000 random keys (the steadiest measure of the hit path), then
`--gets` single gets of random keys: the active segment; sealed segments with a map cache holding them all (every
read a hit: the hot path); sealed segments with the default cache of 8 (most reads of a
random key miss: open, mmap and close of its segment, and an munmap); and the same with a
cache of 1. Then writes that overwrite random keys of the sealed store (a copy of it per
run), whose lookups read the old records: `put`, and `put_many` of 1,000 pairs (which pins
the segments of the old records of a chunk until it is indexed). With --baseline DIR (a tree holding another build, e.g. a worktree of main
after `pip install -e .`), each row also runs that code, alternating with this one round
by round on the same files, and the table gives the ratio of the medians: this machine is
shared and noisy, so compare within a row.
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

_WORKER = r"""
import random, sys, time
sys.path.insert(0, sys.argv[1])
from kvcore.storage.store import LogStore
path, nkeys, ngets, cache = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
op = sys.argv[6]
kw = {"map_cache": cache} if cache else {}
try:
    s = LogStore(path, fsync="never", **kw)
except TypeError:                   # (a build without the map cache maps every segment)
    s = LogStore(path, fsync="never")
rnd = random.Random(7)
keys = [b"key-%012d" % rnd.randrange(nkeys) for _ in range(ngets)]
get = s.get
for k in keys[:20000]:              # (warm: pages in the page cache, maps made)
    get(k)
t = time.perf_counter()
if op == "get_many":                # the least noisy figure: best of 30 get_many calls
    best = 1e9
    for _ in range(30):
        t = time.perf_counter()
        s.get_many(keys[:20000])
        best = min(best, time.perf_counter() - t)
    ngets, t = 20000, time.perf_counter() - best
elif op == "get":
    for k in keys:
        get(k)
elif op == "put":
    v = b"v" * 100
    put = s.put
    for k in keys:
        put(k, v)
else:
    pairs = [(k, b"w" * 100) for k in keys]
    for i in range(0, len(pairs), 1000):
        s.put_many(pairs[i:i + 1000])
dt = time.perf_counter() - t
misses = s.stats().get("map_misses", 0)
s.close()
print(ngets / dt, misses)
"""


def build(path, nkeys, segment_bytes):
    sys.path.insert(0, HERE)
    from kvcore.storage.store import LogStore
    rnd = random.Random(1)
    s = LogStore(path, fsync="never", max_segment_bytes=segment_bytes)
    batch = []
    for i in range(nkeys):
        batch.append((b"key-%012d" % i, rnd.randbytes(100)))
        if len(batch) == 10000:
            s.put_many(batch)
            batch = []
    s.put_many(batch)
    segments = s.stats()["segments"]
    s.close()
    return segments


def run(code, path, nkeys, ngets, cache, op):
    if op != "get":                 # (writes change the store: each run writes a fresh copy)
        copy = path + ".copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(path, copy)
        path = copy
    out = subprocess.run([sys.executable, "-c", _WORKER, code, path, str(nkeys), str(ngets),
                          str(cache), op], capture_output=True, text=True, check=True, timeout=600)
    rate, misses = out.stdout.split()
    return float(rate), int(misses)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=400_000)
    ap.add_argument("--gets", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", default=None, metavar="DIR")
    args = ap.parse_args()
    codes = [("this", HERE)]
    if args.baseline:
        codes.insert(0, ("baseline", os.path.abspath(args.baseline)))
    tmp = tempfile.mkdtemp(prefix="ringkv-mapcache-")
    try:
        sealed = os.path.join(tmp, "sealed")
        active = os.path.join(tmp, "active")
        nseg = build(sealed, args.keys, 1 << 20)
        build(active, 20_000, 64 << 20)
        print(f"{args.keys:,} keys in {nseg} segments of 1 MiB; {args.gets:,} random keys a run, "
              f"median of {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}")
        rows = [("get_many best of 30, active segment", active, 20_000, 0, "get_many"),
                ("get_many best of 30, sealed, cache holds all", sealed, args.keys, nseg + 1,
                 "get_many"),
                ("get, active segment (20,000 keys)", active, 20_000, 0, "get"),
                ("get, sealed, cache holds all (hits)", sealed, args.keys, nseg + 1, "get"),
                ("get, sealed, default cache (8)", sealed, args.keys, 0, "get"),
                ("get, sealed, cache of 1", sealed, args.keys, 1, "get"),
                ("put overwriting, cache holds all", sealed, args.keys, nseg + 1, "put"),
                ("put_many overwriting, cache holds all", sealed, args.keys, nseg + 1, "put_many"),
                ("put_many overwriting, default cache (8)", sealed, args.keys, 0, "put_many")]
        head = "| op | " + " | ".join(f"{name} ops/s (misses)" for name, _ in codes)
        print(head + (" | this / baseline |" if args.baseline else " |"))
        print("|---" * (len(codes) + 1 + bool(args.baseline)) + "|")
        for label, path, nkeys, cache, op in rows:
            results = {name: [] for name, _ in codes}
            for _ in range(args.rounds):
                for name, code in codes:
                    results[name].append(run(code, path, nkeys, args.gets, cache, op))
            med = {name: statistics.median(r for r, _ in rs) for name, rs in results.items()}
            cells = [f"{med[name]:,.0f} ({results[name][-1][1]:,})" for name, _ in codes]
            line = f"| {label} | " + " | ".join(cells)
            if args.baseline:
                line += f" | {med['this'] / med['baseline']:.3f}"
            print(line + " |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
