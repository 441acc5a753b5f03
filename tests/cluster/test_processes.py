"""Real node processes on 127.0.0.1: kvnode dev, SIGKILL of a node under a writer."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis

from kvnet.testing import LocalCluster, dev_base_port, ping

pytestmark = pytest.mark.slow


def test_kvnode_dev_starts_serves_and_stops_cleanly(tmp_path):
    base = dev_base_port(3)
    proc = subprocess.Popen([sys.executable, "-m", "kvnet.cli.kvnode", "dev", "--base-port", str(base),
                             "--data-dir", str(tmp_path / "data"), "--fsync", "never"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "is up" in line or not line:
                break
        assert any(f"redis-cli -p {base}" in ln for ln in lines), lines
        r = redis.Redis(port=base + 1)
        assert r.set("hello", "world") and redis.Redis(port=base + 2).get("hello") == b"world"
        r.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped" in out
    assert not any(ping(base + i) for i in range(3))          # no orphan node
    assert os.path.isdir(tmp_path / "data" / "node1" / "partitions")


def test_acknowledged_writes_survive_sigkill_of_a_node(tmp_path):
    cluster = LocalCluster(str(tmp_path), nodes=3, fsync="always").start()
    acked = {}
    stop = threading.Event()
    errors = []

    def writer():
        r = redis.Redis(port=cluster.ports[0], socket_timeout=10)
        i = 0
        while not stop.is_set() and i < 3000:
            key, val = f"k{i}", f"v{i}"
            try:
                if r.set(key, val):
                    acked[key] = val
            except redis.RedisError as e:
                errors.append(str(e))
            i += 1
        r.close()

    t = threading.Thread(target=writer)
    try:
        t.start()
        time.sleep(1.0)
        cluster.kill(2)                       # SIGKILL mid-stream: W=2 of 3 still answers
        time.sleep(1.0)
        stop.set()
        t.join(60)
        assert len(acked) > 50
        cluster.start(2)                      # restart with its data directory
        for port in cluster.ports:
            r = redis.Redis(port=port, socket_timeout=10)
            missing = [k for k, v in acked.items() if r.get(k) != v.encode()]
            r.close()
            assert not missing, f"{len(missing)} acknowledged writes missing via {port}: {missing[:5]}"
    finally:
        stop.set()
        t.join(60)
        cluster.stop()


def test_nodes_started_after_a_failed_dial_take_writes_once_they_answer_ping(tmp_path):
    """node1 runs alone first, so its gossip dials to node2 and node3 fail and back off; then
    both start together. Once both answer PING, a write through node1 meets W=2 at once (each
    starting node greets its members before its client port opens). Twice: the order in which
    node2 and node3 come up varies."""
    for trial in range(2):
        (tmp_path / f"t{trial}").mkdir()
        cluster = LocalCluster(str(tmp_path / f"t{trial}"), nodes=3,
                               extra=["--gossip-interval-ms", "100"])
        try:
            cluster.start(0)
            time.sleep(1.0)                          # several failed dials to each
            cluster.start()
            r = cluster.client(0)
            assert r.set("first", b"write") and r.get("first") == b"write"
            r.close()
        finally:
            cluster.stop()
