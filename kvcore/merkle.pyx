"""Per-partition tictac (XOR) Merkle trees for anti-entropy, updated in O(1) per write.

Follows Riak NextGen's tictac AAE; docs/algorithms.md, section 4 and docs/merkle.md give the
design, the leaf mapping, the byte layout and the exchange protocol.
"""
import sys
from collections import namedtuple

from cpython cimport array
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdio cimport fprintf, stderr
from libc.stdlib cimport abort, calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

from kvcore.hashing cimport kv_crc32c, token_of

import array

if sys.byteorder != "little":  # level()/to_bytes() copy the u64 arrays as they are in memory
    raise ImportError("kvcore.merkle needs a little-endian host")

cdef enum:
    _FORMAT_VERSION = 1
    _HEADER_SIZE = 16   # magic 4, version u16, log2(width) u8, depth u8, count i64
    _TRAILER_SIZE = 4   # CRC-32C of everything before it

MAGIC = b"RKMT"
FORMAT_VERSION = _FORMAT_VERSION
HEADER_SIZE = _HEADER_SIZE
TRAILER_SIZE = _TRAILER_SIZE
DEFAULT_WIDTH = 128
DEFAULT_DEPTH = 2

cdef array.array _U32 = array.array("I")


cdef inline bytes _b(object obj):
    # bytes as they are; other buffers copied; int/str rejected (memoryview(5) is a TypeError)
    if PyBytes_CheckExact(obj):
        return <bytes>obj
    return memoryview(obj).tobytes()


cdef int entry_hash_of(const char *key, size_t klen, const char *ver, size_t vlen,
                       uint64_t *out) except -1 nogil:
    cdef char stackbuf[STACK_KEYBUF]
    cdef char *buf = stackbuf
    cdef size_t n = 4 + klen + vlen
    if klen > 0xFFFFFFFFU:
        with gil:
            raise ValueError("key longer than 2**32 - 1 bytes")
    if n > STACK_KEYBUF:
        buf = <char *>malloc(n)
        if buf == NULL:
            with gil:
                raise MemoryError()
    buf[0] = <char>(klen & 0xFF)
    buf[1] = <char>((klen >> 8) & 0xFF)
    buf[2] = <char>((klen >> 16) & 0xFF)
    buf[3] = <char>((klen >> 24) & 0xFF)
    memcpy(buf + 4, key, klen)
    memcpy(buf + 4 + klen, ver, vlen)
    out[0] = token_of(buf, n)
    if buf != stackbuf:
        free(buf)
    return 0


def entry_hash(key, version):
    """h(key, version) = token(u32le(len(key)) + key + version): what a leaf XORs in."""
    cdef bytes k = _b(key)
    cdef bytes v = _b(version)
    cdef uint64_t h
    entry_hash_of(PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k), PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), &h)
    return h


cdef int _shape_bits(width, depth) except -1:
    if not isinstance(width, int) or width < 2 or (width & (width - 1)) or width > (1 << MAX_WIDTH_BITS):
        raise ValueError(f"width must be a power of two from 2 to {1 << MAX_WIDTH_BITS}, got {width!r}")
    if not isinstance(depth, int) or depth < 1 or depth > MAX_DEPTH:
        raise ValueError(f"depth must be from 1 to {MAX_DEPTH}, got {depth!r}")
    cdef int wbits = int(width).bit_length() - 1
    if wbits * depth > MAX_LEAF_BITS:
        raise ValueError(f"width ** depth must be at most 2**{MAX_LEAF_BITS} leaves, got {width}**{depth}")
    return wbits


cdef class MerkleTree:
    """A tictac tree of `width ** depth` leaf segments (default 128 ** 2 = 16,384)."""

    def __cinit__(self):
        self.nodes = NULL

    def __init__(self, width=DEFAULT_WIDTH, depth=DEFAULT_DEPTH):
        cdef int wbits = _shape_bits(width, depth)
        cdef int l
        if self.nodes != NULL:  # __init__ called twice
            free(self.nodes)
            self.nodes = NULL
        self.width = width
        self.depth = depth
        self.wbits = wbits
        self.lbits = wbits * depth
        self.mask = ((<uint64_t>1) << self.lbits) - 1
        self.count = 0
        self.offsets[0] = 0
        for l in range(depth + 1):
            self.offsets[l + 1] = self.offsets[l] + ((<Py_ssize_t>1) << (wbits * l))
        self.total = self.offsets[depth + 1]
        self.nodes = <uint64_t *>calloc(self.total, sizeof(uint64_t))
        if self.nodes == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.nodes)

    # --- cdef API ---

    cdef void xor_segment(self, uint64_t segment, uint64_t delta) noexcept nogil:
        cdef int l
        cdef uint64_t idx = segment
        for l in range(self.depth, -1, -1):
            self.nodes[self.offsets[l] + idx] ^= delta
            idx >>= self.wbits
        if KV_DEBUG and not self.path_ok(segment):
            fprintf(stderr, b"kvcore.merkle: invariant broken on the path of segment %llu\n",
                    <unsigned long long>segment)
            abort()

    cdef int update_c(self, const char *key, size_t klen,
                      const char *old, Py_ssize_t oldlen,
                      const char *new, Py_ssize_t newlen) except -1 nogil:
        cdef uint64_t delta = 0
        cdef uint64_t h
        if oldlen >= 0:
            entry_hash_of(key, klen, old, <size_t>oldlen, &h)
            delta ^= h
        if newlen >= 0:
            entry_hash_of(key, klen, new, <size_t>newlen, &h)
            delta ^= h
        self.count += (newlen >= 0) - (oldlen >= 0)
        if delta:
            self.xor_segment(self.segment_c(token_of(key, klen)), delta)
        return 0

    cdef void recompute_inner(self) noexcept nogil:
        cdef int l
        cdef Py_ssize_t i, n
        cdef uint64_t *parent
        cdef uint64_t *child
        for l in range(self.depth - 1, -1, -1):
            parent = self.nodes + self.offsets[l]
            child = self.nodes + self.offsets[l + 1]
            n = self.offsets[l + 1] - self.offsets[l]
            memset(parent, 0, n * sizeof(uint64_t))
            for i in range(self.offsets[l + 2] - self.offsets[l + 1]):
                parent[i >> self.wbits] ^= child[i]

    cdef bint path_ok(self, uint64_t segment) noexcept nogil:
        cdef int l
        cdef Py_ssize_t k, first
        cdef uint64_t acc
        cdef uint64_t idx = segment >> self.wbits
        for l in range(self.depth - 1, -1, -1):
            acc = 0
            first = self.offsets[l + 1] + (<Py_ssize_t>idx << self.wbits)
            for k in range(self.width):
                acc ^= self.nodes[first + k]
            if acc != self.nodes[self.offsets[l] + idx]:
                return False
            idx >>= self.wbits
        return True

    # --- updates ---

    def update(self, key, old, new):
        """XOR h(key, old) out and h(key, new) in; None means absent (insert / delete)."""
        cdef bytes k = _b(key)
        cdef bytes o, n
        cdef const char *op = NULL
        cdef const char *np = NULL
        cdef Py_ssize_t ol = -1, nl = -1
        if old is not None:
            o = _b(old)
            op = PyBytes_AS_STRING(o)
            ol = PyBytes_GET_SIZE(o)
        if new is not None:
            n = _b(new)
            np = PyBytes_AS_STRING(n)
            nl = PyBytes_GET_SIZE(n)
        self.update_c(PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k), op, ol, np, nl)

    def update_many(self, keys, olds, news):
        """update(keys[i], olds[i], news[i]) for every i; olds or news None = all absent."""
        cdef list ks = keys if type(keys) is list else list(keys)
        cdef list os_ = None if olds is None else (olds if type(olds) is list else list(olds))
        cdef list ns = None if news is None else (news if type(news) is list else list(news))
        cdef Py_ssize_t i, n = len(ks)
        cdef bytes k, o, v
        cdef const char *op
        cdef const char *np
        cdef Py_ssize_t ol, nl
        if (os_ is not None and len(os_) != n) or (ns is not None and len(ns) != n):
            raise ValueError("keys, olds and news must have the same length")
        for i in range(n):
            k = _b(ks[i])
            op = np = NULL
            ol = nl = -1
            if os_ is not None and os_[i] is not None:
                o = _b(os_[i])
                op = PyBytes_AS_STRING(o)
                ol = PyBytes_GET_SIZE(o)
            if ns is not None and ns[i] is not None:
                v = _b(ns[i])
                np = PyBytes_AS_STRING(v)
                nl = PyBytes_GET_SIZE(v)
            self.update_c(PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k), op, ol, np, nl)

    def update_hash(self, unsigned long long token, unsigned long long old_hash,
                    unsigned long long new_hash):
        """XOR precomputed entry hashes into the segment of `token` (0 = nothing)."""
        self.xor_segment(token & self.mask, old_hash ^ new_hash)

    def clear(self):
        """Forget every key."""
        memset(self.nodes, 0, self.total * sizeof(uint64_t))
        self.count = 0

    def rebuild(self, pairs):
        """Clear, then fold (key, version_bytes) pairs in: the tree of a store after a crash."""
        cdef bytes k, v
        self.clear()
        for key, version in pairs:
            k = _b(key)
            v = _b(version)
            self.update_c(PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k), NULL, -1,
                          PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))
        return self

    @classmethod
    def from_items(cls, pairs, width=DEFAULT_WIDTH, depth=DEFAULT_DEPTH):
        """A new tree folded from (key, version_bytes) pairs."""
        return cls(width, depth).rebuild(pairs)

    def copy(self):
        cdef MerkleTree t = type(self)(self.width, self.depth)
        memcpy(t.nodes, self.nodes, self.total * sizeof(uint64_t))
        t.count = self.count
        return t

    def rebase(self, MerkleTree built not None, MerkleTree base not None):
        """Make this tree `built` plus the changes made to it since it equalled `base`: every
        node becomes built ^ base ^ self, count built + self - base (a rebuild folded from
        the store as it was when `base` was copied, while writes went on updating this tree:
        kvnet/replica.py). Same shape required; in place, so holders of this tree see it."""
        cdef Py_ssize_t i
        for t in (built, base):
            if t.width != self.width or t.depth != self.depth:
                raise ValueError("rebase needs trees of the same shape")
        for i in range(self.total):
            self.nodes[i] ^= built.nodes[i] ^ base.nodes[i]
        self.count = built.count + self.count - base.count
        return self

    # --- shape and mapping ---

    @property
    def leaves(self):
        """Number of leaf segments: width ** depth."""
        return 1 << self.lbits

    @property
    def nbytes(self):
        """C memory held by the hashes of every level."""
        return self.total * 8

    def segment_of(self, key):
        """Leaf segment of key: token(key) mod leaves (the low log2(leaves) bits)."""
        cdef bytes k = _b(key)
        return token_of(PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k)) & self.mask

    def segment_of_token(self, unsigned long long token):
        return token & self.mask

    def segments_of(self, keys):
        """array('I') of segment_of(k) for k in keys (feed it to numpy.frombuffer)."""
        cdef list ks = keys if type(keys) is list else list(keys)
        cdef Py_ssize_t i, n = len(ks)
        cdef array.array out = array.clone(_U32, n, False)
        cdef bytes k
        for i in range(n):
            k = _b(ks[i])
            out.data.as_uints[i] = <unsigned int>self.segment_c(token_of(PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k)))
        return out

    # --- compare ---

    cdef Py_ssize_t _level_len(self, int level) except -1:
        if level < 0 or level > self.depth:
            raise IndexError(f"level must be from 0 to {self.depth}, got {level}")
        return self.offsets[level + 1] - self.offsets[level]

    cdef Py_ssize_t _branch_start(self, int level, Py_ssize_t index) except -1:
        if level < 0 or level >= self.depth:
            raise IndexError(f"branch level must be from 0 to {self.depth - 1}, got {level}")
        if index < 0 or index >= self.offsets[level + 1] - self.offsets[level]:
            raise IndexError(f"node {index} out of range for level {level}")
        return self.offsets[level + 1] + (index << self.wbits)

    def root(self):
        """The root hash (0 for an empty tree)."""
        return self.nodes[0]

    def level(self, int i):
        """All hashes of level i (0 = root, depth = leaves) as little-endian u64 bytes."""
        cdef Py_ssize_t n = self._level_len(i)
        return PyBytes_FromStringAndSize(<char *>(self.nodes + self.offsets[i]), n * 8)

    def branch(self, int level, Py_ssize_t index):
        """Hashes of the width children of node (level, index), as little-endian u64 bytes."""
        cdef Py_ssize_t start = self._branch_start(level, index)
        return PyBytes_FromStringAndSize(<char *>(self.nodes + start), self.width * 8)

    cdef list _diff_run(self, Py_ssize_t start, Py_ssize_t n, object other, Py_ssize_t base):
        cdef bytes ob = _b(other)
        cdef const char *p
        cdef Py_ssize_t k
        cdef uint64_t v
        cdef list out = []
        if PyBytes_GET_SIZE(ob) != n * 8:
            raise ValueError(f"expected {n * 8} bytes of hashes, got {PyBytes_GET_SIZE(ob)}")
        p = PyBytes_AS_STRING(ob)
        for k in range(n):
            memcpy(&v, p + 8 * k, 8)
            if v != self.nodes[start + k]:
                out.append(base + k)
        return out

    def diff_level(self, int i, other):
        """Indexes of level i where other (the peer's level(i) bytes) differs from ours."""
        cdef Py_ssize_t n = self._level_len(i)
        return self._diff_run(self.offsets[i], n, other, 0)

    def diff_branch(self, int level, Py_ssize_t index, other):
        """Level-(level+1) indexes under node (level, index) where other (the peer's
        branch(level, index) bytes) differs; at level depth-1 these are segments."""
        cdef Py_ssize_t start = self._branch_start(level, index)
        return self._diff_run(start, self.width, other, index << self.wbits)

    def diff(self, MerkleTree other not None):
        """Differing leaf segments, found root-down as an exchange would."""
        cdef list frontier, nxt
        cdef Py_ssize_t j, k, first
        cdef int l
        if other.width != self.width or other.depth != self.depth:
            raise ValueError("trees of different shapes cannot be compared")
        frontier = [0] if self.nodes[0] != other.nodes[0] else []
        for l in range(self.depth):
            nxt = []
            for j in frontier:
                first = self.offsets[l + 1] + (j << self.wbits)
                for k in range(self.width):
                    if self.nodes[first + k] != other.nodes[first + k]:
                        nxt.append((j << self.wbits) + k)
            frontier = nxt
        return frontier

    def check(self):
        """True when every inner node is the XOR of its children."""
        cdef MerkleTree t = self.copy()
        t.recompute_inner()
        return memcmp(t.nodes, self.nodes, self.total * sizeof(uint64_t)) == 0

    def __eq__(self, other):
        if not isinstance(other, MerkleTree):
            return NotImplemented
        cdef MerkleTree o = other
        return (o.width == self.width and o.depth == self.depth and o.count == self.count
                and memcmp(o.nodes, self.nodes, self.total * sizeof(uint64_t)) == 0)

    __hash__ = None

    def __repr__(self):
        return (f"MerkleTree(width={self.width}, depth={self.depth}, count={self.count}, "
                f"root={self.nodes[0]:#018x})")

    # --- serialization (layout in docs/merkle.md) ---

    def to_bytes(self):
        """Header, the leaf hashes (inner levels are recomputed on load), CRC-32C."""
        cdef Py_ssize_t nleaves = (<Py_ssize_t>1) << self.lbits
        cdef Py_ssize_t body = _HEADER_SIZE + nleaves * 8
        cdef bytes out = PyBytes_FromStringAndSize(NULL, body + _TRAILER_SIZE)
        cdef char *p = PyBytes_AS_STRING(out)
        cdef uint32_t crc
        cdef uint64_t c = <uint64_t>self.count
        cdef int i
        memcpy(p, b"RKMT", 4)
        p[4] = _FORMAT_VERSION & 0xFF
        p[5] = (_FORMAT_VERSION >> 8) & 0xFF
        p[6] = <char>self.wbits
        p[7] = <char>self.depth
        for i in range(8):
            p[8 + i] = <char>((c >> (8 * i)) & 0xFF)
        memcpy(p + _HEADER_SIZE, self.nodes + self.offsets[self.depth], nleaves * 8)
        crc = kv_crc32c(0, p, body)
        for i in range(4):
            p[body + i] = <char>((crc >> (8 * i)) & 0xFF)
        return out

    @classmethod
    def from_bytes(cls, data):
        """The tree to_bytes() wrote; ValueError on anything else (never a partial tree)."""
        cdef bytes b = _b(data)
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(b)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(b)
        cdef Py_ssize_t body
        cdef int version, wbits, depth, i
        cdef uint64_t c = 0
        cdef uint32_t crc = 0
        cdef MerkleTree t
        if size < _HEADER_SIZE + _TRAILER_SIZE:
            raise ValueError(f"merkle tree data truncated: {size} bytes")
        if b[:4] != MAGIC:
            raise ValueError(f"not a ringkv merkle tree: magic {b[:4]!r}, expected {MAGIC!r}")
        version = p[4] | (p[5] << 8)
        if version != _FORMAT_VERSION:
            raise ValueError(f"unsupported merkle tree format version {version}")
        wbits = p[6]
        depth = p[7]
        if not (1 <= wbits <= MAX_WIDTH_BITS and 1 <= depth <= MAX_DEPTH and wbits * depth <= MAX_LEAF_BITS):
            raise ValueError(f"bad merkle tree shape: log2(width)={wbits}, depth={depth}")
        body = _HEADER_SIZE + ((<Py_ssize_t>1) << (wbits * depth)) * 8
        if size != body + _TRAILER_SIZE:
            raise ValueError(f"merkle tree data is {size} bytes, expected {body + _TRAILER_SIZE}")
        for i in range(4):
            crc |= (<uint32_t>p[body + i]) << (8 * i)
        if kv_crc32c(0, p, body) != crc:
            raise ValueError("merkle tree data corrupt: CRC-32C mismatch")
        for i in range(8):
            c |= (<uint64_t>p[8 + i]) << (8 * i)
        t = cls(1 << wbits, depth)
        t.count = <int64_t>c
        memcpy(t.nodes + t.offsets[depth], p + _HEADER_SIZE, body - _HEADER_SIZE)
        t.recompute_inner()
        return t


# --- exchange simulation (same code as merkle_py; docs/merkle.md "Exchange") ---

ExchangeReport = namedtuple("ExchangeReport", "segments keys a_to_b b_to_a steps")
ExchangeReport.__doc__ = """Outcome of exchange(): differing segments, keys to repair, bytes each
way, and steps = [(name, nodes_or_segments, a_to_b, b_to_a), ...]."""

HASH_SIZE = 8


def exchange(a, b, keys_a, keys_b):
    """Run the root-down exchange of docs/algorithms.md, section 4 between trees a and b.

    keys_a(segment) / keys_b(segment) give the (key, version_bytes) pairs each side's store
    holds in a segment. Both sides send what they have at every step (roots, the branches of
    differing nodes, the (key, hash) lists of differing segments); a list entry counts
    len(key) + 8 bytes (no framing).
    """
    if (a.width, a.depth) != (b.width, b.depth):
        raise ValueError("trees of different shapes cannot be compared")
    steps = [("root", 1, HASH_SIZE, HASH_SIZE)]
    frontier = [0] if a.root() != b.root() else []
    for level in range(a.depth):
        if not frontier:
            break
        nxt = []
        up = down = 0
        for j in frontier:
            mine = a.branch(level, j)
            theirs = b.branch(level, j)
            up += len(mine)
            down += len(theirs)
            nxt.extend(a.diff_branch(level, j, theirs))
        steps.append((f"level {level + 1}", len(frontier), up, down))
        frontier = nxt
    keys = set()
    up = down = 0
    for segment in frontier:
        mine = {bytes(k): entry_hash(k, v) for k, v in keys_a(segment)}
        theirs = {bytes(k): entry_hash(k, v) for k, v in keys_b(segment)}
        up += sum(len(k) + HASH_SIZE for k in mine)
        down += sum(len(k) + HASH_SIZE for k in theirs)
        keys.update(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if frontier:
        steps.append(("keys", len(frontier), up, down))
    return ExchangeReport(
        segments=frontier,
        keys=sorted(keys),
        a_to_b=sum(s[2] for s in steps),
        b_to_a=sum(s[3] for s in steps),
        steps=steps,
    )
