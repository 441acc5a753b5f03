# The immutable Ring (docs/ring.md): owner table and preference lists in C arrays, so a lookup
# is one murmur3 hash, a shift and a tuple fetch. Other extensions cimport Ring and use the
# nogil partition_c / owner_c / pref_c below.
from libc.stdint cimport uint16_t, uint64_t

from kvcore.hashing cimport partition_of_token, token_of


cdef class Ring:
    cdef readonly object epoch      # int: bumped by every membership change
    cdef readonly int q             # partitions, a power of two
    cdef readonly int n             # replicas wanted per key
    cdef readonly tuple members     # ((node id, zone or None), ...) sorted by id
    cdef readonly tuple nodes       # node ids, in members order (member index -> id)
    cdef readonly tuple owners      # node id per partition
    cdef int qbits                  # log2(q)
    cdef int nr                     # preference list length: min(n, nodes owning a partition)
    cdef uint16_t *owner_idx        # q member indices
    cdef uint16_t *pref_idx         # q * nr member indices, partition-major
    cdef tuple prefs                # q tuples of node ids: what preference_list returns
    cdef dict zone                  # node id -> zone key (a zoneless node is its own zone)
    cdef object hash_               # cached hash, None until asked

    cdef Py_ssize_t partition_arg(self, object key_or_partition) except -1
    cdef _build_prefs(self, list zone_list, int zones)


cdef inline Py_ssize_t partition_c(Ring ring, const char *key, size_t length) noexcept nogil:
    """Partition of a key given as (pointer, length)."""
    return <Py_ssize_t>partition_of_token(token_of(key, length), ring.qbits)


cdef inline uint16_t owner_c(Ring ring, Py_ssize_t p) noexcept nogil:
    """Member index owning partition p (0 <= p < q)."""
    return ring.owner_idx[p]


cdef inline const uint16_t *pref_c(Ring ring, Py_ssize_t p) noexcept nogil:
    """ring.nr member indices: the preference list of partition p (0 <= p < q)."""
    return ring.pref_idx + p * ring.nr
