"""Scale figures of the simulator (docs/simulation.md, "Scale"): tables, PNG plots, JSON.

Four measurements (kvnet/sim/measure.py), each seeded:

- join: N real nodes on kvnet.sim's clock and network (Q = max(64, 8N) rounded up to a
  power of two, gossip every 200 ms, anti-entropy off), then one more joins through one
  seed: gossip rounds until every node's member table holds it, messages and bytes
  meanwhile, CPU per node per simulated second, wall and CPU of the start and of the run.
  O(log N) dissemination means rounds(1,000) at most 3.5x rounds(10).
- fp: N nodes gossip for --fp-duration simulated seconds with 1 % of the writes on every
  link delayed 200 ms (a TCP retransmission), nobody failing: DOWN marks per node-hour.
- claim: the ring of N nodes, then one join and one leave (kvcore.claim): partitions per
  node (min, max) and partitions moved against the fewest possible.
- repair: clients write --keys keys while one node of N is cut off for --cut seconds; after
  the heal, the hint backlog over time and the seconds until every hint is handed back and
  every replica agrees.

    python benchmarks/sim_scale.py                           # the defaults below
    python benchmarks/sim_scale.py --sizes 10,30,100,300 --json scale.json
    python benchmarks/sim_scale.py --only join --sizes 1000 --no-plots
    python benchmarks/sim_scale.py --only repair --load scale.json   # plots with both

Plots (matplotlib, `pip install -e '.[bench]'`): docs/sim-convergence.png (rounds and
bytes per message against N), docs/sim-repair.png (hint backlog after the heal).
"""
import argparse
import json
import math
import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":         # (the same bytes for the same seed)
    os.execve(sys.executable, [sys.executable, *sys.argv],
              dict(os.environ, PYTHONHASHSEED="0"))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kvnet.sim import measure as M  # noqa: E402

PARTS = ("join", "fp", "claim", "repair")


def _ints(text):
    return [int(x) for x in text.split(",") if x]


def run_join(sizes, seed):
    rows = []
    print("| N | Q | rounds until all know the new member | simulated s | messages | "
          "bytes per message | CPU ms per node per simulated s | peer connections per node | "
          "start wall s (CPU s) | run wall s (CPU s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        r = M.join_rounds(n, seed=seed, costs=True)
        rows.append(r)
        per = r["bytes"] / r["messages"] if r["messages"] else 0
        print(f"| {n:,} | {r['q']:,} | {r['rounds']} | {r['known_after_s']} | "
              f"{r['messages']:,} | {per:,.0f} | {r['cpu_per_node_s'] * 1000:.1f} | "
              f"{r['conns_per_node']} | "
              f"{r['start_wall_s']} ({r['start_cpu_s']}) | {r['wall_s']} ({r['cpu_s']}) |",
              flush=True)
    base = rows[0] if rows and rows[0]["rounds"] else None
    if base:
        print()
        for r in rows[1:]:
            if r["rounds"]:
                print(f"rounds({r['nodes']}) / rounds({base['nodes']}) = "
                      f"{r['rounds'] / base['rounds']:.2f}x (log N grows "
                      f"{math.log(r['nodes']) / math.log(base['nodes']):.2f}x); "
                      f"CPU per node {r['cpu_per_node_s'] / base['cpu_per_node_s']:.1f}x "
                      f"for {r['nodes'] / base['nodes']:.0f}x the nodes")
    print()
    return rows


def run_fp(sizes, seed, duration):
    rows = []
    print("| N | simulated s | node-hours | DOWN marks (false positives) | per node-hour | "
          "suspicion samples | wall s (CPU s) |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        r = M.false_positives(n, seed=seed, duration=duration)
        rows.append(r)
        print(f"| {n} | {duration:g} | {r['node_hours']} | {r['down_marks']} | "
              f"{r['per_node_hour']} | {r['suspicion_samples']} | {r['wall_s']} "
              f"({r['cpu_s']}) |", flush=True)
    print()
    return rows


def run_claim(sizes, seed):
    rows = []
    print("| N | Q | partitions per node (min-max) | after a join | after a leave | "
          "moved by the join (fewest) | moved by the leave (fewest) |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        r = M.claim_moves(n, seed=seed)
        rows.append(r)
        b, j, lv = r["balance"], r["join_balance"], r["leave_balance"]
        print(f"| {n:,} | {r['q']:,} | {b[0]}-{b[1]} | {j[0]}-{j[1]} | {lv[0]}-{lv[1]} | "
              f"{r['join_moved']} ({r['join_ideal']}) | {r['leave_moved']} "
              f"({r['leave_ideal']}) |", flush=True)
    print()
    return rows


def run_repair(sizes, seed, cut, keys):
    rows = []
    print("| N | cut s | keys | writes acknowledged | hints at the heal | repaired after s | "
          "wall s (CPU s) |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        r = M.repair_after_heal(n, seed=seed, cut_s=cut, keys=keys)
        rows.append(r)
        print(f"| {n} | {cut:g} | {keys} | {r['acked']} | {r['hints_at_heal']} | "
              f"{r['repair_s']} | {r['wall_s']} ({r['cpu_s']}) |", flush=True)
    print()
    return rows


def plot(results, outdir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plots need matplotlib: pip install -e '.[bench]' (or run with --no-plots)")
    written = []
    join = [r for r in results.get("join", []) if r["rounds"]]
    if join:
        ns = [r["nodes"] for r in join]
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        ax.plot(ns, [r["rounds"] for r in join], "o-", label="rounds until all know (measured)")
        ref = join[0]["rounds"] / math.log(join[0]["nodes"])
        xs = [ns[0] * (ns[-1] / ns[0]) ** (i / 50) for i in range(51)] if len(ns) > 1 else ns
        ax.plot(xs, [ref * math.log(x) for x in xs], "--", color="gray",
                label=f"c log N (through N={ns[0]})")
        ax.set_xscale("log")
        ax.set_xlabel("nodes N")
        ax.set_ylabel("gossip rounds (200 ms)")
        ax.set_ylim(bottom=0)
        ax2 = ax.twinx()
        ax2.plot(ns, [r["bytes"] / max(r["messages"], 1) for r in join], "s:", color="C3",
                 label="bytes per message")
        ax2.set_ylabel("bytes per message", color="C3")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
        ax.set_title("A joining member known everywhere (kvnet.sim)")
        fig.tight_layout()
        path = os.path.join(outdir, "sim-convergence.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    repair = results.get("repair", [])
    if repair:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for r in repair:
            ts = [t for t, _ in r["series"]]
            ax.step(ts, [h for _, h in r["series"]], where="post",
                    label=f"N={r['nodes']}: {r['hints_at_heal']} hints, repaired in "
                          f"{r['repair_s']} s")
        ax.set_xlabel("simulated seconds after the heal")
        ax.set_ylabel("hints pending (all nodes)")
        ax.set_title(f"Repair after a {repair[0]['cut_s']:g} s cut of one node heals "
                     f"({repair[0].get('keys', 40)} keys)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(outdir, "sim-repair.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(PARTS), help=f"parts to run: {','.join(PARTS)}")
    ap.add_argument("--sizes", default="10,30,100", help="join: cluster sizes")
    ap.add_argument("--fp-sizes", default="10,30", help="fp: cluster sizes")
    ap.add_argument("--fp-duration", type=float, default=600.0, help="fp: simulated seconds")
    ap.add_argument("--claim-sizes", default="10,30,100,300,1000", help="claim: ring sizes")
    ap.add_argument("--repair-sizes", default="5,10,20", help="repair: cluster sizes")
    ap.add_argument("--cut", type=float, default=10.0, help="repair: seconds cut off")
    ap.add_argument("--keys", type=int, default=400, help="repair: keys the clients write")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write every result to this file")
    ap.add_argument("--load", help="results of an earlier --json to plot with (parts run "
                                   "now replace theirs)")
    ap.add_argument("--plots", default=os.path.join(ROOT, "docs"), help="PNG directory")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    bad = sorted(set(parts) - set(PARTS))
    if bad:
        ap.error(f"unknown part {', '.join(bad)}: one of {', '.join(PARTS)}")
    results = {}
    if args.load:
        with open(args.load) as f:
            results = json.load(f)
    if "join" in parts:
        results["join"] = run_join(_ints(args.sizes), args.seed)
    if "fp" in parts:
        results["fp"] = run_fp(_ints(args.fp_sizes), args.seed, args.fp_duration)
    if "claim" in parts:
        results["claim"] = run_claim(_ints(args.claim_sizes), args.seed)
    if "repair" in parts:
        results["repair"] = run_repair(_ints(args.repair_sizes), args.seed, args.cut, args.keys)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, sort_keys=True, indent=1)
    if not args.no_plots:
        for path in plot(results, args.plots):
            print(f"wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
