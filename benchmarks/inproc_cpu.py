"""CPU per request of the node's own code, in one process, without redis-benchmark's noise.

    python benchmarks/inproc_cpu.py                      # this checkout
    python benchmarks/inproc_cpu.py ../before .        # checkouts side by side, alternating

Two measurements per checkout, each in a fresh child process run from that checkout's
directory (so its kvnet/kvcore and compiled extensions are the ones imported):

- single: one node (N=1) and its RESP front door fed whole commands through a fake transport,
  one command per data_received (`-P1`) and 16 per data_received (`-P16`); the minimum over
  rounds of the wall time per command (no sockets, so this is the Python and store work alone).
- cluster: three nodes (N=3, R=W=2) in one event loop with real peer connections over
  127.0.0.1; 50 fake clients on node1, each sending its next SET or GET when the previous is
  answered; user and system CPU of the process per request, summed over the three nodes
  (which share one core here), and requests per second.
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

VALUE = b"x" * 100


def _cmd(op, key):
    if op == "SET":
        return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$100\r\n%s\r\n" % (len(key), key, VALUE)
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)


class FakeTransport:
    """Enough of an asyncio transport for RespProtocol; `on_write` sees every reply."""

    def __init__(self, on_write=None):
        self.on_write = on_write

    def write(self, data):
        if self.on_write is not None:
            self.on_write(data)

    def get_extra_info(self, name):
        return ("127.0.0.1", 1)

    def set_write_buffer_limits(self, high=None):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def is_closing(self):
        return False

    def abort(self):
        pass

    def close(self):
        pass


async def _nodes(base, count, n, rw):
    from kvnet.config import load
    from kvnet.node import Node
    from kvnet.testing import free_ports
    ports = free_ports(2 * count)
    members = [f"n{i}@127.0.0.1:{ports[count + i]}" for i in range(count)]
    out = []
    for i in range(count):
        cfg = load(name=f"n{i}", port=ports[i], peer_port=ports[count + i], n=n, r=rw, w=rw,
                   data_dir=os.path.join(base, f"n{i}"), members=members, fsync="never",
                   request_timeout_ms=10000)
        out.append(await Node(cfg).start())
    return out


async def single(keys, rounds):
    from kvnet.resp.server import RespProtocol
    with tempfile.TemporaryDirectory(prefix="ringkv-inproc-") as base:
        (node,) = await _nodes(base, 1, 1, 1)
        proto = RespProtocol(node.resp)
        proto.connection_made(FakeTransport())
        names = [b"key:%012d" % i for i in range(keys)]
        for i in range(0, keys, 16):          # the keys exist, the partitions are open
            proto.data_received(b"".join(_cmd("SET", k) for k in names[i:i + 16]))
        out = {}
        for pipeline in (1, 16):
            for op in ("SET", "GET"):
                chunks = [b"".join(_cmd(op, k) for k in names[i:i + pipeline])
                          for i in range(0, keys, pipeline)]
                best = float("inf")
                for _ in range(rounds):
                    t = time.perf_counter()
                    for c in chunks:
                        proto.data_received(c)
                    best = min(best, (time.perf_counter() - t) / keys * 1e6)
                out[f"-P{pipeline} {op}"] = best
        await node.stop()
    return out


async def fake_clients(node, op, clients, per, before=None):
    """`clients` fake clients on node's front door, each sending its next of `per` commands
    when the previous is answered, until all are answered; before() runs just before the
    first commands go."""
    from kvnet.resp.server import RespProtocol
    loop = asyncio.get_running_loop()
    done = []
    for c in range(clients):
        cmds = [_cmd(op, b"key:%012d" % (c * per + j)) for j in range(per)]
        fut = loop.create_future()
        proto = RespProtocol(node.resp)
        sent = [0]

        def on_write(data, proto=proto, cmds=cmds, fut=fut, sent=sent):
            sent[0] += 1
            if sent[0] < len(cmds):
                loop.call_soon(proto.data_received, cmds[sent[0]])
            elif not fut.done():
                fut.set_result(None)
        proto.connection_made(FakeTransport(on_write))
        done.append((proto, cmds[0], fut))
    if before is not None:
        before()
    for proto, first, _ in done:
        proto.data_received(first)
    await asyncio.gather(*(f for _, _, f in done))


async def cluster(requests, clients=50):
    with tempfile.TemporaryDirectory(prefix="ringkv-inproc-") as base:
        nodes = await _nodes(base, 3, 3, 2)

        async def run(op, per):
            start = {}
            await fake_clients(nodes[0], op, clients, per,
                               lambda: start.update(t=time.perf_counter(), c=os.times()))
            c1, total = os.times(), clients * per
            c0 = start["c"]
            return {"user_us": (c1.user - c0.user) / total * 1e6,
                    "sys_us": (c1.system - c0.system) / total * 1e6,
                    "rps": total / (time.perf_counter() - start["t"])}

        await run("SET", 40)                    # open the partitions
        out = {op: await run(op, requests // clients) for op in ("SET", "GET")}
        for node in nodes:
            await node.stop()
    return out


def child(args):
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    sys.path.insert(0, os.getcwd())
    res = {"single": runner(single(args.keys, args.rounds)),
           "cluster": runner(cluster(args.requests))}
    print(json.dumps(res))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="*", default=[os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))], help="source trees to compare (built in place)")
    ap.add_argument("--keys", type=int, default=20_000, help="keys of the single-node runs")
    ap.add_argument("--rounds", type=int, default=7, help="single-node rounds (minimum taken)")
    ap.add_argument("--requests", type=int, default=10_000, help="cluster requests per op")
    ap.add_argument("--repeat", type=int, default=2, help="runs per checkout, alternating")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    print(f"single node: min over {args.rounds} rounds of {args.keys:,} commands, us per command; "
          f"cluster: 3 nodes in one process, {args.requests:,} requests per op from 50 clients, "
          "CPU us per request (user+sys)")
    for r in range(args.repeat):
        for co in args.checkouts:
            res = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                                  "--keys", str(args.keys), "--rounds", str(args.rounds),
                                  "--requests", str(args.requests)],
                                 cwd=co, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{co}: failed\n{res.stderr[-2000:]}")
                continue
            d = json.loads(res.stdout.strip().splitlines()[-1])
            s, c = d["single"], d["cluster"]
            cells = "  ".join(f"{k} {v:5.2f}" for k, v in s.items())
            cl = "  ".join(f"{op} {v['user_us'] + v['sys_us']:6.1f} ({v['rps']:,.0f}/s)"
                           for op, v in c.items())
            print(f"{co:<28} single: {cells} | cluster: {cl}", flush=True)


if __name__ == "__main__":
    main()
