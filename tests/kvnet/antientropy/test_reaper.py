"""Tombstone reaping between in-process Nodes (docs/algorithms.md, section 6)."""
import asyncio
import time

from kvcore import versions as V


def tomb_everywhere(c, k):
    return all(c.raw(i, k) is not None and V.is_deleted(V.decode(c.raw(i, k)))
               for i in range(len(c.nodes)))


def gone_everywhere(c, k):
    return all(c.raw(i, k) is None for i in range(len(c.nodes)))


def key_coordinated_by(node, name, prefix=b"t"):
    """A key whose partition's first primary is `name` (that node coordinates its reap)."""
    ring = node.ring
    for i in range(10_000):
        k = prefix + b"%d" % i
        if ring.preference_list(ring.partition_of(k))[0] == name:
            return k
    raise AssertionError("no such key")


def test_reaped_after_grace_not_before_and_stays_gone(ae):
    async def main():
        c = await ae.make(ae_interval_ms=20, tombstone_grace_s=1)
        n0 = c.nodes[0]
        try:
            dead = [b"dead%d" % i for i in range(6)]
            live = [b"live%d" % i for i in range(6)]
            for k in dead + live:
                await n0.front.set_overwrite(k, b"v")
            for k in dead:
                assert await n0.front.delete_overwrite(k)
            assert await ae.wait_for(lambda: all(tomb_everywhere(c, k) for k in dead))

            def confirmations():
                out = []
                for s in c.svc:
                    for cand in s.reaper.candidates.values():
                        out += [v[1] for k, v in cand.items() if k in dead and v[1] is not None]
                return out

            assert await ae.wait_for(lambda: len(confirmations()) == len(dead), timeout=15)
            first = min(confirmations())
            assert first <= time.monotonic()
            while time.monotonic() < first + 1.0 - 0.1:          # grace: 1 s from confirmation
                assert all(tomb_everywhere(c, k) for k in dead)
                await asyncio.sleep(0.02)
            assert await ae.wait_for(lambda: all(gone_everywhere(c, k) for k in dead), timeout=15)
            assert sum(s.reaper.stats["reaped"] for s in c.svc) == len(dead)
            # stays gone through many more exchange rounds; live keys untouched
            await asyncio.sleep(0.6)
            assert all(gone_everywhere(c, k) for k in dead)
            assert all(V.lww_value(V.decode(c.raw(i, k))) == b"v" for k in live for i in range(3))
            for k in dead:
                assert await n0.front.get_lww(k) is None
            roots = [[n.replica.opened(p).tree.root() if n.replica.opened(p) else 0
                      for p in range(8)] for n in c.nodes]
            assert roots[0] == roots[1] == roots[2]
        finally:
            await c.stop()

    ae.run(main())


def test_not_reaped_while_a_primary_is_down(ae):
    async def main():
        c = await ae.make(ae_interval_ms=20, tombstone_grace_s=0)
        n0 = c.nodes[0]
        try:
            k = key_coordinated_by(n0, "n0")
            await n0.front.set_overwrite(k, b"v")
            await c.stop(2)                        # n2 holds the value, misses the delete
            assert await n0.front.delete_overwrite(k)
            tomb = c.raw(0, k)
            assert V.is_deleted(V.decode(tomb)) and c.raw(1, k) == tomb
            await asyncio.sleep(1.0)
            assert c.raw(0, k) == tomb and c.raw(1, k) == tomb
            assert c.svc[0].reaper.stats["blocked_down"] > 0
            assert c.svc[0].reaper.stats["reaped"] == 0
            await c.start(2)                       # back with the old value
            assert V.lww_value(V.decode(c.raw(2, k))) == b"v"
            seen_value = []

            def check():
                for i in range(3):
                    raw = c.raw(i, k)
                    if raw is not None and not V.is_deleted(V.decode(raw)):
                        seen_value.append(i)
                return all(c.raw(i, k) is None for i in range(3))

            assert await ae.wait_for(check, timeout=15, step=0.005)
            assert seen_value in ([], [2] * len(seen_value))   # only n2, until repaired
            await asyncio.sleep(0.5)
            assert all(c.raw(i, k) is None for i in range(3))
            assert await c.nodes[2].front.get_lww(k) is None
        finally:
            await c.stop()

    ae.run(main())


def test_not_reaped_while_a_member_holds_a_hint(ae):
    async def main():
        c = await ae.make(ae_interval_ms=20, tombstone_grace_s=0)
        n0, n1 = c.nodes[0], c.nodes[1]
        try:
            # Only this test takes its hints away (ack below): hint replay would hand them to
            # their target on its own, every second or at once when a loaded machine makes a
            # detector see n2 go down and up, and the reap would then run before the test
            # looked (what made this test fail once under load).
            for node in c.nodes:
                await node.handoff.stop()
            k = key_coordinated_by(n0, "n0")
            p = n0.ring.partition_of(k)
            await n0.front.set_overwrite(k, b"v")
            hint = n1.hints.add("n2", p, k, c.raw(1, k))
            assert n1.hints.holders(p, k) == ["n2"]
            assert await n0.front.delete_overwrite(k)
            assert await ae.wait_for(lambda: tomb_everywhere(c, k))
            assert await ae.wait_for(lambda: c.svc[0].reaper.stats["blocked_hints"] > 3)
            assert tomb_everywhere(c, k) and c.svc[0].reaper.stats["reaped"] == 0
            local = n0.hints.add("n1", p, k, c.raw(0, k))   # the coordinator's own hint log
            assert n1.hints.ack("n2", p, k, hint)
            blocked = c.svc[0].reaper.stats["blocked_hints"]
            assert await ae.wait_for(lambda: c.svc[0].reaper.stats["blocked_hints"] > blocked + 3)
            assert tomb_everywhere(c, k) and c.svc[0].reaper.stats["reaped"] == 0
            assert n0.hints.ack("n1", p, k, local)
            assert await ae.wait_for(lambda: gone_everywhere(c, k))
            assert c.svc[0].reaper.stats["reaped"] == 1
        finally:
            await c.stop()

    ae.run(main())


def test_not_reaped_while_a_member_cannot_be_asked_about_hints(ae):
    async def main():
        # 4 nodes, N=2: a member that is no primary of the key still blocks the reap
        c = await ae.make(size=4, n=2, ae_interval_ms=20, tombstone_grace_s=0)
        n0 = c.nodes[0]
        try:
            ring = n0.ring
            k = next(b"h%d" % i for i in range(10_000)
                     if list(ring.preference_list(ring.partition_of(b"h%d" % i))) == ["n0", "n1"])
            other = 2
            await c.stop(other)
            await n0.front.set_overwrite(k, b"v")
            assert await n0.front.delete_overwrite(k)
            assert await ae.wait_for(lambda: c.raw(0, k) is not None and c.raw(0, k) == c.raw(1, k))
            await asyncio.sleep(0.8)
            assert c.raw(0, k) is not None and c.raw(1, k) is not None
            assert c.svc[0].reaper.stats["reaped"] == 0
            await c.start(other)
            assert await ae.wait_for(lambda: c.raw(0, k) is None and c.raw(1, k) is None, timeout=15)
        finally:
            await c.stop()

    ae.run(main())


def test_reap_pending_tombstone_is_never_copied_back(ae):
    async def main():
        c = await ae.make(ae_enabled=False, tombstone_grace_s=0)
        n0, n1, n2 = c.nodes
        try:
            k = key_coordinated_by(n0, "n0")
            p = n0.ring.partition_of(k)
            live = [key_coordinated_by(n0, "n0", b"live%d-" % i) for i in range(3)]
            for x in live:
                await n0.front.set_overwrite(x, b"v")
            tomb = V.encode(n0.replica.mint(p, k, V.tombstone(1)))

            def spread():
                for n in (n1, n2):
                    n.replica.merge(p, k, V.decode(tomb))

            spread()
            r0, r1 = c.svc[0].reaper, c.svc[1].reaper
            assert r0.mark(p, k, tomb) and r1.mark(p, k, tomb)
            assert not c.svc[2].reaper.mark(p, k, tomb + b"x")
            assert n0.replica.delete_if(p, k, tomb)       # n0 reaped; n1 and n2 not yet
            # 1. marked holder initiates with the lacking node: it finishes the reap itself
            await c.svc[1].exchange(p, "n0")
            assert c.raw(0, k) is None and c.raw(1, k) is None
            # 2. unmarked holder initiates with the lacking, marked node: refused, finished there
            await c.svc[2].exchange(p, "n0")
            assert c.raw(0, k) is None and c.raw(2, k) is None
            # 3. the lacking, marked node initiates with an unmarked holder: told to delete
            spread()
            n0.replica.delete_if(p, k, tomb)
            await c.svc[0].exchange(p, "n2")
            assert c.raw(0, k) is None and c.raw(2, k) is None
            # 4. a marked holder answers a lacking initiator: it finishes the reap
            spread()
            assert n2.replica.delete_if(p, k, tomb) and c.raw(1, k) == tomb
            await c.svc[2].exchange(p, "n1")
            assert c.raw(1, k) is None and c.raw(2, k) is None
            # 5. a marked holder meets a lacking replica that lost its mark (a restart), both
            #    as initiator and as responder: still never copied
            seg = n0.replica.opened(p).tree.segment_of(k)
            twin = next(x for x in (b"twin%d" % i for i in range(1_000_000))
                        if n0.ring.partition_of(x) == p
                        and n0.replica.opened(p).tree.segment_of(x) == seg)
            for neighbour in (False, True):
                if neighbour:     # a key in k's segment everywhere: k is listed, not pushed whole
                    tc = n0.replica.mint(p, twin, V.sibling(b"same segment", 1))
                    for n in (n1, n2):
                        n.replica.merge(p, twin, tc)
                for starter in (1, 0):
                    spread()
                    n0.replica.delete_if(p, k, tomb)
                    r0.pending.clear()
                    assert r1.mark(p, k, tomb)
                    if starter == 1:
                        await c.svc[1].exchange(p, "n0")
                    else:
                        await c.svc[0].exchange(p, "n1")
                    assert c.raw(0, k) is None and c.raw(1, k) is None, (neighbour, starter)
            # an unmarked tombstone is still copied, like any object
            for x in live:
                assert c.raw(2, x) is not None
            t2 = V.encode(n0.replica.mint(p, k + b"-other", V.tombstone(1)))
            await c.svc[0].exchange(p, "n1")
            assert c.raw(1, k + b"-other") == t2
            # a write that landed after the mark survives compare-and-delete
            spread()
            newer = V.encode(n2.replica.mint(p, k, V.sibling(b"back", 5), overwrite=True))
            assert await n0.call("n2", "ae_cad", {"p": p, "entries": [[k, tomb]]}, 2) == []
            assert c.raw(2, k) == newer
        finally:
            await c.stop()

    ae.run(main())


def test_confirmation_needs_every_primary_up_and_equal(ae):
    async def main():
        c = await ae.make(ae_enabled=False, tombstone_grace_s=0)
        n0, n1, n2 = c.nodes
        try:
            k = key_coordinated_by(n0, "n0")
            p = n0.ring.partition_of(k)
            value = n2.replica.mint(p, k, V.sibling(b"old", 1))
            for n in (n0, n1):
                n.replica.merge(p, k, value)
            tomb = V.encode(n0.replica.mint(p, k, V.tombstone(2), overwrite=True))
            n1.replica.merge(p, k, V.decode(tomb))        # n2 still holds the value
            reaper = c.svc[0].reaper
            for _ in range(3 * 8):
                await reaper.pass_once()
            assert reaper.stats["confirmed"] == 0 and reaper.stats["reaped"] == 0
            assert c.raw(0, k) == tomb and c.raw(1, k) == tomb
            await c.stop(2)                                # down: nothing is confirmed either
            for _ in range(3 * 8):
                await reaper.pass_once()
            assert reaper.stats["confirmed"] == 0 and reaper.stats["blocked_down"] > 0
            assert c.raw(0, k) == tomb and c.raw(1, k) == tomb
        finally:
            await c.stop()

    ae.run(main())


def test_bad_replies_to_the_reaper_never_reap(ae):
    from kvnet.errors import ProtocolError

    async def main():
        c = await ae.make(size=2, n=2, q=2, ae_enabled=False, tombstone_grace_s=0)
        n0, n1 = c.nodes
        try:
            k = key_coordinated_by(n0, "n0")
            p = n0.ring.partition_of(k)
            tomb = n0.replica.mint(p, k, V.tombstone(1))
            n1.replica.merge(p, k, tomb)
            reaper = c.svc[0].reaper
            real = {t: n1.handlers.get(t) for t in ("ae_clocks", "ae_hints", "ae_mark")}
            for type_ in ("ae_clocks", "ae_hints", "ae_mark"):
                for junk in ([{"a": 1}], "x", [1], None, {"k": k}):
                    async def liar(m, junk=junk):
                        return junk
                    n1.handlers.replace(type_, liar)
                    for _ in range(3):
                        try:
                            await reaper.pass_once()
                        except ProtocolError:
                            pass
                    assert tomb_everywhere(c, k), (type_, junk)
                    reaper.candidates.clear()
                    reaper.pending.clear()
                    c.svc[1].reaper.pending.clear()
                for type_, handler in real.items():
                    n1.handlers.replace(type_, handler)
            assert reaper.stats["reaped"] == 0
            for _ in range(3):
                await reaper.pass_once()
            assert gone_everywhere(c, k)
        finally:
            await c.stop()

    ae.run(main())


def test_scan_finds_every_tombstone_and_yields_between_chunks(ae):
    """A scan of more than SCAN_CHUNK keys takes every tombstone of the batch as a candidate
    and lets the loop run between chunks (a request waits one chunk, not the batch)."""
    from kvnet.antientropy.reaper import SCAN_CHUNK

    async def main():
        c = await ae.make(ae_interval_ms=600_000, tombstone_grace_s=600)
        n0 = c.nodes[0]
        try:
            ring = n0.ring
            p = ring.partition_of(key_coordinated_by(n0, n0.name, b"x"))
            keys = [k for k in (b"x%d" % i for i in range(20 * SCAN_CHUNK))
                    if ring.partition_of(k) == p][:int(2.5 * SCAN_CHUNK)]
            assert len(keys) > 2 * SCAN_CHUNK
            for k in keys:
                await n0.front.set_overwrite(k, b"v")
            dead = set(keys[::3])
            for k in dead:
                assert await n0.front.delete_overwrite(k)
            svc = c.svc[0]          # n0's: the key's first primary, holding every delete
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            t = asyncio.ensure_future(ticker())
            await asyncio.sleep(0)
            before = ticks
            await svc.reaper._scan(p)
            t.cancel()
            assert set(svc.reaper.candidates[p]) == dead
            assert ticks - before >= 2
        finally:
            await c.stop()

    ae.run(main())
