"""Record codec in C (format.pxi); Python wrappers mirror record_py for tests."""
from libc.string cimport memchr

from kvcore.storage.record cimport check_record, load32, write_record




cdef size_t resync(const char *buf, size_t off, size_t end) noexcept nogil:
    """Offset of the next valid record after a bad one at off, or 0 if none."""
    cdef size_t pos = off + 1
    cdef const char *hit
    while pos + REC_HEADER_SIZE <= end:
        hit = <const char *>memchr(buf + pos, 0x52, end - pos)   # first byte of REC_MAGIC
        if hit == NULL:
            return 0
        pos = hit - buf
        if pos + REC_HEADER_SIZE > end:
            return 0
        if load32(buf + pos) == REC_MAGIC and check_record(buf + pos, end - pos):
            return pos
        pos += 1
    return 0


def encode_record(bytes key, bytes stored_value, int flags, unsigned long long tstamp):
    cdef bytearray out = bytearray(REC_HEADER_SIZE + len(key) + len(stored_value))
    write_record(out, key, len(key), stored_value, len(stored_value), flags, tstamp)
    return bytes(out)


def decode_record(const unsigned char[::1] buf, size_t off, size_t end):
    """(tstamp, flags, key, stored_value, size) of a valid record at off, else None."""
    if end > <size_t>buf.shape[0] or off >= end:
        return None
    cdef const char *p = <const char *>&buf[off]
    cdef size_t size = check_record(p, end - off)
    if size == 0:
        return None
    cdef size_t klen = size - REC_HEADER_SIZE - load32(p + REC_OFF_VALLEN)
    return (int.from_bytes(p[REC_OFF_TSTAMP:REC_OFF_TSTAMP + 8], "little"), <int>(<unsigned char>p[REC_OFF_FLAGS]),
            p[REC_HEADER_SIZE:REC_HEADER_SIZE + klen], p[REC_HEADER_SIZE + klen:size], size)


def find_next(const unsigned char[::1] buf, size_t off, size_t end):
    """Like record_py.resync: the next valid record's offset after off, or None."""
    cdef size_t pos = resync(<const char *>&buf[0], off, end)
    return None if pos == 0 else pos
