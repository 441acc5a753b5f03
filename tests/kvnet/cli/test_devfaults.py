"""`kvnode dev --faults`'s pieces without a cluster (kvnet/cli/devfaults.py): the links' proxies
and each node's --members, the control socket and its file, the requests it refuses, the
supervisor's kill/pause/resume on stand-in processes, and kvctl fault's errors."""
import io
import json
import os
import signal
import socket
import stat
import sys
import threading

import pytest

from kvnet.cli import kvctl
from kvnet.cli.devcluster import DevSupervisor
from kvnet.cli.devfaults import CONTROL_FILE, DevFaults, NoDevCluster, request
from kvnet.cli.kvnode import dev_commands
from kvnet.faultproxy import free_ports
from kvnet.testing import wait_until

NAMES = ["node1", "node2", "node3"]


@pytest.fixture
def faults():
    peer_ports = free_ports(3)
    f = DevFaults(NAMES, peer_ports, taken=peer_ports)
    f.peer_ports = peer_ports
    yield f
    f.close()


class _Serving:
    """The control socket answered by a thread, as the supervisor's idle wait does."""

    def __init__(self, faults, data_dir):
        self.faults, self.stop = faults, threading.Event()
        self.port = faults.listen(str(data_dir))
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop.is_set():
            self.faults.poll(0.05)

    def close(self):
        self.stop.set()
        self.t.join(5)


@pytest.fixture
def served(faults, tmp_path):
    s = _Serving(faults, tmp_path)
    yield s
    s.close()


def _kvctl(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = kvctl.main(["fault", *argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_a_proxy_per_directed_link_and_each_node_reaches_the_others_through_its_own(faults):
    assert sorted(faults.proxies) == [(a, b) for a in NAMES for b in NAMES if a != b]
    ports = faults.peer_ports
    for (a, b), px in faults.proxies.items():
        assert px.target == ("127.0.0.1", ports[NAMES.index(b)])
    m = faults.members(0, ports)
    assert m == (f"node1@127.0.0.1:{ports[0]},"
                 f"node2@127.0.0.1:{faults.proxies['node1', 'node2'].port},"
                 f"node3@127.0.0.1:{faults.proxies['node1', 'node3'].port}")
    proxy_ports = {px.port for px in faults.proxies.values()}
    assert len(proxy_ports) == 6 and not proxy_ports & set(ports)
    cmds = dev_commands(3, 7379, "d", 3, "never", members_of=lambda i: faults.members(i, ports))[1]
    assert cmds[1][cmds[1].index("--members") + 1] == faults.members(1, ports)


def test_without_faults_the_members_are_the_nodes_own_peer_ports():
    cmds = dev_commands(2, 7379, "d", 3, "never")[1]
    assert all(c[c.index("--members") + 1] == "node1@127.0.0.1:17379,node2@127.0.0.1:17380"
               for c in cmds)


def test_cut_heal_and_slow_act_on_the_links_of_a_node_or_of_one_pair(faults):
    faults.apply("cut", "node3")
    modes = {k: px.mode for k, px in faults.proxies.items()}
    assert {k for k, m in modes.items() if m} == {("node3", "node1"), ("node1", "node3"),
                                                  ("node3", "node2"), ("node2", "node3")}
    faults.apply("heal", "node3")
    assert all(px.mode is None for px in faults.proxies.values())
    faults.apply("slow", "node1", "node2", 150)
    delays = {k: px.delay_ms for k, px in faults.proxies.items() if px.delay_ms}
    assert delays == {("node1", "node2"): 150, ("node2", "node1"): 150}
    links = {(ln["from"], ln["to"]): ln for ln in faults.status()["links"]}
    assert links["node2", "node1"]["delay_ms"] == 150 and links["node1", "node3"]["delay_ms"] == 0
    assert links["node1", "node2"]["mode"] is None
    faults.apply("heal", "node2", "node1")              # heal ends the delay too
    assert all(px.delay_ms == 0 for px in faults.proxies.values())


@pytest.mark.parametrize("req, error", [
    (b"not json\n", "one JSON object"),
    (b"[1]\n", "one JSON object"),
    (b'{"op": "cut", "node": "node3"}\n', "wrong token"),
    (b"x" * 5000, "longer than"),
])
def test_malformed_or_unauthenticated_requests_are_refused(faults, req, error):
    reply = faults.handle(req)
    assert reply["ok"] is False and error in reply["error"]
    assert all(px.mode is None for px in faults.proxies.values())


@pytest.mark.parametrize("op, node, peer, ms, error", [
    ("explode", "node1", None, None, "unknown operation"),
    ("cut", "node9", None, None, "unknown node 'node9' (the dev cluster has node1, node2, node3)"),
    ("cut", None, None, None, "unknown node None"),
    ("cut", "node1", "node7", None, "unknown peer 'node7'"),
    ("cut", "node1", "node1", None, "no link to itself"),
    ("kill", "node1", "node2", None, "acts on a node"),
    ("slow", "node1", None, None, "slow needs --ms"),
    ("slow", "node1", None, -5, "--ms is 0 to 60000"),
    ("slow", "node1", None, "10", "slow needs --ms"),
    ("heal", "node1", None, 10, "--ms goes with slow only"),
])
def test_bad_operations_get_a_clear_error(faults, op, node, peer, ms, error):
    reply = faults.handle(json.dumps({"token": faults._token, "op": op, "node": node,
                                      "peer": peer, "ms": ms}).encode())
    assert reply["ok"] is False and error in reply["error"], reply


def test_a_bug_in_an_operation_is_an_error_reply_not_the_end_of_the_cluster(faults, served,
                                                                           tmp_path, monkeypatch):
    def boom(*_):
        raise RuntimeError("bug")
    monkeypatch.setattr(faults, "apply", boom)
    reply = request(str(tmp_path), "cut", "node1")
    assert reply == {"ok": False, "error": "internal error: RuntimeError: bug"}
    monkeypatch.undo()
    assert request(str(tmp_path), "cut", "node1")["ok"] is True      # still serving


def test_the_control_file_is_private_and_kvctl_drives_the_links_through_it(faults, served,
                                                                         tmp_path):
    path = tmp_path / CONTROL_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ctl = json.loads(path.read_text())
    assert ctl["port"] == served.port and ctl["nodes"] == NAMES and len(ctl["token"]) >= 24
    code, out, err = _kvctl("cut", "node2", "node3", "--data-dir", str(tmp_path))
    assert (code, err) == (0, "") and "cut node2 <-> node3" in out
    assert faults.proxies["node3", "node2"].mode == "blackhole"
    code, out, err = _kvctl("slow", "node1", "--ms", "40", "--data-dir", str(tmp_path), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["said"].startswith("slowed node1 <-> every other node: 40 ms")
    slowed = {(ln["from"], ln["to"]) for ln in doc["links"] if ln["delay_ms"] == 40}
    assert slowed == {("node1", "node2"), ("node2", "node1"), ("node1", "node3"),
                      ("node3", "node1")}
    code, out, err = _kvctl("status", "--data-dir", str(tmp_path))
    assert code == 0 and "node2 -> node3" in out and "blackhole" in out, out
    code, out, err = _kvctl("cut", "node9", "--data-dir", str(tmp_path))
    assert code == 1 and out == ""
    assert err == ("kvctl: fault cut: unknown node 'node9' (the dev cluster has node1, node2, "
                   "node3)\n")
    served.close()
    faults.close()
    assert not path.exists()                        # removed when the supervisor stops


@pytest.mark.parametrize("argv, error", [
    (["cut"], "cut needs a NODE"),
    (["pause", "node1", "node2"], "pause acts on a node: give no PEER"),
    (["slow", "node1"], "slow needs --ms"),
    (["heal", "node1", "--ms", "5"], "--ms goes with slow only"),
    (["status", "node1"], "status takes no NODE"),
])
def test_kvctl_fault_usage_errors_exit_2(tmp_path, argv, error):
    code, out, err = _kvctl(*argv, "--data-dir", str(tmp_path))
    assert code == 2 and error in err and out == ""


@pytest.mark.parametrize("argv", [["explode", "node1"], ["slow", "node1", "--ms", "-1"],
                                  ["slow", "node1", "--ms", "soon"]])
def test_kvctl_fault_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        kvctl.main(["fault", *argv])
    assert exc.value.code == 2


def test_kvctl_fault_without_a_dev_cluster_says_so(tmp_path):
    code, out, err = _kvctl("cut", "node1", "--data-dir", str(tmp_path / "none"))
    assert code == 1 and "no `kvnode dev --faults` is running with data directory" in err


def test_kvctl_fault_with_a_file_left_by_a_dead_supervisor_says_so(tmp_path):
    with socket.socket() as s:                      # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / CONTROL_FILE).write_text(json.dumps({"port": port, "token": "t"}))
    code, out, err = _kvctl("status", "--data-dir", str(tmp_path))
    assert code == 1 and "does not answer" in err and "did not end cleanly" in err
    (tmp_path / CONTROL_FILE).write_text("garbage")
    with pytest.raises(NoDevCluster, match="cannot read"):
        request(str(tmp_path), "status")


# ---- the supervisor's side, on stand-in processes ----------------------------------------------

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def sup(faults):
    s = DevSupervisor(NAMES, [SLEEPER] * 3, [1, 2, 3], dict(os.environ), log=io.StringIO(),
                      err=io.StringIO(), control=faults)
    for n in s.nodes:
        s._spawn(n)
    yield s
    s.stop(grace=5)
    assert all(n.proc.poll() is not None for n in s.nodes)


def _proc_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _state(sup, name):
    return sup.node_states()[name]["state"]


def test_kill_keeps_a_node_down_until_resume_starts_it_again(sup, faults):
    old = sup.nodes[2].proc
    said = faults.apply("kill", "node3")
    assert "killed with SIGKILL" in said and old.returncode == -signal.SIGKILL
    sup._check(sup.nodes[2], sup.clock() + 3600)     # no restart, however long it waits
    assert sup.nodes[2].proc is old and _state(sup, "node3") == "killed"
    assert faults.status()["nodes"]["node3"] == {"state": "killed", "pid": None, "port": 3}
    with pytest.raises(Exception, match="already killed"):
        sup.fault_kill("node3")
    assert "started again" in faults.apply("resume", "node3")
    assert sup.nodes[2].proc is not old and sup.nodes[2].proc.poll() is None
    assert _state(sup, "node3") == "running"
    assert "killed with SIGKILL" in sup.out.getvalue()


def test_pause_stops_a_node_resume_continues_it_and_stop_ends_a_paused_one(sup, faults):
    said = faults.apply("pause", "node2")
    pid = sup.nodes[1].proc.pid
    assert "paused with SIGSTOP" in said and _state(sup, "node2") == "paused"
    wait_until(lambda: _proc_state(pid) == "T", 10, what="node2 stopped")   # SIGSTOP took
    assert faults.apply("pause", "node2") == "node2 is already paused"
    assert "resumed with SIGCONT" in faults.apply("resume", "node2")
    wait_until(lambda: _proc_state(pid) != "T", 10, what="node2 continued")
    assert _state(sup, "node2") == "running"
    assert "nothing to resume" in faults.apply("resume", "node2")
    faults.apply("pause", "node1")          # left paused: the fixture's stop() must end it


def test_pause_refuses_a_killed_node(sup, faults):
    faults.apply("kill", "node1")
    reply = faults.handle(json.dumps({"token": faults._token, "op": "pause",
                                      "node": "node1"}).encode())
    assert reply["ok"] is False and "node1 is not running (state killed)" in reply["error"]


def test_kvnode_dev_faults_takes_2_to_16_nodes(tmp_path, capsys):
    from kvnet.cli import kvnode

    for nodes in ("1", "17"):
        assert kvnode.main(["dev", "--faults", "--nodes", nodes,
                            "--data-dir", str(tmp_path)]) == 2
        assert "--faults takes 2 to 16 nodes" in capsys.readouterr().err
    assert not os.listdir(tmp_path)               # refused before anything was made


def test_a_paused_node_killed_from_outside_is_restarted_as_a_running_one(sup, faults):
    faults.apply("pause", "node2")
    node = sup.nodes[1]
    node.proc.kill()                              # kill -9 by the user, not kvctl fault
    node.proc.wait()
    sup._check(node, sup.clock())
    assert _state(sup, "node2") == "restarting"
    sup._check(node, sup.clock() + 60)            # the backoff has passed
    assert _state(sup, "node2") == "running" and node.proc.poll() is None
