"""Key hashing for the ring, the keydir and the Merkle trees (docs/ring.md)."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t

from kvcore.hashing cimport partition_of_token, token_of, kv_crc32c


def token(key):
    """MurmurHash3 x64-128, first 64 bits, unsigned: mmh3.hash64(key, signed=False)[0]."""
    if type(key) is bytes:
        return token_of(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
    cdef const unsigned char[::1] view = key
    if view.shape[0] == 0:
        return token_of(b"", 0)
    return token_of(<const char *>&view[0], view.shape[0])


cdef int _qbits(q) except -1:
    if not isinstance(q, int) or q < 1 or (q & (q - 1)) != 0 or q > (1 << 32):
        raise ValueError(f"q must be a power of two between 1 and 2**32, got {q!r}")
    return int(q).bit_length() - 1


def partition(key, q):
    """token(key) >> (64 - log2 q)."""
    return partition_of_token(token(key), _qbits(q))


def crc32c(data, unsigned int crc=0):
    """CRC-32C of data, continuing from crc (the storage checksum)."""
    cdef const unsigned char[::1] view = data
    if view.shape[0] == 0:
        return crc
    return kv_crc32c(crc, &view[0], view.shape[0])
