"""What a big object costs on one peer connection: chunked (version 3) beside one frame.

    python benchmarks/peer_chunks.py                 # 8, 40 and 80 MiB, 5 rounds each
    python benchmarks/peer_chunks.py --mib 80 --rounds 3

Two connections over 127.0.0.1 in one process (asyncio's loop): one with a 1 MiB frame limit
(`--frame`), so the body goes in 1 MiB CHUNK frames as an object above a node's 64 MiB limit
does, and one whose frame limit is raised above the body (one frame, as no node does: the
frame limit bounds what a peer that has not authenticated can make a node buffer). Each round sends a request carrying the
object and gets it back as the answer (a replica's `put`, then a `get`), alternating the two
connections so load on a shared machine hits them alike; the table has the median wall time
of a round trip and the process's peak RSS growth over the run. Timings on a shared machine
are noisy: compare the two columns of one run (their ratio), not runs.
"""
import argparse
import asyncio
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvnet.peer.protocol import connect  # noqa: E402
from kvnet.peer.serving import serve_peers  # noqa: E402

SECRET = "bench-secret"


async def _pair(frame):
    async def handler(type_, payload):
        return payload

    server = await serve_peers("127.0.0.1", 0, "b", SECRET, handler, max_frame_size=frame)
    conn = await connect("127.0.0.1", server.port, "a", SECRET, max_frame_size=frame)
    return server, conn


async def main(args):
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{'object':>8} {'chunked ms':>11} {'one frame ms':>13} {'ratio':>6}")
    for mib in args.mib:
        body = os.urandom(mib << 20)
        chunked = await _pair(args.frame)
        whole = await _pair((mib << 20) + (1 << 20))
        times = {"chunked": [], "whole": []}
        try:
            for _ in range(args.rounds):
                for name, (_, conn) in (("chunked", chunked), ("whole", whole)):
                    t0 = time.perf_counter()
                    got = await conn.request("put", {"c": body}, timeout=120)
                    times[name].append(time.perf_counter() - t0)
                    assert got["c"] == body
                    del got
        finally:
            for server, conn in (chunked, whole):
                conn.close()
                await conn.wait_closed()
                server.close()
                await server.wait_closed()
        c, w = statistics.median(times["chunked"]), statistics.median(times["whole"])
        print(f"{mib:>5} MiB {c * 1e3:>11.1f} {w * 1e3:>13.1f} {c / w:>6.2f}")
        del body
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS growth over the run: {(rss - rss0) / 1024:.0f} MiB "
          f"(both ends of both connections in this process)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, nargs="+", default=[8, 40, 80])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frame", type=int, default=1 << 20, help="the chunked side's frame limit")
    asyncio.run(main(ap.parse_args()))
