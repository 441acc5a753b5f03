"""The simulation's checker (kvnet/sim/cluster.py, History) and the faults SimCluster puts
on nodes (pauses, disk errors): what it reports and what it excuses."""
import asyncio
import errno

import pytest

from kvnet.sim.cluster import History, SimCluster
from kvnet.sim.loop import determinism, inline_pools, quiet


def test_a_write_lost_is_excused_only_if_w_nodes_held_it_and_a_crash_took_it_from_each():
    h = History(w=2)
    h.ack(b"k", b"v1", set(), ["n0", "n1"])
    h.ack(b"k", b"v2", set(), ["n2"])               # (acknowledged with one copy: a bug)
    h.ack(b"k", b"v3", set(), ["n0", "n1"])
    lost = {("n0", b"k", b"v1"), ("n1", b"k", b"v1"), ("n2", b"k", b"v2"),
            ("n0", b"k", b"v3")}
    out = h.check({b"k": set()}, lost)
    assert len(out) == 2
    assert out[0].startswith("lost: b'k' = b'v2'") and "held by n2 then, W=2" in out[0]
    assert "a crash took it from n2" in out[0]
    assert out[1].startswith("lost: b'k' = b'v3'") and "took it from n0)" in out[1]


def test_superseded_values_may_go_but_never_come_back():
    h = History(w=2)
    h.ack(b"k", b"v1", set(), ["n0", "n1"])
    h.ack(b"k", None, {b"v1"})                      # a delete that read v1
    h.ack(b"j", b"w1", set(), ["n0", "n1"])
    h.fail(b"j", {b"w1"})                           # a failed write that read w1
    assert h.check({b"k": set(), b"j": set()}) == []
    assert h.check({b"k": {b"v1"}, b"j": {b"w1"}}) == ["resurrected: b'k' = b'v1' was superseded"]


def _run(tmp_path, coro_fn, size=3):
    c = SimCluster(str(tmp_path), size=size, seed=5)
    with determinism(5, c.loop.time), quiet(), inline_pools():
        async def main():
            await c.start()
            try:
                return await coro_fn(c)
            finally:
                await c.stop()
        return c.run(main())


def test_a_node_whose_disk_fails_answers_errors_and_keeps_what_it_acknowledged(tmp_path):
    """Every write to every store fails (EIO, then ENOSPC): a write is refused with an
    error, no node stops; once the disks work again writes succeed, and everything
    acknowledged before is still there."""
    async def body(c):
        await asyncio.sleep(1)
        keys = [b"k%d" % i for i in range(10)]
        for k in keys:
            await c.put("n0", k, b"before-" + k)
        for err in (errno.EIO, errno.ENOSPC):
            for nm in c.names:
                c.disk_errors(nm, err)
            with pytest.raises(Exception) as info:
                await c.put("n1", keys[0], b"during")
            assert "write refused" in str(info.value) or "quorum" in str(info.value)
            for nm in c.names:
                c.disk_errors(nm, None)
        assert c.up() == c.names
        await c.put("n2", b"after", b"ok")
        for k in keys:
            got = {s.value for s in (await c.get("n1", k, r="all")).siblings}
            assert b"before-" + k in got
        return True

    assert _run(tmp_path, body)


def test_a_paused_node_answers_nothing_until_resumed_and_then_catches_up(tmp_path):
    """A paused node answers no request (its own clients wait); writes go on without it
    (W=2 of 3); resumed, it answers what waited and holds what was written meanwhile."""
    async def body(c):
        await asyncio.sleep(1)
        c.pause("n2")
        waiting = asyncio.ensure_future(c.get("n2", b"p0"))
        for i in range(5):
            await c.put("n0", b"p%d" % i, b"v%d" % i)
        await asyncio.sleep(2)
        assert not waiting.done()
        c.resume("n2")
        await asyncio.wait_for(waiting, 5)
        await asyncio.sleep(3)
        assert c.held("n2", b"p4") == {b"v4"} or "n2" not in c.replicas_of(b"p4")[1]
        reply = await c.get("n2", b"p4", r="all")
        assert [s.value for s in reply.siblings] == [b"v4"]
        return True

    assert _run(tmp_path, body)


def test_a_restart_whose_stop_fails_lets_the_stores_go_and_starts_the_node_again(tmp_path):
    async def body(c):
        await asyncio.sleep(1)
        await c.put("n0", b"k", b"v")

        async def failing_close():
            raise OSError(errno.EIO, "the stores could not be closed")
        c.nodes["n1"].replica.close = failing_close
        error = await c.restart("n1")
        assert isinstance(error, OSError) and "n1" in c.up()
        await asyncio.sleep(1)
        reply = await c.get("n1", b"k", r="all")
        assert [s.value for s in reply.siblings] == [b"v"]
        return True

    assert _run(tmp_path, body)
