"""Cluster harness for tests and benchmarks: nodes on 127.0.0.1, free ports, cleaned up.

`LocalCluster` runs each node as its own process (`kvnode start`), so a test
can kill one with SIGKILL; every process it starts is stopped by `stop()`.
"""
import os
import signal
import socket
import subprocess
import sys
import time

from kvnet.probe import ping  # noqa: F401  (re-exported for tests)


def free_ports(count):
    """`count` distinct ports free on 127.0.0.1 right now."""
    socks, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class LocalCluster:
    """N node processes with N=n replicas; `ports[i]` is node i's client port."""

    def __init__(self, data_dir, nodes=3, n=3, r=2, w=2, fsync="never", extra=()):
        self.data_dir = data_dir
        ports = free_ports(2 * nodes)
        self.ports, self.peer_ports = ports[:nodes], ports[nodes:]
        self.names = [f"node{i + 1}" for i in range(nodes)]
        members = ",".join(f"{nm}@127.0.0.1:{pp}" for nm, pp in zip(self.names, self.peer_ports))
        self.cmds = [[sys.executable, "-m", "kvnet.cli.kvnode", "start", "--name", nm,
                      "--port", str(cp), "--peer-port", str(pp),
                      "--data-dir", os.path.join(data_dir, nm), "--members", members,
                      "--n", str(n), "--r", str(r), "--w", str(w), "--fsync", fsync,
                      "--request-timeout-ms", "1000", *extra]
                     for nm, cp, pp in zip(self.names, self.ports, self.peer_ports)]
        self.procs = [None] * nodes

    def start(self, i=None, timeout=30):
        for j in ([i] if i is not None else range(len(self.cmds))):
            log = open(os.path.join(self.data_dir, f"{self.names[j]}.log"), "ab")
            self.procs[j] = subprocess.Popen(self.cmds[j], stdout=log, stderr=subprocess.STDOUT)
            log.close()
        deadline = time.monotonic() + timeout
        for j in ([i] if i is not None else range(len(self.cmds))):
            while not ping(self.ports[j]):
                if self.procs[j].poll() is not None:
                    raise RuntimeError(f"{self.names[j]} exited with {self.procs[j].returncode}: "
                                       f"see {self.data_dir}/{self.names[j]}.log")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.names[j]} not ready in {timeout} s")
                time.sleep(0.05)
        return self

    def kill(self, i, sig=signal.SIGKILL):
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            p.wait(30)
        self.procs[i] = None

    def stop(self, grace=15):
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for i, p in enumerate(self.procs):
            if p is None:
                continue
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.procs[i] = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
