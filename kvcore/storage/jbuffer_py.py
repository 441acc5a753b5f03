"""Pure-Python twin of kvcore/storage/jbuffer.pyx (a test oracle)."""
import struct

from kvcore.hashing_py import crc32c

FRAME_MAGIC = 0x4A4B5652
FRAME_HEADER = 20
_TAIL = struct.Struct("<IB3xI")


class JournalBuffer:
    """Frames appended since the last take()."""

    def __init__(self):
        self._data = bytearray()
        self.frames = 0

    def add(self, sid, kind, payload):
        if len(payload) > 0xFFFFFFFF:
            raise ValueError("a journal frame holds at most 4 GiB")
        body = _TAIL.pack(sid, kind, len(payload)) + bytes(payload)
        self._data += struct.pack("<II", FRAME_MAGIC, crc32c(body)) + body
        self.frames += 1

    append = add

    def take(self):
        out, self._data = bytes(self._data), bytearray()
        return out

    def __len__(self):
        return len(self._data)
