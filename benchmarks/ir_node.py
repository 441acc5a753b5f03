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

    python benchmarks/ir_node.py --nodes 3 ../before .     # the direct lane, pipelined

--nodes 3 counts a cluster instead: three nodes (N=3, R=W=2) in the child's one process and
event loop, their peer connections over 127.0.0.1, and --clients fake clients on node1, each
sending its next pipeline of 1 or 16 commands (one data_received) once the previous one is
answered. Everything the process runs between the workload's two marks is counted (the
three nodes, the event loop; not the kernel): what a change of how often the loop turns, or
of how many commands share a batch, saves shows up here too.
"""
import argparse
import asyncio
import os
import sys
import tempfile
import time

import _callgrind   # benchmarks/_callgrind.py (this script's folder is on sys.path)

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


async def pipelined(node, op, clients, depth, rounds):
    """`clients` fake clients of node's front door, each sending `rounds` pipelines of
    `depth` commands, the next once every reply of the previous one is in; the keys are
    key:<n> for n below clients * rounds * depth, the same for SET and GET."""
    import hiredis
    import inproc_cpu as B
    from kvnet.resp.server import RespProtocol
    loop = asyncio.get_running_loop()
    started = []
    for c in range(clients):
        chunks = [b"".join(B._cmd(op, b"key:%012d" % ((c * rounds + r) * depth + j))
                           for j in range(depth)) for r in range(rounds)]
        proto = RespProtocol(node.resp)
        fut = loop.create_future()
        state = {"replies": 0, "sent": 1, "reader": hiredis.Reader()}

        def on_write(data, proto=proto, chunks=chunks, fut=fut, state=state):
            reader = state["reader"]
            reader.feed(data)
            while reader.gets() is not False:
                state["replies"] += 1
            if state["replies"] < state["sent"] * depth:
                return
            if state["sent"] < len(chunks):
                loop.call_soon(proto.data_received, chunks[state["sent"]])
                state["sent"] += 1
            elif not fut.done():
                fut.set_result(None)
        proto.connection_made(B.FakeTransport(on_write))
        started.append((proto, chunks[0], fut))
    for proto, first, _ in started:
        proto.data_received(first)
    await asyncio.gather(*(f for _, _, f in started))
    for proto, _, _ in started:
        proto.connection_lost(None)


async def child_cluster(requests, clients):
    sys.path.insert(0, os.getcwd())
    sys.path.insert(0, HERE)
    import inproc_cpu as B
    with tempfile.TemporaryDirectory(prefix="ringkv-ir-") as base:
        nodes = await B._nodes(base, 3, 3, 2)
        ring = nodes[0].ring
        for _ in range(12000):          # until node1's direct lane is open (peers connected)
            if all(nodes[0].direct_lane(p) is not None for p in range(ring.q)):
                break
            await asyncio.sleep(0.01)
        await pipelined(nodes[0], "SET", clients, 16, 2)        # every partition open
        for pipeline, op in WORKLOADS:
            time.sleep(0)               # a dump: what came before
            await pipelined(nodes[0], op, clients, pipeline,
                            max(1, requests // (clients * pipeline)))
            time.sleep(0)               # a dump: this workload
        for node in nodes:
            await node.stop()


def measure(checkout, keys, door, out_dir, nodes=1, clients=50):
    out = os.path.join(out_dir, os.path.basename(os.path.abspath(checkout)) or "root")
    if nodes == 1:
        collect = ["--collect-atstart=no", f"--toggle-collect={TOGGLE}"]
        child = ["--child", "--keys", str(keys)] + ([] if door else ["--no-door"])
    else:                               # everything between the marks
        collect = ["--collect-atstart=yes"]
        child = ["--child", "--keys", str(keys), "--nodes", "3", "--clients", str(clients)]
        keys = [max(1, keys // (clients * p)) * clients * p for p, _ in WORKLOADS]
    counts = _callgrind.run([os.path.abspath(__file__), *child], out, checkout, collect)
    # dumps: 1 the warm-up, then per workload one of it and one (empty) between
    return _callgrind.workloads(counts, len(WORKLOADS), keys)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="*", default=[os.path.dirname(HERE)])
    ap.add_argument("--keys", type=int, default=3200, help="commands per workload")
    ap.add_argument("--no-door", action="store_true", help="the general path: no LocalDoor")
    ap.add_argument("--nodes", type=int, default=1, choices=(1, 3),
                    help="3: a 3-node cluster in one process, everything counted (above)")
    ap.add_argument("--clients", type=int, default=50, help="--nodes 3: fake clients")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        if args.nodes == 3:
            asyncio.run(child_cluster(args.keys, args.clients))
        else:
            asyncio.run(child(args.keys, not args.no_door))
        return
    with tempfile.TemporaryDirectory(prefix="ringkv-callgrind-") as tmp:
        rows = [(c, measure(c, args.keys, not args.no_door, tmp, args.nodes, args.clients))
                for c in args.checkouts]
    head = "  ".join(f"-P{p} {op:>4}" for p, op in WORKLOADS)
    if args.nodes == 3:
        print(f"instructions per command, the whole process: 3 nodes (N=3, R=W=2), "
              f"{args.clients} clients on node1, about {args.keys} commands per workload")
    else:
        print(f"instructions per command in data_received "
              f"({'general path' if args.no_door else 'door'}, {args.keys} commands per "
              "workload)")
    print(f"{'checkout':40} {head}")
    _callgrind.print_rows(rows)

if __name__ == "__main__":
    main()
