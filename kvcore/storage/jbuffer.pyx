"""The node-wide journal's pending frames (docs/storage.md, "The journal").

Every record a store with a journal attached writes is appended here as a frame, by C code
on the writer's thread; a group commit takes the frames (`take`), writes them to the
journal file and fdatasyncs it in a worker thread (kvcore/storage/journal.py). The frame
layout is journal.py's (FRAME_*), kept in step by tests/kvcore/storage/test_journal.py.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset

from kvcore.hashing cimport kv_crc32c

cdef enum:
    FRAME_MAGIC = 0x4A4B5652            # b"RVKJ" read as u32
    FRAME_HEADER = 20
    # 0 4 magic, 4 4 CRC-32C of bytes 8..end, 8 4 store id, 12 1 kind, 13 3 zero,
    # 16 4 payload length, 20 payload


cdef class JournalBuffer:
    """Frames appended since the last take(), in one growing C buffer."""

    def __cinit__(self):
        self.data = NULL
        self.len = self.cap = 0
        self.frames = 0

    def __dealloc__(self):
        free(self.data)

    cdef int append(self, uint32_t sid, uint8_t kind, const char *p, size_t n) except -1:
        cdef size_t need = self.len + FRAME_HEADER + n, cap
        cdef char *f
        cdef uint32_t v
        if n > 0xFFFFFFFF:
            raise ValueError("a journal frame holds at most 4 GiB")
        if need > self.cap:
            cap = self.cap * 2 if self.cap else 64 << 10
            while cap < need:
                cap *= 2
            f = <char *>realloc(self.data, cap)
            if f == NULL:
                raise MemoryError()
            self.data, self.cap = f, cap
        f = self.data + self.len
        v = FRAME_MAGIC
        memcpy(f, &v, 4)
        memcpy(f + 8, &sid, 4)
        f[12] = <char>kind
        memset(f + 13, 0, 3)
        v = <uint32_t>n
        memcpy(f + 16, &v, 4)
        if n:
            memcpy(f + FRAME_HEADER, p, n)
        v = kv_crc32c(0, f + 8, FRAME_HEADER - 8 + n)
        memcpy(f + 4, &v, 4)
        self.len = need
        self.frames += 1
        return 0

    def add(self, uint32_t sid, uint8_t kind, bytes payload):
        """Append one frame (binds, drops; the twin store's records)."""
        self.append(sid, kind, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))

    def take(self):
        """The frames appended so far, as bytes, and an empty buffer."""
        out = PyBytes_FromStringAndSize(self.data, self.len)
        self.len = 0
        if self.cap > (4 << 20):        # (a burst's buffer is not kept for good)
            free(self.data)
            self.data = NULL
            self.cap = 0
        return out

    def __len__(self):
        return self.len
