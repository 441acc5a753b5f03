"""Instructions per request of a 3-node cluster with peer frame MACs on and off, under callgrind.

    python benchmarks/ir_peermac.py                  # this checkout, MACs off then on
    python benchmarks/ir_peermac.py --requests 2000
    python benchmarks/ir_peermac.py --micro          # the tag alone: BLAKE2b vs HMAC-SHA256

Three nodes (N=3, R=W=2, Q=16) in one process with real peer connections over 127.0.0.1 and
50 fake clients on node1 (benchmarks/inproc_cpu.py's), once with `peer_frame_mac` off and once
on, each in a child process under `valgrind --tool=callgrind`; time.sleep(0) cuts the counts
into one dump per workload, so a workload's count is every instruction the process ran for it
(the three nodes, the event loop, the peer frames both ways; not the kernel). Each request
sends one replica write or read to each of the two other nodes and takes their answers, in
batches (one peer frame carries the requests of a loop iteration), so the MACs' share is per
frame, not per request. Instruction counts do not move with the machine's load, where a
shared machine's timings do (docs/performance.md). Needs valgrind.
"""
import argparse
import asyncio
import os
import sys
import tempfile
import time

import _callgrind   # benchmarks/_callgrind.py (this script's folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
OPS = ("SET", "GET")


async def child(requests, mac, clients=50):
    sys.path.insert(0, os.getcwd())
    sys.path.insert(0, HERE)
    import inproc_cpu as B
    from kvnet.config import load
    from kvnet.node import Node
    from kvnet.testing import free_ports

    with tempfile.TemporaryDirectory(prefix="ringkv-ir-peermac-") as base:
        ports = free_ports(6)
        members = [f"n{i}@127.0.0.1:{ports[3 + i]}" for i in range(3)]
        nodes = []
        for i in range(3):
            cfg = load(name=f"n{i}", port=ports[i], peer_port=ports[3 + i], n=3, r=2, w=2,
                       ring_size=16, data_dir=os.path.join(base, f"n{i}"), members=members,
                       fsync="never", request_timeout_ms=60000, ae_enabled=False,
                       peer_frame_mac=mac)
            nodes.append(await Node(cfg).start())
        await B.fake_clients(nodes[0], "SET", clients, 4)        # warm: connections, partitions
        conn = nodes[0].pool.get("n1")
        assert conn is not None and conn.mac == mac, (conn, mac)
        for op in OPS:
            time.sleep(0)               # a dump: what came before
            await B.fake_clients(nodes[0], op, clients, requests // clients)
            time.sleep(0)               # a dump: this workload
        for node in nodes:
            await node.stop()


def measure(requests, mac, out_dir):
    out = os.path.join(out_dir, "mac" if mac else "plain")
    counts = _callgrind.run([os.path.abspath(__file__), "--child", "--requests", str(requests)]
                            + (["--mac"] if mac else []), out, os.path.dirname(HERE),
                            timeout=3600)
    # dumps: 1 the start and warm-up, then per workload one of it and one (empty) between
    return _callgrind.workloads(counts, len(OPS), requests // 50 * 50)


def micro():
    """Microseconds per tag of a frame of each size: the nodes' FrameMac (compiled,
    kvnet/peer/mac.pyx) beside its twin (hashlib, kvnet/peer/mac_py.py), and the two hashes
    the MAC chooses between by length as hashlib runs them (keyed BLAKE2b-128 from a keyed
    copy, a truncated HMAC-SHA256 from a copy of a keyed HMAC); the minimum of 5 timings, side
    by side in one run (a shared machine's timings are noisy: read the ratios)."""
    import hashlib
    import hmac
    import struct
    import timeit
    sys.path.insert(0, os.path.dirname(HERE))
    from kvnet.peer import mac, mac_py
    key, seq = os.urandom(32), struct.Struct(">Q")
    b2 = hashlib.blake2b(key=key, digest_size=16, person=b"ringkv-frame")
    hm = hmac.new(key, digestmod=hashlib.sha256)
    compiled, twin = mac.FrameMac(key), mac_py.FrameMac(key)

    def blake(frame):
        h = b2.copy()
        h.update(seq.pack(7))
        h.update(frame)
        return h.digest()

    def sha(frame):
        h = hm.copy()
        h.update(seq.pack(7))
        h.update(frame)
        return h.digest()[:16]

    print(f"{'frame bytes':>12} {'tag us':>9} {'twin us':>9} {'ratio':>6} "
          f"{'blake2b us':>11} {'hmac-sha256 us':>15} {'ratio':>6}")
    for size in (64, 512, 2048, 4096, 65536, 1 << 20):
        frame = os.urandom(size)
        number = max(10, 200_000 // (1 + size // 64))
        t = [min(timeit.repeat(lambda f=f: f(frame), number=number, repeat=5)) / number * 1e6
             for f in (compiled.tag, twin.tag, blake, sha)]
        print(f"{size:12,} {t[0]:9.2f} {t[1]:9.2f} {t[0] / t[1]:5.2f}x "
              f"{t[2]:11.2f} {t[3]:15.2f} {t[3] / t[2]:5.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests per workload")
    ap.add_argument("--micro", action="store_true", help="time one tag per frame size only")
    ap.add_argument("--mac", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        asyncio.run(child(args.requests, args.mac))
        return
    if args.micro:
        micro()
        return
    with tempfile.TemporaryDirectory(prefix="ringkv-callgrind-") as tmp:
        rows = [(name, measure(args.requests, mac, tmp)) for name, mac in
                (("peer_frame_mac off", False), ("peer_frame_mac on", True))]
    print(f"instructions per request, 3 nodes in one process (N=3, R=W=2), 50 clients on "
          f"node1, {args.requests} requests per workload")
    print(f"{'':24} " + "  ".join(f"{op:>12}" for op in OPS))
    first = rows[0][1]
    for name, vals in rows:
        print(f"{name:24} " + "  ".join(f"{v:12,.0f}" for v in vals))
    print(f"{'  on vs off':24} " + "  ".join(f"{(v / b - 1) * 100:+11.2f}%"
                                            for v, b in zip(rows[1][1], first)))


if __name__ == "__main__":
    main()
