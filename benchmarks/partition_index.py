"""LogStore put/get cost for the keys of one ring partition, with and without index_skip_bits.

Every key of a partition shares the top log2(Q) bits of its token. The index places a key by
the top bits of its order value, so without skipping those bits a partition's keys crowd into
1/Q of the table and every probe walks a long run. Prints a table; one process, same keys.

    python benchmarks/partition_index.py [--keys 20000] [--q 256]
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvcore.ring import Ring  # noqa: E402
from kvcore.storage import LogStore  # noqa: E402


def partition_keys(count, q, p=7):
    ring, out, i = Ring.create(["a"], q=q, n=1), [], 0
    while len(out) < count:
        k = b"key-%d" % i
        if ring.partition_of(k) == p:
            out.append(k)
        i += 1
    return out


def measure(keys, skip):
    d = tempfile.mkdtemp(prefix="ringkv-pidx-")
    try:
        s = LogStore(d, fsync="never", index_skip_bits=skip)
        t0 = time.perf_counter()
        for k in keys:
            s.put(k, b"v" * 100)
        t1 = time.perf_counter()
        for k in keys:
            s.get(k)
        t2 = time.perf_counter()
        s.close()
        return (t1 - t0) / len(keys), (t2 - t1) / len(keys)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--q", type=int, default=256)
    args = ap.parse_args()
    bits = args.q.bit_length() - 1
    keys = partition_keys(args.keys, args.q)
    print(f"{args.keys:,} keys of one partition of Q={args.q}, 100-byte values, fsync never")
    print(f"{'index_skip_bits':>16} {'put us':>10} {'get us':>10}")
    rows = {}
    for skip in (0, bits):
        put, get = measure(keys, skip)
        rows[skip] = (put, get)
        print(f"{skip:>16} {put * 1e6:>10.2f} {get * 1e6:>10.2f}")
    (p0, g0), (p1, g1) = rows[0], rows[bits]
    print(f"skipping the partition bits: puts {p0 / p1:.1f}x faster, gets {g0 / g1:.1f}x faster")


if __name__ == "__main__":
    main()
