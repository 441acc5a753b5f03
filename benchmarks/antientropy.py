"""Anti-entropy: time and bytes to repair replicas of one partition, printed as a table.

Two drivers run the same AntiEntropy service code (its scheduler off; one exchange is started by
hand and timed):

- `nodes`: two in-process Nodes (N=2, Q=2) over the real peer protocol on 127.0.0.1; every key is
  in partition 0, so one tree of 16,384 leaves holds them all.
- `wire`: two in-process LocalReplicas, each behind a stub node whose ring has one partition
  (Q=1, both replicas primaries); every message is msgpack-encoded and decoded as the peer
  protocol does, but no socket is used. With Q=1 the keys' tokens do not share top bits, which
  keeps LogStore's keydir out of its slow case (docs/antientropy.md, "Measured").

Time is wall-clock and the process's CPU time (both replicas run in this one process and
thread, so on an idle machine the two agree; on a shared one the CPU time is the figure to
compare). Bytes are the msgpack sizes of every request and reply payload (the peer frame's 4-byte length and
its [kind, id, type] envelope, about 10 bytes a message, are not counted: see "messages").

    python benchmarks/antientropy.py                          # 1,000,000 keys, both drivers
    python benchmarks/antientropy.py --keys 100000            # a quick run
    python benchmarks/antientropy.py --driver wire            # one driver only

Scenarios: a wiped replica rebuilt (the empty replica starts the exchange, then the full one
does), and 10 differing 16-byte keys among K (5 changed on each side). Records read: the
exchange's own count of the records it read from its partition's store (keys listed from the
index, clocks read), with their bytes; B's for the few-keys scenario.
"""
import argparse
import asyncio
import os
import resource
import shutil
import sys
import tempfile
import time
from types import SimpleNamespace

import msgpack

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kvcore import versions as V                          # noqa: E402
from kvcore.ring import Ring                              # noqa: E402
from kvcore.storage import LogStore                       # noqa: E402
from kvnet.antientropy.service import AntiEntropy         # noqa: E402
from kvnet.config import load                             # noqa: E402
from kvnet.node import Node                               # noqa: E402
from kvnet.replica import LocalReplica                    # noqa: E402
from kvnet.testing import free_ports                      # noqa: E402


def make_keys(n, one_partition):
    """n distinct 16-byte keys; with one_partition, all in partition 0 of a Q=2 ring."""
    ring = Ring.create(["n0", "n1"], q=2, n=2)
    out, i = [], 0
    while len(out) < n:
        k = b"key-%012d" % i
        if not one_partition or ring.partition_of(k) == 0:
            out.append(k)
        i += 1
    return out


def clocks(keys):
    out = []
    for i, k in enumerate(keys):
        c = V.update(V.new(V.sibling(b"value-%010d" % i, 1_700_000_000_000 + i)), None,
                     ("bench", 1, 1))
        out.append((k, V.encode(c)))
    return out


def fill(replica, items):
    """Store encoded clocks straight into partition 0 and its tree (what writes would leave)."""
    part = replica.partition(0)
    for j in range(0, len(items), 10_000):
        chunk = items[j:j + 10_000]
        part.store.put_many(chunk)
        part.tree.update_many([k for k, _ in chunk], None, [v for _, v in chunk])


# ---- driver "nodes": real Nodes over TCP ---------------------------------------------------

async def node_pair(root, timeout_ms):
    ports = free_ports(4)
    members = [f"n{i}@127.0.0.1:{ports[2 + i]}" for i in range(2)]
    nodes = []
    for i in range(2):
        cfg = load(name=f"n{i}", port=ports[i], peer_port=ports[2 + i], n=2, r=1, w=1,
                   ring_size=2, data_dir=os.path.join(root, f"n{i}"), members=members,
                   fsync="never", ae_enabled=False, request_timeout_ms=timeout_ms)
        node = Node(cfg)
        node.ae = node.add_service(AntiEntropy(node))
        nodes.append(await node.start())
    return nodes


async def stop_nodes(nodes):
    for n in nodes:
        await n.stop()


# ---- driver "wire": stub nodes, msgpack round trip per message, no socket ----------------------

class OnePartitionRing:
    """The ring a stub node sees: one partition, both stubs its primaries."""

    q, n, epoch = 1, 2, 1
    nodes = ("n0", "n1")

    def preference_list(self, p):
        return self.nodes

    def partition_of(self, key):
        return 0


def _wire(obj):
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False,
                           strict_map_key=False)


async def wire_pair(root, timeout_ms):
    stubs = {}
    cfg = SimpleNamespace(ae_enabled=False, ae_interval_ms=1000, tombstone_grace_s=3600,
                          request_timeout_ms=timeout_ms, max_key_bytes=8 << 10)
    for name in ("n0", "n1"):
        stub = SimpleNamespace(name=name, ring=OnePartitionRing(), cfg=cfg, hints=None,
                               replica=LocalReplica(os.path.join(root, name), name, fsync="never"))
        stub.is_up = lambda peer: True
        stub.spawn = asyncio.ensure_future
        stubs[name] = stub

    for stub in stubs.values():
        async def call(peer, type_, payload, timeout, _stubs=stubs):
            return _wire(await _stubs[peer].handlers[type_](_wire(payload)))
        stub.call = call
        stub.ae = AntiEntropy(stub)
        stub.handlers = stub.ae.handlers()
    return [stubs["n0"], stubs["n1"]]


async def stop_stubs(stubs):
    for s in stubs:
        await s.replica.close()


# ---- scenarios ---------------------------------------------------------------------------------

def same(a, b):
    pa, pb = a.replica.opened(0), b.replica.opened(0)
    return pa.tree.root() == pb.tree.root() and len(pa.store) == len(pb.store)


async def wiped(make, stop, root, items, starter, timeout_ms):
    nodes = await make(root, timeout_ms)
    try:
        fill(nodes[0].replica, items)
        t, cpu = time.perf_counter(), time.process_time()
        run = await nodes[starter].ae.exchange(0, nodes[1 - starter].name)
        run["duration_s"] = time.perf_counter() - t
        run["cpu_s"] = time.process_time() - cpu
        run["converged"] = same(*nodes)
        return run
    finally:
        await stop(nodes)


async def few(make, stop, root, items, differ, timeout_ms):
    nodes = await make(root, timeout_ms)
    try:
        fill(nodes[0].replica, items)
        fill(nodes[1].replica, items)
        for j in range(differ):
            k = items[(j * 7919) % len(items)][0]
            nodes[j % 2].replica.mint(0, k, V.sibling(b"changed-%d" % j, 1), overwrite=True)
        t, cpu = time.perf_counter(), time.process_time()
        served = nodes[1].ae.stats["served_records_read"], nodes[1].ae.stats["served_bytes_read"]
        run = await nodes[0].ae.exchange(0, "n1")
        run["duration_s"] = time.perf_counter() - t
        run["cpu_s"] = time.process_time() - cpu
        run["converged"] = same(*nodes)
        run["b_records_read"] = nodes[1].ae.stats["served_records_read"] - served[0]
        run["b_bytes_read"] = nodes[1].ae.stats["served_bytes_read"] - served[1]
        return run
    finally:
        await stop(nodes)


def store_puts(root, keys, value):
    """Seconds to put `keys` into an empty LogStore (what a rebuilt replica must at least do)."""
    store = LogStore(root, fsync="never")
    try:
        t = time.perf_counter()
        for k in keys:
            store.put(k, value)
        return time.perf_counter() - t
    finally:
        store.close()


def row(driver, name, run, target):
    """One table row. Records read: of the partition's store, by A's exchange and by B
    answering it (the few-keys scenario; "-" for the others), and their bytes."""
    both = run["bytes_sent"] + run["bytes_received"]
    reads_b = (f"{run['b_records_read']:,} / {run['b_bytes_read']:,}" if "b_records_read" in run
               else "-")
    print(f"| {driver} | {name} | {run['duration_s']:.2f} s | {run['cpu_s']:.2f} s | "
          f"{run['bytes_sent']:,} | "
          f"{run['bytes_received']:,} | {both:,} ({both / 1024:.1f} KiB) | {run['messages']:,} | "
          f"{run['repaired_here']:,} / {run['repaired_there']:,} | "
          f"{run['records_read']:,} / {run['bytes_read']:,} | {reads_b} | "
          f"{'yes' if run['converged'] else 'NO'} | {target} |", flush=True)


async def main(args):
    root = tempfile.mkdtemp(prefix="ringkv-ae-bench-")
    drivers = {"nodes": (node_pair, stop_nodes, True), "wire": (wire_pair, stop_stubs, False)}
    chosen = list(drivers) if args.driver == "both" else [args.driver]
    try:
        print(f"# {args.keys:,} keys of 16 bytes, clocks of "
              f"{len(clocks([b'k' * 16])[0][1])} bytes\n")
        print("| driver | scenario | wall time | CPU time | bytes A->B | bytes B->A | both | "
              "messages | keys repaired A / B | records / bytes read on A | on B | converged | "
              "target |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
        for d in chosen:
            make, stop, one = drivers[d]
            items = clocks(make_keys(args.keys, one))
            r = await wiped(make, stop, os.path.join(root, d + "w1"), items, 1, args.timeout_ms)
            row(d, "wiped replica, A = the wiped one", r, "< 60 s")
            r = await wiped(make, stop, os.path.join(root, d + "w0"), items, 0, args.timeout_ms)
            row(d, "wiped replica, A = the full one", r, "< 60 s")
            r = await few(make, stop, os.path.join(root, d + "f"), items, args.differ,
                          args.timeout_ms)
            row(d, f"{args.differ} differing keys", r, "<= 64 KiB both ways")
        if args.store:
            n = args.keys
            one = store_puts(os.path.join(root, "s1"), make_keys(n, True), b"x" * 44)
            anyp = store_puts(os.path.join(root, "s2"), make_keys(n, False), b"x" * 44)
            print(f"\nLogStore alone, {n:,} puts into an empty store: {one:.2f} s for keys of one "
                  f"partition of a Q=2 ring (tokens share the top bit), {anyp:.2f} s for keys of "
                  f"any partition")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"\npeak RSS of the process: {rss / 1024:.0f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--differ", type=int, default=10)
    ap.add_argument("--driver", choices=["both", "nodes", "wire"], default="both")
    ap.add_argument("--no-store", dest="store", action="store_false",
                    help="skip the LogStore-alone timing")
    ap.add_argument("--timeout-ms", type=int, default=60_000,
                    help="per-message peer request timeout")
    asyncio.run(main(ap.parse_args()))
