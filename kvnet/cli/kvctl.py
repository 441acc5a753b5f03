"""kvctl: look at and use a ringkv cluster from the shell.

    kvctl status                 members: routing state, liveness, heartbeat age, partitions, suspects
    kvctl ring                   ring epoch, Q, N and ownership counts
    kvctl preflist KEY           the replicas of a key
    kvctl get KEY                context and every sibling
    kvctl put KEY VALUE [--context HEX]
    kvctl del KEY [--context HEX]
    kvctl join|leave|remove NODE stage a membership change (docs/operations.md)
    kvctl clear NODE             unstage it
    kvctl plan                   staged changes, partitions and bytes that would move
    kvctl commit                 apply the staged changes (partitions move in the background)
    kvctl transfers              progress of the partition transfers of a ring change
"""
import argparse
import sys
from collections import Counter

import redis

from kvnet.client import Client


def _show_value(v):
    if v is None:
        return "(deleted)"
    try:
        return v.decode()
    except UnicodeDecodeError:
        return repr(v)


def main(argv=None, out=sys.stdout):
    ap = argparse.ArgumentParser(prog="kvctl", description="Inspect and use a ringkv cluster.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7379)
    ap.add_argument("--password", default=None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status", help="members and their state")
    sub.add_parser("ring", help="ring epoch, Q, N and ownership")
    p = sub.add_parser("preflist", help="the replicas of a key")
    p.add_argument("key")
    g = sub.add_parser("get", help="context and all siblings of a key")
    g.add_argument("key")
    g.add_argument("--r", default=None)
    pt = sub.add_parser("put", help="write a value (a sibling unless --context)")
    pt.add_argument("key")
    pt.add_argument("value")
    pt.add_argument("--context", default=None, help="hex context from `kvctl get`")
    pt.add_argument("--w", default=None)
    d = sub.add_parser("del", help="delete a key")
    d.add_argument("key")
    d.add_argument("--context", default=None)
    for op, help_ in (("join", "stage the join of a node started with `kvnode start --join`"),
                      ("leave", "stage a live node's leave (it hands off, then exits)"),
                      ("remove", "stage the removal of a dead node"),
                      ("clear", "unstage a node's change")):
        sub.add_parser(op, help=help_).add_argument("node")
    sub.add_parser("plan", help="what the staged changes would move")
    sub.add_parser("commit", help="apply the staged changes")
    sub.add_parser("transfers", help="partition transfers of the ring change in progress")
    args = ap.parse_args(argv)

    c = Client(args.host, args.port, password=args.password)
    try:
        if args.cmd == "status":
            st = c.status()
            print(f"node {st['node']}, ring epoch {st['ring_epoch']}", file=out)
            print(f"{'member':<16}{'status':<9}{'route':<7}{'liveness':<10}{'heartbeat age':>14}"
                  f"{'partitions':>12}  suspected by", file=out)
            for m in st["members"]:
                age = m.get("heartbeat_age_s")
                age = "-" if age is None else f"{float(age):.2f} s"
                print(f"{m['name']:<16}{m.get('status') or '-':<9}{'up' if m['up'] else 'down':<7}"
                      f"{m.get('state', '?'):<10}{age:>14}{m['partitions']:>12}  "
                      f"{', '.join(m.get('suspected_by') or []) or '-'}", file=out)
        elif args.cmd == "ring":
            ring = c.ring()
            owned = Counter(ring["owners"])
            print(f"epoch {ring['epoch']}, Q={ring['q']}, N={ring['n']}", file=out)
            for n in ring["nodes"]:
                where = f"{n['host']}:{n['port']}" if n.get("port") else "?"
                print(f"{n['name']:<16}{where:<22}{owned[n['name']]:>5} partitions", file=out)
        elif args.cmd == "preflist":
            for i, t in enumerate(c.preflist(args.key)):
                print(f"{i + 1}. {t['node']}  partition {t['partition']}  "
                      f"{'up' if t['up'] else 'down'}", file=out)
        elif args.cmd == "get":
            obj = c.get(args.key, r=args.r)
            print(f"context {obj.context.hex()}", file=out)
            if not obj.found:
                print("(not found)", file=out)
            for v in obj.values:
                print(_show_value(v), file=out)
        elif args.cmd == "put":
            ctx = bytes.fromhex(args.context) if args.context else None
            print(f"context {c.put(args.key, args.value, context=ctx, w=args.w).hex()}", file=out)
        elif args.cmd in ("join", "leave", "remove", "clear"):
            staged = c.cluster(args.cmd, args.node)["staged"]
            print("staged: " + (", ".join(f"{op} {n}" for n, op in sorted(staged.items())) or "nothing"),
                  file=out)
            print("next: `kvctl plan`, then `kvctl commit`", file=out)
        elif args.cmd == "plan":
            _print_plan(c.cluster("plan"), out)
        elif args.cmd == "commit":
            res = c.cluster("commit")
            print(f"committed: ring epoch {res['epoch']}, {res['transfers']} partition transfers; "
                  "follow them with `kvctl transfers`", file=out)
        elif args.cmd == "transfers":
            t = c.cluster("transfers")
            if not t["moving"]:
                print(f"ring epoch {t['epoch']}: settled, no transfers", file=out)
            else:
                done = sum(1 for r in t["transfers"] if r["state"] == "done")
                print(f"ring epoch {t['epoch']}: {done} of {len(t['transfers'])} transfers done",
                      file=out)
                print(f"{'partition':>9}  {'to':<14}{'from':<14}{'state':<9}{'keys':>9}{'bytes':>12}",
                      file=out)
                for r in t["transfers"]:
                    print(f"{r['partition']:>9}  {r['to']:<14}{r['from'] or '-':<14}{r['state']:<9}"
                          f"{r['keys']:>9}{r['bytes']:>12}", file=out)
        elif args.cmd == "del":
            ctx = bytes.fromhex(args.context) if args.context else None
            print(f"context {c.delete(args.key, context=ctx).hex()}", file=out)
    except redis.ConnectionError as exc:
        print(f"kvctl: cannot reach {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except redis.ResponseError as exc:
        print(f"kvctl: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"kvctl: {exc}", file=sys.stderr)
        return 2
    finally:
        c.close()
    return 0


def _print_plan(plan, out):
    staged = plan["staged"]
    if not staged:
        print("nothing staged", file=out)
        return
    print("staged: " + ", ".join(f"{op} {n}" for n, op in sorted(staged.items())), file=out)
    print(f"{len(plan['transfers'])} partition transfers, about {plan['bytes']:,} bytes", file=out)
    for node, count in sorted(plan["moves"].items()):
        parts = sorted({t[0] for t in plan["transfers"] if t[1] == node})
        print(f"  {node} receives {count} partition replicas: partitions "
              f"{', '.join(map(str, parts))}", file=out)
    print("partitions owned after: " + ", ".join(f"{n} {c}" for n, c in sorted(plan["owned_after"].items())),
          file=out)


if __name__ == "__main__":
    sys.exit(main())
