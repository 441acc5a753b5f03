"""The front door's backend (kvnet/frontdoor.py) against a fake node: it needs only FrontHost,
the coordinator's Cluster and the replica's host, so it runs without peers or services."""
import asyncio

import pytest

from kvcore.ring import Ring
from kvnet.config import load
from kvnet.errors import CommandError
from kvnet.frontdoor import FrontDoor, FrontHost
from kvnet.membership import ringstate as RS
from kvnet.replica import LocalReplica
from kvnet.replicahandlers import ReplicaHandlers
from kvnet.resp.backend import LATER
from kvnet.ringholder import RingHolder
from kvnet.routes import Lanes


class _Alone(FrontHost):
    """One node of a one-node ring, with no peers (every other member would be down)."""

    def __init__(self, tmp_path):
        self.cfg = cfg = load(name="a", n=1, r=1, w=1, ring_size=16, data_dir=str(tmp_path),
                              fsync="never", max_key_bytes=32, max_value_bytes=64)
        self.name, self.timeout, self.hints = "a", 1.0, None
        self.rings = RingHolder("a", str(tmp_path), self.is_up)
        self.rings.install_ring(RS.RingState(Ring.create(["a"], q=16, n=1)), save=False)
        self.replica = LocalReplica(str(tmp_path), "a", fsync="never", index_skip_bits=4,
                                    max_key_bytes=32)
        self.replica.open_existing()
        self.answers = ReplicaHandlers(self, self.rings, self.replica, cfg)
        self.lanes = Lanes(None, set())
        self.stats = {"gets": 0, "puts": 0, "deletes": 0}

    @property
    def ring(self):
        return self.rings.ring

    def is_up(self, node):
        return node == self.name

    def spawn(self, coro):
        return asyncio.ensure_future(coro)

    async def call(self, node, type, payload, timeout):
        raise AssertionError(f"no peer to call: {node} {type}")


def test_the_backend_runs_against_a_fake_node(tmp_path):
    async def main():
        host = _Alone(tmp_path)
        front = FrontDoor(host)
        try:
            assert host.rings.routes.solo == frozenset(range(16))
            assert front.set_overwrite_now(b"k", b"v") is None          # served alone: at once
            assert front.get_lww_now(b"k") == b"v" and front.get_lww_now(b"nope") is None
            assert host.stats["puts"] == 1 and host.stats["gets"] == 2
            with pytest.raises(CommandError, match="above the limit"):
                front.set_overwrite_now(b"k", b"x" * 65)
            with pytest.raises(CommandError, match="keys must be non-empty"):
                front.get_lww_now(b"")
            # the versioned API through the coordinator's driver, with this fake as its Cluster
            ctx = await front.put(b"j", b"1")
            reply = await front.get(b"j")
            assert [s.value for s in reply.siblings] == [b"1"] and reply.context == ctx
            await front.delete(b"j", ctx)
            assert [s.value for s in (await front.get(b"j")).siblings] in ([], [None])
            assert await front.delete_overwrite(b"k") is True and await front.get_lww(b"k") is None
            host.replica.fsync = "always"                                # acks wait for a sync
            assert front.set_overwrite_now(b"k", b"v") is LATER
        finally:
            await host.replica.close()

    asyncio.run(main())
