"""The ring holder: a node's ring and its routes (riak_core_ring_manager's role).

It owns ring installs: a ring state offered by gossip or the claimant is installed when it is
newer (and of the cluster's shape), kept in the data directory, and turned into a routes value
(kvnet/routes.py). What a node does after a settled ring (drop the partitions it no longer
holds, move hints of removed members, leave when it is out) is its listener's
(`RingListener`). The routes value is rebuilt on every install and on every change of the set
of members routing treats as down (`routes_now`, which compares the set it is given with the
value's), and swapped in whole.
"""
import asyncio
import logging

from kvnet.membership import ringstate as RS
from kvnet.routes import Routes

log = logging.getLogger("kvnet.ringholder")


class RingListener:
    """What a ring holder tells its node (kvnet/node.py implements it; a test, a fake)."""

    def ring_installed(self, old, state):
        """`state` replaced `old` (None at the first install); called after the routes value
        and the saved copy are updated."""


class RingHolder:
    """Node `me`'s ring. `data_dir`: where an installed ring is kept (RS.save); `is_up(node)`:
    routing's view of a member (routes_now); `listener`: a RingListener."""

    def __init__(self, me, data_dir, is_up=None, listener=None):
        self.me = me
        self.data_dir = data_dir
        self.is_up = is_up
        self.listener = listener or RingListener()
        self.state = None
        self.ring = None
        self.routes = Routes.of(None, me)
        self._ready = None

    # ---- reading ---------------------------------------------------------------------------

    def ring_order(self):
        return (0, "") if self.state is None else self.state.order

    def holds(self, p, node=None):
        """Does `node` (this one by default) hold partition p by the ring (current or next)?"""
        return self.state is not None and self.state.holds(node or self.me, p)

    def extra_targets(self, p):
        """Nodes a ring change is adding to p's replicas (driver.Cluster.extra_targets)."""
        state = self.state
        if state is None or state.next is None:
            return ()
        return state.extra_targets(p)       # a down one gets a hint (driver.store_extra)

    def down_now(self):
        """The ring's members routing treats as down now (is_up's view)."""
        is_up, me = self.is_up, self.me
        return frozenset(n for n in self.ring.nodes if n != me and not is_up(n))

    def routes_now(self, down=None):
        """The routes value for the down set now (`down`, else down_now()): the current one
        when that set has not changed, else a new one, which becomes the current one."""
        routes = self.routes
        if routes.ring is None:
            return routes
        down = self.down_now() if down is None else down
        if down == routes.down:         # (the common case: no allocation beyond down_now's)
            return routes
        new = self.routes = routes.with_down(down)
        return new

    # ---- installing ------------------------------------------------------------------------

    def offer_ring(self, state):
        """A ring state from gossip or the claimant: installed if newer than ours (never one
        of another shape: Q and N are fixed for the cluster's life). True if installed."""
        mine = self.ring
        if mine is not None and (state.current.q, state.current.n) != (mine.q, mine.n):
            log.warning("node %s: refused a ring of Q=%d N=%d from gossip (ours: Q=%d N=%d)",
                        self.me, state.current.q, state.current.n, mine.q, mine.n)
            return False
        if state.newer_than(self.state):
            log.info("node %s: ring epoch %d from %s%s", self.me, state.epoch,
                     state.claimant or "config", " (moving)" if state.moving else "")
            self.install_ring(state)
            return True
        return False

    def install_ring(self, state, save=True):
        """Make `state` this node's ring: a new routes value (with the down set of the one it
        replaces), kept on disk unless `save` is False, the ring-ready event set, and the
        listener told."""
        old = self.state
        self.state = state
        self.ring = state.current
        self.routes = Routes.of(state, self.me, self.routes.down)
        if save:
            RS.save(self.data_dir, state)
        if self._ready is not None:
            self._ready.set()
        self.listener.ring_installed(old, state)

    async def wait_ready(self, timeout):
        """Until a ring is installed (a joining node: the seeds' gossip brings it); raises
        asyncio.TimeoutError after `timeout` seconds."""
        if self.state is not None:
            return
        self._ready = asyncio.Event()
        await asyncio.wait_for(self._ready.wait(), timeout)
