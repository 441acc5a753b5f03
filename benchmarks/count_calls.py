"""Python function calls per request on the node's hot paths, counted, not timed.

    python benchmarks/count_calls.py                 # 3 nodes in one process, N=3, R=W=2, SET
    python benchmarks/count_calls.py --op GET --nodes 1

Runs the nodes of benchmarks/inproc_cpu.py in one event loop, 50 fake clients on node1 each
sending its next command when the previous is answered, and counts with sys.setprofile every
Python function called while the measured commands run (all nodes together), per request.
On this shared machine timings of a few percent drown in noise; a call count does not move,
and each Python call costs a frame. The top functions say where the calls are.
"""
import argparse
import asyncio
import collections
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.inproc_cpu import FakeTransport, _cmd, _nodes  # noqa: E402


async def count(op, nodes_n, clients, per, top):
    from kvnet.resp.server import RespProtocol
    loop = asyncio.get_running_loop()
    counts = collections.Counter()

    def prof(frame, event, arg):
        if event == "call":
            co = frame.f_code
            counts[f"{os.path.relpath(co.co_filename)}:{co.co_name}"] += 1

    with tempfile.TemporaryDirectory(prefix="ringkv-calls-") as base:
        n = 3 if nodes_n > 1 else 1
        nodes = await _nodes(base, nodes_n, n, 2 if n > 1 else 1)

        async def run(op, measured):
            done = []
            for c in range(clients):
                cmds = [_cmd(op, b"key:%012d" % (c * per + j)) for j in range(per)]
                fut = loop.create_future()
                proto = RespProtocol(nodes[0].resp)
                state = [0]

                def on_write(data, proto=proto, cmds=cmds, fut=fut, state=state):
                    state[0] += 1
                    if state[0] < len(cmds):
                        loop.call_soon(proto.data_received, cmds[state[0]])
                    elif not fut.done():
                        fut.set_result(None)
                proto.connection_made(FakeTransport(on_write))
                done.append((proto, cmds[0], fut))
            if measured:
                sys.setprofile(prof)
            try:
                for proto, first, _ in done:
                    proto.data_received(first)
                await asyncio.gather(*(f for _, _, f in done))
            finally:
                sys.setprofile(None)

        try:
            await run("SET", False)              # the keys exist, the partitions are open
            await run(op, True)
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
