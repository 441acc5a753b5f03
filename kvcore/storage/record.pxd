# One record in a buffer: load/store of header fields and the validity check.
# No file handles here; the byte layout is format.pxi's.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from kvcore.hashing cimport kv_crc32c

include "format.pxi"


cdef inline uint16_t load16(const char *p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v

cdef inline uint32_t load32(const char *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v

cdef inline uint64_t load64(const char *p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v

cdef inline void store16(char *p, uint16_t v) noexcept nogil:
    memcpy(p, &v, 2)

cdef inline void store32(char *p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)

cdef inline void store64(char *p, uint64_t v) noexcept nogil:
    memcpy(p, &v, 8)


cdef inline size_t record_size(const char *p) noexcept nogil:
    """Size of the record whose header is at p (header trusted)."""
    return REC_HEADER_SIZE + load16(p + REC_OFF_KEYLEN) + load32(p + REC_OFF_VALLEN)


cdef inline size_t write_record(char *p, const char *key, size_t klen, const char *val,
                                size_t vlen, uint8_t flags, uint64_t tstamp) noexcept nogil:
    """Encode one record at p (room for REC_HEADER_SIZE + klen + vlen); returns its size."""
    cdef size_t size = REC_HEADER_SIZE + klen + vlen
    store32(p, REC_MAGIC)
    store64(p + REC_OFF_TSTAMP, tstamp)
    p[REC_OFF_FLAGS] = <char>flags
    p[REC_OFF_RESERVED] = 0
    store16(p + REC_OFF_KEYLEN, <uint16_t>klen)
    store32(p + REC_OFF_VALLEN, <uint32_t>vlen)
    if klen:
        memcpy(p + REC_HEADER_SIZE, key, klen)
    if vlen:
        memcpy(p + REC_HEADER_SIZE + klen, val, vlen)
    store32(p + REC_OFF_CRC, kv_crc32c(0, p + REC_OFF_TSTAMP, size - REC_OFF_TSTAMP))
    return size


cdef inline size_t check_record(const char *p, size_t avail) noexcept nogil:
    """Size of a valid record at p with avail bytes readable, or 0 if it is not one."""
    if avail < REC_HEADER_SIZE or load32(p) != REC_MAGIC:
        return 0
    cdef uint8_t flags = <uint8_t>p[REC_OFF_FLAGS]
    if p[REC_OFF_RESERVED] != 0 or (flags & ~FLAGS_KNOWN) or load16(p + REC_OFF_KEYLEN) == 0:
        return 0
    cdef size_t size = record_size(p)
    if size > avail:
        return 0
    if kv_crc32c(0, p + REC_OFF_TSTAMP, size - REC_OFF_TSTAMP) != load32(p + REC_OFF_CRC):
        return 0
    return size


cdef size_t resync(const char *buf, size_t off, size_t end) noexcept nogil
