"""The anti-entropy service between in-process Nodes: scheduler, peer messages, repairs."""
import asyncio
import os
import random

import msgpack
import pytest

from kvcore import versions as V
from kvnet.antientropy.service import AntiEntropy
from kvnet.config import load
from kvnet.errors import CommandError, ProtocolError
from kvnet.node import Node
from kvnet.peer.errors import RemoteError
from kvnet.testing import free_ports


def put(node, key, value, overwrite=True):
    """A write minted on one node's replica only (no replication): a divergence."""
    return node.replica.mint(node.ring.partition_of(key), key, V.sibling(value, 1),
                             overwrite=overwrite)


def converged(c, expected, nodes=None):
    nodes = range(len(c.nodes)) if nodes is None else nodes
    return all(c.raw(i, k) == want for k, want in expected.items() for i in nodes)


def expected_of(c, keys):
    """Key -> encoded sync of every node's clock of it (what anti-entropy must reach)."""
    out = {}
    for k in keys:
        clocks = [V.decode(r) for r in (c.raw(i, k) for i in range(len(c.nodes))) if r is not None]
        out[k] = V.encode(V.sync_all(clocks))
    return out


def roots(node, q):
    return [None if node.replica.opened(p) is None else node.replica.opened(p).tree.root()
            for p in range(q)]


def test_scheduler_repairs_diverged_replicas(ae):
    async def main():
        c = await ae.make(ae_interval_ms=20)
        try:
            n0, n1, n2 = c.nodes
            keys = []
            for i in range(150):
                put(n0, b"a%d" % i, b"only-n0")
                put(n1, b"b%d" % i, b"only-n1")
                keys += [b"a%d" % i, b"b%d" % i]
            for i in range(30):
                k = b"c%d" % i                          # concurrent: siblings after repair
                put(n0, k, b"x")
                put(n2, k, b"z")
                k2 = b"d%d" % i                         # stale on n2
                old = put(n1, k2, b"old")
                n2.replica.merge(n2.ring.partition_of(k2), k2, old)
                put(n1, k2, b"new")
                keys += [k, k2]
            want = expected_of(c, keys)
            assert not converged(c, want)
            assert await ae.wait_for(lambda: converged(c, want), timeout=15)
            for i in range(30):
                vals = sorted(s.value for s in V.values(V.decode(c.raw(1, b"c%d" % i))))
                assert vals == [b"x", b"z"]
                assert V.lww_value(V.decode(c.raw(2, b"d%d" % i))) == b"new"
            assert await ae.wait_for(lambda: roots(n0, 8) == roots(n1, 8) == roots(n2, 8))
            for s in c.svc:
                st = s.stats
                assert st["exchanges"] > 0 and st["bytes_sent"] > 0 and st["bytes_received"] > 0
                assert st["last_duration_s"] is not None
            assert sum(s.stats["keys_repaired_here"] for s in c.svc) > 0
            assert sum(s.stats["keys_repaired_there"] for s in c.svc) > 0
        finally:
            await c.stop()

    ae.run(main())


def test_wiped_replica_gets_every_key_back(ae):
    async def main():
        c = await ae.make(ae_interval_ms=30)
        try:
            n0 = c.nodes[0]
            keys = [b"key:%d" % i for i in range(600)]
            for k in keys:
                await n0.front.set_overwrite(k, b"v-" + k)
            for k in keys[:60]:
                await n0.front.delete_overwrite(k)             # tombstones come back as tombstones
            want = {k: c.raw(0, k) for k in keys}
            assert await ae.wait_for(lambda: converged(c, want), timeout=15)
            old_incarnation = c.nodes[2].replica.identity.incarnation
            await c.restart(2, wipe=True)
            assert c.nodes[2].replica.identity.incarnation != old_incarnation
            assert sum(c.raw(2, k) is not None for k in keys) < len(keys)
            assert await ae.wait_for(lambda: converged(c, want), timeout=15)
            assert all(V.is_deleted(V.decode(c.raw(2, k))) for k in keys[:60])
            assert all(V.lww_value(V.decode(c.raw(2, k))) == b"v-" + k for k in keys[60:])
        finally:
            await c.stop()

    ae.run(main())


def test_exchange_messages_are_bounded_and_counted(ae):
    async def main():
        c = await ae.make(size=2, n=2, q=4, ae_enabled=False,
                          svc_opts=dict(max_keys=7, max_bytes=3000))
        n0, n1 = c.nodes
        sizes = []
        real_call = n0.call

        async def call(peer, type_, payload, timeout):
            reply = await real_call(peer, type_, payload, timeout)
            if not type_.startswith("ae_"):
                return reply                    # gossip and the like share n0.call
            sizes.append((type_, len(msgpack.packb(payload)), len(msgpack.packb(reply)),
                          len(payload.get("entries", ())) if type(payload) is dict else 0))
            return reply

        n0.call = call
        try:
            keys = []
            for i in range(400):
                put(n0, b"x%d" % i, b"x" * 40)
                keys.append(b"x%d" % i)
            for i in range(300):
                put(n1, b"y%d" % i, b"y" * 40)
                keys.append(b"y%d" % i)
            for i in range(50):
                put(n1, b"x%d" % i, b"n1-too")          # concurrent with n0's value
            want = expected_of(c, keys)
            runs = [await c.svc[0].exchange(p, "n1") for p in range(4)]
            assert converged(c, want)
            assert sum(r["repaired_here"] for r in runs) == 300 + 50
            assert sum(r["repaired_there"] for r in runs) == 400
            assert all(not r["equal"] and r["segments"] > 0 for r in runs)
            types = {t for t, *_ in sizes}
            assert {"ae_root", "ae_diff", "ae_keys", "ae_repair", "ae_done"} <= types
            assert max(n for t, _, _, n in sizes if t == "ae_repair") <= 7
            assert max(max(a, b) for _, a, b, _ in sizes) <= 3000 + 400
            st = c.svc[0].stats
            assert st["exchanges"] == 4 and st["keys_repaired_here"] == 350
            assert st["bytes_sent"] == sum(a for _, a, _, _ in sizes)
            assert st["bytes_received"] == sum(b for _, _, b, _ in sizes)
            sizes.clear()
            again = [await c.svc[0].exchange(p, "n1") for p in range(4)]
            assert all(r["equal"] for r in again)
            assert [t for t, *_ in sizes] == ["ae_root"] * 4
            assert roots(n0, 4) == roots(n1, 4)
        finally:
            await c.stop()

    ae.run(main())


def test_handlers_refuse_partitions_not_held_as_primary(ae):
    async def main():
        c = await ae.make(size=4, n=2, q=8, ae_enabled=False)
        n0, n3 = c.nodes[0], c.nodes[3]
        try:
            p = next(p for p in range(8) if "n3" not in n3.ring.preference_list(p))
            k = next(b"k%d" % i for i in range(10_000) if n3.ring.partition_of(b"k%d" % i) == p)
            raw = V.encode(V.new(V.sibling(b"v", 1)))
            for type_, payload in [
                    ("ae_root", {"p": p, "w": 128, "d": 2}),
                    ("ae_diff", {"p": p, "sid": 1, "level": 0, "nodes": [0], "hashes": bytes(1024)}),
                    ("ae_keys", {"p": p, "sid": 1, "segments": [[0, []]]}),
                    ("ae_repair", {"p": p, "entries": [[k, raw]]}),
                    ("ae_clocks", {"p": p, "keys": [k]}),
                    ("ae_mark", {"p": p, "entries": [[k, raw]]}),
                    ("ae_cad", {"p": p, "entries": [[k, raw]]}),
                    ("ae_root", {"p": 8, "w": 128, "d": 2}),
                    ("ae_repair", {"p": -1, "entries": []})]:
                with pytest.raises(RemoteError, match="not a primary|not on the ring|from 0 to"):
                    await n0.call("n3", type_, payload, 2)
            assert n3.replica.opened(p) is None
            assert not os.path.exists(os.path.join(n3.cfg.data_dir, "partitions", f"{p:05d}"))
            assert await n0.call("n3", "ae_hints", {"p": p, "keys": [k]}, 2) == []
            with pytest.raises(ValueError):
                await c.svc[0].exchange(p, "n3")
        finally:
            await c.stop()

    ae.run(main())


BAD = [None, 0, "x", b"x", [], {}, {"p": None}, {"p": "0"}, {"p": True}, {"p": 1 << 63},
       {"p": 0}, {"p": 0, "keys": "k"}, {"p": 0, "keys": [1]}, {"p": 0, "keys": [b""]},
       {"p": 0, "entries": [[b"k"]]}, {"p": 0, "entries": [[b"k", b"\x00junk"]]},
       {"p": 0, "entries": [[b"k", 5]]}, {"p": 0, "entries": "e"},
       {"p": 0, "w": 128, "d": 3}, {"p": 0, "w": "128", "d": 2},
       {"p": 0, "sid": 1, "level": 5, "nodes": [0], "hashes": bytes(1024)},
       {"p": 0, "sid": 1, "level": 0, "nodes": [0], "hashes": bytes(1000)},
       {"p": 0, "sid": 1, "level": 0, "nodes": [1], "hashes": bytes(1024)},
       {"p": 0, "sid": 1, "level": 1, "nodes": [0, 0, 500], "hashes": bytes(3072)},
       {"p": 0, "sid": -1, "segments": []}, {"p": 0, "sid": 1, "segments": [[1 << 20, []]]},
       {"p": 0, "sid": 1, "segments": [[0, [[b"k", -1]]]]},
       {"p": 0, "sid": 1, "segments": [[0, [[b"k", 1, 2]]]]},
       {"p": 0, "sid": 1, "segments": [[0]]}, {"p": 0, "sid": 1, "segments": [[0, [[1, 1]]]]}]


def _junk(rng, depth=0):
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, -1, 0, 1 << 63, 3.5])
    if kind == 1:
        return rng.randbytes(rng.randrange(20))
    if kind == 2:
        return rng.choice(["p", "sid", "level", "nodes", "hashes", "entries", "keys", "segments"])
    if kind in (3, 4):
        return rng.randrange(-2, 20)
    if kind == 5:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    fields = ["p", "sid", "level", "nodes", "hashes", "entries", "keys", "segments", "w", "d"]
    out = {f: _junk(rng, depth + 1) for f in rng.sample(fields, rng.randrange(len(fields)))}
    if rng.random() < 0.7:
        out["p"] = rng.randrange(8)
    return out


def test_bad_payloads_get_errors_never_a_crash(ae):
    async def main():
        c = await ae.make(size=2, n=2, q=8, ae_enabled=False)
        n0, n1 = c.nodes
        try:
            for i in range(200):
                put(n1, b"k%d" % i, b"v")
            handlers = c.svc[1].handlers()
            for type_ in handlers:
                for payload in BAD:
                    try:
                        await n0.call("n1", type_, payload, 2)
                    except RemoteError as exc:
                        assert exc.code == "CommandError", (type_, payload, exc)
            # a live responder cache: ae_done must still refuse an unhashable id
            p0 = n1.ring.partition_of(b"k0")
            await n0.call("n1", "ae_diff", {"p": p0, "sid": 5, "level": 1, "nodes": [0],
                                            "hashes": bytes(1024)}, 2)
            assert c.svc[1]._sessions
            for sid in ([1], {"a": 1}, -1, None):
                with pytest.raises(RemoteError, match="sid"):
                    await n0.call("n1", "ae_done", {"sid": sid}, 2)
            rng = random.Random(7)
            for type_, fn in handlers.items():
                for _ in range(300):
                    payload = _junk(rng)
                    try:
                        await fn(payload)
                    except CommandError:
                        pass
            # a key in the wrong partition is refused, nothing is stored
            k = b"k1"
            wrong = (n1.ring.partition_of(k) + 1) % 8
            with pytest.raises(RemoteError, match="partition"):
                await n0.call("n1", "ae_repair", {"p": wrong, "entries": [
                    [k, V.encode(V.new(V.sibling(b"evil", 9)))]]}, 2)
            # the node still works: an exchange repairs n0 fully
            want = {b"k%d" % i: c.raw(1, b"k%d" % i) for i in range(200)}
            for p in range(8):
                await c.svc[0].exchange(p, "n1")
            assert converged(c, want)
        finally:
            await c.stop()

    ae.run(main())


def _without_ae(node):
    """The node without its own AntiEntropy service (the node adds one by itself)."""
    for svc in [x for x in node.services if isinstance(x, AntiEntropy)]:
        node.remove_service(svc)
    return node


class _Liar:
    """A peer service answering every anti-entropy message with nonsense."""

    def __init__(self, replies):
        self.replies = replies

    def handlers(self):
        async def answer(m, t=None):
            return self.replies
        return {t: answer for t in ("ae_root", "ae_diff", "ae_keys", "ae_repair", "ae_done",
                                    "ae_clocks", "ae_hints", "ae_mark", "ae_cad")}

    async def start(self):
        pass

    async def stop(self):
        pass


@pytest.mark.parametrize("reply", [None, {"root": "x"}, {"root": 1, "children": [1 << 40]},
                                   {"root": 1, "children": "all", "empty": []},
                                   {"root": 1, "children": [0], "empty": [[0]]},
                                   {"root": 1, "children": [0], "empty": [], "done": 0}])
def test_malformed_replies_abort_the_exchange_not_the_node(tmp_path, reply):
    async def main():
        ports = free_ports(4)
        members = [f"n{i}@127.0.0.1:{ports[2 + i]}" for i in range(2)]
        cfgs = [load(name=f"n{i}", port=ports[i], peer_port=ports[2 + i], n=2, r=1, w=1,
                     ring_size=4, data_dir=str(tmp_path / f"n{i}"), members=members,
                     fsync="never", ae_interval_ms=20, request_timeout_ms=1000)
                for i in range(2)]
        good, liar = Node(cfgs[0]), Node(cfgs[1])
        svc = good.add_service(AntiEntropy(good))
        _without_ae(liar).add_service(_Liar(reply))
        await good.start()
        await liar.start()
        try:
            put(good, b"k", b"v")
            p = good.ring.partition_of(b"k")
            with pytest.raises((ProtocolError, CommandError)):
                await svc.exchange(p, "n1")
            await asyncio.sleep(0.3)                     # the scheduler meets the liar too
            assert svc._task is not None and not svc._task.done()
            assert svc.stats["exchanges_failed"] >= 2
        finally:
            await good.stop()
            await liar.stop()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_partition_whose_tree_is_not_built_takes_no_part(ae):
    async def main():
        c = await ae.make(size=2, n=2, q=4, ae_enabled=False)
        n0, n1 = c.nodes
        try:
            put(n0, b"k", b"v")
            put(n1, b"k", b"w")
            p = n0.ring.partition_of(b"k")
            n1.replica.opened(p).tree_built = False
            with pytest.raises(RemoteError, match="TreeNotBuilt: .* not built"):
                await n0.call("n1", "ae_root", {"p": p, "w": 128, "d": 2}, 5)
            # skipped, not failed: n1's own exchange, and n0's refused by n1
            assert await c.svc[0].exchange(p, "n1") is None
            assert await c.svc[1].exchange(p, "n0") is None
            for s in c.svc:
                assert s.stats["skipped_unbuilt"] == 1
                assert s.stats["exchanges_failed"] == s.stats["exchanges"] == 0
            assert (await n0.front.info_section())["ae_skipped_unbuilt"] == 1
            assert V.lww_value(V.decode(c.raw(1, b"k"))) == b"w"
            n1.replica.opened(p).tree_built = True
            await c.svc[1].exchange(p, "n0")
            assert c.raw(0, b"k") == c.raw(1, b"k")
        finally:
            await c.stop()

    ae.run(main())


def test_stop_returns_promptly_during_an_exchange(ae):
    async def main():
        c = await ae.make(size=2, n=2, q=4, ae_interval_ms=10)
        try:
            for i in range(3000):
                put(c.nodes[0], b"k%d" % i, b"v")
            await asyncio.sleep(0.05)
            t = asyncio.get_running_loop().time()
            await c.svc[0].stop()
            await c.svc[1].stop()
            assert asyncio.get_running_loop().time() - t < 0.5
            assert c.svc[0]._task is None
        finally:
            await c.stop()

    ae.run(main())


class _RandomLiar(_Liar):
    """Near-valid replies with random corruption: every field present, some wrong."""

    def __init__(self, rng, keys):
        self.rng, self.keys = rng, keys

    def handlers(self):
        rng = self.rng

        def pick(good, bad):
            return bad if rng.random() < 0.15 else good

        async def answer(m):
            good_clock = V.encode(V.new(V.sibling(b"x", 1)))
            return {
                "root": pick(rng.randrange(1, 1 << 64), _junk(rng)),
                "children": pick([rng.randrange(16384) for _ in range(rng.randrange(4))],
                                 _junk(rng)),
                "empty": pick([], _junk(rng)),
                "entries": pick([[pick(rng.choice(self.keys), _junk(rng)),
                                  pick(good_clock, _junk(rng))] for _ in range(rng.randrange(3))],
                                _junk(rng)),
                "want": pick([rng.choice(self.keys)], _junk(rng)),
                "reap": pick([], _junk(rng)),
                "done": pick(1, _junk(rng)),
                "merged": pick(0, _junk(rng)),
            }
        return {t: answer for t in ("ae_root", "ae_diff", "ae_keys", "ae_repair", "ae_done",
                                    "ae_clocks", "ae_hints", "ae_mark", "ae_cad")}


def test_random_corrupt_replies_only_abort_exchanges(tmp_path):
    async def main():
        ports = free_ports(4)
        members = [f"n{i}@127.0.0.1:{ports[2 + i]}" for i in range(2)]
        cfgs = [load(name=f"n{i}", port=ports[i], peer_port=ports[2 + i], n=2, r=1, w=1,
                     ring_size=2, data_dir=str(tmp_path / f"n{i}"), members=members,
                     fsync="never", ae_enabled=False, request_timeout_ms=1000)
                for i in range(2)]
        good, liar = Node(cfgs[0]), Node(cfgs[1])
        svc = good.add_service(AntiEntropy(good))
        rng = random.Random(11)
        keys = [k for k in (b"k%d" % i for i in range(200)) if good.ring.partition_of(k) == 0]
        _without_ae(liar).add_service(_RandomLiar(rng, keys))
        await good.start()
        await liar.start()
        try:
            for k in keys[:50]:
                put(good, k, b"v")
            outcomes = set()
            for _ in range(150):
                try:
                    await svc.exchange(0, "n1")
                    outcomes.add("ok")
                except (ProtocolError, CommandError) as exc:
                    outcomes.add(type(exc).__name__)
            assert "ProtocolError" in outcomes
            assert all(good.replica.read(0, k) is not None for k in keys[:50])
        finally:
            await good.stop()
            await liar.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.slow
def test_wiped_node_of_30000_keys_is_rebuilt_by_the_scheduler(ae):
    async def main():
        c = await ae.make(q=16, ae_interval_ms=20)
        try:
            n0 = c.nodes[0]
            keys = [b"bulk:%d" % i for i in range(30_000)]
            for k in keys:                       # the same clock on every node, no network
                clock = put(n0, k, b"v-" + k)
                for n in c.nodes[1:]:
                    n.replica.merge(n.ring.partition_of(k), k, clock)
            want = {k: c.raw(0, k) for k in keys}
            await c.restart(2, wipe=True)
            assert sum(c.raw(2, k) is not None for k in keys) < len(keys)
            assert await ae.wait_for(lambda: converged(c, want), timeout=60, step=0.2)
            st = c.svc[2].stats                  # each key repaired once on the wiped node (the
            assert await ae.wait_for(            # counters move when an exchange ends)
                lambda: st["keys_repaired_here"] + st["served_repairs"] == len(keys))
        finally:
            await c.stop()

    ae.run(main(), timeout=120)


def test_equal_partitions_are_checked_without_the_full_pause(ae):
    """With nothing to repair, a node checks its partitions one after another (a short pause
    between them), not one per ae_interval_ms: a cycle over 8 partitions takes well under
    8 intervals. A repairing exchange still waits the full interval."""
    async def main():
        c = await ae.make(ae_interval_ms=1000, q=8)
        try:
            svc = c.svc[0]
            # the first tick comes after one interval; then a quick round of equal roots
            assert await ae.wait_for(lambda: svc.stats["exchanges"] >= 8, timeout=3.5)
            assert svc.stats["exchanges_equal"] == svc.stats["exchanges"]
        finally:
            await c.stop()

    ae.run(main())


def test_a_restarted_node_is_caught_up_first_not_after_a_round_of_intervals(ae):
    """With an exchange a minute, a node that comes back from a stop during which it missed
    writes (here: wiped) is repaired within seconds: it exchanges every partition it holds
    as it starts, and its peers, seeing its new generation, do the same with it."""
    async def main():
        c = await ae.make(q=16, ae_interval_ms=60_000)
        try:
            n0 = c.nodes[0]
            keys = [b"k%d" % i for i in range(400)]
            for k in keys:
                await n0.front.set_overwrite(k, b"v-" + k)
            want = {k: c.raw(0, k) for k in keys}
            assert converged(c, want)                  # replicated by the writes themselves
            await c.restart(2, wipe=True)
            assert sum(c.raw(2, k) is not None for k in keys) == 0
            assert await ae.wait_for(lambda: converged(c, want), timeout=15, step=0.1)
            st = (await c.nodes[2].front.status())["antientropy"]      # what kvctl status shows
            assert st["keys_repaired"] == len(keys) and st["exchanges"] > 0
        finally:
            await c.stop()

    ae.run(main(), timeout=60)


def test_peers_queue_a_catch_up_when_a_member_restarts(ae):
    async def main():
        c = await ae.make(q=8, ae_interval_ms=60_000, gossip_interval_ms=50)
        try:
            seen = []
            svc0 = c.svc[0]
            real = svc0.catch_up
            svc0.catch_up = lambda peer: (seen.append(peer), real(peer))
            await ae.wait_for(lambda: len(svc0._seen) == 2, timeout=15)   # it has looked once
            await c.restart(2)
            assert await ae.wait_for(lambda: "n2" in seen, timeout=10)
            assert seen.count("n1") == 0                # n1 did not restart
        finally:
            await c.stop()

    ae.run(main(), timeout=60)


def test_a_catch_up_keeps_the_paced_rounds_place(ae):
    """Queueing a catch-up (a peer restarted) leaves the paced round where it was: it used to
    move it on by one partition each time, so a node skipped one of its partitions per
    catch-up queued."""
    async def main():
        c = await ae.make(size=3, n=3, q=8, ae_enabled=False)
        try:
            svc = c.svc[0]
            first = [svc._next_partition() for _ in range(3)]
            svc._turn -= 3                              # back to where the round was
            svc.catch_up("n1")
            svc.catch_up("n2")
            assert svc.catchup_pending() > 0
            assert [svc._next_partition() for _ in range(3)] == first
        finally:
            await c.stop()

    ae.run(main())


def test_a_node_out_of_the_ring_keeps_its_scheduler_alive(ae):
    """After a leave a node's ring is None until it exits: the scheduler's look at its peers
    must not end the scheduler task (it did, with an AttributeError, on every leave)."""
    async def main():
        c = await ae.make(q=8, ae_interval_ms=50)
        try:
            svc = c.svc[0]
            ring, c.nodes[0].rings.ring = c.nodes[0].ring, None
            try:
                await asyncio.sleep(0.8)                 # several looks at the peers
                assert svc._task is not None and not svc._task.done()
                assert svc._next_partition() is None
            finally:
                c.nodes[0].rings.ring = ring
        finally:
            await c.stop()

    ae.run(main())


def test_an_exchange_reads_only_the_records_of_the_differing_leaves(ae):
    """One key differing among 20,000 of a partition: the exchange lists the keys of its one
    differing leaf from the index (LogStore.leaf_keys) and reads about K / 16,384 records on
    each side, not the partition (the old walk read every key of it on both sides); the
    counts are in the exchange's result, the service's stats and INFO."""
    async def main():
        c = await ae.make(size=2, n=2, q=4, ae_enabled=False)
        n0, n1 = c.nodes
        try:
            p = 1
            keys = [k for k in (b"key:%d" % i for i in range(200_000))
                    if n0.ring.partition_of(k) == p][:20_000]
            for rep in (n0.replica, n1.replica):       # the same clocks on both sides
                for k in keys:
                    raw = V.encode(V.update(V.new(V.sibling(b"v" * 100, 1)), None, ("x", 1, 1)))
                    rep.merge(p, k, V.decode(raw), raw)
            assert n0.replica.opened(p).tree.root() == n1.replica.opened(p).tree.root()
            put(n0, keys[123], b"newer")
            out = await c.svc[0].exchange(p, "n1")
            assert out["segments"] == 1 and out["repaired_there"] == 1
            assert c.raw(0, keys[123]) == c.raw(1, keys[123])
            assert out["partition_keys"] == 20_000
            # 20,000 keys over 16,384 leaves: a handful of keys in the differing leaf, each
            # record read at most a few times (listed, its clock read, then merged)
            assert 1 <= out["records_read"] <= 30, out
            assert out["bytes_read"] < 30 * (len(keys[0]) + 200), out
            st0, st1 = c.svc[0].stats, c.svc[1].stats
            assert st0["records_read"] == out["records_read"] and st0["last_bytes_read"] > 0
            assert 1 <= st1["served_records_read"] <= 30
            info = await n0.front.info_section()
            assert info["ae_records_read"] == out["records_read"]
            assert info["ae_last_bytes_read"] == out["bytes_read"]
        finally:
            await c.stop()

    ae.run(main(), timeout=120)


def _same_leaf(ring, count, prefix=b"big:", start=0):
    """`count` keys of one partition and one Merkle leaf (token & (leaves - 1)), found by trying
    prefix + number from `start`."""
    from kvcore import merkle as M
    from kvcore import token
    mask = M.MerkleTree().leaves - 1
    first, out, i = None, [], start
    while len(out) < count:
        k = prefix + b"%d" % i
        i += 1
        where = (ring.partition_of(k), token(k) & mask)
        if first is None:
            first = where
        if where == first:
            out.append(k)
    return out


def _small_messages(node, frame=16 << 10, message=256 << 10):
    """Peer frames of `frame` bytes and messages of at most `message` bytes on this node's
    connections (before it starts): the exchange's budget is message / 8 = 32 KiB."""
    node.pool._opts["max_frame_size"] = frame
    node.pool._opts["max_message_size"] = message


def test_an_exchange_over_a_leaf_of_many_large_objects_completes_in_bounded_messages(ae):
    """One leaf holding 14 objects of 24 KiB on each side (10 on one side only, 4 concurrent
    on both), 336 KiB a side, with a peer message limit of 256 KiB: the responder's answers
    are cut inside the leaf by the byte budget (limit / 8) and the initiator asks again from
    the last key covered, so no message exceeds the limit and both sides end with every
    object. Then a leaf of 12 such objects on one side only, from both ends (pushed in bounded
    batches, and answered in cut replies while the responder's caches are lost between)."""
    limit = 256 << 10

    async def main():
        c = await ae.make(size=2, n=2, q=2, ae_enabled=False, prepare=_small_messages)
        n0, n1 = c.nodes
        sizes = []
        lose_caches = [False]
        real_call = n0.call

        async def call(peer, type_, payload, timeout):
            reply = await real_call(peer, type_, payload, timeout)
            if type_.startswith("ae_"):
                sizes.append((type_, len(msgpack.packb(payload)), len(msgpack.packb(reply)),
                              type(reply) is dict and "after" in reply))
                if lose_caches[0]:
                    c.svc[1]._sessions.clear()
            return reply

        n0.call = call
        try:
            assert c.svc[0]._budget() == limit // 8
            rng = random.Random(3)
            keys = _same_leaf(n0.ring, 24)
            p = n0.ring.partition_of(keys[0])
            for k in keys[:10]:
                put(n0, k, rng.randbytes(24 << 10))
            for k in keys[10:20]:
                put(n1, k, rng.randbytes(24 << 10))
            for k in keys[20:]:
                put(n0, k, rng.randbytes(24 << 10))
                put(n1, k, rng.randbytes(24 << 10))
            want = expected_of(c, keys)
            out = await c.svc[0].exchange(p, "n1")
            assert converged(c, want)
            assert out["repaired_here"] == 14 and out["repaired_there"] == 14
            assert all(len(V.values(V.decode(c.raw(1, k)))) == 2 for k in keys[20:])
            assert max(max(a, b) for _, a, b, _ in sizes) <= limit
            cut = [s for s in sizes if s[0] == "ae_keys" and s[3]]
            assert len(cut) >= 5, sizes                 # answered in cut replies
            assert max(b for t, _, b, _ in sizes if t == "ae_keys") <= limit // 8 + (48 << 10)
            assert c.svc[0].stats["exchanges_failed"] == 0
            # a leaf of 12 objects on n0 only: pushed whole (its leaf is empty on n1) ...
            more = _same_leaf(n0.ring, 12, b"more:")
            p2 = n0.ring.partition_of(more[0])
            for k in more:
                put(n0, k, rng.randbytes(24 << 10))
            sizes.clear()
            await c.svc[0].exchange(p2, "n1")
            assert all(c.raw(1, k) == c.raw(0, k) for k in more)
            assert max(max(a, b) for _, a, b, _ in sizes) <= limit
            assert len([s for s in sizes if s[0] == "ae_repair"]) >= 6
            # ... and asked for by n1 (its leaf empty, n0 answers) while n0 forgets the exchange
            # after every answer (the cursor is a key, not a place in a cache)
            again = _same_leaf(n0.ring, 12, b"again:")
            p3 = n0.ring.partition_of(again[0])
            for k in again:
                put(n1, k, rng.randbytes(24 << 10))
            want = expected_of(c, again)
            sizes.clear()
            lose_caches[0] = True
            out = await c.svc[0].exchange(p3, "n1")
            assert out["repaired_here"] == 12 and converged(c, want)
            assert len([s for s in sizes if s[0] == "ae_keys" and s[3]]) >= 5
            assert max(max(a, b) for _, a, b, _ in sizes) <= limit
        finally:
            await c.stop()

    ae.run(main(), timeout=60)


def test_key_list_answers_end_at_segment_ends_for_an_initiator_that_cannot_resume(ae):
    """An ae_keys request without "after" (a node of an earlier version) gets whole segments,
    as before; with it, an answer stops at the byte budget inside a segment and names the last
    key it covers, and the next request from there gets the rest."""
    async def main():
        c = await ae.make(size=2, n=2, q=2, ae_enabled=False, svc_opts=dict(max_bytes=3000))
        n0, n1 = c.nodes
        try:
            keys = sorted(_same_leaf(n0.ring, 6))
            p = n0.ring.partition_of(keys[0])
            from kvcore import merkle as M
            from kvcore import token
            seg = token(keys[0]) & (M.MerkleTree().leaves - 1)
            for k in keys:
                put(n1, k, os.urandom(1000))
            ask = {"p": p, "sid": 7, "segments": [[seg, []]]}
            r = await n0.call("n1", "ae_keys", ask, 5)
            assert r["done"] == 1 and "after" not in r and len(r["entries"]) == 6
            got, after = [], None
            for _ in range(6):
                r = await n0.call("n1", "ae_keys", {**ask, "after": after}, 5)
                got += [e[0] for e in r["entries"]]
                if "after" not in r:
                    break
                assert r["done"] == 0 and 0 < len(r["entries"]) <= 3
                after = r["after"]
            assert r["done"] == 1 and got == keys
        finally:
            await c.stop()

    ae.run(main())


def test_peers_catching_up_with_a_node_whose_trees_are_folding_skip_quietly(ae, caplog):
    """n1's trees are all unbuilt (as while it folds them after a crash) when n0 queues a
    catch-up with it: every refusal is a skipped exchange (ae_skipped_unbuilt), none is a
    failed one, and nothing is logged above DEBUG about it. Once n1's trees are built, the
    next exchanges repair."""
    import logging

    async def main():
        c = await ae.make(size=2, n=2, q=4, ae_enabled=False)
        n0, n1 = c.nodes
        try:
            for i in range(40):
                put(n0, b"k%d" % i, b"v")
            parts = sorted({n0.ring.partition_of(b"k%d" % i) for i in range(40)})
            for p in range(4):
                part = n1.replica.opened(p) or n1.replica.partition(p)
                part.tree_built = False
            caplog.set_level(logging.DEBUG, logger="kvnet")
            c.svc[0].catch_up("n1")
            while c.svc[0].catchup_pending():
                assert await c.svc[0].tick(reap=False) is None
            st = c.svc[0].stats
            assert st["skipped_unbuilt"] >= 4 and st["exchanges_failed"] == 0
            assert st["exchanges"] == 0
            noisy = [r for r in caplog.records
                     if r.levelno > logging.DEBUG and "not built" in r.getMessage()]
            assert not noisy, [r.getMessage() for r in noisy]
            assert any("skipped" in r.getMessage() for r in caplog.records)
            for p in range(4):
                n1.replica.opened(p).tree_built = True
            for p in parts:
                assert (await c.svc[0].exchange(p, "n1"))["repaired_there"] > 0
            assert all(c.raw(1, b"k%d" % i) == c.raw(0, b"k%d" % i) for i in range(40))
        finally:
            await c.stop()

    ae.run(main())


def test_only_an_unbuilt_tree_refusal_counts_as_skipped():
    """The refusal of this version (code TreeNotBuilt) and of earlier ones (a CommandError of
    the same message) are skips; any other peer error is a failure."""
    from kvnet.antientropy.service import refused_unbuilt
    msg = "the tree of partition 3 is not built yet"
    assert refused_unbuilt(RemoteError("x", code="TreeNotBuilt", remote_message=msg))
    assert refused_unbuilt(RemoteError("x", code="CommandError", remote_message=msg))
    assert not refused_unbuilt(RemoteError("x", code="CommandError", remote_message="bad sid"))
    assert not refused_unbuilt(RemoteError("x", code="ValueError", remote_message=msg))
    assert not refused_unbuilt(CommandError(msg))


def test_an_initiator_that_never_opened_the_partition_takes_every_key(ae):
    """The initiator holds no store for the partition (never opened here: an empty tree), so
    its key lists are empty without a store to read; it gets every key from the peer."""
    async def main():
        c = await ae.make(size=2, n=2, q=2, ae_enabled=False, svc_opts=dict(max_bytes=3000))
        n0, n1 = c.nodes
        try:
            keys = [b"w%d" % i for i in range(300)]
            for k in keys:
                put(n1, k, b"v" * 50)
            for p in range(2):
                n0.replica.partitions.pop(p).close()        # as if never opened here
                assert n0.replica.opened(p) is None
                await c.svc[0].exchange(p, "n1")
            assert all(c.raw(0, k) == c.raw(1, k) is not None for k in keys)
        finally:
            await c.stop()

    ae.run(main())
