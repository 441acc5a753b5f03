"""python -m kvnet.sim: one seeded run of real ringkv nodes on a simulated clock and network
(docs/simulation.md). The same seed prints the same bytes, whatever PYTHONHASHSEED the
caller has (the run re-executes itself with PYTHONHASHSEED=0); a run with violations prints
its seed and exits 1."""
import argparse
import json
import os
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m kvnet.sim", description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenario", default="steady",
                    help="steady, partition, loss, churn or lag (docs/simulation.md)")
    ap.add_argument("--duration", type=float, default=20.0, help="simulated seconds of load")
    ap.add_argument("--w", default=None, help="the clients' write quorum (default: the nodes')")
    ap.add_argument("--mutate", default="none",
                    help="put a bug in on purpose (no-hint-replay, w-minus-one): the checker must see it")
    ap.add_argument("--storage", default="memory", choices=("memory", "disk"),
                    help="the stores: in memory (kvnet/sim/storage.py) or real LogStores")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--trace", metavar="FILE", default=None,
                    help="write every message the network delivers to FILE (- for stderr)")
    args = ap.parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(sys.executable, [sys.executable, "-m", "kvnet.sim", *sys.argv[1:]], env)
    from kvnet.sim.scenarios import run
    if args.nodes < 1:
        ap.error("--nodes must be at least 1")
    trace_file = None
    if args.trace == "-":
        trace_file = sys.stderr
    elif args.trace is not None:
        try:
            trace_file = open(args.trace, "w")
        except OSError as exc:
            ap.error(f"--trace {args.trace}: {exc.strerror}")
    trace = None if trace_file is None else (lambda line: print(line, file=trace_file))
    wall = time.perf_counter()
    try:
        summary = run(args.scenario, nodes=args.nodes, seed=args.seed, duration=args.duration,
                      w=args.w, mutation=args.mutate, storage=args.storage, trace=trace)
    except ValueError as exc:
        ap.error(str(exc))
    finally:
        if trace_file is not None and trace_file is not sys.stderr:
            trace_file.close()
    wall = time.perf_counter() - wall
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        for k in sorted(summary):
            if k not in ("violations", "events"):
                print(f"{k}: {summary[k]}")
        for t, what in summary["events"]:
            print(f"event at {t} s: {what}")
        for v in summary["violations"]:
            print(f"VIOLATION: {v}")
    print(f"wall time {wall:.1f} s", file=sys.stderr)
    if summary["violations"]:
        print(f"seed {args.seed} failed: replay it with python -m kvnet.sim --seed {args.seed} "
              f"--scenario {args.scenario} --nodes {args.nodes} --duration {args.duration:g}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
