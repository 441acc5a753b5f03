"""Gossip dissemination against cluster size, in the simulator (docs/simulation.md, "Scale").

For each size N: N real nodes on kvnet.sim's clock and network (Q = max(64, 8N) rounded up to
a power of two, gossip every 200 ms), then one more node joins through one seed; the table
gives the gossip rounds until every node's member table holds it, the network messages
meanwhile and the wall time of the whole run (start included). O(log N) dissemination means
rounds(1,000) at most 3.5x rounds(10).

    python benchmarks/sim_scale.py                    # 10, 30, 100
    python benchmarks/sim_scale.py --sizes 10,30,100,300
"""
import argparse
import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":         # (the same bytes for the same seed)
    os.execve(sys.executable, [sys.executable, *sys.argv],
              dict(os.environ, PYTHONHASHSEED="0"))

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvnet.sim.measure import join_rounds  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,30,100")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rows = []
    print("| N | rounds until all know the new member | simulated s | messages | wall s |")
    print("|---|---|---|---|---|")
    for n in (int(x) for x in args.sizes.split(",")):
        r = join_rounds(n, seed=args.seed)
        rows.append(r)
        print(f"| {n} | {r['rounds']} | {r['known_after_s']} | {r['messages']:,} | "
              f"{r['wall_s']} |", flush=True)
    base = rows[0]["rounds"]
    if base:
        print()
        for r in rows[1:]:
            if r["rounds"]:
                print(f"rounds({r['nodes']}) / rounds({rows[0]['nodes']}) = "
                      f"{r['rounds'] / base:.2f}x")


if __name__ == "__main__":
    main()
