"""Python function calls per request on the node's hot paths, counted, not timed.

    python benchmarks/count_calls.py                 # 3 nodes in one process, N=3, R=W=2, SET
    python benchmarks/count_calls.py --op GET --nodes 1

Runs the nodes of benchmarks/inproc_cpu.py in one event loop, 50 fake clients on node1 each
sending its next command when the previous is answered, and counts with sys.setprofile every
Python function called while the measured commands run (all nodes together), per request.
On this shared machine timings of a few percent drown in noise; a call count does not move,
and each Python call costs a frame. The top functions say where the calls are.

sys.setprofile sees only interpreted functions: the modules the build compiles from their .py
(kvnet/compiled.py) make no profile events, so this counts what runs interpreted. To count
them all, run it in a checkout whose compiled copies of those modules are removed (their .py
then load).
"""
import argparse
import asyncio
import collections
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.inproc_cpu import _nodes, fake_clients  # noqa: E402


async def count(op, nodes_n, clients, per, top):
    counts = collections.Counter()

    def prof(frame, event, arg):
        if event == "call":
            co = frame.f_code
            counts[f"{os.path.relpath(co.co_filename)}:{co.co_name}"] += 1

    with tempfile.TemporaryDirectory(prefix="ringkv-calls-") as base:
        n = 3 if nodes_n > 1 else 1
        nodes = await _nodes(base, nodes_n, n, 2 if n > 1 else 1)
        try:
            await fake_clients(nodes[0], "SET", clients, per)   # the keys and partitions exist
            try:
                await fake_clients(nodes[0], op, clients, per, lambda: sys.setprofile(prof))
            finally:
                sys.setprofile(None)
        finally:
            for node in nodes:
                await node.stop()
    total = clients * per
    print(f"{op}, {nodes_n} node(s), {clients} clients x {per} requests: "
          f"{sum(counts.values()) / total:.1f} Python calls per request")
    for name, v in counts.most_common(top):
        print(f"  {v / total:6.2f}  {name}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", default="SET", choices=["SET", "GET"])
    ap.add_argument("--nodes", type=int, default=3, choices=[1, 3])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--per", type=int, default=40, help="requests per client")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args(argv)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(count(args.op, args.nodes, args.clients, args.per, args.top))


if __name__ == "__main__":
    main()
