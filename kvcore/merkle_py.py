"""Reference twin of kvcore.merkle: the same tictac tree, API and bytes, in plain Python.

A test oracle and a reading aid (docs/merkle.md); used at run time only with RINGKV_NO_EXTENSIONS=1.
"""
import struct
import sys
from array import array
from collections import namedtuple

from kvcore.hashing_py import crc32c, token

MAGIC = b"RKMT"
FORMAT_VERSION = 1
HEADER_SIZE = 16   # magic 4, version u16, log2(width) u8, depth u8, count i64
TRAILER_SIZE = 4   # CRC-32C of everything before it
DEFAULT_WIDTH = 128
DEFAULT_DEPTH = 2
MAX_DEPTH = 8
MAX_LEAF_BITS = 24
MAX_WIDTH_BITS = 16
_HEADER = struct.Struct("<4sHBBq")
_M = 0xFFFFFFFFFFFFFFFF


def _b(obj):
    return obj if type(obj) is bytes else memoryview(obj).tobytes()


def _u64(*values):
    # the compiled tree takes C unsigned long long: same errors here
    for v in values:
        if not isinstance(v, int):
            raise TypeError(f"an integer is required, got {type(v).__name__}")
        if not 0 <= v <= _M:
            raise OverflowError(f"{v} does not fit in an unsigned 64-bit integer")


def entry_hash(key, version):
    """h(key, version) = token(u32le(len(key)) + key + version): what a leaf XORs in."""
    key = _b(key)
    if len(key) > 0xFFFFFFFF:
        raise ValueError("key longer than 2**32 - 1 bytes")
    return token(len(key).to_bytes(4, "little") + key + _b(version))


def _shape_bits(width, depth):
    if not isinstance(width, int) or width < 2 or (width & (width - 1)) or width > (1 << MAX_WIDTH_BITS):
        raise ValueError(f"width must be a power of two from 2 to {1 << MAX_WIDTH_BITS}, got {width!r}")
    if not isinstance(depth, int) or depth < 1 or depth > MAX_DEPTH:
        raise ValueError(f"depth must be from 1 to {MAX_DEPTH}, got {depth!r}")
    wbits = width.bit_length() - 1
    if wbits * depth > MAX_LEAF_BITS:
        raise ValueError(f"width ** depth must be at most 2**{MAX_LEAF_BITS} leaves, got {width}**{depth}")
    return wbits


def _le(a):
    if sys.byteorder != "little":
        a = array("Q", a)
        a.byteswap()
    return a.tobytes()


def _from_le(data):
    a = array("Q", data)
    if sys.byteorder != "little":
        a.byteswap()
    return a


class MerkleTree:
    """A tictac tree of `width ** depth` leaf segments (default 128 ** 2 = 16,384)."""

    __hash__ = None

    def __init__(self, width=DEFAULT_WIDTH, depth=DEFAULT_DEPTH):
        self._wbits = _shape_bits(width, depth)
        self.width = width
        self.depth = depth
        self._mask = (1 << (self._wbits * depth)) - 1
        self.count = 0
        # levels[l] holds the width ** l hashes of level l; levels[0] is [root]
        self._levels = [array("Q", bytes(8 << (self._wbits * l))) for l in range(depth + 1)]

    # --- updates ---

    def _xor_segment(self, segment, delta):
        for l in range(self.depth, -1, -1):
            self._levels[l][segment] ^= delta
            segment >>= self._wbits

    def update(self, key, old, new):
        """XOR h(key, old) out and h(key, new) in; None means absent (insert / delete)."""
        key = _b(key)
        delta = 0
        if old is not None:
            delta ^= entry_hash(key, old)
        if new is not None:
            delta ^= entry_hash(key, new)
        self.count += (new is not None) - (old is not None)
        if delta:
            self._xor_segment(token(key) & self._mask, delta)

    def update_many(self, keys, olds, news):
        """update(keys[i], olds[i], news[i]) for every i; olds or news None = all absent."""
        keys = list(keys)
        olds = [None] * len(keys) if olds is None else list(olds)
        news = [None] * len(keys) if news is None else list(news)
        if not len(keys) == len(olds) == len(news):
            raise ValueError("keys, olds and news must have the same length")
        for k, o, n in zip(keys, olds, news):
            self.update(k, o, n)

    def update_hash(self, token, old_hash, new_hash):
        """XOR precomputed entry hashes into the segment of `token` (0 = nothing)."""
        _u64(token, old_hash, new_hash)
        self._xor_segment(token & self._mask, old_hash ^ new_hash)

    def clear(self):
        """Forget every key."""
        for level in self._levels:
            level[:] = array("Q", bytes(8 * len(level)))
        self.count = 0

    def rebuild(self, pairs):
        """Clear, then fold (key, version_bytes) pairs in: the tree of a store after a crash."""
        self.clear()
        for key, version in pairs:
            self.update(key, None, _b(version))
        return self

    @classmethod
    def from_items(cls, pairs, width=DEFAULT_WIDTH, depth=DEFAULT_DEPTH):
        """A new tree folded from (key, version_bytes) pairs."""
        return cls(width, depth).rebuild(pairs)

    def copy(self):
        t = type(self)(self.width, self.depth)
        t._levels = [array("Q", level) for level in self._levels]
        t.count = self.count
        return t

    def rebase(self, built, base):
        """Make this tree `built` plus the changes made to it since it equalled `base`: every
        node becomes built ^ base ^ self, count built + self - base (a rebuild folded from
        the store as it was when `base` was copied, while writes went on updating this tree:
        kvnet/replica.py). Same shape required; in place, so holders of this tree see it."""
        for t in (built, base):
            if (t.width, t.depth) != (self.width, self.depth):
                raise ValueError("rebase needs trees of the same shape")
        for mine, b, o in zip(self._levels, built._levels, base._levels):
            for i in range(len(mine)):
                mine[i] ^= b[i] ^ o[i]
        self.count = built.count + self.count - base.count
        return self

    def _recompute_inner(self):
        for l in range(self.depth - 1, -1, -1):
            parent = array("Q", bytes(8 * len(self._levels[l])))
            for i, h in enumerate(self._levels[l + 1]):
                parent[i >> self._wbits] ^= h
            self._levels[l] = parent

    # --- shape and mapping ---

    @property
    def leaves(self):
        """Number of leaf segments: width ** depth."""
        return self._mask + 1

    @property
    def nbytes(self):
        """Memory the compiled tree holds for the hashes of every level."""
        return 8 * sum(len(level) for level in self._levels)

    def segment_of(self, key):
        """Leaf segment of key: token(key) mod leaves (the low log2(leaves) bits)."""
        return token(_b(key)) & self._mask

    def segment_of_token(self, token):
        _u64(token)
        return token & self._mask

    def segments_of(self, keys):
        """array('I') of segment_of(k) for k in keys (feed it to numpy.frombuffer)."""
        return array("I", [token(_b(k)) & self._mask for k in keys])

    # --- compare ---

    def _level_checked(self, level):
        if not 0 <= level <= self.depth:
            raise IndexError(f"level must be from 0 to {self.depth}, got {level}")
        return self._levels[level]

    def _branch_start(self, level, index):
        if not 0 <= level < self.depth:
            raise IndexError(f"branch level must be from 0 to {self.depth - 1}, got {level}")
        if not 0 <= index < len(self._levels[level]):
            raise IndexError(f"node {index} out of range for level {level}")
        return index << self._wbits

    def root(self):
        """The root hash (0 for an empty tree)."""
        return self._levels[0][0]

    def level(self, i):
        """All hashes of level i (0 = root, depth = leaves) as little-endian u64 bytes."""
        return _le(self._level_checked(i))

    def branch(self, level, index):
        """Hashes of the width children of node (level, index), as little-endian u64 bytes."""
        start = self._branch_start(level, index)
        return _le(self._levels[level + 1][start:start + self.width])

    @staticmethod
    def _diff_run(mine, other, base):
        other = _b(other)
        if len(other) != 8 * len(mine):
            raise ValueError(f"expected {8 * len(mine)} bytes of hashes, got {len(other)}")
        return [base + k for k, (x, y) in enumerate(zip(mine, _from_le(other))) if x != y]

    def diff_level(self, i, other):
        """Indexes of level i where other (the peer's level(i) bytes) differs from ours."""
        return self._diff_run(self._level_checked(i), other, 0)

    def diff_branch(self, level, index, other):
        """Level-(level+1) indexes under node (level, index) where other (the peer's
        branch(level, index) bytes) differs; at level depth-1 these are segments."""
        start = self._branch_start(level, index)
        return self._diff_run(self._levels[level + 1][start:start + self.width], other, start)

    def diff(self, other):
        """Differing leaf segments, found root-down as an exchange would."""
        if not isinstance(other, MerkleTree):
            raise TypeError("diff() needs a MerkleTree")
        if (other.width, other.depth) != (self.width, self.depth):
            raise ValueError("trees of different shapes cannot be compared")
        frontier = [0] if self.root() != other.root() else []
        for l in range(self.depth):
            mine, theirs = self._levels[l + 1], other._levels[l + 1]
            frontier = [
                (j << self._wbits) + k
                for j in frontier
                for k in range(self.width)
                if mine[(j << self._wbits) + k] != theirs[(j << self._wbits) + k]
            ]
        return frontier

    def check(self):
        """True when every inner node is the XOR of its children."""
        t = self.copy()
        t._recompute_inner()
        return t._levels == self._levels

    def __eq__(self, other):
        if not isinstance(other, MerkleTree):
            return NotImplemented
        return (other.width, other.depth, other.count) == (self.width, self.depth, self.count) and (
            other._levels == self._levels
        )

    def __repr__(self):
        return (f"MerkleTree(width={self.width}, depth={self.depth}, count={self.count}, "
                f"root={self.root():#018x})")

    # --- serialization (layout in docs/merkle.md) ---

    def to_bytes(self):
        """Header, the leaf hashes (inner levels are recomputed on load), CRC-32C."""
        body = _HEADER.pack(MAGIC, FORMAT_VERSION, self._wbits, self.depth, self.count)
        body += _le(self._levels[self.depth])
        return body + crc32c(body).to_bytes(4, "little")

    @classmethod
    def from_bytes(cls, data):
        """The tree to_bytes() wrote; ValueError on anything else (never a partial tree)."""
        data = _b(data)
        if len(data) < HEADER_SIZE + TRAILER_SIZE:
            raise ValueError(f"merkle tree data truncated: {len(data)} bytes")
        magic, version, wbits, depth, count = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise ValueError(f"not a ringkv merkle tree: magic {magic!r}, expected {MAGIC!r}")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported merkle tree format version {version}")
        if not (1 <= wbits <= MAX_WIDTH_BITS and 1 <= depth <= MAX_DEPTH and wbits * depth <= MAX_LEAF_BITS):
            raise ValueError(f"bad merkle tree shape: log2(width)={wbits}, depth={depth}")
        body = HEADER_SIZE + (8 << (wbits * depth))
        if len(data) != body + TRAILER_SIZE:
            raise ValueError(f"merkle tree data is {len(data)} bytes, expected {body + TRAILER_SIZE}")
        if crc32c(data[:body]) != int.from_bytes(data[body:], "little"):
            raise ValueError("merkle tree data corrupt: CRC-32C mismatch")
        t = cls(1 << wbits, depth)
        t.count = count
        t._levels[depth] = _from_le(data[HEADER_SIZE:body])
        t._recompute_inner()
        return t


# --- exchange simulation (same code as merkle.pyx; docs/merkle.md "Exchange") ---

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
