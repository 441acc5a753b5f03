"""Restart after kill -9: how long until a node serves, at several data sizes.

For each size, a one-node cluster (N=1, R=1, W=1, fsync=interval, 256 partitions, default
settings otherwise) starts on an empty data directory and is filled through its client port
(pipelined MSETs of 100-byte values, the same writes SET makes: every record, segment, hint
and tree file on disk is the node's own), then killed with SIGKILL right after its last
acknowledgement, so the data sits in active segments with no hint file and no tree, as after
any crash (the page cache keeps it: warm). It is then started again on that directory and
timed from the process start:

    ping_s     the first PING answered
    gets_s     1,000 KV.GET R=1 answered, one after the other (keys spread over all 256
               partitions: 4 per partition, none missing)
    trees_s    INFO trees_rebuilding back at 0 (every Merkle tree rebuilt in the background)

and the node's RSS then. With --baseline DIR the same crashed data directory (a copy taken
right after the kill) is also started by the code of another source tree (DIR, built in
place: the node runs in DIR with PYTHONPATH=DIR), alternating with this tree's, so the two are
compared side by side in one run (the machine is shared and noisy: compare within a run).
The data (and its copy) is deleted at the end of each size; at 5M keys it takes about 1 GiB,
2 GiB with --baseline.

    python benchmarks/restart.py                       # 0, 0.5M and 5M keys
    python benchmarks/restart.py --keys 500000,2000000 --repeat 2 --baseline ../main
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kvcore.hashing import partition  # noqa: E402
from kvnet.testing import LocalCluster, ping, redis_client  # noqa: E402

Q = 256
VALUE = 100
BATCH = 500          # keys per MSET
PIPE = 8             # MSETs per pipeline round trip


def key_of(i):
    return b"key:%012d" % i


def fill(port, n, seed=1):
    """Write keys 0 .. n-1, 100-byte values, through the client port."""
    rnd = random.Random(seed)
    value = bytes(rnd.getrandbits(8) for _ in range(VALUE))
    r = redis_client(port, timeout=120)
    t0 = time.monotonic()
    i = 0
    while i < n:
        pipe = r.pipeline(transaction=False)
        for _ in range(PIPE):
            if i >= n:
                break
            j = min(n, i + BATCH)
            args = []
            for k in range(i, j):
                args.append(key_of(k))
                args.append(value[: VALUE - 12] + b"%012d" % k)
            pipe.execute_command("MSET", *args)
            i = j
        pipe.execute()
    r.close()
    return time.monotonic() - t0


def sample_keys(n, per_partition=4, seed=2):
    """1,000-ish keys of 0 .. n-1 spread over all partitions (per_partition each)."""
    if n == 0:
        return [key_of(i) for i in range(1000)]          # all absent: still 1,000 reads
    rnd = random.Random(seed)
    want = {p: per_partition for p in range(Q)}
    out = []
    tries = 0
    while want and tries < 50 * Q * per_partition:
        tries += 1
        k = key_of(rnd.randrange(n))
        p = partition(k, Q)
        if want.get(p):
            want[p] -= 1
            if not want[p]:
                del want[p]
            out.append(k)
    return out[:1000] + [key_of(rnd.randrange(n)) for _ in range(1000 - len(out))]


def info(r):
    return r.info("all")


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def restart_timed(c, keys, n, tree):
    """Start node 0 again, with the code of source tree `tree` (python -m puts the working
    directory first on sys.path), and time PING, the 1,000 GETs and the background rebuilds."""
    env = dict(c.env, PYTHONPATH=tree)
    with open(c.log_of(0), "ab") as log:
        t0 = time.monotonic()
        c.procs[0] = subprocess.Popen(c.cmds[0], stdout=log, env=env, stderr=subprocess.STDOUT,
                                      cwd=tree)
    port = c.ports[0]
    while not ping(port, timeout=0.2):
        if c.procs[0].poll() is not None:
            raise RuntimeError(f"the node exited with {c.procs[0].returncode}: see {c.log_of(0)}")
        if time.monotonic() - t0 > 600:
            raise TimeoutError("no PING in 600 s")
        time.sleep(0.005)
    t_ping = time.monotonic() - t0
    r = redis_client(port, timeout=60)
    found = 0
    for k in keys:
        reply = r.execute_command("KV.GET", k, "R", 1)
        found += bool(reply[1])
    t_gets = time.monotonic() - t0
    if n and found != len(keys):
        raise RuntimeError(f"only {found} of {len(keys)} keys found after the restart")
    while True:
        st = info(r)
        if int(st.get("trees_rebuilding", 0)) == 0:
            break
        if time.monotonic() - t0 > 600:
            raise TimeoutError("trees not rebuilt in 600 s")
        time.sleep(0.02)
    t_trees = time.monotonic() - t0
    rss = rss_mib(c.procs[0].pid)
    r.close()
    return t_ping, t_gets, t_trees, rss, found


def du_mib(path):
    out = subprocess.run(["du", "-sm", path], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out else 0


def restore(src, dst):
    shutil.rmtree(dst)
    subprocess.run(["cp", "-a", src, dst], check=True)


def run_size(n, repeat, base, codes):
    d = tempfile.mkdtemp(prefix=f"ringkv-restart-{n}-", dir=base)
    rows = []
    try:
        c = LocalCluster(d, nodes=1, n=1, r=1, w=1, fsync="interval")
        try:
            c.start(timeout=60)
            t_fill = fill(c.ports[0], n) if n else 0.0
            keys = sample_keys(n)
            c.kill(0)                                       # SIGKILL right after the fill
            data = c.data_dir_of(0)
            disk = du_mib(data)
            crashed = os.path.join(d, "crashed")
            subprocess.run(["cp", "-a", data, crashed], check=True)
            for _ in range(repeat):
                for name, tree in codes:
                    restore(crashed, data)
                    rows.append((name, n, t_fill, disk) + restart_timed(c, keys, n, tree))
                    c.kill(0)
        except BaseException:
            with open(c.log_of(0), errors="replace") as f:   # (the data goes: show the log)
                sys.stderr.write("".join(f.readlines()[-30:]))
            raise
        finally:
            c.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", default="0,500000,5000000",
                    help="comma-separated key counts (default 0,500000,5000000)")
    ap.add_argument("--repeat", type=int, default=1, help="kill -9 and restart this often per size")
    ap.add_argument("--dir", default=None, help="where the data directories go (default: TMPDIR)")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="also start the crashed node with the code of this source tree")
    args = ap.parse_args(argv)
    sizes = [int(float(x)) for x in args.keys.split(",") if x]
    codes = [("this", ROOT)]
    if args.baseline:
        codes.insert(0, ("baseline", os.path.abspath(args.baseline)))
    print(f"{'code':>8} {'keys':>9} {'fill_s':>7} {'disk_MiB':>8} {'ping_s':>7} {'gets_s':>7} "
          f"{'trees_s':>7} {'rss_MiB':>7} {'found':>6}", flush=True)
    for n in sizes:
        for row in run_size(n, args.repeat, args.dir, codes):
            name, n_, fill_s, disk, t_ping, t_gets, t_trees, rss, found = row
            print(f"{name:>8} {n_:>9} {fill_s:>7.1f} {disk:>8} {t_ping:>7.2f} {t_gets:>7.2f} "
                  f"{t_trees:>7.2f} {rss:>7.0f} {found:>6}", flush=True)


if __name__ == "__main__":
    main()
