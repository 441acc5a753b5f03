"""Key -> replicas lookups side by side, in one run: ringkv vs uhashring vs a pure-Python bisect
ring vs a Python loop calling dict.get (the floor of any per-key Python call).

    python benchmarks/compare_ring.py [--keys 200000] [--nodes 16] [--repeat 5]

Every competitor gets the same 16-byte keys and its own driver loop; the best of --repeat runs
counts (the machine may be shared). docs/ring.md records a run.
"""
import argparse
import bisect
import os
import random
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvcore._native import select  # noqa: E402

ring_mod = select("kvcore.ring", "kvcore.ring_py")


class BisectRing:
    """What one would write in Python: 160 points per node (crc32 of "node-i"), bisect on
    crc32(key), each point carrying its precomputed preference list of n distinct nodes."""

    def __init__(self, nodes, n=3, vnodes=160):
        points = sorted((zlib.crc32(f"{x}-{i}".encode()), x) for x in nodes for i in range(vnodes))
        self.points = [h for h, _ in points]
        owners = [x for _, x in points]
        self.prefs = []
        for i in range(len(owners)):
            pl = []
            k = i
            while len(pl) < min(n, len(nodes)):
                if owners[k % len(owners)] not in pl:
                    pl.append(owners[k % len(owners)])
                k += 1
            self.prefs.append(tuple(pl))

    def preference_list(self, key):
        return self.prefs[bisect.bisect(self.points, zlib.crc32(key)) % len(self.points)]


def best_rate(loop, keys, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        loop(keys)
        best = min(best, time.perf_counter() - t)
    return len(keys) / best


def driver(fn):
    def loop(keys):
        for k in keys:
            fn(k)
    return loop


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    blob = random.Random(1).randbytes(16 * args.keys)
    keys = [blob[i:i + 16] for i in range(0, len(blob), 16)]
    nodes = [f"node{i:02d}" for i in range(args.nodes)]

    ring = ring_mod.Ring.create(nodes, q=256, n=3)
    table = {k: ring.preference_list(k) for k in keys}
    rows = [
        (f"ringkv Ring.preference_list ({ring_mod.__name__})", best_rate(driver(ring.preference_list), keys, args.repeat)),
        ("dict.get on the same keys (Python call floor)", best_rate(driver(table.get), keys, args.repeat)),
        ("dict.get, 1,024-entry dict (cache-resident; most miss)",
         best_rate(driver({k: table[k] for k in keys[:1024]}.get), keys, args.repeat)),
        ("pure-Python bisect ring (crc32, 160 points/node)",
         best_rate(driver(BisectRing(nodes).preference_list), keys, args.repeat)),
    ]
    try:
        from uhashring import HashRing

        uh = HashRing(nodes=nodes)  # its defaults: 160 vnodes per node, md5 points
        few = keys[: max(1, args.keys // 10)]
        rows.append(("uhashring HashRing.get_node (defaults)", best_rate(driver(uh.get_node), few, args.repeat)))
    except ImportError:
        rows.append(("uhashring (not installed: pip install uhashring)", float("nan")))

    ours = rows[0][1]
    print(f"{args.keys:,} keys of 16 bytes, {args.nodes} nodes, Q=256, N=3; best of {args.repeat} runs")
    print(f"{'lookup':<52} {'lookups/s':>14} {'ringkv is':>10}")
    for name, rate in rows:
        print(f"{name:<52} {rate:>14,.0f} {ours / rate:>9.2f}x")
    uh_rate, dict_rate = rows[4][1], rows[1][1]
    print(f"target: ringkv >= 8x uhashring -> {ours / uh_rate:.1f}x "
          f"({'met' if ours >= 8 * uh_rate else 'MISSED'})")
    print(f"target: ringkv within 1.5x of the dict.get loop -> its time is {dict_rate / ours:.2f}x "
          f"the dict.get loop's ({'met' if dict_rate / ours <= 1.5 else 'MISSED'})")

    many = keys * 5
    rate = best_rate(ring.lookup_many, many, args.repeat)
    print(f"lookup_many on a list of {len(many):,} bytes keys: {rate:,.0f} keys/s "
          f"(target >= 10,000,000: {'met' if rate >= 10e6 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
