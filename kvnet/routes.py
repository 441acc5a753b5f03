"""Where a node sends each partition's requests: one immutable value per (ring state, down set).

`Routes` answers, for the ring state it was built from and the set of members routing treats as
down: the targets of a partition (up primaries and fallbacks, kvnet/coordinator/preflist.py),
who coordinates a write to it, the partitions this node alone replicates (`solo`: their plain
GET and SET need no peer) and the partitions of the direct lane (`lane(p)`: this node one of N
distinct primaries). The ring holder (kvnet/ringholder.py) builds a new value on every ring
install and every change of the down set, and swaps it in whole: a holder of an older value
keeps a consistent one, never a half-updated one. Its fields are read-only; the targets and
routes are computed on first use (each a pure function of the fields) and kept in the value.

`Lanes` is not routing: which ready connection the direct lane uses to each peer, and whether
that peer takes writes now. It is kept apart (riak_core keeps its ring and its connections
apart too): connections come and go without a new routes value.

Compiled by the build (kvnet/compiled.py); kvnet/routes.pxd declares both classes for the
compiled front door (kvnet/localdoor.pyx), which reads them in C.
"""
from types import MappingProxyType

from kvnet.coordinator.preflist import preflist_for, write_route
from kvnet.peer.core import BATCH_VERSION, READY

_FIELDS = frozenset(("state", "ring", "me", "down", "solo", "_direct", "_targets", "_routes"))


class Routes:
    """The routes of ring state `state` for node `me` with the members in `down` routed around
    (`me` never is). Build the first with `Routes.of(state, me)`; `with_down(down)` gives the
    value for another down set (sharing what depends on the ring only)."""

    def __init__(self, state, me, down, solo, direct):
        self.state = state
        self.ring = None if state is None else state.current
        self.me = me
        self.down = down
        self.solo = solo
        self._direct = direct
        self._targets = {}
        self._routes = {}

    def __setattr__(self, name, value):
        # (compiled, the fields are read-only C members and __init__ sets them directly; in
        # plain Python each is set once, by __init__)
        own = getattr(self, "__dict__", None)
        if own is not None and name in _FIELDS and name not in own:
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"a Routes value is immutable ({name}): the ring holder builds "
                             "a new one")

    @staticmethod
    def of(state, me, down=frozenset()):
        """The routes of ring state `state` (None: no ring yet, a joining node) for `me`."""
        if state is None:
            return Routes(None, me, frozenset(), frozenset(), {})
        return Routes(state, me, frozenset(down) - {me}, _solo_partitions(state, me),
                      _direct_partitions(state, me))

    def with_down(self, down):
        """This value for the down set `down`: itself when it is the same set."""
        down = frozenset(down) - {self.me}
        if down == self.down:
            return self
        return Routes(self.state, self.me, down, self.solo, self._direct)

    def is_up(self, node):
        return node not in self.down

    def targets(self, p, strict=False):
        """p's targets now (driver.Cluster.targets), computed once per value."""
        key = (p, strict)
        pl = self._targets.get(key)
        if pl is None:
            pl = self._targets[key] = preflist_for(self.ring, p, self.is_up, strict=strict)
        return pl

    def coordinator_route(self, p, strict=False):
        """Who coordinates a write to p now (driver.Cluster.coordinator_route)."""
        key = (p, strict)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = write_route(self.ring, p, self.is_up, self.me,
                                                    strict=strict)
        return route

    def lane(self, p):
        """(p's other primaries, p's Preflist with every primary up) when p is on the direct
        lane, else None."""
        return self._direct.get(p)

    @property
    def direct(self):
        """{p: lane(p)} of the partitions on the direct lane (a read-only view)."""
        return MappingProxyType(self._direct)


def _solo_partitions(state, me):
    """The partitions `me` alone replicates (N=1, or a one-node ring) while the ring is not
    moving: their plain GET and SET need no routing, quorum or peer, so they take the local
    replica directly (the driver would come to the same answer, more slowly)."""
    if state.next is not None:
        return frozenset()
    ring = state.current
    only = [me]
    return frozenset(p for p in range(ring.q) if list(ring.preference_list(p)) == only)


def _direct_partitions(state, me):
    """{p: (p's other primaries, p's Preflist with every primary up)} for the partitions of
    which `me` is one of N distinct primaries, while the ring is not moving: a plain GET or
    SET there goes straight to the other primaries when all are up (Lanes.pick)."""
    if state.next is not None:
        return {}
    ring = state.current
    out = {}
    for p in range(ring.q):
        prefs = list(ring.preference_list(p))
        if len(prefs) == ring.n > 1 and me in prefs:
            out[p] = (tuple(x for x in prefs if x != me), preflist_for(ring, p, _always))
    return out


def _always(node):
    return True


class Lanes:
    """The direct lane's connections: for each peer, the ready connection it last used.
    `pool` is the node's PeerPool (its `get(peer)`: the best ready connection or None);
    `down` is the live set of peers marked down (Gossip.down_peers: read, never changed)."""

    def __init__(self, pool, down):
        self.pool = pool
        self.down = down
        self.conns = {}

    def pick(self, lane):
        """(ready connections to the lane's other primaries, its Preflist) when a write can
        skip routing, the Preflist and the coroutines: every other primary is up (not marked
        down) and its connection takes writes now. Else None: the driver's path, which decides
        the same way from the same facts, more slowly. `lane` is Routes.lane(p)."""
        if lane is None:
            return None
        conns = []
        down = self.down
        cache = self.conns
        # (the attributes behind PeerConnection.is_ready and .write_paused: this runs once per
        # GET and SET, and a property is a Python call each)
        for x in lane[0]:
            conn = cache.get(x)
            if conn is None or conn.state is not READY:   # closed: ask the pool for its best
                cache.pop(x, None)
                conn = self.pool.get(x)
                if conn is None or conn.version < BATCH_VERSION:   # an older node: no mput
                    return None
                cache[x] = conn
            if conn._write_paused or x in down:
                return None
            conns.append(conn)
        return conns, lane[1]

    def forget(self):
        """Drop every kept connection (a new ring: none is kept to a node that left)."""
        self.conns.clear()
