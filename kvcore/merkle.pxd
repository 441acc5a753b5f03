# Per-partition tictac Merkle tree for anti-entropy (docs/merkle.md).
# All levels live in one uint64 C array, root first: level 0 is the root,
# level `depth` the leaves. A leaf is a key segment: token(key) & (leaves - 1).
# Every node is the XOR of its children; a leaf is the XOR of entry_hash(key,
# version) over the keys it holds, so an update is O(depth), no rebuild.
from libc.stdint cimport int64_t, uint64_t

cdef extern from "debug.h":
    int KV_DEBUG                 # 1 in RINGKV_DEBUG builds: path invariants checked per update

cdef enum:
    MAX_DEPTH = 8                # levels below the root
    MAX_LEAF_BITS = 24           # at most 2**24 leaves (128 MiB of leaf hashes)
    MAX_WIDTH_BITS = 16          # width from 2 to 65,536 children per node
    STACK_KEYBUF = 512           # entry_hash concatenates on the stack up to this size

# h(key, version) = token(u32le(len(key)) || key || version): murmur3 x64-128, first 64 bits.
cdef int entry_hash_of(const char *key, size_t klen, const char *ver, size_t vlen,
                       uint64_t *out) except -1 nogil


cdef class MerkleTree:
    cdef uint64_t *nodes                     # every level, root first (one calloc, freed in __dealloc__)
    cdef Py_ssize_t offsets[MAX_DEPTH + 2]   # level l is nodes[offsets[l]:offsets[l + 1]]
    cdef Py_ssize_t total                    # number of nodes over all levels
    cdef readonly int width                  # children per inner node (a power of two)
    cdef readonly int depth                  # levels below the root; leaves = width ** depth
    cdef int wbits                           # log2(width)
    cdef int lbits                           # log2(leaves) = wbits * depth
    cdef uint64_t mask                       # leaves - 1: token & mask is the segment
    cdef readonly int64_t count              # keys present: inserts minus removals

    # --- the cdef API for the store (no Python objects, no GIL) ---
    cdef inline uint64_t segment_c(self, uint64_t token) noexcept nogil:
        return token & self.mask
    cdef void xor_segment(self, uint64_t segment, uint64_t delta) noexcept nogil
    # oldlen/newlen < 0 mean "absent"; XORs entry_hash(key, old) out and (key, new) in.
    cdef int update_c(self, const char *key, size_t klen,
                      const char *old, Py_ssize_t oldlen,
                      const char *new, Py_ssize_t newlen) except -1 nogil
    cdef void recompute_inner(self) noexcept nogil    # inner levels from the leaves
    cdef bint path_ok(self, uint64_t segment) noexcept nogil   # ancestors == XOR of children

    # --- private helpers (Python-facing bounds checks and compare loops) ---
    cdef Py_ssize_t _level_len(self, int level) except -1
    cdef Py_ssize_t _branch_start(self, int level, Py_ssize_t index) except -1
    cdef list _diff_run(self, Py_ssize_t start, Py_ssize_t n, object other, Py_ssize_t base)
