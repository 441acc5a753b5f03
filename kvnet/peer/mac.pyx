# cython: language_level=3
"""The peer frame MAC in C (docs/security.md, "Frame MACs"; twin: kvnet/peer/mac_py.py).

The same tags as the twin, byte for byte (tests/kvnet/peer/test_mac.py): keyed BLAKE2b-128
with the person b"ringkv-frame" over (the direction's sequence number as a big-endian u64,
the frame) below MAC_SHA256_FROM bytes, HMAC-SHA256 cut to 16 bytes from there. The BLAKE2b
state keyed once per connection direction is copied per frame as a C struct
(kvcore/include/blake2b.h), where hashlib's copy, three updates, digest and slice were six
Python calls and four objects a frame, on every peer frame both ways."""
import hashlib
import hmac

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t

cdef extern from "blake2b.h":
    ctypedef struct kv_blake2b_ctx:
        pass
    int kv_blake2b_init(kv_blake2b_ctx *ctx, size_t outlen, const void *key, size_t keylen,
                        const void *person, size_t personlen)
    void kv_blake2b_update(kv_blake2b_ctx *ctx, const void *data, size_t n)
    void kv_blake2b_final(kv_blake2b_ctx *ctx, void *out)

DEF TAG = 16                # MAC_SIZE
MAC_SIZE = TAG
MAC_SHA256_FROM = 4096      # frames of this many bytes or more: HMAC-SHA256, not BLAKE2b
MAC_PERSON = b"ringkv-frame"


cdef inline Py_ssize_t _length(object data) except -1:
    if type(data) is bytes:
        return PyBytes_GET_SIZE(data)
    return len(data)


cdef int _update(kv_blake2b_ctx *ctx, object data) except -1:
    cdef Py_buffer view
    if type(data) is bytes:
        kv_blake2b_update(ctx, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        return 0
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        kv_blake2b_update(ctx, view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef class FrameMac:
    """One direction's frame MAC of a connection (kvnet/peer/mac_py.py says what it covers)."""

    cdef kv_blake2b_ctx _small
    cdef object _big
    cdef public unsigned long long seq

    def __init__(self, key):
        cdef bytes k = bytes(key)
        if kv_blake2b_init(&self._small, TAG, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k),
                           PyBytes_AS_STRING(MAC_PERSON), PyBytes_GET_SIZE(MAC_PERSON)) != 0:
            raise ValueError("frame MAC: the key is longer than 64 bytes")
        self._big = hmac.new(k, MAC_PERSON, hashlib.sha256)
        self.seq = 0

    cpdef bytes tag(self, frame, piece=None):
        """The tag of the next frame (bytes-like; a CHUNK frame as its head and its piece)."""
        cdef kv_blake2b_ctx ctx
        cdef uint8_t seq[8]
        cdef uint8_t out[TAG]
        cdef unsigned long long s = self.seq
        cdef int i
        cdef Py_ssize_t size = _length(frame) + (0 if piece is None else _length(piece))
        for i in range(8):
            seq[7 - i] = <uint8_t>(s >> (8 * i))
        if size >= MAC_SHA256_FROM:
            h = self._big.copy()
            h.update(PyBytes_FromStringAndSize(<char *>seq, 8))
            h.update(frame)
            if piece is not None:
                h.update(piece)
            self.seq = s + 1
            return h.digest()[:TAG]
        ctx = self._small
        kv_blake2b_update(&ctx, seq, 8)
        _update(&ctx, frame)
        if piece is not None:
            _update(&ctx, piece)
        kv_blake2b_final(&ctx, out)
        self.seq = s + 1
        return PyBytes_FromStringAndSize(<char *>out, TAG)
