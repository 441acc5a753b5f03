"""System calls per request of each node under redis-benchmark, counted by the kernel.

    python benchmarks/syscalls_node.py --nodes 3                   # this checkout
    python benchmarks/syscalls_node.py --nodes 1 --pipelines 16 ../before .
    python benchmarks/syscalls_node.py --nodes 3 --config default --tests set

A count of system calls does not move with the machine's load the way a rate does: it is
the evidence for a change that only removes calls (writing a pipeline's replies in one
write instead of one per reply) on a machine shared with other work. For each checkout,
each pipeline depth and each test, `perf stat` (tracepoints syscalls:sys_enter_*, so it
needs perf and root or perf_event_paranoid <= -1) counts the calls of every node process,
enabled only while redis-benchmark runs against node1 (--control: the nodes' start, warm-up
and idle time are left out), and prints per request:

- `calls`: every system call;
- `wr`: writes of any kind (write, writev, sendto, sendmsg: under uvloop a socket write is
  write or writev); `peer`: those on the node's connections to the other nodes (the TCP
  connections it holds before the run; the rest are the client's connections and files);
  `client`: wr - peer - files, where `files` are the bytes-to-file writes (pwrite64 and
  the rest of wr that is not a socket: none in practice, the stores map their files);
- `rd`: reads (read, readv, recvfrom, recvmsg); `poll`: epoll waits, one per turn of the
  event loop that found nothing ready at once.

/proc/PID/io's syscw counts write() and writev() but not send() or sendto(): under plain
asyncio (sockets written with send) it would miss every socket write, so it is not used.
"""
import argparse
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import ab_node  # noqa: E402  (its configurations and its redis-benchmark run)

WRITES = ("write", "writev", "sendto", "sendmsg")
READS = ("read", "readv", "recvfrom", "recvmsg")
POLLS = ("epoll_wait", "epoll_pwait")
FILES = ("pwrite64",)
PERF_TIMEOUT = 60       # seconds to wait for perf's acknowledgement of a control command


def peer_fds(pid):
    """The fds of `pid`'s established TCP connections now (before the run: the peers')."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True,
                         text=True, check=True).stdout
    return sorted({int(fd) for p, fd in re.findall(r"pid=(\d+),fd=(\d+)", out)
                   if int(p) == pid})


class Counter:
    """`perf stat` attached to one process, its counters enabled between start() and stop()."""

    def __init__(self, pid, fds, work):
        self.pid = pid
        self.names = []
        events = []

        def add(name, event, filt=None):
            self.names.append(name)
            events.extend(["-e", event] + ([] if filt is None else ["--filter", filt]))

        add("calls", "raw_syscalls:sys_enter")
        for call in WRITES + READS + POLLS + FILES:
            add(call, f"syscalls:sys_enter_{call}")
        if fds:
            match = " || ".join(f"fd == {fd}" for fd in fds)
            for call in WRITES:
                add("peer_" + call, f"syscalls:sys_enter_{call}", match)
        self.out = os.path.join(work, f"perf-{pid}.csv")
        ctl, ack = os.path.join(work, f"ctl-{pid}"), os.path.join(work, f"ack-{pid}")
        for fifo in (ctl, ack):
            if os.path.exists(fifo):
                os.unlink(fifo)
            os.mkfifo(fifo)
        # read-write opens of a fifo never block, whichever end opens first
        self.ctl, self.ack = os.open(ctl, os.O_RDWR), os.open(ack, os.O_RDWR)
        self.proc = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-o", self.out, "--delay=-1",
             f"--control=fifo:{ctl},{ack}", *events, "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def _command(self, what):
        os.write(self.ctl, what.encode() + b"\n")
        ready, _, _ = select.select([self.ack], [], [], PERF_TIMEOUT)
        if not ready:
            raise RuntimeError(f"perf stat -p {self.pid} did not acknowledge {what!r}: "
                               f"{self.proc.stderr.read() if self.proc.poll() is not None else ''}")
        os.read(self.ack, 64)

    def start(self):
        self._command("enable")

    def stop(self):
        """{name: count} of the enabled time."""
        self._command("disable")
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(PERF_TIMEOUT)
        finally:
            os.close(self.ctl)
            os.close(self.ack)
        counts = []
        with open(self.out) as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    value = line.split(",", 1)[0]
                    counts.append(int(value) if value.isdigit() else 0)
        if len(counts) != len(self.names):
            raise RuntimeError(f"perf stat -p {self.pid}: {len(counts)} counters read, "
                               f"{len(self.names)} asked: {open(self.out).read()[-500:]}")
        return dict(zip(self.names, counts))


def summary(c, requests):
    """The per-request figures of one node's counts."""
    wr = sum(c[k] for k in WRITES)
    peer = sum(c.get("peer_" + k, 0) for k in WRITES)
    files = sum(c[k] for k in FILES)
    return {"calls": c["calls"] / requests, "wr": wr / requests, "client": (wr - peer) / requests,
            "peer": peer / requests, "files": files / requests,
            "rd": sum(c[k] for k in READS) / requests,
            "poll": sum(c[k] for k in POLLS) / requests}


COLUMNS = ("calls", "wr", "client", "peer", "rd", "poll", "files")


def measure(cfg, checkout, data_dir, args, pipelines, ops):
    """[(pipeline, op, [summary per node], rps)] of one checkout."""
    node1, pids = cfg.start(checkout, data_dir)
    rows = []
    try:
        cfg.warm(node1, [])
        for p in pipelines:
            for op in ops:
                counters = [Counter(pid, peer_fds(pid), data_dir) for pid in pids]
                try:
                    for c in counters:
                        c.start()
                    res = ab_node.bench(node1, args.requests, p, pids, ops=(op,))
                finally:
                    counts = [c.stop() for c in counters]
                rows.append((p, op, [summary(c, args.requests) for c in counts], res[op][0],
                             res[op][3]))
    finally:
        cfg.stop()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="*", default=[os.path.dirname(HERE)])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--warmup", type=int, default=20_000,
                    help="SETs before the measured runs (tuned configuration only)")
    ap.add_argument("--nodes", type=int, default=1, choices=(1, 3))
    ap.add_argument("--config", default="tuned", choices=("tuned", "default"),
                    help="as benchmarks/ab_node.py's: tuned (LocalCluster, fsync=never, "
                    "warm-up) or default (a fresh `kvnode dev`, fsync=interval)")
    ap.add_argument("--pipelines", default="1,16")
    ap.add_argument("--tests", default="set,get")
    args = ap.parse_args(argv)
    pipelines = [int(p) for p in args.pipelines.split(",")]
    ops = [t.strip().upper() for t in args.tests.split(",")]
    if any(op not in ("SET", "GET") for op in ops):
        ap.error(f"--tests takes set, get or set,get, not {args.tests!r}")
    missing = [co for co in args.checkouts if not os.path.isdir(os.path.join(co, "kvnet"))]
    if missing:
        ap.error(f"not a ringkv checkout (no kvnet/ inside): {', '.join(missing)}")
    cfg = ab_node.CONFIGS[args.config][0](args)
    print(cfg.describe())
    print(f"system calls per request, each node (perf stat; {args.requests:,} requests, "
          "redis-benchmark -c 50 -d 100 on node1); rps and cpu (us per request, all nodes) "
          "are only context: they move with the machine's load", flush=True)
    head = " ".join(f"{c:>6}" for c in COLUMNS)
    with tempfile.TemporaryDirectory(prefix="ringkv-syscalls-") as d:
        for co in args.checkouts:
            t0 = time.monotonic()
            rows = measure(cfg, co, tempfile.mkdtemp(dir=d), args, pipelines, ops)
            print(f"\n{co}  ({time.monotonic() - t0:.0f} s)")
            print(f"{'':12} {'node':6} {head}")
            for p, op, nodes, rps, cpu in rows:
                for i, s in enumerate(nodes):
                    label = f"-P{p:<2} {op}" if i == 0 else ""
                    tail = f"   {rps:>9,.0f} rps cpu {cpu:5.1f}us" if i == 0 else ""
                    print(f"{label:12} node{i + 1:<2} "
                          + " ".join(f"{s[c]:6.3f}" for c in COLUMNS) + tail, flush=True)


if __name__ == "__main__":
    main()
