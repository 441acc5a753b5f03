"""The gossip service on in-process nodes: tables spread, a stopped node is marked down by two
sources and up again on restart, and one cut link does not mark a healthy node down."""
import asyncio
import dataclasses

import pytest

from kvnet.config import load
from kvnet.errors import Unavailable
from kvnet.membership.detector import DOWN, UP
from kvnet.node import Node
from kvnet.peer.errors import PeerUnavailable
from kvnet.testing import eventually, free_ports

FAST = dict(gossip_interval_ms=50, phi_threshold=5.0)


def _configs(tmp_path, nodes=3, **kw):
    ports = free_ports(2 * nodes)
    members = [f"g{i}@127.0.0.1:{ports[nodes + i]}" for i in range(nodes)]
    n = min(3, nodes)
    return [load(name=f"g{i}", port=ports[i], peer_port=ports[nodes + i], n=n, r=min(2, n), w=min(2, n),
                 data_dir=str(tmp_path / f"g{i}"), members=members, fsync="never",
                 request_timeout_ms=1000, **{**FAST, **kw}) for i in range(nodes)]


async def _wait(pred, timeout=10.0):
    return await eventually(pred, timeout)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_tables_spread_and_heartbeats_advance(tmp_path):
    async def main():
        nodes = [await Node(c).start() for c in _configs(tmp_path)]
        try:
            names = {n.name for n in nodes}
            assert await _wait(lambda: all(set(n.gossip.table) == names for n in nodes))
            hb = nodes[0].gossip.table["g0"].heartbeat
            assert await _wait(lambda: nodes[1].gossip.table["g0"].heartbeat > hb)
            for n in nodes:
                assert all(n.gossip.liveness.state(p) == UP for p in names - {n.name})
            st = await nodes[0].front.status()
            rows = {m["name"]: m for m in st["members"]}
            assert rows["g1"]["state"] == "up" and rows["g1"]["heartbeat_age_s"] is not None
            assert rows["g1"]["generation"] == nodes[1].gossip.generation
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_stopped_node_marked_down_by_two_sources_then_up_after_restart(tmp_path):
    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs]
        try:
            assert await _wait(lambda: all(len(n.gossip.table) == 3 for n in nodes))
            await asyncio.sleep(0.5)                    # a few real inter-arrival samples
            gen = nodes[2].gossip.generation
            await nodes[2].stop()
            live = nodes[:2]
            assert await _wait(lambda: all(n.gossip.liveness.state("g2") == DOWN for n in live))
            for n in live:
                # the rule needs a second source: the other live node's report or a probe
                assert n.gossip.liveness.down() == ["g2"]
                assert not n.is_up("g2")
            nodes[2] = await Node(cfgs[2]).start()
            assert nodes[2].gossip.generation > gen      # a new process is news, not history
            assert await _wait(lambda: all(n.gossip.liveness.state("g2") == UP for n in live))
            # routable again once a connection to it is up (its own gossip dials us)
            assert await _wait(lambda: all(n.is_up("g2") for n in live))
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_news_of_a_restarted_peer_ends_its_dial_backoff(tmp_path):
    """g0's dial to a stopped g2 failed, and its backoff is long; g2 comes back but never dials
    g0 (neither its gossip nor its start-up greeting). A newer g2 heartbeat through g1 makes g0
    dial g2 at once, so routing takes it back."""
    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs]
        g0 = nodes[0]
        try:
            assert await _wait(lambda: all(len(n.gossip.table) == 3 for n in nodes))
            await nodes[2].stop()
            g0.pool._backoff_base = g0.pool._backoff_max = 60.0
            for conn in list(g0.pool._peers["g2"].conns):
                conn.close()
            with pytest.raises(PeerUnavailable):
                await g0.call("g2", "ping", None, 1.0)
            assert not g0.is_up("g2")
            g2 = Node(cfgs[2])
            real = g2.call

            async def call(peer, type, payload, timeout):
                if peer == "g0":
                    raise Unavailable("g2 does not dial g0 in this test")
                return await real(peer, type, payload, timeout)

            async def no_greeting():
                pass

            g2.call = call
            g2._greet_peers = no_greeting
            nodes[2] = await g2.start()
            assert await _wait(lambda: g0.is_up("g2"), timeout=5.0)
            conns = g0.pool._peers["g2"].conns
            assert conns and all(c.initiator for c in conns)     # g0 dialed it
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_a_node_answers_clients_only_after_dialing_its_members(tmp_path):
    """g0's gossip dialed g1 before g1 listened, so g0 routes around g1. g1 greets its members
    before its client port opens: when g1.start() returns, g0 routes to it again, long before
    any gossip round (10 s here) could have told it."""
    async def main():
        cfgs = _configs(tmp_path, nodes=2, gossip_interval_ms=10_000)
        g0 = await Node(cfgs[0]).start()
        nodes = [g0]
        try:
            with pytest.raises(PeerUnavailable):
                await g0.call("g1", "ping", None, 1.0)
            assert not g0.is_up("g1")
            nodes.append(await Node(cfgs[1]).start())
            assert g0.is_up("g1") and nodes[1].is_up("g0")
            assert g0.pool.status()["g1"]["connections"] == 1
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_one_cut_link_does_not_mark_a_healthy_node_down(tmp_path):
    async def main():
        nodes = [await Node(c).start() for c in _configs(tmp_path)]
        a, b = nodes[0], nodes[1]
        cut = {("g0", "g1"), ("g1", "g0")}
        for n in (a, b):
            real = n.call

            async def call(peer, type, payload, timeout, _real=real, _me=n.name):
                if (_me, peer) in cut:
                    raise Unavailable("link cut by the test")
                return await _real(peer, type, payload, timeout)

            n.call = call
        try:
            assert await _wait(lambda: all(len(n.gossip.table) == 3 for n in nodes))
            await asyncio.sleep(2.0)              # many detection times at 50 ms rounds
            # g0 and g1 hear of each other through g2: neither suspects, nobody marks down
            for n in nodes:
                assert n.gossip.liveness.down() == []
            assert a.gossip.liveness.state("g1") == UP
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_malformed_gossip_messages_get_errors(tmp_path):
    async def main():
        node = await Node(_configs(tmp_path, nodes=1)[0]).start()
        try:
            for mtype, payload in [("gsyn", None), ("gsyn", {"from": "x", "digest": 7}),
                                   ("gsyn", {"from": "x", "digest": [["x", -1, 0, 0, "valid"]]}),
                                   ("gack2", {"from": "x", "entries": [[1, 2]]}),
                                   ("gprobe", {"target": 5}), ("gprobe", {"target": "nobody"})]:
                with pytest.raises(Exception) as info:
                    await node.handlers(mtype, payload)
                assert "gossip" in str(info.value) or "probe" in str(info.value) \
                    or "digest" in str(info.value)
            assert len(node.gossip.table) == 1           # nothing malformed got in
        finally:
            await node.stop()

    run(main())


def test_peers_learned_by_gossip_are_seeds_after_a_restart(tmp_path):
    """g1 and g2 each have only g0 in their config and learn each other through it. After all
    three stop and g0 is gone for good, g1 and g2 restarted alone find each other again."""
    async def main():
        cfgs = _configs(tmp_path)

        def only_g0(cfg):
            return dataclasses.replace(cfg, members=tuple(
                m for m in cfg.members if m.name in ("g0", cfg.name)))

        c1, c2 = only_g0(cfgs[1]), only_g0(cfgs[2])
        nodes = [await Node(cfgs[0]).start(), await Node(c1).start(), await Node(c2).start()]
        try:
            assert await _wait(lambda: "g2" in nodes[1].gossip.table
                               and "g1" in nodes[2].gossip.table)
            await asyncio.sleep(0.2)
            for n in nodes:
                await n.stop()
            nodes = [await Node(c1).start(), await Node(c2).start()]
            assert "g2" in nodes[0].gossip.seeds and "g1" in nodes[1].gossip.seeds
            assert await _wait(lambda: nodes[0].gossip.liveness.state("g2") == UP
                               and nodes[1].gossip.liveness.state("g1") == UP)
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_a_round_derives_peers_and_addresses_again_only_when_the_roster_changes(tmp_path,
                                                                                 monkeypatch):
    import types

    from kvnet.membership import gossip as G
    from kvnet.membership import state as S
    cfg = _configs(tmp_path, nodes=3)[0]
    g = G.Gossip(types.SimpleNamespace(cfg=cfg, name="g0"))
    me = S.MemberState("g0", "127.0.0.1", 1, "127.0.0.1", 2, 5, 0, "valid", 1)
    others = [me._replace(node=f"g{i}", peer_port=10 + i) for i in (1, 2, 3)]
    g.table = S.MemberTable([me, *others])
    saves = []
    monkeypatch.setattr(G, "_save_peers", lambda d, known: saves.append(dict(known)))
    peers = g._sorted_peers()
    assert peers == ["g1", "g2", "g3"]
    g._keep_peers()
    assert len(saves) == 1 and saves[0]["g3"] == ("127.0.0.1", 13)
    for hb in range(1, 5):                      # rounds of heartbeats: nothing derived again
        g.rounds += 10
        g.table = S.apply(S.beat(g.table, "g0"), [others[0]._replace(heartbeat=hb)])
        assert g._sorted_peers() is peers
        g._keep_peers()
    assert len(saves) == 1
    g.table = S.set_status(g.table, "g3", "exiting", 2)         # g3 leaves
    assert g._sorted_peers() == ["g1", "g2"]
    g._keep_peers()
    assert len(saves) == 2 and "g3" not in saves[1]
    g.table = S.apply(g.table, [others[1]._replace(heartbeat=9, peer_port=99)])   # g2 moved
    g._keep_peers()
    g.rounds += G.SAVE_EVERY - 1                # written SAVE_EVERY rounds after the last
    g._keep_peers()
    assert len(saves) == 2
    g.rounds += 1
    g._keep_peers()
    assert len(saves) == 3 and saves[2]["g2"] == ("127.0.0.1", 99)
    g.table = S.apply(g.table, [others[1]._replace(heartbeat=10, peer_port=98)])
    g._keep_peers()
    assert len(saves) == 3
    asyncio.run(g.stop())                       # and at stop
    assert len(saves) == 4 and saves[3]["g2"] == ("127.0.0.1", 98)


def test_is_down_is_the_liveness_rules_down_state(tmp_path):
    """Routing asks is_down millions of times: it reads the DOWN set directly, and agrees with
    the liveness rule's state through a DOWN mark and the newer heartbeat that ends it."""
    import types

    from kvnet.membership import gossip as G
    g = G.Gossip(types.SimpleNamespace(cfg=_configs(tmp_path, nodes=3)[0], name="g0"))
    lv = g.liveness

    def agrees():
        return all(g.is_down(p) == (lv.state(p) == DOWN) for p in ("g1", "g2", "g9"))
    for t in range(10):
        lv.heartbeat("g1", t * 0.05, 1, t)
        lv.heartbeat("g2", t * 0.05, 1, t)
    assert agrees() and not g.is_down("g1") and not g.is_down("g9")
    lv.report("g2", ["g1"], 5.0)                 # a second source, and g1 silent for 5 s
    assert [t.peer for t in lv.update(5.0)] == ["g1"]
    assert agrees() and g.is_down("g1") and "g1" in g.down_peers
    lv.heartbeat("g1", 5.1, 1, 10)                # a newer heartbeat: up again
    assert agrees() and not g.is_down("g1")
