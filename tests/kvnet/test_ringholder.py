"""The ring holder and its routes value (kvnet/ringholder.py, kvnet/routes.py): one immutable
value per (ring state, down set), a new one on every ring install and liveness change."""
import asyncio

import pytest

from kvcore.ring import Ring
from kvnet.coordinator.preflist import preflist_for, write_route
from kvnet.membership import ringstate as RS
from kvnet.ringholder import RingHolder, RingListener
from kvnet.routes import Lanes, Routes

NODES = ["a", "b", "c", "d"]


def _state(nodes=NODES, q=16, n=3, epoch=1, claimant=""):
    return RS.RingState(Ring.create(nodes, q=q, n=n), None, epoch, claimant)


class Recording(RingListener):
    def __init__(self):
        self.calls = []

    def ring_installed(self, old, state):
        self.calls.append((old, state))


def _holder(tmp_path, down=(), listener=None):
    return RingHolder("a", str(tmp_path), lambda n: n not in down, listener)


def test_a_ring_install_gives_a_new_routes_value_and_leaves_the_old_one_as_it_was(tmp_path):
    listener = Recording()
    holder = _holder(tmp_path, listener=listener)
    assert holder.routes.ring is None and holder.ring_order() == (0, "")
    first = _state()
    holder.install_ring(first)
    routes = holder.routes
    assert routes.state is first and routes.ring is first.current
    lane, targets = routes.lane(0), routes.targets(0)
    solo, direct = routes.solo, dict(routes.direct)
    newer = RS.RingState(first.current, RS.plan_ring(first.current, join=["e"]), 2, "a")
    assert holder.offer_ring(newer) is True
    assert holder.routes is not routes and holder.routes.state is newer
    # the old value answers as before: nothing of it changed in place
    assert routes.state is first and routes.lane(0) == lane and routes.targets(0) is targets
    assert routes.solo == solo and dict(routes.direct) == direct
    # a moving ring has no direct lane and no partition served alone
    assert dict(holder.routes.direct) == {} and holder.routes.solo == frozenset()
    assert listener.calls == [(None, first), (first, newer)]
    assert RS.load(str(tmp_path)) == newer                      # kept on disk
    assert holder.offer_ring(first) is False                    # older: refused
    assert holder.offer_ring(_state(q=32, epoch=9)) is False    # another shape: refused
    assert holder.state is newer


def test_a_liveness_change_gives_a_new_routes_value_and_leaves_the_old_one_as_it_was(tmp_path):
    down = set()
    holder = _holder(tmp_path, down=down)
    holder.install_ring(_state(), save=False)
    before = holder.routes_now()
    assert holder.routes_now() is before                        # no change: the same value
    p = next(p for p in range(16) if "b" in holder.ring.preference_list(p))
    targets = before.targets(p)
    down.add("b")                                               # gossip marks b down
    after = holder.routes_now()
    assert after is not before and holder.routes is after
    assert after.down == frozenset({"b"}) and before.down == frozenset()
    assert before.targets(p) is targets and all(t.node != "b" for t in after.targets(p).targets)
    assert any(t.hint_for == "b" for t in after.targets(p).targets)
    # what depends on the ring only is shared, the rest computed as the driver would
    assert after.lane(p) == before.lane(p) and after.solo is before.solo
    assert after.targets(p) == preflist_for(holder.ring, p, lambda n: n != "b")
    assert after.coordinator_route(p, True) == write_route(holder.ring, p, lambda n: n != "b",
                                                           "a", strict=True)
    down.discard("b")
    assert holder.routes_now() is not after and holder.routes.down == frozenset()
    assert holder.routes_now(down={"a"}).down == frozenset()    # this node is never down


def test_a_routes_value_refuses_changes():
    routes = Routes.of(_state(), "a")
    for field in ("state", "ring", "me", "down", "solo"):
        with pytest.raises(AttributeError):
            setattr(routes, field, None)
    with pytest.raises(TypeError):
        routes.direct[0] = None                                 # a read-only view
    assert Routes.of(_state(nodes=["a"], n=1), "a").solo == frozenset(range(16))
    assert Routes.of(_state(nodes=["a", "b"], n=3), "a").direct == {}   # N above the nodes
    lane = Routes.of(_state(), "a").lane(0)
    assert lane is None or ("a" not in lane[0] and len(lane[0]) == 2)


def test_a_joining_node_waits_for_its_first_ring(tmp_path):
    async def main():
        holder = _holder(tmp_path)
        with pytest.raises(asyncio.TimeoutError):
            await holder.wait_ready(0.01)
        waiting = asyncio.ensure_future(holder.wait_ready(5))
        await asyncio.sleep(0)
        holder.offer_ring(_state())
        await waiting
        assert holder.holds(0) == ("a" in holder.ring.preference_list(0))
        assert holder.extra_targets(0) == ()

    asyncio.run(main())


class _Conn:
    def __init__(self, state, version=3, paused=False):
        from kvnet.peer.core import READY
        self.state = READY if state else "closed"
        self.version, self._write_paused = version, paused


class _Pool:
    def __init__(self, conns):
        self.conns, self.asked = conns, []

    def get(self, peer):
        self.asked.append(peer)
        return self.conns.get(peer)


def test_lanes_keep_connection_state_apart_from_routing():
    routes = Routes.of(_state(), "a")
    p, lane = next((p, routes.lane(p)) for p in range(16) if routes.lane(p) is not None)
    x, y = lane[0]
    pool = _Pool({x: _Conn(True), y: _Conn(True)})
    down = set()
    lanes = Lanes(pool, down)
    conns, pl = lanes.pick(lane)
    assert conns == [pool.conns[x], pool.conns[y]] and pl is lane[1]
    assert lanes.pick(lane)[0] == conns and pool.asked == [x, y]     # kept: not asked again
    down.add(y)
    assert lanes.pick(lane) is None
    down.discard(y)
    pool.conns[y]._write_paused = True
    assert lanes.pick(lane) is None
    pool.conns[y] = _Conn(True, version=1)                      # an older node: no batches
    lanes.conns[y].state = "closed"
    assert lanes.pick(lane) is None
    assert lanes.pick(None) is None
    lanes.forget()
    assert lanes.conns == {}
