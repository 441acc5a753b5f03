"""How long a node that missed writes takes to catch up, with default settings.

A 3-node cluster (N=3, W=2, fsync=interval, Q=256, ae_interval_ms=10000: the defaults)
starts fresh; node3 is killed with SIGKILL; KEYS keys of 100-byte values are written
through node1 (pipelined); node3 is started again. With 3 nodes and N=3 there is no fallback,
so no hint carries the writes: anti-entropy's catch-up (and nothing else: no reads run) must.
The script polls each node's KV.STATUS (catch-up exchanges queued, keys repaired) and prints
the time from node3's restart until it holds every key, checked at the end by reading every
key from node3 alone (R=1) with the other two stopped (SIGSTOP).

    python benchmarks/catchup.py --keys 100000
"""
import argparse
import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import redis  # noqa: E402

from kvnet.testing import LocalCluster, redis_client  # noqa: E402


def _held_alone(cluster, i, keys, batch=1000):
    """How many of keys node i holds, read from it alone (R=1) with the others stopped."""
    others = [j for j in range(3) if j != i]
    for j in others:
        os.kill(cluster.procs[j].pid, signal.SIGSTOP)
    r = redis.Redis(port=cluster.ports[i], socket_timeout=30)
    try:
        held = 0
        for s in range(0, len(keys), batch):
            pipe = r.pipeline(transaction=False)
            for k in keys[s:s + batch]:
                pipe.execute_command("KV.GET", k, "R", "1")
            held += sum(1 for got in pipe.execute() if got and got[1])
        return held
    finally:
        r.close()
        for j in others:
            os.kill(cluster.procs[j].pid, signal.SIGCONT)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    keys = [b"catchup:%d" % i for i in range(args.keys)]
    value = b"x" * 100
    with tempfile.TemporaryDirectory() as d:
        cluster = LocalCluster(d, nodes=3, fsync="interval", request_timeout_ms=2000).start()
        try:
            cluster.kill(2)
            r = redis_client(cluster.ports[0], timeout=30)
            t0 = time.monotonic()
            for s in range(0, len(keys), 500):
                pipe = r.pipeline(transaction=False)
                for k in keys[s:s + 500]:
                    pipe.set(k, value)
                pipe.execute()
            r.close()
            print(f"wrote {len(keys):,} keys through node1 with node3 down in "
                  f"{time.monotonic() - t0:.1f} s")
            t_restart = time.monotonic()
            cluster.start(2)
            print(f"node3 answers PING {time.monotonic() - t_restart:.1f} s after its restart")
            print(f"{'t (s)':>7}  {'queued (n1 n2 n3)':>20}  {'keys repaired into (n1 n2 n3)':>32}")
            done_at = None
            while time.monotonic() - t_restart < args.timeout:
                ae = [cluster.status(i, timeout=10)["antientropy"] for i in range(3)]
                queued = [int(a["catchup_pending"]) for a in ae]
                repaired = [int(a["keys_repaired"]) for a in ae]
                t = time.monotonic() - t_restart
                print(f"{t:7.1f}  {' '.join(map(str, queued)):>20}  "
                      f"{' '.join(map(str, repaired)):>32}", flush=True)
                if not any(queued) and repaired[2] >= len(keys):
                    done_at = t
                    break
                time.sleep(1.0)
            held = _held_alone(cluster, 2, keys)
            print(f"node3 alone holds {held:,} of {len(keys):,} keys "
                  f"{time.monotonic() - t_restart:.1f} s after its restart")
            if done_at is not None:
                print(f"catch-up of {len(keys):,} keys: {done_at:.1f} s from restart to no "
                      f"catch-up queued (default settings, 3 nodes, N=3)")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
