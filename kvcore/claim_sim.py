"""Claim simulator: replays join/leave sequences and reports balance, spacing and movement
(riak_core_claim_sim's role; docs/ring.md has a run). `python -m kvcore.claim_sim --help`."""
import argparse
import random
import sys
import time
from collections import Counter

from kvcore import claim
from kvcore._native import select

ring_mod = select("kvcore.ring", "kvcore.ring_py")


def grow_then_shrink(start=3, top=64, seed=1, leave_order="random"):
    """('create', ids) then joins up to `top` nodes, then leaves back to `start` nodes."""
    ids = [f"node{i:02d}" for i in range(start)]
    yield ("create", list(ids))
    for i in range(start, top):
        ids.append(f"node{i:02d}")
        yield ("join", ids[-1])
    rnd = random.Random(seed)
    while len(ids) > start:
        if leave_order == "newest":
            gone = ids[-1]
        elif leave_order == "oldest":
            gone = ids[0]
        else:
            gone = rnd.choice(ids)
        ids.remove(gone)
        yield ("leave", gone)


def zone_stats(ring):
    """(lists spanning fewer than min(N, Z) zones, zone-spacing violations when zone_labels
    asks spacing else None, max over nodes of replicas held / (N x partitions owned))."""
    key = {x: claim.zone_key(x, z) for x, z in ring.members}
    nz = len({key[x] for x in set(ring.owners)})
    held = Counter()
    short = 0
    for p in range(ring.q):
        pl = ring.preference_list(p)
        held.update(pl)
        short += len({key[x] for x in pl}) < min(ring.n, nz)
    lab = claim.zone_labels(ring.members, ring.q, ring.n)
    viol = None if lab is None else len(claim.violations(ring.owners, ring.n, lab))
    skew = max(held[x] / (min(ring.n, len(ring.nodes)) * c) for x, c in Counter(ring.owners).items())
    return short, viol, skew


def simulate(sequence, q=256, n=3, zones=0):
    """Replay `sequence`; return (rows, totals). A row per join/leave: nodes after the step,
    max/min partitions owned, spacing violations (windows the properties do not allow), moved,
    ideal (Q/(S+1) on a join, the leaver's share on a leave), minimal (what balance forces),
    fallback (re-striped). zones=K: node i is in zone i mod K (its number's), and rows add
    zone_stats."""
    rows, ring = [], None

    def member(x):
        return (x, f"z{int(x.lstrip('node')) % zones}") if zones else (x, None)

    for op, arg in sequence:
        if op == "create":
            ring = ring_mod.Ring.create([member(x) for x in arg], q=q, n=n)
            continue
        before = Counter(ring.owners)
        s = len(ring.nodes)
        if op == "join":
            got = claim.join(ring, arg, member(arg)[1])
            members = ring.members + (member(arg),)
            ideal = q / (s + 1)
            lo, hi = claim.balance_bounds(q, s + 1)
            minimal = max(lo, sum(max(0, c - hi) for c in before.values()))
        else:
            got = claim.leave(ring, arg)
            members = tuple(m for m in ring.members if m[0] != arg)
            ideal = minimal = before[arg]
        new = ring_mod.Ring(members, got.owners, n, ring.epoch + 1)
        counts = Counter(new.owners)
        bad = claim.violations(new.owners, n) if len(new.nodes) >= n else []
        if len(new.nodes) == n:
            bad = [i for i in bad if i < q - (n - 1)]
        rows.append({
            "step": len(rows) + 1, "op": op, "node": arg, "nodes": len(new.nodes),
            "max": max(counts.values()), "min": min(counts.values()), "violations": len(bad),
            "moved": len(claim.diff(ring, new)), "ideal": ideal, "minimal": minimal,
            "fallback": got.fallback,
        })
        if zones:
            rows[-1]["short"], rows[-1]["zviol"], rows[-1]["skew"] = zone_stats(new)
        ring = new
    totals = {
        "moved": sum(r["moved"] for r in rows),
        "ideal": sum(r["ideal"] for r in rows),
        "minimal": sum(r["minimal"] for r in rows),
        "fallbacks": sum(r["fallback"] for r in rows),
        "violations": sum(r["violations"] for r in rows),
    }
    totals["ratio"] = totals["moved"] / totals["ideal"] if totals["ideal"] else 1.0
    if zones:
        totals["short"] = sum(r["short"] for r in rows)
        totals["zone_spaced"] = sum(r["zviol"] == 0 for r in rows)
        totals["zone_asked"] = sum(r["zviol"] is not None for r in rows)
        totals["max_skew"] = max(r["skew"] for r in rows)
    return rows, totals


def format_table(rows, totals, every=1):
    zoned = bool(rows) and "skew" in rows[0]
    out = [f"{'step':>4} {'op':<5} {'node':<7} {'S':>3} {'max':>4} {'min':>4} {'viol':>4} "
           f"{'moved':>5} {'ideal':>6} {'extra':>5} "
           + (f"{'zviol':>5} {'skew':>5} " if zoned else "") + "fallback"]
    for r in rows:
        if every > 1 and r["step"] % every and r is not rows[-1] and r["moved"] <= r["minimal"]:
            continue
        zcols = (f"{'-' if r['zviol'] is None else r['zviol']:>5} {r['skew']:>5.2f} "
                 if zoned else "")
        out.append(f"{r['step']:>4} {r['op']:<5} {r['node']:<7} {r['nodes']:>3} {r['max']:>4} "
                   f"{r['min']:>4} {r['violations']:>4} {r['moved']:>5} {r['ideal']:>6.1f} "
                   f"{r['moved'] - r['minimal']:>5} {zcols}{'yes' if r['fallback'] else ''}")
    out.append(f"total: moved {totals['moved']}, ideal {totals['ideal']:.1f}, ratio "
               f"{totals['ratio']:.3f} (target <= 1.1); minimal for balance {totals['minimal']}; "
               f"fallbacks {totals['fallbacks']}; spacing violations {totals['violations']}")
    if zoned:
        out.append(f"zones: lists short of min(N, Z) zones {totals['short']}; zone-spaced after "
                   f"{totals['zone_spaced']} of the {totals['zone_asked']} steps where asked; max "
                   f"replica skew {totals['max_skew']:.2f} (replicas held / (N x owned))")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m kvcore.claim_sim", description=__doc__)
    ap.add_argument("--q", type=int, default=256, help="partitions (power of two)")
    ap.add_argument("--n", type=int, default=3, help="replicas")
    ap.add_argument("--start", type=int, default=3, help="nodes at the start and the end")
    ap.add_argument("--top", type=int, default=64, help="nodes at the peak")
    ap.add_argument("--leave-order", choices=["random", "newest", "oldest"], default="random")
    ap.add_argument("--seed", type=int, default=1, help="for --leave-order random")
    ap.add_argument("--zones", type=int, default=0,
                    help="node i in zone i mod K (0: no zones); adds zone columns")
    ap.add_argument("--every", type=int, default=1,
                    help="print every k-th row (rows with extra moves are always printed)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows, totals = simulate(grow_then_shrink(args.start, args.top, args.seed, args.leave_order),
                            args.q, args.n, args.zones)
    print(f"Q={args.q} N={args.n}: {args.start} -> {args.top} -> {args.start} nodes, "
          f"leave order {args.leave_order} (seed {args.seed}), ring module {ring_mod.__name__}")
    print(format_table(rows, totals, args.every))
    print(f"({time.perf_counter() - t0:.2f} s)")
    return 0 if totals["ratio"] <= 1.1 and not totals["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
