"""`kvnode add`: one command starts a 4th node next to `kvnode dev` and joins it; then
`kvctl leave` takes it out again and it exits on its own."""
import io
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis

from kvnet.cli import kvctl
from kvnet.client import Client
from kvnet.testing import free_ports, ping

pytestmark = pytest.mark.slow


def _free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _base(nodes):
    for _ in range(50):
        p = free_ports(1)[0]
        ports = [p + i for i in range(nodes)] + [p + 10000 + i for i in range(nodes)]
        if p + 10000 + nodes < 65535 and all(_free(q) for q in ports):
            return p
    raise AssertionError("no block of free ports")


class _Output:
    """Every line a process prints, read by a thread: nobody must stop reading the pipe, or
    the nodes (whose logs go to it) block on a full pipe."""

    def __init__(self, proc):
        self.lines = []
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append(line)

    def until(self, needle, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in ln for ln in self.lines):
                return list(self.lines)
            if not self._t.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not seen: {self.lines[-20:]}")


def _wait(pred, timeout=60):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_kvnode_add_joins_a_fourth_node_and_kvctl_leave_takes_it_out(tmp_path):
    base = _base(4)
    data = str(tmp_path / "data")
    dev = subprocess.Popen([sys.executable, "-m", "kvnet.cli.kvnode", "dev", "--base-port", str(base),
                            "--data-dir", data, "--fsync", "never"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    add = None
    try:
        _Output(dev).until("is up")
        r = redis.Redis(port=base)
        for i in range(500):
            r.set(f"k{i}", f"v{i}")
        add = subprocess.Popen([sys.executable, "-m", "kvnet.cli.kvnode", "add", "--base-port",
                                str(base), "--data-dir", data, "--fsync", "never"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = _Output(add).until("joining")
        assert f"node4: joining on 127.0.0.1:{base + 3}" in "".join(lines)
        c = Client("127.0.0.1", base)
        try:
            _wait(lambda: not c.cluster("transfers")["moving"])
            ring = c.ring()
            assert sorted(n["name"] for n in ring["nodes"]) == ["node1", "node2", "node3", "node4"]
            assert ring["owners"].count("node4") == 64
            r4 = redis.Redis(port=base + 3)
            assert all(r4.get(f"k{i}") == f"v{i}".encode() for i in range(500))
            r4.close()
            out = io.StringIO()
            assert kvctl.main(["--port", str(base), "leave", "node4"], out=out) == 0
            assert kvctl.main(["--port", str(base), "commit"], out=out) == 0
            _wait(lambda: not c.cluster("transfers")["moving"]
                  and "node4" not in [n["name"] for n in c.ring()["nodes"]])
        finally:
            c.close()
        # the node hands off, exits with "left", and `kvnode add` returns when it has gone
        assert add.wait(60) == 0
        assert not ping(base + 3)
        assert all(r.get(f"k{i}") == f"v{i}".encode() for i in range(0, 500, 5))
        r.close()
        assert dev.poll() is None                     # the dev cluster keeps running
    finally:
        for p in (add, dev):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    assert not any(ping(base + i) for i in range(4))
