"""Sloppy quorum and hinted handoff on 5 in-process nodes (N=3): fallbacks stand in for a
stopped primary, keep hints, and hand them back when it returns; STRICT refuses instead."""
import asyncio

import pytest
import redis.asyncio as aredis

from kvnet.config import load
from kvnet.node import Node
from kvnet.testing import eventually, free_ports

# Nodes share one event loop here, and stopping one blocks it for its fsyncs: a threshold
# of 8 (about a second of silence at 50 ms rounds) keeps live nodes from suspecting each other.
FAST = dict(gossip_interval_ms=50, phi_threshold=8.0, hint_replay_interval_ms=100)


def _configs(tmp_path, nodes=5, **kw):
    ports = free_ports(2 * nodes)
    members = [f"s{i}@127.0.0.1:{ports[nodes + i]}" for i in range(nodes)]
    kw = {"fsync": "never", **FAST, **kw}
    return [load(name=f"s{i}", port=ports[i], peer_port=ports[nodes + i], n=3, r=2, w=2,
                 data_dir=str(tmp_path / f"s{i}"), members=members,
                 request_timeout_ms=2000, **kw) for i in range(nodes)]


async def _wait(pred, timeout=15.0):
    return await eventually(pred, timeout)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


def _keys_with_primary(node, name, count):
    """`count` keys whose preference list holds `name`."""
    out, i = [], 0
    while len(out) < count:
        k = b"key-%d" % i
        if name in node.ring.preference_list(node.ring.partition_of(k)):
            out.append(k)
        i += 1
    return out


async def _stopped(nodes, i):
    """Stop node i and wait until every other node routes around it."""
    await nodes[i].stop()
    name = nodes[i].name
    live = [n for j, n in enumerate(nodes) if j != i]
    for n in live:                      # a dial to it fails at once; then it is routed around
        try:
            await n.call(name, "gping", {}, 0.5)
        except Exception:
            pass
    assert await _wait(lambda: not any(n.is_up(name) for n in live))
    others = {n.name for n in live}
    assert await _wait(lambda: all(n.is_up(x) for n in live for x in others))
    return live


def test_fallbacks_take_writes_and_hand_them_back(tmp_path):
    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs]
        victim = 2
        name = nodes[victim].name
        client = aredis.Redis(port=cfgs[0].port)
        try:
            keys = _keys_with_primary(nodes[0], name, 40)
            live = await _stopped(nodes, victim)
            for k in keys:                                     # W=ALL: needs a fallback
                await client.execute_command("KV.PUT", k, b"v-" + k, "W", "ALL")
            held = sum(n.hints.pending(name) for n in live)
            assert held == len(keys)                           # one hint per key, somewhere
            for k in keys:                                     # R=ALL: the fallback answers
                ctx, vals = await client.execute_command("KV.GET", k, "R", "ALL")
                assert vals == [b"v-" + k]
            # the primary comes back: every hint is delivered, then deleted
            nodes[victim] = await Node(cfgs[victim]).start()
            assert await _wait(lambda: sum(n.hints.pending(name) for n in live) == 0)
            back = nodes[victim]
            for k in keys:
                p = back.ring.partition_of(k)
                clock = back.replica.read(p, k)
                assert clock is not None and [s.value for s in _values(clock)] == [b"v-" + k]
            assert sum(n.handoff.stats["replayed"] for n in live) == len(keys)
            assert back.handoff.stats["received"] == len(keys)
        finally:
            await client.aclose()
            for n in nodes:
                await n.stop()

    run(main())


def _values(clock):
    from kvcore import versions as V
    return V.values(clock)


def test_strict_refuses_what_sloppy_accepts(tmp_path):
    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs]
        client = aredis.Redis(port=cfgs[0].port)
        try:
            k = _keys_with_primary(nodes[0], "s3", 1)[0]
            await _stopped(nodes, 3)
            with pytest.raises(Exception) as info:
                await client.execute_command("KV.PUT", k, b"x", "W", "ALL", "STRICT")
            assert "strict" in str(info.value).lower() or "primar" in str(info.value).lower()
            await client.execute_command("KV.PUT", k, b"x", "W", "ALL")
            with pytest.raises(Exception):
                await client.execute_command("KV.GET", k, "R", "ALL", "STRICT")
            _, vals = await client.execute_command("KV.GET", k, "R", "ALL")
            assert vals == [b"x"]
        finally:
            await client.aclose()
            for n in nodes:
                await n.stop()

    run(main())


def test_every_primary_down_a_fallback_coordinates(tmp_path):
    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs]
        try:
            # a key none of whose primaries is s0 or s1: stop its three primaries
            k = next(b"k%d" % i for i in range(10_000)
                     if not {"s0", "s1"} & set(nodes[0].ring.preference_list(
                         nodes[0].ring.partition_of(b"k%d" % i))))
            prefs = nodes[0].ring.preference_list(nodes[0].ring.partition_of(k))
            idx = [int(n[1:]) for n in prefs]
            live = [nodes[0], nodes[1]]
            # the failure detector marks down only a peer it has heard from: a primary
            # stopped before its first heartbeat reached a live node would stay up there
            assert await _wait(lambda: all(n.gossip.detector.version(x) is not None
                                           for n in live for x in prefs))
            for i in idx:
                await nodes[i].stop()
            for n in live:
                for name in prefs:
                    try:
                        await n.call(name, "gping", {}, 0.5)
                    except Exception:
                        pass
            assert await _wait(lambda: not any(n.is_up(x) for n in live for x in prefs))
            client = aredis.Redis(port=cfgs[0].port)
            try:
                await client.set(k, b"only-in-hints")                    # W=2: two fallbacks
                assert await client.get(k) == b"only-in-hints"
            finally:
                await client.aclose()
            assert sum(n.hints.pending(prefs[0]) for n in live) >= 1
            for i in idx:
                nodes[i] = await Node(cfgs[i]).start()
            owner = nodes[idx[0]]
            assert await _wait(lambda: owner.replica.read(owner.ring.partition_of(k), k) is not None)
            client = aredis.Redis(port=cfgs[idx[0]].port)
            try:
                assert await client.get(k) == b"only-in-hints"
            finally:
                await client.aclose()
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_bad_hint_requests_are_refused(tmp_path):
    async def main():
        cfgs = _configs(tmp_path, nodes=3)
        nodes = [await Node(c).start() for c in cfgs]
        try:
            n0 = nodes[0]
            k = b"some-key"
            p = n0.ring.partition_of(k)
            from kvcore import versions as V
            raw = V.encode(V.new(V.sibling(b"x")))
            for payload in [{"p": p, "k": k, "c": raw, "h": "s0"},            # itself
                            {"p": p, "k": k, "c": raw, "h": "nobody"},
                            {"p": p, "k": k, "c": b"junk", "h": "s1"},
                            {"p": p + 1, "k": k, "c": raw, "h": "s1"}]:
                with pytest.raises(Exception):
                    await n0.handlers("hput", payload)
            assert n0.hints.targets() == []
            reply = await n0.handlers("hreplay", {"items": [[p, k, b"junk"], [p, b"", raw], 7]})
            assert reply == [False, False, False]
            with pytest.raises(Exception):
                await n0.handlers("hreplay", {"items": "nope"})
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_flush_refused_while_hints_pending_and_stray_hints_rehomed(tmp_path):
    from kvcore import versions as V

    async def main():
        cfgs = _configs(tmp_path, hint_replay_interval_ms=3_600_000)    # replay only by hand
        nodes = [await Node(c).start() for c in cfgs]
        client = aredis.Redis(port=cfgs[0].port)
        try:
            n0, ring = nodes[0], nodes[0].ring
            # FLUSHDB first checks that every member is up: a dial to a node not started yet
            # counts as down until gossip connects again
            all_up = lambda: all(n0.is_up(m) for m in ring.nodes)       # noqa: E731
            assert await _wait(all_up)
            k = _keys_with_primary(n0, "s1", 1)[0]
            p = ring.partition_of(k)
            n0.hints.add("s1", p, k, V.encode(V.new(V.sibling(b"hinted"))))
            with pytest.raises(Exception, match="hints are pending"):
                await client.flushdb()
            await n0.handoff.replay_all()
            assert n0.hints.pending("s1") == 0
            assert nodes[1].replica.read(p, k) is not None
            # a hint for a partition its target does not replicate goes to a current replica
            stray = next(b"x%d" % i for i in range(10_000)
                         if "s1" not in ring.preference_list(ring.partition_of(b"x%d" % i)))
            sp = ring.partition_of(stray)
            n0.hints.add("s1", sp, stray, V.encode(V.new(V.sibling(b"moved"))))
            await n0.handoff.replay_all()
            assert n0.hints.pending("s1") == 0 and n0.handoff.stats["rehomed"] == 1
            prefs = ring.preference_list(sp)
            if "s0" in prefs:
                assert V.lww_value(n0.replica.read(sp, stray)) == b"moved"
            else:
                assert n0.hints.get(prefs[0], sp, stray) is not None
            await n0.handoff.replay_all()
            assert await _wait(all_up)
            assert await client.flushdb() is True
        finally:
            await client.aclose()
            for n in nodes:
                await n.stop()

    run(main())


def test_hints_survive_a_restart_of_the_fallback(tmp_path):
    async def main():
        cfgs = _configs(tmp_path, fsync="interval", sync_interval_ms=50)
        nodes = [await Node(c).start() for c in cfgs]
        victim, name = 2, "s2"
        client = aredis.Redis(port=cfgs[0].port)
        try:
            keys = _keys_with_primary(nodes[0], name, 30)
            await _stopped(nodes, victim)
            for k in keys:
                await client.execute_command("KV.PUT", k, b"v-" + k, "W", "ALL")
            holders = [i for i, n in enumerate(nodes) if i != victim and n.hints.pending(name)]
            assert holders
            held = {i: nodes[i].hints.pending(name) for i in holders}
            for i in holders:                          # every fallback holding hints restarts
                await nodes[i].stop()
                nodes[i] = await Node(cfgs[i]).start()
                assert nodes[i].hints.pending(name) == held[i]
            nodes[victim] = await Node(cfgs[victim]).start()
            assert await _wait(lambda: all(nodes[i].hints.pending(name) == 0 for i in holders))
            back = nodes[victim]
            for k in keys:
                clock = back.replica.read(back.ring.partition_of(k), k)
                assert clock is not None and [s.value for s in _values(clock)] == [b"v-" + k]
        finally:
            await client.aclose()
            for n in nodes:
                await n.stop()

    run(main())
