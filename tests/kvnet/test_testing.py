"""The fault-test toolkit itself (kvnet/testing.py): FaultProxy (kvnet/faultproxy.py) against an
echo server, and the checker on synthetic records. Fast: no node processes."""
import os
import socket
import threading

import pytest

from kvcore import versions as V
from kvnet.testing import FaultProxy, PutRecord, check, covers, new_dots


class EchoServer:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                c.sendall(data)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def echo():
    srv = EchoServer()
    yield srv
    srv.close()


@pytest.fixture
def proxy(echo):
    px = FaultProxy(echo.port)
    yield px
    px.close()


def _connect(port, timeout=2.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def _recv_exactly(s, n):
    buf = b""
    while len(buf) < n:
        data = s.recv(n - len(buf))
        if not data:
            break
        buf += data
    return buf


def test_proxy_forwards_both_ways_and_counts_bytes(proxy):
    with _connect(proxy.port) as s:
        s.sendall(b"hello" * 1000)
        assert _recv_exactly(s, 5000) == b"hello" * 1000
    st = proxy.stats()
    assert st["accepted"] == 1 and st["bytes_up"] == 5000 and st["bytes_down"] == 5000


def test_cut_blackholes_open_and_new_connections_and_heal_delivers(proxy):
    old = _connect(proxy.port)
    old.sendall(b"a")
    assert _recv_exactly(old, 1) == b"a"
    proxy.cut()
    old.settimeout(0.3)
    old.sendall(b"held")
    with pytest.raises(socket.timeout):
        old.recv(10)
    new = _connect(proxy.port)               # accepted (no refusal), but nothing passes
    new.settimeout(0.3)
    new.sendall(b"new")
    with pytest.raises(socket.timeout):
        new.recv(10)
    up = proxy.bytes_up
    assert up == 1
    proxy.heal()
    old.settimeout(2)
    new.settimeout(2)
    assert _recv_exactly(old, 4) == b"held"     # held, not lost: as TCP across a partition
    assert _recv_exactly(new, 3) == b"new"
    old.close()
    new.close()


def test_refuse_mode_refuses_and_resets_then_heal_listens_again(proxy):
    old = _connect(proxy.port)
    old.sendall(b"x")
    assert _recv_exactly(old, 1) == b"x"
    proxy.cut("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
    with pytest.raises(OSError):                 # reset (or closed) by the proxy
        old.sendall(b"y")
        if not old.recv(1):
            raise ConnectionResetError("closed")
    old.close()
    proxy.heal()
    with _connect(proxy.port) as s:
        s.sendall(b"back")
        assert _recv_exactly(s, 4) == b"back"


def test_close_is_idempotent_and_ends_connections(echo):
    px = FaultProxy(echo.port)
    s = _connect(px.port)
    px.close()
    px.close()
    s.settimeout(2)
    try:
        assert s.recv(1) == b""
    except ConnectionResetError:
        pass
    s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", px.port), timeout=1)


def test_slow_holds_chunks_in_order_and_heal_lets_them_go(proxy):
    """slow(ms): what is read waits ms before it goes on (a delay this long holds it within
    any receive timeout), bytes stay in order; heal() ends the delay and releases them."""
    assert proxy.stats()["delay_ms"] == 0
    with _connect(proxy.port) as s:
        s.sendall(b"warm")
        assert _recv_exactly(s, 4) == b"warm"
        proxy.slow(60_000)
        assert proxy.stats()["delay_ms"] == 60_000
        for i in range(50):
            s.sendall(b"%03d" % i)
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(10)
        proxy.heal()
        assert proxy.stats()["delay_ms"] == 0
        s.settimeout(5)
        assert _recv_exactly(s, 150) == b"".join(b"%03d" % i for i in range(50))


def test_a_small_delay_still_delivers_everything(proxy):
    proxy.slow(20)
    with _connect(proxy.port) as s:
        s.settimeout(10)
        s.sendall(b"y" * 300_000)
        assert _recv_exactly(s, 300_000) == b"y" * 300_000
    assert proxy.stats()["delay_ms"] == 20 and proxy.bytes_down == 300_000
    proxy.slow(0)
    assert proxy.stats()["delay_ms"] == 0


def test_a_cut_holds_what_a_slowed_link_has_on_its_line(proxy):
    with _connect(proxy.port) as s:
        proxy.slow(60_000)
        s.sendall(b"held")
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(10)
        proxy.cut()
        proxy.slow(0)                        # due now, but the link is cut
        with pytest.raises(socket.timeout):
            s.recv(10)
        proxy.heal()
        s.settimeout(5)
        assert _recv_exactly(s, 4) == b"held"


@pytest.mark.parametrize("bad", [-1, 60_001, float("nan"), "10", True])
def test_slow_refuses_a_bad_delay(proxy, bad):
    with pytest.raises(ValueError, match="a delay is 0 to 60000 ms"):
        proxy.slow(bad)
    assert proxy.stats()["delay_ms"] == 0


def test_the_toolkit_imports_the_proxy_from_its_module():
    import kvnet.faultproxy
    import kvnet.testing

    assert kvnet.testing.FaultProxy is kvnet.faultproxy.FaultProxy
    assert kvnet.testing.free_ports is kvnet.faultproxy.free_ports


# ---- the checker on synthetic records ------------------------------------------------------

A, B = ("node1", 7, 1), ("node2", 9, 1)


def ctx(**pairs):
    actors = {"a": A, "b": B}
    return V.encode_context(tuple(sorted((actors[k], n) for k, n in pairs.items())))


def reader(contents):
    return lambda key: contents[key]


def test_new_dots_is_the_reply_minus_the_context():
    assert new_dots(ctx(a=1), ctx(a=2)) == [(A, 2)]
    assert new_dots(b"", ctx(a=1, b=3)) == [(A, 1), (B, 3)]
    assert covers({A: 2, B: 3}, [(A, 2), (B, 3)]) and not covers({A: 2}, [(A, 2), (B, 3)])


def test_lost_set_is_reported_and_present_set_is_not():
    v = check(reader({b"k1": [b"v1"], b"k2": []}), sets={b"k1": b"v1", b"k2": b"v2"})
    assert len(v) == 1 and "k2" in v[0] and "lost" in v[0]
    assert check(reader({b"k1": [b"other", b"v1"]}), sets={b"k1": b"v1"}) == []


def test_superseded_value_is_not_a_loss():
    w1 = PutRecord(b"k", b"w1", b"", ctx(a=1), "x")
    w2 = PutRecord(b"k", b"w2", ctx(a=1), ctx(a=2), "y")       # read w1, replaced it
    assert check(reader({b"k": [b"w2"]}), puts=[w1, w2]) == []


def test_value_replaced_only_by_an_unacknowledged_write_is_not_a_loss():
    w1 = PutRecord(b"k", b"w1", b"", ctx(a=1), "x")
    w2 = PutRecord(b"k", b"w2", ctx(a=1), None, "y", "TimeoutError")
    assert check(reader({b"k": [b"w2"]}), puts=[w1, w2]) == []


def test_lost_acknowledged_value_is_reported():
    w1 = PutRecord(b"k", b"w1", b"", ctx(a=1), "x")
    w2 = PutRecord(b"k", b"w2", b"", ctx(b=1), "y")             # concurrent: both must stay
    v = check(reader({b"k": [b"w2"]}), puts=[w1, w2])
    assert len(v) == 1 and "w1" in v[0] and "lost" in v[0]


def test_a_write_that_had_not_seen_the_dot_does_not_excuse_its_loss():
    w1 = PutRecord(b"k", b"w1", ctx(a=1), ctx(a=2, b=1), "x")   # dots (a,2) or (b,1)
    w2 = PutRecord(b"k", b"w2", ctx(a=2), ctx(a=3), "y")        # saw (a,2) but not (b,1)
    v = check(reader({b"k": [b"w2"]}), puts=[w1, w2])
    assert len(v) == 1 and "w1" in v[0]
    w3 = PutRecord(b"k", b"w3", ctx(a=2, b=1), ctx(a=3, b=1), "y")
    assert check(reader({b"k": [b"w3"]}), puts=[w1, w3]) == []


def test_replaced_value_that_comes_back_and_unknown_values_are_reported():
    w1 = PutRecord(b"k", b"w1", b"", ctx(a=1), "x")
    w2 = PutRecord(b"k", b"w2", ctx(a=1), ctx(a=2), "y")
    v = check(reader({b"k": [b"w2", b"w1", b"ghost"]}), puts=[w1, w2])
    assert any("came back" in x and "w1" in x for x in v)
    assert any("never written" in x and "ghost" in x for x in v)
    assert len(v) == 2


def test_unreadable_key_is_a_violation():
    def read(key):
        raise ConnectionError("down")

    v = check(read, sets={b"k": b"v"})
    assert len(v) == 1 and "unreadable" in v[0]


# ---- LocalCluster without (or with short-lived) processes -----------------------------------

def _members(cmd):
    arg = cmd[cmd.index("--members") + 1]
    return {m.split("@")[0]: int(m.rsplit(":", 1)[1]) for m in arg.split(",")}


def test_proxied_members_name_a_proxy_per_directed_link(tmp_path):
    from kvnet.testing import LocalCluster

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
    from kvnet.testing import LocalCluster

    c = LocalCluster(str(tmp_path), nodes=3)
    assert all(_members(cmd) == dict(zip(c.names, c.peer_ports)) for cmd in c.cmds)
    with pytest.raises(RuntimeError, match="proxied"):
        c.cut(0, 1)
    c.stop()


@pytest.mark.slow
def test_a_node_that_cannot_start_leaves_no_process_or_proxy(tmp_path):
    from kvnet.testing import LocalCluster

    c = LocalCluster(str(tmp_path), nodes=2, proxied=True, node_extra={1: ["--r", "9"]})
    with pytest.raises(RuntimeError, match="node2 exited"):
        with c:
            pass
    assert c.procs == [None, None]
    assert all(not px._thread.is_alive() for px in c.proxies.values())
    c.stop()                                     # twice is fine


# ---- growing a cluster, the final ring, replicas by that ring (no processes) ----------------

def test_add_node_builds_a_join_command_seeded_by_one_member_and_registers_it(tmp_path):
    from kvnet.testing import LocalCluster

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
    from kvnet.testing import LocalCluster

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
    from kvnet.testing import LocalCluster

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


class _Stopped:
    """Enough of a LocalCluster for the offline checks given `held` and a ring."""
    n, ring_size = 3, 64
    names = ["node1", "node2", "node3", "node4"]


def test_missing_replicas_and_divergent_keys_judge_by_the_given_ring():
    from kvcore.ring import Ring
    from kvnet.testing import divergent_keys, missing_replicas

    ring = Ring.create(["node1", "node2", "node3"], q=64, n=3).with_node("node4")
    keys = [f"k{i}".encode() for i in range(40)]
    clock = V.encode(V.update(V.new(V.sibling(b"v", 1)), None, A))
    held = {n: {} for n in _Stopped.names}
    for k in keys:
        p = ring.partition_of(k)
        for node in ring.preference_list(p):
            held[node][k] = (p, clock)
    assert missing_replicas(_Stopped(), keys, held=held, ring=ring) == {}
    assert divergent_keys(_Stopped(), held=held, ring=ring) == {}
    a, b = keys[0], keys[1]
    pa, pb = ring.preference_list(ring.partition_of(a)), ring.preference_list(ring.partition_of(b))
    del held[pa[1]][a]                           # one primary lacks a
    for node in pb:                              # b is held only off its preference list
        del held[node][b]
    off = next(n for n in _Stopped.names if n not in pb)
    held[off][b] = (ring.partition_of(b), clock)
    missing = missing_replicas(_Stopped(), keys + [b"never"], held=held, ring=ring)
    assert missing[a] == [pa[1]] and missing[b] == list(pb)
    assert missing[b"never"] == list(ring.preference_list(ring.partition_of(b"never")))
    assert set(missing) == {a, b, b"never"}
    # divergent_keys compares primaries only: b, on no primary at all, looks converged to it
    assert set(divergent_keys(_Stopped(), held=held, ring=ring)) == {a}


def test_writer_set_ports_replaces_the_ports_between_operations():
    from kvnet.testing import _Writer

    class Recorder(_Writer):
        def step(self, port):
            if self.ops == 5:
                self.set_ports([9, 10])
            self.seen.append(port)

    w = Recorder([1, 2, 3], count=9)
    w.seen = []
    w.run()
    assert w.seen == [1, 2, 3, 1, 2, 3, 9, 10, 9]
    with pytest.raises(ValueError):
        w.set_ports([])


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    from kvnet import testing

    ports = testing.free_ports(40)
    assert len(set(ports)) == 40
    low = testing._ephemeral_low()
    if low - testing._PORT_FLOOR > 1000:
        # an outgoing connection never takes one of these as its local port
        assert all(testing._PORT_FLOOR <= p < low for p in ports)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_proxied_cluster_takes_every_port_it_will_bind_at_once(tmp_path, monkeypatch):
    """A proxy's port chosen after the nodes' could be one a node has not bound yet: all of them
    come from one free_ports call, so they are distinct."""
    import kvnet.testing as T
    calls = []
    real = T.free_ports
    monkeypatch.setattr(T, "free_ports", lambda n: calls.append(n) or real(n))
    cl = T.LocalCluster(str(tmp_path), nodes=3, proxied=True)
    try:
        ports = cl.ports + cl.peer_ports + [px.port for px in cl.proxies.values()]
        assert calls == [12] and len(set(ports)) == 12
    finally:
        cl.stop()


def test_a_proxy_port_taken_meanwhile_is_chosen_again(tmp_path, monkeypatch):
    import kvnet.testing as T
    real, refused = T.FaultProxy, []

    def first_bind_fails(target, port=0, name=None):
        if not refused:
            refused.append(port)
            raise OSError(98, "address already in use")
        return real(target, port=port, name=name)
    monkeypatch.setattr(T, "FaultProxy", first_bind_fails)
    cl = T.LocalCluster(str(tmp_path), nodes=3, proxied=True)
    try:
        ports = cl.ports + cl.peer_ports + [px.port for px in cl.proxies.values()]
        assert len(cl.proxies) == 6 and len(set(ports)) == 12 and refused[0] not in ports
    finally:
        cl.stop()
