"""Instructions per command of a node's front door, checkouts side by side, under callgrind.

    python benchmarks/ir_node.py ../before .
    python benchmarks/ir_node.py --no-door ../before .     # the general path (door off)

Instruction counts do not move with the machine's load, where a shared machine moves
redis-benchmark's rates by tens of percent: they show a change of a percent or less that
timings cannot (docs/observability.md, "Cost"). For each checkout, a child process run from
that checkout's directory (its kvnet and compiled extensions) under `valgrind
--tool=callgrind` starts one node (N=1), feeds its RespProtocol whole commands through a
fake transport (benchmarks/inproc_cpu.py's) and counts only inside
`RespProtocol.data_received` (--toggle-collect); time.sleep(0) between workloads cuts the
counts into one dump per workload. It leaves out the event loop and the kernel, so a whole
request's share of a difference is smaller. Needs valgrind.
"""
import argparse
import asyncio
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = [(1, "SET"), (1, "GET"), (16, "SET"), (16, "GET")]
TOGGLE = "__pyx_pw_5kvnet_4resp_6server_12RespProtocol_*data_received"


async def child(keys, door):
    sys.path.insert(0, os.getcwd())
    sys.path.insert(0, HERE)
    import inproc_cpu as B
    from kvnet.resp.server import RespProtocol
    with tempfile.TemporaryDirectory(prefix="ringkv-ir-") as base:
        (node,) = await B._nodes(base, 1, 1, 1)
        if not door:
            node.resp.door = None
        proto = RespProtocol(node.resp)
        proto.connection_made(B.FakeTransport())
        names = [b"key:%012d" % i for i in range(keys)]
        for i in range(0, keys, 16):
            proto.data_received(b"".join(B._cmd("SET", k) for k in names[i:i + 16]))
        for pipeline, op in WORKLOADS:
            chunks = [b"".join(B._cmd(op, k) for k in names[i:i + pipeline])
                      for i in range(0, keys, pipeline)]
            time.sleep(0)               # a dump: what came before
            for c in chunks:
                proto.data_received(c)
            time.sleep(0)               # a dump: this workload
        await node.stop()


def measure(checkout, keys, door, out_dir):
    out = os.path.join(out_dir, os.path.basename(os.path.abspath(checkout)) or "root")
    cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--toggle-collect={TOGGLE}",
           "--dump-before=time_sleep", f"--callgrind-out-file={out}", sys.executable,
           os.path.abspath(__file__), "--child", "--keys", str(keys)] + ([] if door else
                                                                          ["--no-door"])
    subprocess.run(cmd, cwd=checkout, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=1800)
    counts = []
    for path in sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1])):
        with open(path) as f:
            m = re.search(r"^summary: (\d+)", f.read(), re.M)
        counts.append(int(m.group(1)) if m else 0)
    # dumps: 1 the warm-up, then per workload one of it and one (empty) between
    return [counts[1 + 2 * i] / keys for i in range(len(WORKLOADS))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="*", default=[os.path.dirname(HERE)])
    ap.add_argument("--keys", type=int, default=3200, help="commands per workload")
    ap.add_argument("--no-door", action="store_true", help="the general path: no LocalDoor")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        asyncio.run(child(args.keys, not args.no_door))
        return
    with tempfile.TemporaryDirectory(prefix="ringkv-callgrind-") as tmp:
        rows = [(c, measure(c, args.keys, not args.no_door, tmp)) for c in args.checkouts]
    head = "  ".join(f"-P{p} {op:>4}" for p, op in WORKLOADS)
    print(f"instructions per command in data_received ({'general path' if args.no_door else 'door'}"
          f", {args.keys} commands per workload)")
    print(f"{'checkout':40} {head}")
    first = rows[0][1]
    for c, vals in rows:
        print(f"{c:40} " + "  ".join(f"{v:9,.0f}" for v in vals))
        if vals is not first:
            print(f"{'  vs first':40} " + "  ".join(f"{(v / b - 1) * 100:+8.2f}%"
                                                   for v, b in zip(vals, first)))


if __name__ == "__main__":
    main()
