"""kvnet/testing/cluster.py: LocalCluster's commands, ports and proxies without (or with
short-lived) node processes."""
import os

import pytest

import kvnet.testing.cluster as C
from kvnet.testing import LocalCluster


def _members(cmd):
    arg = cmd[cmd.index("--members") + 1]
    return {m.split("@")[0]: int(m.rsplit(":", 1)[1]) for m in arg.split(",")}


def test_proxied_members_name_a_proxy_per_directed_link(tmp_path):
    c = LocalCluster(str(tmp_path), nodes=4, proxied=True, extra=["--phi-threshold", "4"],
                     node_extra={2: ["--phi-threshold", "6"]})
    try:
        assert len(c.proxies) == 12
        for i, cmd in enumerate(c.cmds):
            members = _members(cmd)
            for j, name in enumerate(c.names):
                want = c.peer_ports[j] if i == j else c.proxies[i, j].port
                assert members[name] == want
                if i != j:
                    assert c.proxies[i, j].target == ("127.0.0.1", c.peer_ports[j])
            assert cmd[cmd.index("--data-dir") + 1] == c.data_dir_of(i)
        assert c.cmds[2][-2:] == ["--phi-threshold", "6"] and c.cmds[1][-2:] == ["--phi-threshold", "4"]
    finally:
        c.stop()
    assert all(not px._thread.is_alive() for px in c.proxies.values())


def test_unproxied_members_are_the_real_peer_ports_and_network_faults_refuse(tmp_path):
    c = LocalCluster(str(tmp_path), nodes=3)
    assert all(_members(cmd) == dict(zip(c.names, c.peer_ports)) for cmd in c.cmds)
    with pytest.raises(RuntimeError, match="proxied"):
        c.cut(0, 1)
    c.stop()


@pytest.mark.slow
def test_a_node_that_cannot_start_leaves_no_process_or_proxy(tmp_path):
    c = LocalCluster(str(tmp_path), nodes=2, proxied=True, node_extra={1: ["--r", "9"]})
    with pytest.raises(RuntimeError, match="node2 exited"):
        with c:
            pass
    assert c.procs == [None, None]
    assert all(not px._thread.is_alive() for px in c.proxies.values())
    c.stop()                                     # twice is fine


# ---- growing a cluster, the final ring, replicas by that ring (no processes) ----------------

def test_add_node_builds_a_join_command_seeded_by_one_member_and_registers_it(tmp_path):
    c = LocalCluster(str(tmp_path), nodes=3, ring_size=64, extra=["--gossip-interval-ms", "100"])
    try:
        i = c.add_node(join=True, start=False, node_extra=["--phi-threshold", "4"])
        assert i == 3 and c.names == ["node1", "node2", "node3", "node4"]
        assert len(c.ports) == len(c.peer_ports) == len(c.procs) == len(c.cmds) == 4
        assert len(set(c.ports) | set(c.peer_ports)) == 8
        cmd = c.cmds[3]
        assert cmd[-1] == "--join" and cmd[-3:-1] == ["--phi-threshold", "4"]
        assert _members(cmd) == {"node1": c.peer_ports[0], "node4": c.peer_ports[3]}
        assert cmd[cmd.index("--ring-size") + 1] == "64"
        assert cmd[cmd.index("--gossip-interval-ms") + 1] == "100"
        assert cmd[cmd.index("--data-dir") + 1] == c.data_dir_of(3)
        assert cmd[cmd.index("--port") + 1] == str(c.ports[3])
        # everything but the name, ports, data dir, members and --join is as the others have it
        common = c.cmds[0][c.cmds[0].index("--members") + 2:]
        assert cmd[cmd.index("--members") + 2:-3] == common
        assert not c.running(3) and c.running_nodes() == [] and c.exit_code(3) is None
        c.set_seeds(3, [1, 2])
        assert _members(c.cmds[3]) == {n: c.peer_ports[k] for k, n in enumerate(c.names) if k}
        j = c.add_node(join=False, start=False)
        assert "--join" not in c.cmds[j] and _members(c.cmds[j]) == dict(zip(c.names, c.peer_ports))
        # the configured ring leaves out the nodes that joined
        assert set(c.final_ring().nodes) == {"node1", "node2", "node3", "node5"}
    finally:
        c.stop()


def test_add_node_refuses_a_proxied_cluster(tmp_path):
    c = LocalCluster(str(tmp_path), nodes=2, proxied=True)
    try:
        with pytest.raises(NotImplementedError):
            c.add_node(start=False)
        assert c.names == ["node1", "node2"]
    finally:
        c.stop()


def test_final_ring_is_the_highest_kept_ring_state(tmp_path):
    from kvcore.ring import Ring
    from kvnet.membership import ringstate as RS
    c = LocalCluster(str(tmp_path), nodes=3, ring_size=64)
    r0 = Ring.create(c.names, q=64, n=3)
    assert list(c.final_ring().owners) == list(r0.owners)       # nothing kept: the configured
    r1 = r0.with_node("node4")
    r2 = r1.without_node("node1")
    for i, state in [(0, RS.RingState(r0, r1, 2, "node1")), (1, RS.RingState(r2, None, 5, "node1")),
                     (2, RS.RingState(r1, None, 3, "node1"))]:
        os.makedirs(c.data_dir_of(i))
        RS.save(c.data_dir_of(i), state)
    assert c.kept_ring(1).epoch == 5
    assert list(c.final_ring().owners) == list(r2.owners)
    c.stop()


def test_a_proxied_cluster_takes_every_port_it_will_bind_at_once(tmp_path, monkeypatch):
    """A proxy's port chosen after the nodes' could be one a node has not bound yet: all of them
    come from one free_ports call, so they are distinct."""
    calls = []
    real = C.free_ports
    monkeypatch.setattr(C, "free_ports", lambda n: calls.append(n) or real(n))
    cl = LocalCluster(str(tmp_path), nodes=3, proxied=True)
    try:
        ports = cl.ports + cl.peer_ports + [px.port for px in cl.proxies.values()]
        assert calls == [12] and len(set(ports)) == 12
    finally:
        cl.stop()


def test_a_proxy_port_taken_meanwhile_is_chosen_again(tmp_path, monkeypatch):
    real, refused = C.FaultProxy, []

    def first_bind_fails(target, port=0, name=None):
        if not refused:
            refused.append(port)
            raise OSError(98, "address already in use")
        return real(target, port=port, name=name)
    monkeypatch.setattr(C, "FaultProxy", first_bind_fails)
    cl = LocalCluster(str(tmp_path), nodes=3, proxied=True)
    try:
        ports = cl.ports + cl.peer_ports + [px.port for px in cl.proxies.values()]
        assert len(cl.proxies) == 6 and len(set(ports)) == 12 and refused[0] not in ports
    finally:
        cl.stop()
