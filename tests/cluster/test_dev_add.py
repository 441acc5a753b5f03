"""`kvnode add`: one command starts a 4th node next to `kvnode dev` and joins it; then
`kvctl leave` takes it out again and it exits on its own."""
import io
import signal
import subprocess
import sys
import time

import pytest
import redis

from kvnet.cli import kvctl
from kvnet.client import Client
from kvnet.testing import OutputReader as _Output
from kvnet.testing import dev_base_port as _base
from kvnet.testing import ping

pytestmark = pytest.mark.slow


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
