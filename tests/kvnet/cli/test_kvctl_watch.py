"""`kvctl transfers --watch` as a shell runs it: against node processes while a 4th node joins
(exit 0 once the ring settles), and Ctrl-C (exit 0, nothing on stderr)."""
import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from kvnet.testing import LocalCluster


def _kvctl(*argv):
    return [sys.executable, "-m", "kvnet.cli.kvctl", *argv]


@pytest.mark.slow
def test_watch_follows_a_join_until_the_ring_settles(tmp_path):
    with LocalCluster(str(tmp_path), nodes=3, ring_size=16) as cluster:
        cluster.start()
        port = str(cluster.ports[0])
        c = cluster.client(0)
        try:
            pipe = c.pipeline(transaction=False)
            for i in range(3000):
                pipe.set(f"key{i}", f"value-{i}" * 8)
            pipe.execute()
        finally:
            c.close()
        new = cluster.add_node()
        cluster.stage(1, "join", cluster.names[new])
        plan = json.loads(subprocess.run(_kvctl("--port", port, "plan", "--json"), text=True,
                                         capture_output=True, timeout=30, check=True).stdout)
        assert set(plan["moves"]) == {cluster.names[new]}
        done = subprocess.run(_kvctl("--port", port, "commit"), text=True, capture_output=True,
                              timeout=30)
        assert done.returncode == 0 and "committed: ring epoch" in done.stdout, done.stderr
        t0 = time.monotonic()
        watch = subprocess.run(_kvctl("--port", port, "transfers", "--watch", "--interval", "0.2"),
                               text=True, capture_output=True, timeout=120)
        assert watch.returncode == 0, watch.stderr
        assert watch.stderr == "" and time.monotonic() - t0 < 120
        lines = watch.stdout.splitlines()
        assert lines and lines[-1].startswith("ring epoch") and "settled" in lines[-1]
        for line in lines:
            if ": done, " in line:
                assert line.startswith("partition ") and f"-> {cluster.names[new]}" in line
        cluster.wait_settled(30)
        ring = cluster.ring(0)
        assert ring["owners"].count(cluster.names[new]) == 4


def test_ctrl_c_ends_watch_quietly_with_status_0():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()                                   # accepts, never answers: watch waits
        port = str(s.getsockname()[1])
        s.settimeout(20)
        p = subprocess.Popen(_kvctl("--port", port, "--timeout", "30", "transfers", "--watch"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn = None
        try:
            conn, _ = s.accept()                     # kvctl is connected and waits for a reply
            time.sleep(0.3)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            if conn is not None:
                conn.close()
        assert p.returncode == 0 and err == "" and out == "", (p.returncode, out, err)
