"""The cluster's ring as gossiped state: the current ring, the next one while partitions move,
who made it, and what must move (riak_core's ring with its `next` list, kept as a value).

Pure values, no I/O but `load`/`save` of one file. A ring change goes through two states:

- *moving*: `next` is set. Requests still follow `current` (its preference lists answer reads
  and count toward W), and every write is also sent to the nodes that `next` adds to the key's
  preference list, so nothing written during the move is missed. Each of those nodes receives
  a full copy of the partition from an old replica (a *transfer*).
- *settled*: when every transfer is confirmed, the claimant installs `next` as `current`. Only
  then may a node drop a partition it no longer replicates.

States are ordered by `(epoch, claimant)` (docs/algorithms.md, section 5): every transition takes
epoch + 1, so two claimants that both acted in a split brain leave one winner, and a node keeps
whichever state it sees that is higher.
"""
import os
from typing import NamedTuple

import msgpack

from kvcore import claim
from kvcore.errors import RingError
from kvcore.ring import Ring
from kvcore.zones import members_of, zone_labels
from kvcore.storage.files import fsync_dir, write_file

__all__ = ["RingState", "Transfer", "transfers", "plan_ring", "relayout", "zone_problems",
           "zones_differ", "encode", "decode", "load", "save", "RING_FILE"]

RING_FILE = "RING"


class Transfer(NamedTuple):
    """Partition p must be copied to `to` (a new replica of it) from one of `sources`."""

    partition: int
    to: str
    sources: tuple


class RingState(NamedTuple):
    current: Ring
    next: Ring | None = None
    epoch: int = 1
    claimant: str = ""             # "" for the first ring, made from the configured members

    @property
    def order(self):
        return (self.epoch, self.claimant)

    @property
    def moving(self):
        return self.next is not None

    def newer_than(self, other):
        return other is None or self.order > other.order

    def extra_targets(self, p):
        """Nodes that `next` adds to partition p's preference list (writes go to them too)."""
        if self.next is None:
            return ()
        cur = self.current.preference_list(p)
        return tuple(x for x in self.next.preference_list(p) if x not in cur)

    def holds(self, node, p):
        """Is node a replica of p now or, while moving, in the next ring?"""
        if node in self.current.preference_list(p):
            return True
        return self.next is not None and node in self.next.preference_list(p)

    def members(self):
        nodes = set(self.current.nodes)
        if self.next is not None:
            nodes |= set(self.next.nodes)
        return sorted(nodes)


def transfers(current, nxt):
    """Every (partition, new replica, old replicas to copy from) the move from current to nxt
    needs, in partition order."""
    out = []
    for p in range(current.q):
        old = current.preference_list(p)
        for x in nxt.preference_list(p):
            if x not in old:
                out.append(Transfer(p, x, tuple(old)))
    return out


def plan_ring(current, join=(), leave=(), zones=None):
    """The ring after adding `join` and removing `leave` (each a node id), by kvcore's claim,
    one node at a time; the epoch is left to the caller. `zones` ({node id: zone or None}, what
    gossip says each member's config has): a joiner's zone, and when a member's zone differs
    from the ring's, the ring takes it (Ring.with_zones) after the joins and leaves."""
    zones = zones or {}
    ring = current
    try:
        for node in sorted(set(join)):
            if node in ring.nodes:
                raise ValueError(f"{node} is already a member of the ring")
            ring = ring.with_node((node, zones.get(node)))
        for node in sorted(set(leave)):
            if node not in ring.nodes:
                raise ValueError(f"{node} is not a member of the ring")
            if len(ring.nodes) == 1:
                raise ValueError("the last member cannot leave")
            ring = ring.without_node(node)
        changed = zones_differ(ring, zones)
        if changed:
            ring = ring.with_zones(changed)
    except RingError as exc:
        raise ValueError(str(exc)) from None
    return ring


def zone_problems(ring):
    """Why the ring's preference lists are not each n consecutive owners in n distinct zones
    (claim.check with the zones' labels: the windows of n partitions that repeat a zone), or []
    when they are, or when the zones do not ask for spacing (zone_labels: none, too few, or too
    unequal)."""
    lab = zone_labels(members_of(ring), ring.q, ring.n)
    if lab is None:
        return []
    return claim.check(ring.owners, sorted(ring.nodes), ring.n, lab)


def relayout(ring):
    """The ring with a zone-spaced layout again (`KV.CLUSTER RELAYOUT`): joins and leaves move
    as few partitions as they can, so after many of them the zones' spacing wears off (each
    keeps the node spacing instead); this lays the owners out anew by zone (claim.restripe
    with the labels, keeping the owners it finds a way to: more than minimal moves, far fewer
    than a fresh layout), epoch + 1. ValueError naming why when there is nothing to do."""
    members = members_of(ring)
    if all(z is None for z in members.values()):
        raise ValueError("no member of the ring has a zone: nothing to lay out by zone")
    if zone_labels(members, ring.q, ring.n) is None:
        raise ValueError(f"the zones of the {len(members)} members cannot each hold a "
                         f"balanced share with every window of N={ring.n} partitions in N "
                         f"zones (too few zones, or too unequal); see docs/cluster.md, "
                         f"\"Zones\"")
    if not zone_problems(ring):
        raise ValueError("every preference list already spans N zones: nothing to relayout")
    try:
        nxt = ring.with_zones({})
    except RingError as exc:
        raise ValueError(str(exc)) from None
    if zone_problems(nxt):
        raise ValueError("no zone-spaced layout found for these members")
    return nxt


def zones_differ(ring, zones):
    """{member: zone} of the ring's members whose zone in `zones` differs from the ring's (a
    member `zones` does not name is left as it is)."""
    return {x: zones[x] for x, z in ring.members if x in zones and zones[x] != z}


def encode(state):
    return msgpack.packb({"cur": state.current.to_bytes(),
                          "next": None if state.next is None else state.next.to_bytes(),
                          "epoch": state.epoch, "claimant": state.claimant}, use_bin_type=True)


def decode(data):
    """RingState from `encode` output; ValueError on anything else."""
    try:
        m = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise ValueError(f"ring state is not msgpack: {exc}") from None
    if not isinstance(m, dict) or not isinstance(m.get("cur"), bytes):
        raise ValueError("ring state must be a map with the current ring's bytes")
    epoch, claimant = m.get("epoch"), m.get("claimant")
    if type(epoch) is not int or not 1 <= epoch < 1 << 63 or not isinstance(claimant, str) \
            or len(claimant) > 64:
        raise ValueError("ring state needs an epoch >= 1 and a claimant id")
    cur = Ring.from_bytes(m["cur"])
    nxt = m.get("next")
    if nxt is not None:
        if not isinstance(nxt, bytes):
            raise ValueError("ring state: next must be ring bytes")
        nxt = Ring.from_bytes(nxt)
        if nxt.q != cur.q or nxt.n != cur.n:
            raise ValueError("ring state: next ring has another Q or N")
    return RingState(cur, nxt, epoch, claimant)


def load(data_dir):
    """The ring state kept in data_dir, or None when there is none."""
    try:
        with open(os.path.join(data_dir, RING_FILE), "rb") as f:
            return decode(f.read())
    except FileNotFoundError:
        return None


def save(data_dir, state):
    """Replace the file atomically: a crash leaves the old state or the new, never half."""
    path = os.path.join(data_dir, RING_FILE)
    write_file(path + ".tmp", encode(state))
    os.replace(path + ".tmp", path)
    fsync_dir(data_dir)
