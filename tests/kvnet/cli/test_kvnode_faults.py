"""`kvnode dev --faults` driven by `kvctl fault`, as docs/operations.md walks through it: cut
node3 off, write with W=2 through node1 (fallbacks keep hints), heal, the hints are replayed
and node3 holds the keys; pause and resume a node; slow a node's links; kvctl's errors. One
dev cluster of 3 nodes with N=2 (with N=3 on 3 nodes there is no fallback to keep a hint)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from kvnet.cli.devfaults import CONTROL_FILE
from kvnet.client import Client
from kvnet.testing import OutputReader, dev_base_port, wait_until

pytestmark = pytest.mark.slow

FAST = {"RINGKV_PHI_THRESHOLD": "4", "RINGKV_HINT_REPLAY_INTERVAL_MS": "200",
        "RINGKV_AE_ENABLED": "false"}     # hints, not anti-entropy, bring node3 up to date


class _Dev:
    def __init__(self, tmp_path):
        self.base = dev_base_port(3)
        self.ports = [self.base + i for i in range(3)]
        self.data = str(tmp_path / "data")
        env = {**os.environ, **FAST}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvnet.cli.kvnode", "dev", "--faults", "--n", "2",
             "--gossip-interval-ms", "100", "--base-port", str(self.base),
             "--data-dir", self.data],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True)              # its own group: all of it is ours to end
        self.out = OutputReader(self.proc)
        self.out.until("Faults: every link", timeout=90)

    def kvctl(self, *argv):
        p = subprocess.run([sys.executable, "-m", "kvnet.cli.kvctl", "--timeout", "20", "fault",
                            *argv, "--data-dir", self.data],
                           capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout, p.stderr

    def fault(self, *argv):
        code, out, err = self.kvctl(*argv)
        assert code == 0, (argv, out, err)
        return out

    def status(self):
        return json.loads(self.fault("status", "--json"))

    def client(self, i):
        return Client("127.0.0.1", self.ports[i], route=False, retries=0, socket_timeout=20)

    def sees(self, i, name):
        with self.client(i) as c:
            return next(m for m in c.status()["members"] if m["name"] == name)["up"]

    def info(self, i, field):
        with self.client(i) as c:
            return int(c._conn(c._seed).info("ringkv").get(field, 0))

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)        # as Ctrl-C: SIGTERM to every node
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:                                            # whatever is left of the group
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@pytest.fixture
def dev(tmp_path):
    d = _Dev(tmp_path)
    yield d
    d.close()


def _keys_on(c, node, want=12):
    """Keys whose replicas include node."""
    keys = []
    for i in range(2000):
        k = f"key-{i}"
        if any(r["node"] == node for r in c.preflist(k)):
            keys.append(k)
            if len(keys) == want:
                return keys
    raise AssertionError(f"no keys on {node}")


def test_cut_write_hints_heal_replay(dev):
    with dev.client(0) as c1:
        keys = _keys_on(c1, "node3")
        out = dev.fault("cut", "node3")
        assert "cut node3 <-> every other node" in out
        cut = {(ln["from"], ln["to"]) for ln in dev.status()["links"] if ln["mode"] == "blackhole"}
        assert cut == {("node1", "node3"), ("node3", "node1"), ("node2", "node3"),
                       ("node3", "node2")}
        wait_until(lambda: not dev.sees(0, "node3") and not dev.sees(1, "node3"), 30,
                   what="node1 and node2 see node3 down")    # either may coordinate a key
        for k in keys:
            c1.put(k, f"v-{k}", w=2)             # sloppy quorum: node1 and a fallback (node2)
        pending = dev.info(0, "hints_pending") + dev.info(1, "hints_pending")
        assert pending >= 1
        assert "cut node3" in "".join(dev.out.lines)                  # the supervisor says so

        assert "healed node3" in dev.fault("heal", "node3")
        wait_until(lambda: dev.info(0, "hints_pending") + dev.info(1, "hints_pending") == 0, 60,
                   what="hints replayed")
        assert dev.info(0, "hints_replayed") + dev.info(1, "hints_replayed") >= 1

    # node3 alone answers (cut off again, R=1 through node3): it holds every key now
    dev.fault("cut", "node3")
    with dev.client(2) as c3:
        for k in keys:
            assert c3.get(k, r=1).values == [f"v-{k}".encode()], k
    dev.fault("heal", "node3")


def test_pause_resume_slow_kill_and_errors_on_a_running_cluster(dev):
    pid = dev.status()["nodes"]["node2"]["pid"]
    assert "paused with SIGSTOP" in dev.fault("pause", "node2")
    assert dev.status()["nodes"]["node2"] == {"state": "paused", "pid": pid,
                                               "port": dev.ports[1]}
    wait_until(lambda: not dev.sees(0, "node2") and not dev.sees(2, "node2"), 30,
               what="node1 and node3 see paused node2 down")
    with dev.client(0) as c1:
        c1.put("while-paused", "x", w=2)          # node1 and node3 (a fallback if need be)
    assert "resumed with SIGCONT" in dev.fault("resume", "node2")
    wait_until(lambda: dev.sees(0, "node2"), 30, what="node1 sees node2 up again")

    assert "slowed node1 <-> every other node: 50 ms added each way" in \
        dev.fault("slow", "node1", "--ms", "50")
    delays = {(ln["from"], ln["to"]): ln["delay_ms"] for ln in dev.status()["links"]}
    assert delays == {("node1", "node2"): 50, ("node2", "node1"): 50, ("node1", "node3"): 50,
                      ("node3", "node1"): 50, ("node2", "node3"): 0, ("node3", "node2"): 0}
    with dev.client(0) as c1:                      # slower, and still answered
        c1.put("while-slow", "y", w=2)
        assert c1.get("while-slow", r=2).values == [b"y"]
    dev.fault("heal", "node1")
    assert all(ln["delay_ms"] == 0 for ln in dev.status()["links"])

    assert "killed with SIGKILL" in dev.fault("kill", "node3")
    assert dev.status()["nodes"]["node3"]["state"] == "killed"
    assert "started again" in dev.fault("resume", "node3")
    dev.out.until("node3 is ready again", timeout=60)
    assert dev.status()["nodes"]["node3"]["state"] == "running"

    code, out, err = dev.kvctl("cut", "node7")
    assert code == 1 and "unknown node 'node7' (the dev cluster has node1, node2, node3)" in err
    code, out, err = dev.kvctl("cut", "node1", "node1")
    assert code == 1 and "no link to itself" in err

    dev.close()                                    # Ctrl-C: the control file goes with it
    assert dev.proc.returncode == 0
    assert not os.path.exists(os.path.join(dev.data, CONTROL_FILE))
    code, out, err = dev.kvctl("status")
    assert code == 1 and "no `kvnode dev --faults` is running" in err
