"""RAM per key of LogStore's index from 100,000 to 10,000,000 keys.

Loads keys with put_many and, every `--step` keys, prints the keydir's bytes
per key and the growth of the process's private resident memory (RssAnon) per
key; the last line gives the maximum over all steps. Keys are 16 or 200 bytes
(`--key-size`), values 8 bytes, so the run is about the index, not the data.

    python benchmarks/index_memory.py --keys 10000000 --key-size 16
"""
import argparse
import os
import sys
import tempfile
import shutil

from compare_storage import rss_anon  # noqa: E402  (same folder)
from kvcore.storage import LogStore


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=10_000_000)
    ap.add_argument("--key-size", type=int, default=16)
    ap.add_argument("--step", type=int, default=100_000)
    ap.add_argument("--first", type=int, default=100_000, help="first size reported")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args(argv)
    if args.key_size < 8:
        ap.error("--key-size must be at least 8")
    top = tempfile.mkdtemp(prefix="ringkv-index-", dir=args.dir)
    pad = b"k" * (args.key_size - 8)
    try:
        warm = LogStore(os.path.join(top, "warm"), fsync="never")
        warm.close()
        base = rss_anon()
        s = LogStore(os.path.join(top, "s"), fsync="never")
        print(f"{'keys':>12} {'index B/key':>12} {'RSS B/key':>10} {'capacity':>12}")
        worst_index = worst_rss = 0.0
        n = 0
        while n < args.keys:
            m = min(n + args.step, args.keys)
            for b in range(n, m, 1000):      # small batches: the caller's garbage stays small
                s.put_many([(pad + i.to_bytes(8, "big"), b"v" * 8) for i in range(b, min(b + 1000, m))])
            n = m
            if n < args.first:
                continue
            st = s.stats()
            ib = st["index_bytes"] / n
            rb = (rss_anon() - base) / n
            worst_index, worst_rss = max(worst_index, ib), max(worst_rss, rb)
            if n in (args.first, args.keys) or n % 1_000_000 == 0:
                print(f"{n:>12,} {ib:>12.1f} {rb:>10.1f} {st['index_capacity']:>12,}")
        s.close()
        print(f"max over every {args.step:,} keys from {args.first:,} to {args.keys:,}: "
              f"index {worst_index:.1f} B/key, RSS {worst_rss:.1f} B/key ({args.key_size}-byte keys)")
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
