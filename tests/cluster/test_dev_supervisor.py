"""`kvnode dev` as a supervisor a user can experiment under: kill -9 a node, the others keep
taking W=2 writes, the node is started again and caught up (anti-entropy with 3 nodes, where
N=3 leaves no fallback; hints with 4)."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis

from kvnet.client import Client
from kvnet.testing import OutputReader, dev_base_port, ping

pytestmark = pytest.mark.slow


class _Dev:
    def __init__(self, tmp_path, nodes, *flags):
        self.base = dev_base_port(nodes)
        self.ports = [self.base + i for i in range(nodes)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvnet.cli.kvnode", "dev", "--nodes", str(nodes),
             "--base-port", str(self.base), "--data-dir", str(tmp_path / "data"), *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.out = OutputReader(self.proc)
        lines = self.out.until("is up", timeout=90)
        self.pids = {int(m.group(1)) - 1: int(m.group(2)) for m in
                     (re.match(r"node(\d+): 127\.0\.0\.1:\d+  pid (\d+)", ln) for ln in lines) if m}
        assert sorted(self.pids) == list(range(nodes)), lines
        assert any(ln.startswith("Try: kill -9 ") for ln in self.out.until("Try:")), lines

    def kill9(self, i):
        mark = len(self.out.lines)
        os.kill(self.pids[i], signal.SIGKILL)
        return mark

    def wait_back(self, i, mark, timeout=60):
        lines = self.out.until(f"node{i + 1} is ready again", timeout=timeout, after=mark)
        text = "".join(lines[mark:])
        assert f"node{i + 1} (pid {self.pids[i]}) exited with signal SIGKILL" in text
        m = re.search(rf"node{i + 1} restarted \(pid (\d+)\)", text)
        assert m, text
        self.pids[i] = int(m.group(1))

    def signal_others(self, i, sig):
        for j, pid in self.pids.items():
            if j != i:
                os.kill(pid, sig)

    def close(self):
        for pid in self.pids.values():            # never leave a node stopped by SIGSTOP
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert not any(ping(p) for p in self.ports)     # no orphan node


class _Writer(threading.Thread):
    """SETs through the given ports in turn; keeps what was acknowledged and any error."""

    def __init__(self, ports, prefix):
        super().__init__(daemon=True)
        self.clients = [redis.Redis(port=p, socket_timeout=10) for p in ports]
        self.prefix, self.acked, self.errors = prefix, {}, []
        self.stop = threading.Event()

    def run(self):
        i = 0
        while not self.stop.is_set() and i < 20000:
            key, val = f"{self.prefix}{i}", f"v{i}"
            try:
                if self.clients[i % len(self.clients)].set(key, val):
                    self.acked[key] = val.encode()
            except redis.RedisError as exc:
                self.errors.append((key, f"{type(exc).__name__}: {exc}"))
            i += 1

    def finish(self):
        self.stop.set()
        self.join(30)
        for c in self.clients:
            c.close()


def _missing_on_alone(dev, i, keys, pause_s=0.5):
    """Keys of `keys` (name -> value) that node i does not hold, read from it alone (R=1) with
    every other node stopped by SIGSTOP for the read."""
    r = redis.Redis(port=dev.ports[i], socket_timeout=10)
    dev.signal_others(i, signal.SIGSTOP)
    try:
        missing = []
        for k, v in keys.items():
            got = r.execute_command("KV.GET", k, "R", "1")
            if v not in (got[1] if got else []):
                missing.append(k)
        return missing
    finally:
        dev.signal_others(i, signal.SIGCONT)
        r.close()
        time.sleep(pause_s)


def test_a_killed_node_is_restarted_and_caught_up_by_anti_entropy(tmp_path):
    dev = _Dev(tmp_path, 3, "--ring-size", "16", "--ae-interval-ms", "50", "--fsync", "never")
    w = None
    try:
        w = _Writer(dev.ports[:2], "before")
        w.start()
        time.sleep(1.0)
        mark = dev.kill9(2)
        time.sleep(0.5)
        n_at_kill = len(w.acked)
        dev.wait_back(2, mark)
        time.sleep(0.5)
        w.finish()
        assert w.errors == [], w.errors[:5]            # W=2 writes went on through node1, node2
        assert len(w.acked) > n_at_kill + 50
        deadline = time.monotonic() + 90
        missing = list(w.acked)
        while missing and time.monotonic() < deadline:
            time.sleep(1.0)
            missing = _missing_on_alone(dev, 2, {k: w.acked[k] for k in missing})
        assert not missing, f"{len(missing)} of {len(w.acked)} keys not on node3 after 90 s"
    finally:
        if w is not None and w.is_alive():
            w.finish()
        dev.close()
    assert dev.proc.returncode == 0


def test_hints_carry_the_writes_a_killed_node_missed(tmp_path):
    # 4 nodes, N=3: a key of node4's has a fallback while it is down. Anti-entropy is kept out
    # of the way (an exchange an hour), so only hint replay can bring node4 the writes.
    dev = _Dev(tmp_path, 4, "--n", "3", "--ring-size", "16", "--ae-interval-ms", "3600000",
               "--fsync", "never")
    w = c = None
    try:
        w = _Writer(dev.ports[:3], "h")
        mark = dev.kill9(3)
        time.sleep(0.3)          # the others' connections to it fail at once: route around it
        w.start()
        dev.wait_back(3, mark)
        w.finish()
        assert w.errors == [], w.errors[:5]
        c = Client("127.0.0.1", dev.ports[0])
        mine = {k: v for k, v in w.acked.items()
                if "node4" in [t["node"] for t in c.preflist(k)]}
        assert len(mine) > 20, (len(mine), len(w.acked))
        deadline = time.monotonic() + 60
        missing = list(mine)
        while missing and time.monotonic() < deadline:
            time.sleep(1.0)
            missing = _missing_on_alone(dev, 3, {k: mine[k] for k in missing})
        assert not missing, f"{len(missing)} of {len(mine)} keys not replayed to node4"
    finally:
        if w is not None and w.is_alive():
            w.finish()
        if c is not None:
            c.close()
        dev.close()


def test_no_restart_leaves_a_killed_node_down_and_the_cluster_serving(tmp_path):
    dev = _Dev(tmp_path, 3, "--ring-size", "16", "--no-restart", "--fsync", "never")
    try:
        mark = dev.kill9(1)
        lines = dev.out.until("it stays down (--no-restart)", after=mark)
        assert "node2" in "".join(lines[mark:])
        r = redis.Redis(port=dev.ports[0], socket_timeout=10)
        assert r.set("k", "v") and r.get("k") == b"v"
        r.close()
        time.sleep(1.5)
        assert not ping(dev.ports[1]) and dev.proc.poll() is None
    finally:
        dev.close()
