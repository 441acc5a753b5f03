"""LogStore get and put of checkouts side by side: interleaved timing rounds, and (--callgrind)
instructions per call under valgrind.

    python benchmarks/ab_store.py ../before .                # medians and bests of 7 rounds
    python benchmarks/ab_store.py --callgrind ../before .    # instructions per get / put

Each measurement is a child process run from that checkout's directory (its compiled
kvcore.storage.store), so two builds compare on the same machine at the same time: the rounds
alternate between the checkouts, and the tables show each one's median and best round and
their ratio to the first checkout's (the best round is the one the machine's other load
disturbed least). A shared machine still moves timings by several percent between rounds;
instruction counts (--callgrind: counted only inside LogStore.get and LogStore.put, with
--toggle-collect) do not move with the load. Needs valgrind for --callgrind.
"""
import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import _callgrind   # benchmarks/_callgrind.py (this script's folder is on sys.path)

OPS = ("put", "get", "get_miss", "put_many")
_M = "*kvcore_7storage_5store_8LogStore_"      # (Cython's names of LogStore's methods)
TOGGLES = [(_M + "*get", ("get", "get_miss")), (_M + "*put", ("put",)),
           (_M + "*put_many", ("put_many",))]


def child(keys, loops, callgrind):
    sys.path.insert(0, os.getcwd())
    from kvcore.storage.store import LogStore
    rnd = random.Random(5)
    names = [rnd.randbytes(16) for _ in range(keys)]
    values = [rnd.randbytes(100) for _ in range(keys)]
    misses = [rnd.randbytes(16) for _ in range(keys)]
    order = names[:]
    rnd.shuffle(order)
    batches = [list(zip(names[i:i + 1000], values[i:i + 1000])) for i in range(0, keys, 1000)]
    out = {}
    with tempfile.TemporaryDirectory(prefix="ringkv-abstore-") as d:
        s = LogStore(os.path.join(d, "s"), fsync="never")
        s.put_many(zip(names, values))
        put, get = s.put, s.get
        for op in OPS:
            time.sleep(0)                   # (callgrind: a dump of what came before)
            t0 = time.perf_counter()
            for _ in range(loops):
                if op == "put":
                    for k, v in zip(names, values):
                        put(k, v)
                elif op == "get":
                    for k in order:
                        get(k)
                elif op == "get_miss":
                    for k in misses:
                        get(k)
                else:
                    for b in batches:
                        s.put_many(b)
            out[op] = (time.perf_counter() - t0) / (loops * keys) * 1e9
            time.sleep(0)                   # (callgrind: a dump of this op)
        s.close()
    if not callgrind:
        print(" ".join(f"{op}={out[op]:.1f}" for op in OPS))


def run_child(checkout, keys, loops):
    res = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--keys",
                          str(keys), "--loops", str(loops)], cwd=checkout, check=True,
                         capture_output=True, text=True, timeout=600)
    return {k: float(v) for k, v in (p.split("=") for p in res.stdout.split())}


def run_callgrind(checkout, keys, tmp):
    """Instructions per call of each op, from one valgrind run per toggled function (this
    valgrind honours one --toggle-collect at a time)."""
    out = {}
    for n, (toggle, ops) in enumerate(TOGGLES):
        path = os.path.join(tmp, f"{abs(hash(os.path.abspath(checkout)))}-{n}")
        counts = _callgrind.run([os.path.abspath(__file__), "--child", "--callgrind", "--keys",
                                 str(keys), "--loops", "1"], path, checkout,
                                ("--collect-atstart=no", f"--toggle-collect={toggle}"))
        # dumps: the setup, then per op one of it and one (empty) between
        for op in ops:
            out[op] = counts[1 + 2 * OPS.index(op)] / keys
    return out


def table(title, unit, rows):
    print(title)
    print(f"{'checkout':34} " + "  ".join(f"{op:>10}" for op in OPS))
    first = rows[0][1]
    for c, vals in rows:
        print(f"{c:34} " + "  ".join(f"{vals[op]:10.1f}" for op in OPS) + f"  {unit}")
        if vals is not first:
            print(f"{'  ratio to first':34} " + "  ".join(f"{vals[op] / first[op]:10.3f}"
                                                        for op in OPS))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="*", default=[os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))])
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--loops", type=int, default=5, help="passes over the keys per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--callgrind", action="store_true", help="instructions per call instead")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.keys, args.loops, args.callgrind)
        return
    if args.callgrind:
        keys = min(args.keys, 5000)
        with tempfile.TemporaryDirectory(prefix="ringkv-callgrind-") as tmp:
            rows = [(c, run_callgrind(c, keys, tmp)) for c in args.checkouts]
        table(f"instructions per call inside LogStore.get/put ({keys} keys, callgrind)",
              "Ir", rows)
        return
    samples = {c: {op: [] for op in OPS} for c in args.checkouts}
    for _ in range(args.rounds):
        for c in args.checkouts:            # interleaved: the load moves both alike
            for op, v in run_child(c, args.keys, args.loops).items():
                samples[c][op].append(v)
    for name, pick in (("median", statistics.median), ("best", min)):
        rows = [(c, {op: pick(samples[c][op]) for op in OPS}) for c in args.checkouts]
        table(f"ns per call, {name} of {args.rounds} interleaved rounds ({args.keys} keys, "
              f"{args.loops} passes; a shared machine: compare ratios)", "ns", rows)


if __name__ == "__main__":
    main()
