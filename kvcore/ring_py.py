"""Reference twin of kvcore.ring: the same immutable Ring in plain Python (docs/ring.md).

A test oracle and a readable statement of the semantics; selected at runtime only by
RINGKV_NO_EXTENSIONS=1 (kvcore._native).
"""
import struct

import numpy as np

from kvcore import claim
from kvcore.errors import RingError
from kvcore.hashing_py import crc32c, token

MAGIC = b"RKVR"
VERSION = 1
# magic, version, n, qbits, flags, epoch, member count
HEADER = struct.Struct("<4sBBBBQH")
MAX_QBITS = 16
MAX_ID = 255
NO_ZONE = 0xFF


def normalize_members(nodes):
    """Members as ((id, zone or None), ...) sorted by id: an id is a non-empty str, a member is an
    id or an (id, zone) pair; ids are unique."""
    out = {}
    for item in nodes:
        if isinstance(item, str):
            node, zone = item, None
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            node, zone = item
        else:
            raise RingError(f"a member is a node id (str) or an (id, zone) pair, got {item!r}")
        if not isinstance(node, str) or not node or len(node.encode()) > MAX_ID:
            raise RingError(f"a node id is a non-empty str of at most {MAX_ID} UTF-8 bytes, got {node!r}")
        if zone is not None and (not isinstance(zone, str) or len(zone.encode()) >= NO_ZONE):
            raise RingError(f"a zone is None or a str of at most {NO_ZONE - 1} UTF-8 bytes, got {zone!r}")
        if node in out:
            raise RingError(f"duplicate node id {node!r}")
        out[node] = zone
    if not out:
        raise RingError("a ring needs at least one node")
    if len(out) > 0xFFFF:
        raise RingError("at most 65535 nodes")
    return tuple(sorted(out.items()))


def qbits_of(q):
    if not isinstance(q, int) or q < 1 or q & (q - 1) or q.bit_length() - 1 > MAX_QBITS:
        raise RingError(f"q must be a power of two from 1 to 2**{MAX_QBITS}, got {q!r}")
    return q.bit_length() - 1


def check_n(n):
    if not isinstance(n, int) or not 1 <= n <= 255:
        raise RingError(f"n must be an int from 1 to 255, got {n!r}")
    return n


def preference_walk(owners, zone_of, p, count, zones):
    """The first `count` distinct nodes walking clockwise from partition p: distinct zones first
    (a member without a zone is a zone of its own; `zones` counts the owners' zones), then any
    node not yet chosen."""
    q = len(owners)
    chosen = [owners[p]]
    used = {zone_of[owners[p]]}
    k = 1
    while len(chosen) < count and len(used) < zones and k < q:
        x = owners[(p + k) % q]
        if x not in chosen and zone_of[x] not in used:
            chosen.append(x)
            used.add(zone_of[x])
        k += 1
    k = 1
    while len(chosen) < count and k < q:
        x = owners[(p + k) % q]
        if x not in chosen:
            chosen.append(x)
        k += 1
    return tuple(chosen)


class Ring:
    """An immutable ring: epoch, members, Q partitions, owner table and preference lists.

    Ring(members, owners, n=3, epoch=1) takes a finished owner table (one node id per partition);
    Ring.create, with_node and without_node get theirs from kvcore.claim.
    """

    __slots__ = ("epoch", "q", "n", "members", "nodes", "owners", "_qbits", "_zone", "_prefs", "_hash")

    def __init__(self, members, owners, n=3, epoch=1):
        members = normalize_members(members)
        owners = tuple(owners)
        qbits = qbits_of(len(owners))
        if not isinstance(epoch, int) or not 0 <= epoch < 1 << 64:
            raise RingError(f"epoch must be an int from 0 to 2**64-1, got {epoch!r}")
        zone = {}
        for node, z in members:
            zone[node] = z if z is not None else ("", node)
        for x in owners:
            if x not in zone:
                raise RingError(f"owner {x!r} is not a member")
        set_ = object.__setattr__
        set_(self, "epoch", epoch)
        set_(self, "q", len(owners))
        set_(self, "n", check_n(n))
        set_(self, "members", members)
        set_(self, "nodes", tuple(x for x, _ in members))
        set_(self, "owners", owners)
        set_(self, "_qbits", qbits)
        set_(self, "_zone", zone)
        owning = set(owners)
        nr, zones = min(n, len(owning)), len({zone[x] for x in owning})
        set_(self, "_prefs", tuple(preference_walk(owners, zone, p, nr, zones) for p in range(len(owners))))
        set_(self, "_hash", None)

    def __setattr__(self, name, value):
        raise AttributeError("Ring is immutable")

    @classmethod
    def create(cls, nodes, q=256, n=3, epoch=1):
        """A first ring for `nodes` (ids or (id, zone) pairs), laid out by claim.initial (spaced
        by zone when the zones allow it)."""
        members = normalize_members(nodes)
        qbits_of(q)
        check_n(n)
        return cls(members, claim.initial(members, q, n), n, epoch)

    # -- lookups ------------------------------------------------------------------------------

    def partition_of(self, key):
        """Partition of a bytes key: the top log2(Q) bits of its murmur3 token."""
        if isinstance(key, (int, str)):
            raise TypeError(f"a key is bytes, not {type(key).__name__}")
        return token(key) >> (64 - self._qbits) if self._qbits else 0

    def _partition(self, key_or_partition):
        if isinstance(key_or_partition, int):
            if not 0 <= key_or_partition < self.q:
                raise IndexError(f"partition {key_or_partition} out of range(0, {self.q})")
            return key_or_partition
        return self.partition_of(key_or_partition)

    def owner(self, p):
        """Node id owning partition p (an int)."""
        if not isinstance(p, int):
            raise TypeError(f"a partition is an int, got {type(p).__name__}")
        return self.owners[self._partition(p)]

    def preference_list(self, key_or_partition):
        """min(n, S) distinct node ids: the owner, then clockwise (distinct zones first)."""
        return self._prefs[self._partition(key_or_partition)]

    def extended_preference_list(self, key_or_partition):
        """Every node that owns a partition, in fallback order: the preference list, then the
        further distinct nodes met walking clockwise (docs/algorithms.md, section 2)."""
        p = self._partition(key_or_partition)
        prefs = self._prefs[p]
        seen = set(prefs)
        out = list(prefs)
        for k in range(1, self.q):
            x = self.owners[(p + k) % self.q]
            if x not in seen:
                seen.add(x)
                out.append(x)
        return tuple(out)

    def partitions_of(self, node):
        """Partitions owned by `node`, ascending."""
        return [p for p, x in enumerate(self.owners) if x == node]

    def lookup_many(self, keys):
        """Partitions of many bytes keys, as a numpy int64 array."""
        return np.array([self.partition_of(k) for k in keys], dtype=np.int64)

    # -- changes ------------------------------------------------------------------------------

    def with_node(self, node):
        """A new ring with `node` (an id or (id, zone)) added and epoch + 1."""
        (new_id, zone), = normalize_members([node])
        if new_id in self._zone:
            raise RingError(f"{new_id!r} is already a member")
        got = claim.join(self, new_id, zone)
        return type(self)(self.members + ((new_id, zone),), got.owners, self.n, self.epoch + 1)

    def with_zones(self, zones):
        """A new ring with the members' zones from `zones` ({node id: zone or None}; a member
        left out keeps its zone) and epoch + 1; its owners by claim.rezone."""
        zones = dict(zones)
        members = normalize_members([(x, zones.get(x, z)) for x, z in self.members])
        got = claim.rezone(self, zones)
        return type(self)(members, got.owners, self.n, self.epoch + 1)

    def without_node(self, node_id):
        """A new ring without `node_id` and epoch + 1."""
        got = claim.leave(self, node_id)
        members = tuple(m for m in self.members if m[0] != node_id)
        return type(self)(members, got.owners, self.n, self.epoch + 1)

    # -- bytes --------------------------------------------------------------------------------

    def to_bytes(self):
        """Versioned encoding with a CRC-32C trailer (layout in docs/ring.md)."""
        index = {x: i for i, x in enumerate(self.nodes)}
        out = bytearray(HEADER.pack(MAGIC, VERSION, self.n, self._qbits, 0, self.epoch, len(self.members)))
        for node, zone in self.members:
            raw = node.encode()
            out += bytes([len(raw)]) + raw
            if zone is None:
                out.append(NO_ZONE)
            else:
                raw = zone.encode()
                out += bytes([len(raw)]) + raw
        out += struct.pack(f"<{self.q}H", *(index[x] for x in self.owners))
        out += struct.pack("<I", crc32c(bytes(out)))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data):
        """Decode to_bytes() output; RingError on anything else."""
        data = bytes(data)
        if len(data) < HEADER.size + 4:
            raise RingError(f"ring bytes too short ({len(data)} bytes)")
        magic, version, n, qbits, flags, epoch, count = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise RingError(f"not a ring encoding (magic {magic!r})")
        if version != VERSION:
            raise RingError(f"unsupported ring encoding version {version}")
        (crc,) = struct.unpack_from("<I", data, len(data) - 4)
        if crc != crc32c(data[:-4]):
            raise RingError("ring bytes fail their checksum")
        if flags or qbits > MAX_QBITS:
            raise RingError(f"bad ring header (flags {flags}, qbits {qbits})")
        pos, members, body = HEADER.size, [], len(data) - 4
        try:
            for _ in range(count):
                size = data[pos]
                node = data[pos + 1:pos + 1 + size].decode()
                pos += 1 + size
                size = data[pos]
                zone = None if size == NO_ZONE else data[pos + 1:pos + 1 + size].decode()
                pos += 1 + (0 if size == NO_ZONE else size)
                if pos > body:
                    raise IndexError
                members.append((node, zone))
            q = 1 << qbits
            if pos + 2 * q != body:
                raise RingError(f"ring bytes have {body - pos} bytes of owners, want {2 * q}")
            index = struct.unpack_from(f"<{q}H", data, pos)
            owners = tuple(members[i][0] for i in index)
        except (IndexError, UnicodeDecodeError) as exc:
            raise RingError(f"malformed ring bytes: {exc!r}") from None
        ring = cls(members, owners, n, epoch)
        if ring.members != tuple(members):
            raise RingError("ring members are not in canonical order")
        return ring

    # -- value semantics ----------------------------------------------------------------------

    def _key(self):
        return (self.epoch, self.n, self.members, self.owners)

    def __eq__(self, other):
        if not isinstance(other, Ring):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        if self._hash is None:
            object.__setattr__(self, "_hash", hash(self._key()))
        return self._hash

    def __repr__(self):
        return f"<Ring epoch={self.epoch} q={self.q} n={self.n} nodes={len(self.members)}>"

    def __reduce__(self):
        return (type(self).from_bytes, (self.to_bytes(),))


def diff(old, new):
    """Ownership transfers from old to new: [(partition, from_node, to_node)]."""
    return claim.diff(old, new)
