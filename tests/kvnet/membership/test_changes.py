"""Join, leave and remove on in-process nodes: plan, commit, transfers under writes, settle."""
import asyncio
import dataclasses

import pytest
import redis.asyncio as aredis

from kvcore import versions as V
from kvnet.config import load
from kvnet.errors import CommandError, Unavailable
from kvnet.membership import ringstate as RS
from kvnet.node import Node
from kvnet.testing import eventually, free_ports

FAST = dict(gossip_interval_ms=50, phi_threshold=8.0, hint_replay_interval_ms=100,
            ae_enabled=False)


def _configs(tmp_path, nodes=4, q=64):
    ports = free_ports(2 * nodes)
    members = [f"c{i}@127.0.0.1:{ports[nodes + i]}" for i in range(nodes)]
    out = []
    for i in range(nodes):
        joining = i == nodes - 1
        # the last node joins later, with the first as its seed
        ms = [members[0], members[i]] if joining else members[:nodes - 1]
        out.append(load(name=f"c{i}", port=ports[i], peer_port=ports[nodes + i], n=3, r=2, w=2,
                        ring_size=q, data_dir=str(tmp_path / f"c{i}"), members=ms, fsync="never",
                        request_timeout_ms=2000, join=joining, **FAST))
    return out


async def _wait(pred, timeout=20.0):
    return await eventually(pred, timeout)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def _stop_and_route_around(victim, others):
    """Stop a node; each of `others` dials it once (refused) and then routes around it."""
    await victim.stop()
    for n in others:
        try:
            await n.call(victim.name, "gping", {}, 0.5)
        except Exception:
            pass
    assert await _wait(lambda: not any(n.is_up(victim.name) for n in others))


def _settled(nodes, member, present=True):
    return all(n.ring_state is not None and not n.ring_state.moving
               and (member in n.ring.nodes) == present for n in nodes)


async def _writer(port, prefix, acked, stop):
    c = aredis.Redis(port=port)
    i = 0
    try:
        while not stop.is_set():
            k, v = f"{prefix}{i}", f"v{i}"
            try:
                await c.set(k, v)
                acked[k] = v.encode()
            except Exception:
                pass
            i += 1
            await asyncio.sleep(0.002)
    finally:
        await c.aclose()


@pytest.mark.slow
def test_join_under_writes_then_leave(tmp_path):
    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs[:3]]
        try:
            c0 = aredis.Redis(port=cfgs[0].port)
            for i in range(300):
                await c0.set(f"before{i}", f"b{i}")
            # The precondition of the checks below: every replica holds every key written before
            # the join. A SET is acknowledged at W=2, and a copy the third replica missed (the
            # first writes can go out before every peer connection is up) is repaired only by a
            # read or by anti-entropy, which is off here: read each key at R=ALL, which repairs.
            for i in range(300):
                assert (await c0.execute_command("KV.GET", f"before{i}", "R", "ALL"))[1] \
                    == [f"b{i}".encode()]

            def before_everywhere():
                ring = nodes[0].ring
                return all(n.replica.read(ring.partition_of(k), k) is not None
                           for k in (f"before{i}".encode() for i in range(300)) for n in nodes)
            assert await _wait(before_everywhere)
            from kvnet.client import AsyncClient
            routed = AsyncClient("127.0.0.1", cfgs[0].port, ring_ttl=0.1)
            assert (await routed.get(b"before1")).value == b"b1"
            assert "c3" not in routed._ring[1]
            joiner = await Node(cfgs[3]).start()           # takes the ring from its seed
            nodes.append(joiner)
            assert joiner.ring == nodes[0].ring
            assert await _wait(lambda: all(n.is_up("c3") and "c3" in n.gossip.table for n in nodes))
            ch = nodes[1].changes                           # any node: forwarded to the claimant
            assert ch.claimant() == "c0"
            staged = await ch.request("stage", {"op": "join", "node": "c3"})
            assert staged == {"c3": "join"}
            plan = await ch.request("plan")
            assert plan["moves"] and set(plan["moves"]) == {"c3"}
            assert plan["owned_after"] == {"c0": 16, "c1": 16, "c2": 16, "c3": 16}
            assert plan["bytes"] > 0
            import io

            from kvnet.cli import kvctl
            out = io.StringIO()
            rc = await asyncio.to_thread(kvctl.main, ["--port", str(cfgs[2].port), "plan"], out)
            moved = sorted({t[0] for t in plan["transfers"]})
            assert rc == 0 and f"partitions {', '.join(map(str, moved))}" in out.getvalue()
            assert "staged: join c3" in out.getvalue()
            acked, stop = {}, asyncio.Event()
            w = asyncio.ensure_future(_writer(cfgs[1].port, "during", acked, stop))
            await asyncio.sleep(0.2)
            res = await ch.request("commit")
            assert res["transfers"] == len(plan["transfers"])
            assert await _wait(lambda: _settled(nodes, "c3"))
            await asyncio.sleep(0.2)
            stop.set()
            await w
            assert len(acked) > 20
            # balanced, every replica in place, nothing lost, old copies dropped
            ring = nodes[0].ring
            assert sorted(ring.owners.count(n) for n in ring.nodes) == [16, 16, 16, 16]
            def dropped():                  # old copies go, in the background
                return all(set(n.replica.partitions) <= {p for p in range(ring.q)
                                                         if n.name in ring.preference_list(p)}
                           for n in nodes)
            assert await _wait(dropped)
            for i in range(300):
                k = f"before{i}".encode()
                p = ring.partition_of(k)
                for name in ring.preference_list(p):
                    node = nodes[int(name[1:])]
                    clock = node.replica.read(p, k)
                    assert clock is not None and V.lww_value(clock) == f"b{i}".encode(), (k, name)
            # partitions filled by a transfer never extend dots minted before here
            for i in range(300):
                p = ring.partition_of(f"before{i}".encode())
                if p in joiner.replica.partitions:
                    assert joiner.replica.partitions[p].trusted_from > 0
            c3 = aredis.Redis(port=cfgs[3].port)
            for k, v in acked.items():
                assert await c3.get(k) == v
            t = await ch.request("transfers")
            assert t["moving"] is False
            await asyncio.sleep(0.2)                       # the client's ring is stale: refetched
            assert (await routed.get(b"before2")).value == b"b2"
            assert "c3" in routed._ring[1]
            await routed.close()

            # now c3 leaves: it hands everything off and says it is out
            left = asyncio.Event()
            joiner.on_left = left.set
            await ch.request("stage", {"op": "leave", "node": "c3"})
            await ch.request("commit")
            assert await _wait(lambda: _settled(nodes[:3], "c3", present=False))
            assert await _wait(left.is_set)
            ring = nodes[0].ring
            assert sorted(ring.owners.count(n) for n in ring.nodes) in ([21, 21, 22], [21, 22, 21])
            for k, v in list(acked.items())[:50]:
                assert await c0.get(k) == v
            for i in range(0, 300, 7):
                assert await c0.get(f"before{i}") == f"b{i}".encode()
            await c3.aclose()
            await c0.aclose()
        finally:
            for n in nodes:
                await n.stop()

    run(main())


@pytest.mark.slow
def test_remove_a_dead_node_and_refusals(tmp_path):
    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs[:3]]
        nodes.append(await Node(cfgs[3]).start())
        try:
            ch = nodes[0].changes
            assert await _wait(lambda: all(n.is_up("c3") for n in nodes[:3]))
            with pytest.raises(CommandError, match="nothing staged"):
                await ch.request("commit")
            with pytest.raises(CommandError, match="already a member"):
                await ch.request("stage", {"op": "join", "node": "c1"})
            with pytest.raises(CommandError, match="remove is for dead nodes"):
                await ch.request("stage", {"op": "remove", "node": "c2"})
            await ch.request("stage", {"op": "join", "node": "c3"})
            await ch.request("commit")
            assert await _wait(lambda: _settled(nodes, "c3"))
            c = aredis.Redis(port=cfgs[0].port)
            for i in range(200):
                await c.set(f"k{i}", f"v{i}")
            await _stop_and_route_around(nodes[2], (nodes[0], nodes[1], nodes[3]))  # for good
            with pytest.raises(CommandError, match="use remove"):
                await ch.request("stage", {"op": "leave", "node": "c2"})
            await ch.request("stage", {"op": "remove", "node": "c2"})
            await ch.request("commit")
            live = [nodes[0], nodes[1], nodes[3]]
            assert await _wait(lambda: _settled(live, "c2", present=False))
            ring = nodes[0].ring
            for i in range(200):
                k = f"k{i}".encode()
                p = ring.partition_of(k)
                for name in ring.preference_list(p):          # N=3 replicas again
                    node = {n.name: n for n in live}[name]
                    assert node.replica.read(p, k) is not None, (k, name)
                assert await c.get(k) == f"v{i}".encode()
            await c.aclose()
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_ring_state_order_and_encoding():
    from kvcore.ring import Ring
    r = Ring.create(["a", "b", "c"], q=16, n=3)
    nxt = RS.plan_ring(r, join=["d"])
    s1 = RS.RingState(r)
    s2 = RS.RingState(r, nxt, 2, "a")
    assert s2.newer_than(s1) and not s1.newer_than(s2)
    assert RS.RingState(r, nxt, 2, "b").newer_than(s2)          # same epoch: claimant breaks it
    assert RS.decode(RS.encode(s2)) == s2
    xs = RS.transfers(r, nxt)
    assert xs and all(x.to == "d" and "d" not in x.sources for x in xs)
    assert {x.partition for x in xs} == {p for p in range(16) if "d" in nxt.preference_list(p)}
    for bad in (b"", b"\x81\xa3cur\x01", RS.encode(s2)[:-3]):
        with pytest.raises(ValueError):
            RS.decode(bad)
    with pytest.raises(ValueError):
        RS.plan_ring(r, leave=["zz"])


def test_a_joining_node_without_seeds_gives_up(tmp_path):
    async def main():
        ports = free_ports(4)
        cfg = load(name="lonely", port=ports[0], peer_port=ports[1], n=1, r=1, w=1,
                   data_dir=str(tmp_path / "lonely"), join=True, fsync="never",
                   members=[f"lonely@127.0.0.1:{ports[1]}", f"gone@127.0.0.1:{ports[3]}"],
                   gossip_interval_ms=50)
        with pytest.raises(OSError, match="no ring from the seeds"):
            await Node(cfg).start(ring_timeout=0.5)

    run(main())


def test_unavailable_claimant_refuses_commit_with_an_owner_down(tmp_path):
    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs[:3]]
        nodes.append(await Node(cfgs[3]).start())
        try:
            ch = nodes[0].changes
            assert await _wait(lambda: nodes[0].is_up("c3"))
            await ch.request("stage", {"op": "join", "node": "c3"})
            await _stop_and_route_around(nodes[1], nodes[:1])
            with pytest.raises(Unavailable, match="every owner up; down: c1"):
                await ch.request("commit")
            assert not nodes[0].ring_state.moving
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_kv_cluster_command_and_kvctl(tmp_path):
    import io

    from kvnet.cli import kvctl

    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs[:3]]
        try:
            c = aredis.Redis(port=cfgs[2].port, protocol=3)
            plan = await c.execute_command("KV.CLUSTER", "PLAN")
            assert plan[b"staged"] == {} and plan[b"transfers"] == []
            with pytest.raises(Exception, match="unknown KV.CLUSTER subcommand"):
                await c.execute_command("KV.CLUSTER", "BOGUS")
            with pytest.raises(Exception, match="not a member of the ring"):
                await c.execute_command("KV.CLUSTER", "LEAVE", "nobody")
            with pytest.raises(Exception, match="needs a node id"):
                await c.execute_command("KV.CLUSTER", "JOIN")
            await c.aclose()

            def cli(*argv):
                out = io.StringIO()
                rc = kvctl.main(["--port", str(cfgs[1].port), *argv], out=out)
                return rc, out.getvalue()

            rc, text = await asyncio.to_thread(cli, "plan")
            assert rc == 0 and "nothing staged" in text
            rc, text = await asyncio.to_thread(cli, "transfers")
            assert rc == 0 and "settled" in text
            rc, text = await asyncio.to_thread(cli, "commit")
            assert rc == 1
            rc, text = await asyncio.to_thread(cli, "status")
            assert rc == 0 and "c0" in text and "heartbeat age" in text and "valid" in text
        finally:
            for n in nodes:
                await n.stop()

    run(main())


@pytest.mark.slow
def test_transfers_copy_the_union_of_the_old_replicas(tmp_path):
    """With W=2 of N=3 one old replica may lack acknowledged writes: a new replica must get
    them from the others. Writes land while c2 is down (no fallbacks with 3 nodes); c3 joins;
    then c0 leaves. With anti-entropy off only c2's own old copies may lack keys (it missed
    them and nothing repaired it); every replica a transfer filled must hold every key."""
    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs[:3]]
        try:
            await _stop_and_route_around(nodes[2], nodes[:2])
            c = aredis.Redis(port=cfgs[0].port)
            keys = [f"u{i}".encode() for i in range(200)]
            for k in keys:
                await c.execute_command("KV.PUT", k, b"v", "W", "2", "STRICT")
            await c.aclose()
            nodes[2] = await Node(cfgs[2]).start()
            nodes.append(await Node(cfgs[3]).start())
            assert await _wait(lambda: all(n.is_up(x) for n in nodes for x in ("c0", "c1", "c2", "c3")))
            ch = nodes[1].changes
            await ch.request("stage", {"op": "join", "node": "c3"})
            await ch.request("commit")
            assert await _wait(lambda: _settled(nodes, "c3"))
            joined = nodes[1].ring
            await ch.request("stage", {"op": "leave", "node": "c0"})
            await ch.request("commit")
            live = nodes[1:]
            assert await _wait(lambda: _settled(live, "c0", present=False))
            ring = live[0].ring
            by_name = {n.name: n for n in live}
            short = []
            for k in keys:
                p = ring.partition_of(k)
                for x in ring.preference_list(p):
                    kept_own_copy = x == "c2" and "c2" in joined.preference_list(p)
                    if not kept_own_copy and by_name[x].replica.read(p, k) is None:
                        short.append((k, x))
            assert short == []
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_transfers_wait_while_an_old_replica_is_down(tmp_path):
    """Every old replica but a removed one is a source (the one that acknowledged a write may
    be any of them): while the claimant sees one down, no transfer runs and the ring stays
    moving; once it is back, the change settles."""
    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs]
        try:
            claimant = nodes[0]
            assert await _wait(lambda: claimant.is_up("c3"))
            real = claimant.is_up
            await claimant.changes.request("stage", {"op": "join", "node": "c3"})
            # the commit runs to its end without suspending: c2 is unseen from right after it
            await claimant.changes.request("commit")
            claimant.is_up = lambda n: n != "c2" and real(n)
            await asyncio.sleep(0.5)
            assert claimant.ring_state.moving
            assert not any(pr.get("state") == "done" for pr in claimant.changes.progress.values())
            claimant.is_up = real
            assert await _wait(lambda: _settled(nodes, "c3"))
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_a_replica_that_knows_of_the_move_forwards_writes_to_the_new_replica(tmp_path):
    """A coordinator that has not learned of a ring change sends a write to the old replicas
    only; one that knows forwards it to the replica being added (no transfer runs here)."""
    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs]
        try:
            c0, c1, c3 = nodes[0], nodes[1], nodes[3]
            assert await _wait(lambda: c0.is_up("c3") and c1.is_up("c3"))
            c0.changes.drive = lambda: None                        # no transfers at all
            ring = c0.ring
            state = RS.RingState(ring, RS.plan_ring(ring, join=["c3"]),
                                 c0.ring_state.epoch + 1, "c0")
            for n in nodes:
                n.offer_ring(state)
            p = next(p for p in range(ring.q) if "c3" in state.extra_targets(p))
            k = next(b"f%d" % i for i in range(100_000) if ring.partition_of(b"f%d" % i) == p)
            raw = V.encode(V.new(V.sibling(b"moved-along")))
            assert await c1.handlers("put", {"p": p, "k": k, "c": raw}) is True
            assert await _wait(lambda: c3.replica.opened(p) is not None
                               and c3.replica.read(p, k) is not None)
        finally:
            for n in nodes:
                await n.stop()

    run(main())


# ---- SCAN across a ring change (kvnet/coordinator/scan.py) -------------------------------------

def _scan_configs(tmp_path, q=64):
    """Four nodes of N=2 (so a coordinator asks other nodes), the last joining later."""
    return [dataclasses.replace(c, n=2, r=1, w=2) for c in _configs(tmp_path, q=q)]


def _record_scan_requests(nodes):
    """[(coordinator, asked node, partitions)] of every mscan request the nodes send."""
    sent = []
    for n in nodes:
        real = n.call_future

        def call_future(peer, type_, payload, timeout, real=real, me=n.name):
            if type_ == "mscan":
                sent.append((me, peer, list(payload["ps"])))
            return real(peer, type_, payload, timeout)

        n.call_future = call_future
    return sent


async def _scan_calls(node, cursor, count, calls):
    """Up to `calls` SCAN calls from cursor on node: (cursor, keys)."""
    keys = []
    for _ in range(calls):
        cursor, got = await node.front.scan(cursor, None, count)
        keys += got
        if cursor == 0:
            break
    return cursor, keys


def test_scan_while_partitions_move_and_after_the_ring_settles(tmp_path):
    """A join committed with its transfers held back: the ring is moving and the joiner has
    none of its new partitions yet. A SCAN from every node, the joiner too, returns every key
    and never asks the joiner (a replica still receiving). Then the transfers run and the ring
    settles (old copies dropped) in the middle of scans: their cursors go on, on other nodes,
    and every key comes back."""
    async def main():
        cfgs = _scan_configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs]
        try:
            c0 = nodes[0]
            assert await _wait(lambda: all(n.is_up(x) for n in nodes for x in ("c0", "c1", "c2", "c3")))
            c = aredis.Redis(port=cfgs[1].port)
            keys = {b"s%d" % i for i in range(300)}
            await c.mset({k: b"v" for k in keys})                 # W=2 of N=2: on both replicas
            await c.aclose()
            sent = _record_scan_requests(nodes)
            await c0.changes.request("stage", {"op": "join", "node": "c3"})
            c0.changes.drive = lambda: None                        # transfers held back
            await c0.changes.request("commit")
            assert await _wait(lambda: all(n.ring_state.moving for n in nodes))
            state = c0.ring_state
            assert any("c3" in state.extra_targets(p) for p in range(state.current.q))
            for n in nodes:
                for count in (1, 7, 1000):
                    cursor, got = await _scan_calls(n, 0, count, 10_000)
                    assert cursor == 0 and sorted(got) == sorted(keys), (n.name, count)
            assert sent and all(peer in state.current.preference_list(p)
                                for _, peer, ps in sent for p in ps)
            assert not any(peer == "c3" for _, peer, _ in sent)

            # scans under way when the transfers run and the ring settles
            scans = [(n, *await _scan_calls(n, 0, 5, 8)) for n in nodes]
            del c0.changes.drive                                   # the class's again
            assert await _wait(lambda: _settled(nodes, "c3"))
            ring = c0.ring
            assert await _wait(lambda: all(set(n.replica.partitions) <= {
                p for p in range(ring.q) if n.name in ring.preference_list(p)} for n in nodes))
            del sent[:]
            for i, (n, cursor, got) in enumerate(scans):
                assert cursor != 0
                other = nodes[(i + 1) % len(nodes)]
                cursor, rest = await _scan_calls(other, cursor, 5, 10_000)
                assert cursor == 0 and keys <= set(got + rest) <= keys, n.name
            assert any(peer == "c3" for _, peer, _ in sent)         # now a replica like any other
        finally:
            for n in nodes:
                await n.stop()

    run(main())


@pytest.mark.slow
def test_scan_iterated_through_redis_py_while_a_node_joins(tmp_path):
    """SCAN iterated call by call through redis-py, each call on another node (the joiner's
    too), while a join moves partitions and settles, with writes and deletes of other keys
    going on: every key present for the whole scan is returned."""
    async def main():
        cfgs = _scan_configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs[:3]]
        clients = []
        try:
            c0 = nodes[0]
            keys = {b"k%d" % i for i in range(400)}
            clients = [aredis.Redis(port=c.port) for c in cfgs]
            await clients[0].mset({k: b"v" for k in keys})
            nodes.append(await Node(cfgs[3]).start())
            assert await _wait(lambda: all(n.is_up("c3") and "c3" in n.gossip.table for n in nodes))
            acked, stop = {}, asyncio.Event()
            churn = asyncio.ensure_future(_writer(cfgs[2].port, "churn", acked, stop))
            await c0.changes.request("stage", {"op": "join", "node": "c3"})
            seen, cursor, calls, epochs, retries = [], 0, 0, set(), 0
            while True:
                if calls == 10:
                    await c0.changes.request("commit")
                client = clients[calls % 4]
                try:
                    cursor, got = await client.scan(cursor, count=2)
                except Exception:                    # a client retries the same cursor
                    retries += 1
                    assert retries <= 5
                    await asyncio.sleep(0.05)
                    continue
                seen += got
                calls += 1
                epochs.add((c0.ring_state.epoch, c0.ring_state.moving))
                if cursor == 0:
                    break
                await asyncio.sleep(0.01)
            stop.set()
            await churn
            assert keys <= set(seen)
            assert all(k in keys or k.startswith(b"churn") for k in seen)   # (a failed SET may land)
            assert len(epochs) >= 2 and calls >= 100, (epochs, calls)
            assert await _wait(lambda: _settled(nodes, "c3"))
        finally:
            for c in clients:
                await c.aclose()
            for n in nodes:
                await n.stop()

    run(main())


def test_plan_ring_takes_zones_and_old_zoneless_states_load():
    from kvcore.ring import Ring
    names = [f"n{i}" for i in range(6)]
    old = Ring.create(names, q=64, n=3)                 # what a version without zones kept
    state = RS.decode(RS.encode(RS.RingState(old, None, 5, "n0")))
    assert dict(state.current.members) == {x: None for x in names}
    zones = {x: f"z{i % 3}" for i, x in enumerate(names)}
    zoned = RS.plan_ring(state.current, zones=zones)
    assert dict(zoned.members) == zones
    assert RS.zones_differ(state.current, zones) == zones and RS.zones_differ(zoned, zones) == {}
    for p in range(64):
        assert {zones[x] for x in zoned.preference_list(p)} == {"z0", "z1", "z2"}
    bigger = RS.plan_ring(zoned, join=["n6"], zones={**zones, "n6": "z3"})
    assert dict(bigger.members)["n6"] == "z3"
    assert RS.plan_ring(zoned, zones={"stranger": "z9"}) == zoned       # non-members: ignored
    with pytest.raises(ValueError):
        RS.plan_ring(zoned, zones={"n0": "z" * 300})                   # a clear error, not a crash


def test_the_claimant_takes_the_zones_members_announce(tmp_path):
    """A new cluster's first ring has names only; once gossip has every member's zone the
    claimant commits a ring change that sets them, and a joiner's zone comes with its join."""
    async def main():
        cfgs = [dataclasses.replace(c, zone=f"zone-{i}") for i, c in enumerate(_configs(tmp_path))]
        nodes = [await Node(c).start() for c in cfgs[:3]]
        try:
            want = {f"c{i}": f"zone-{i}" for i in range(3)}
            assert await _wait(lambda: all(
                n.ring_state is not None and not n.ring_state.moving
                and dict(n.ring.members) == want for n in nodes))
            epoch = nodes[0].ring_state.epoch
            assert epoch >= 3                                   # committed (moving), settled
            nodes.append(await Node(cfgs[3]).start())
            assert await _wait(lambda: all(n.is_up("c3") for n in nodes[:3]))
            await nodes[0].changes.request("stage", {"op": "join", "node": "c3"})
            await nodes[0].changes.request("commit")
            want["c3"] = "zone-3"
            assert await _wait(lambda: all(
                n.ring_state is not None and not n.ring_state.moving
                and dict(n.ring.members) == want for n in nodes))
            # a member restarted with another zone: the claimant takes it in the same way
            await nodes[2].stop()
            nodes[2] = await Node(dataclasses.replace(cfgs[2], zone="zone-9")).start()
            want["c2"] = "zone-9"
            assert await _wait(lambda: all(
                n.ring_state is not None and not n.ring_state.moving
                and dict(n.ring.members) == want for n in nodes), 30)
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_the_claimant_is_the_lowest_member_up_found_without_asking_about_the_rest():
    """Every node asks who the claimant is every interval: the ring's members are sorted, so
    the first one up is the answer, and the members after it are not looked at."""
    from types import SimpleNamespace

    from kvcore.ring import Ring
    from kvnet.membership.changes import ClusterChanges
    names = [f"n{i:02d}" for i in range(40)]
    down, asked = {"n00", "n01"}, []

    def is_up(n):
        asked.append(n)
        return n not in down
    node = SimpleNamespace(ring=Ring.create(list(reversed(names)), q=64, n=3), is_up=is_up,
                           cfg=SimpleNamespace(gossip_interval_ms=1000))
    changes = ClusterChanges(node)
    assert changes.claimant() == "n02"
    assert asked == ["n00", "n01", "n02"]
    down.update(names)
    with pytest.raises(Unavailable):
        changes.claimant()


# ---- zone relayout (KV.CLUSTER RELAYOUT; docs/algorithms.md, section 3) ----------------------

def _zone_spread(ring):
    """Partitions whose n consecutive owners (the preference list when the layout is zone
    spaced) span fewer than min(n, zones) zones."""
    zones = dict(ring.members)
    want = min(ring.n, len({zones[x] for x in set(ring.owners)}))
    owners = ring.owners + ring.owners
    return [p for p in range(ring.q) if len({zones[x] for x in owners[p:p + ring.n]}) < want]


def _worn_ring():
    """6 nodes in 3 zones, then joins and leaves (one per zone each time, so the zones stay
    equal and ask for spacing) until the minimal-move claim has worn the spacing off."""
    from kvcore.ring import Ring
    ring = Ring.create([(f"n{i}", f"z{i % 3}") for i in range(6)], q=64, n=3)
    assert RS.zone_problems(ring) == []
    for op in (("join", "n6", "z0"), ("join", "n7", "z1"), ("join", "n8", "z2")):
        ring = ring.with_node(op[1:])
    return ring


def test_relayout_restores_zone_spread_after_joins_and_leaves():
    ring = _worn_ring()
    assert RS.zone_problems(ring), "the joins kept the zone spacing: no test"
    worn = _zone_spread(ring)
    fixed = RS.relayout(ring)
    assert RS.zone_problems(fixed) == []
    assert dict(fixed.members) == dict(ring.members) and fixed.epoch == ring.epoch + 1
    # with Z = N = 3 and N not dividing Q, only the N - 1 windows at the wrap may repeat a zone
    assert set(_zone_spread(fixed)) <= {ring.q - 2, ring.q - 1} and len(worn) > 2
    for p in range(ring.q - 2):               # preference lists: N consecutive owners, N zones
        assert list(fixed.preference_list(p)) == [fixed.owners[(p + d) % 64] for d in range(3)]
        assert len({dict(fixed.members)[x] for x in fixed.preference_list(p)}) == 3
    counts = [fixed.owners.count(x) for x in fixed.nodes]
    assert max(counts) - min(counts) <= 1                  # balanced still
    moved = sum(a != b for a, b in zip(ring.owners, fixed.owners))
    assert 0 < moved < ring.q                              # not a fresh layout of everything
    # then leaves: worn again, and a relayout fixes them again
    ring = fixed.without_node("n0").without_node("n4").without_node("n8")
    if RS.zone_problems(ring):
        assert RS.zone_problems(RS.relayout(ring)) == []


def test_relayout_refuses_when_there_is_nothing_to_do():
    from kvcore.ring import Ring
    with pytest.raises(ValueError, match="no member of the ring has a zone"):
        RS.relayout(Ring.create([f"n{i}" for i in range(6)], q=64, n=3))
    with pytest.raises(ValueError, match="already spans N zones"):
        RS.relayout(Ring.create([(f"n{i}", f"z{i % 3}") for i in range(6)], q=64, n=3))
    with pytest.raises(ValueError, match="too few zones, or too unequal"):
        RS.relayout(Ring.create([(f"n{i}", "z0" if i < 4 else "z1") for i in range(6)],
                                q=64, n=3))


class _StubNode:
    """What ClusterChanges reads of a node, for staging, plan and commit on the claimant."""

    def __init__(self, ring):
        from types import SimpleNamespace
        self.name = min(ring.nodes)
        self.ring_state = RS.RingState(ring, None, 7, self.name)
        self.cfg = SimpleNamespace(gossip_interval_ms=100)
        self.gossip = SimpleNamespace(table={})
        self.replica = SimpleNamespace(partitions={})
        self.timeout = 1.0
        self.offered = []

    @property
    def ring(self):
        return self.ring_state.current

    def is_up(self, who):
        return True

    async def call(self, *a):
        raise Unavailable("no peers in this test")

    def offer_ring(self, state):
        self.offered.append(state)


def test_relayout_is_staged_planned_and_committed_like_other_changes():
    from kvnet.membership.changes import ClusterChanges

    async def main():
        node = _StubNode(_worn_ring())
        ch = ClusterChanges(node)
        assert await ch.request("stage", {"op": "relayout", "node": ""}) == {}
        assert ch.relayout
        plan = await ch.request("plan")
        assert plan["relayout"] is True and plan["zone_problems"] == [] and plan["transfers"]
        assert await ch.request("stage", {"op": "relayout", "node": "cancel"}) == {}
        assert (await ch.request("plan"))["transfers"] == []
        with pytest.raises(CommandError, match="nothing staged"):
            await ch.request("commit")
        await ch.request("stage", {"op": "relayout", "node": ""})
        got = await ch.request("commit")
        assert got["epoch"] == 8 and got["transfers"] == len(plan["transfers"])
        (new,) = node.offered
        assert new.moving and RS.zone_problems(new.next) == [] and not ch.relayout
        # a ring already spread by zone: refused at once, with the reason
        node.ring_state = RS.RingState(new.next, None, 9, node.name)
        with pytest.raises(CommandError, match="relayout: every preference list already"):
            await ch.request("stage", {"op": "relayout", "node": ""})

    run(main())
