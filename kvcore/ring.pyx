"""The partitioned ring: an immutable value with its owner table and preference lists in C
arrays (docs/ring.md; Dynamo's strategy 3 as in riak_core's chash). Same API as ring_py."""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.tuple cimport PyTuple_GET_ITEM
from libc.stdint cimport int64_t, uint16_t
from libc.string cimport memset

import struct

import numpy as np

from kvcore import claim
from kvcore.errors import RingError
from kvcore.hashing import crc32c

cdef extern from "Python.h":
    bint PyBytes_CheckExact(object o)

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


@cython.boundscheck(False)
cdef void _walk(const uint16_t *owner, const int *zone_of, Py_ssize_t q, Py_ssize_t p, int count,
                int zones, uint16_t *out, char *chosen, char *used) noexcept nogil:
    # The first `count` distinct members clockwise from p: distinct zones first, then any.
    # chosen/used are zeroed scratch arrays (members, zones); they are left zeroed again.
    cdef int got = 1, nzones = 1, i
    cdef Py_ssize_t k
    cdef uint16_t x = owner[p]
    out[0] = x
    chosen[x] = 1
    used[zone_of[x]] = 1
    k = 1
    while got < count and nzones < zones and k < q:
        x = owner[(p + k) % q]
        if not chosen[x] and not used[zone_of[x]]:
            out[got] = x
            got += 1
            chosen[x] = 1
            used[zone_of[x]] = 1
            nzones += 1
        k += 1
    k = 1
    while got < count and k < q:
        x = owner[(p + k) % q]
        if not chosen[x]:
            out[got] = x
            got += 1
            chosen[x] = 1
        k += 1
    for i in range(got):
        chosen[out[i]] = 0
        used[zone_of[out[i]]] = 0


@cython.final
cdef class Ring:
    """An immutable ring: epoch, members, Q partitions, owner table and preference lists.

    Ring(members, owners, n=3, epoch=1) takes a finished owner table (one node id per partition);
    Ring.create, with_node and without_node get theirs from kvcore.claim.
    """

    def __cinit__(self):
        self.owner_idx = NULL
        self.pref_idx = NULL

    def __dealloc__(self):
        PyMem_Free(self.owner_idx)
        PyMem_Free(self.pref_idx)

    def __init__(self, members, owners, n=3, epoch=1):
        if self.owner_idx != NULL:
            raise RingError("Ring is immutable")
        members = normalize_members(members)
        owners = tuple(owners)
        self.qbits = qbits_of(len(owners))
        if not isinstance(epoch, int) or not 0 <= epoch < 1 << 64:
            raise RingError(f"epoch must be an int from 0 to 2**64-1, got {epoch!r}")
        self.epoch = int(epoch)
        self.n = check_n(n)
        self.q = len(owners)
        self.members = members
        self.nodes = tuple(x for x, _ in members)
        self.owners = owners
        self.hash_ = None
        index = {x: i for i, x in enumerate(self.nodes)}
        self.zone = {}
        zone_ids = {}
        for node, z in members:
            self.zone[node] = z if z is not None else ("", node)
        cdef Py_ssize_t p, s = len(members)
        self.owner_idx = <uint16_t *>PyMem_Malloc(self.q * sizeof(uint16_t))
        if self.owner_idx == NULL:
            raise MemoryError()
        for p in range(self.q):
            x = owners[p]
            if x not in index:
                raise RingError(f"owner {x!r} is not a member")
            self.owner_idx[p] = index[x]
        owning = set(owners)
        for x in sorted(owning):
            zone_ids.setdefault(self.zone[x], len(zone_ids))
        self.nr = min(n, len(owning))
        self._build_prefs([zone_ids.get(self.zone[x], 0) for x in self.nodes], len(zone_ids))

    cdef _build_prefs(self, list zone_list, int zones):
        cdef Py_ssize_t p, i, s = len(self.nodes)
        cdef int *zone_of = <int *>PyMem_Malloc(s * sizeof(int))
        cdef char *scratch = <char *>PyMem_Malloc(s + zones + 1)
        self.pref_idx = <uint16_t *>PyMem_Malloc(self.q * self.nr * sizeof(uint16_t))
        if zone_of == NULL or scratch == NULL or self.pref_idx == NULL:
            PyMem_Free(zone_of)
            PyMem_Free(scratch)
            raise MemoryError()
        for i in range(s):
            zone_of[i] = zone_list[i]
        memset(scratch, 0, s + zones + 1)
        with nogil:
            for p in range(self.q):
                _walk(self.owner_idx, zone_of, self.q, p, self.nr, zones,
                      self.pref_idx + p * self.nr, scratch, scratch + s)
        PyMem_Free(zone_of)
        PyMem_Free(scratch)
        nodes = self.nodes
        self.prefs = tuple(
            tuple(nodes[self.pref_idx[p * self.nr + i]] for i in range(self.nr)) for p in range(self.q))

    @classmethod
    def create(cls, nodes, q=256, n=3, epoch=1):
        """A first ring for `nodes` (ids or (id, zone) pairs), laid out by claim.initial (spaced
        by zone when the zones allow it)."""
        members = normalize_members(nodes)
        qbits_of(q)
        check_n(n)
        return cls(members, claim.initial(members, q, n), n, epoch)

    # -- lookups ------------------------------------------------------------------------------

    cdef Py_ssize_t partition_arg(self, object k) except -1:
        cdef const unsigned char[::1] view
        if self.owner_idx == NULL:
            raise RingError("Ring.__init__ was not called")
        if PyBytes_CheckExact(k):
            return partition_c(self, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))
        if isinstance(k, int):
            if not 0 <= k < self.q:
                raise IndexError(f"partition {k} out of range(0, {self.q})")
            return k
        if isinstance(k, str):
            raise TypeError("a key is bytes, not str")
        view = k
        if view.shape[0] == 0:
            return partition_c(self, b"", 0)
        return partition_c(self, <const char *>&view[0], view.shape[0])

    @cython.always_allow_keywords(False)
    def partition_of(self, key):
        """Partition of a bytes key: the top log2(Q) bits of its murmur3 token."""
        if PyBytes_CheckExact(key):
            return partition_c(self, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        if isinstance(key, int):
            raise TypeError("a key is bytes, not int")
        return self.partition_arg(key)

    @cython.always_allow_keywords(False)
    def owner(self, p):
        """Node id owning partition p (an int)."""
        if not isinstance(p, int):
            raise TypeError(f"a partition is an int, got {type(p).__name__}")
        return self.owners[self.partition_arg(p)]

    @cython.always_allow_keywords(False)
    def preference_list(self, key_or_partition):
        """min(n, S) distinct node ids: the owner, then clockwise (distinct zones first)."""
        cdef Py_ssize_t p
        if self.owner_idx == NULL:
            raise RingError("Ring.__init__ was not called")
        if PyBytes_CheckExact(key_or_partition):
            p = partition_c(self, PyBytes_AS_STRING(key_or_partition), PyBytes_GET_SIZE(key_or_partition))
        else:
            p = self.partition_arg(key_or_partition)
        return <object>PyTuple_GET_ITEM(self.prefs, p)

    def extended_preference_list(self, key_or_partition):
        """Every node that owns a partition, in fallback order: the preference list, then the
        further distinct nodes met walking clockwise (docs/algorithms.md, section 2)."""
        cdef Py_ssize_t p = self.partition_arg(key_or_partition), k
        prefs = <object>PyTuple_GET_ITEM(self.prefs, p)
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

    @cython.boundscheck(False)
    def lookup_many(self, keys):
        """Partitions of many bytes keys, as a numpy int64 array (the hashing runs without the
        GIL over (pointer, length) pairs gathered from the list)."""
        cdef tuple seq = keys if type(keys) is tuple else tuple(keys)
        cdef Py_ssize_t i, count = len(seq)
        out = np.empty(count, dtype=np.int64)
        if count == 0:
            return out
        cdef int64_t[::1] res = out
        cdef const char **ptrs = <const char **>PyMem_Malloc(count * sizeof(char *))
        cdef Py_ssize_t *lens = <Py_ssize_t *>PyMem_Malloc(count * sizeof(Py_ssize_t))
        cdef object item
        if ptrs == NULL or lens == NULL:
            PyMem_Free(ptrs)
            PyMem_Free(lens)
            raise MemoryError()
        try:
            for i in range(count):
                item = <object>PyTuple_GET_ITEM(seq, i)
                if PyBytes_CheckExact(item):
                    ptrs[i] = PyBytes_AS_STRING(item)
                    lens[i] = PyBytes_GET_SIZE(item)
                else:  # other bytes-likes: hashed here, with the GIL
                    if isinstance(item, int):
                        raise TypeError("a key is bytes, not int")
                    res[i] = self.partition_arg(item)
                    lens[i] = -1
            with nogil:
                for i in range(count):
                    if lens[i] >= 0:
                        res[i] = partition_c(self, ptrs[i], <size_t>lens[i])
        finally:
            PyMem_Free(ptrs)
            PyMem_Free(lens)
        return out

    # -- changes ------------------------------------------------------------------------------

    def with_node(self, node):
        """A new ring with `node` (an id or (id, zone)) added and epoch + 1."""
        (new_id, zone), = normalize_members([node])
        if new_id in self.zone:
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
        out = bytearray(HEADER.pack(MAGIC, VERSION, self.n, self.qbits, 0, self.epoch, len(self.members)))
        for node, zone in self.members:
            raw = node.encode()
            out += bytes([len(raw)]) + raw
            if zone is None:
                out.append(NO_ZONE)
            else:
                raw = zone.encode()
                out += bytes([len(raw)]) + raw
        out += (<char *>self.owner_idx)[:2 * self.q] if _LITTLE else struct.pack(
            f"<{self.q}H", *[self.owner_idx[i] for i in range(self.q)])
        out += struct.pack("<I", crc32c(out))
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
        if crc != crc32c(data[:len(data) - 4]):
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
        return self._key() == (<Ring>other)._key()

    def __hash__(self):
        if self.hash_ is None:
            self.hash_ = hash(self._key())
        return self.hash_

    def __repr__(self):
        return f"<Ring epoch={self.epoch} q={self.q} n={self.n} nodes={len(self.members)}>"

    def __reduce__(self):
        return (type(self).from_bytes, (self.to_bytes(),))


_LITTLE = struct.pack("=H", 1) == b"\x01\x00"


def diff(old, new):
    """Ownership transfers from old to new: [(partition, from_node, to_node)]."""
    return claim.diff(old, new)
