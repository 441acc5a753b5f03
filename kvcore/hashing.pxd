# Key -> 64-bit token -> partition. The nogil cdef API is what ring, storage
# and merkle cimport; Python sees token() and partition().
from libc.stdint cimport uint32_t, uint64_t

cdef extern from "murmur3.h" nogil:
    uint64_t kv_murmur3_64(const void *key, size_t length, uint32_t seed)

cdef extern from "crc32c.h" nogil:
    uint32_t kv_crc32c(uint32_t crc, const void *buf, size_t n)


cdef inline uint64_t token_of(const char *key, size_t length) noexcept nogil:
    """MurmurHash3 x64-128, first 64 bits, seed 0."""
    return kv_murmur3_64(key, length, 0)


cdef inline uint64_t partition_of_token(uint64_t token, int qbits) noexcept nogil:
    """Top qbits of the token (Q = 2**qbits partitions)."""
    if qbits == 0:
        return 0
    return token >> (64 - qbits)
