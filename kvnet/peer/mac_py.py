"""The peer frame MAC (docs/security.md, "Frame MACs"), the pure-Python twin of
kvnet/peer/mac.pyx: hashlib's BLAKE2b and HMAC-SHA256. tests/kvnet/peer/test_mac.py checks
that both give the same tags."""
import hashlib
import hmac
import struct

MAC_SIZE = 16               # bytes of the tag after each frame of a MAC'd connection
MAC_SHA256_FROM = 4096      # frames of this many bytes or more: HMAC-SHA256, not BLAKE2b
MAC_PERSON = b"ringkv-frame"
_SEQ = struct.Struct(">Q")


class FrameMac:
    """One direction's frame MAC of a connection: a 16-byte tag over (this direction's
    sequence number as a u64, the frame's header and body), the number going up by one per
    frame. It is not sent: both ends count, so a replayed, dropped or reordered frame fails
    the check like an altered one (docs/security.md, "Frame MACs"). The tag is keyed
    BLAKE2b-128 for a frame below MAC_SHA256_FROM bytes (the common, small, frame: less set-up
    than an HMAC), else HMAC-SHA256 cut to 16 bytes (SHA-256 runs on the CPU's SHA
    instructions: faster per byte on big frames); both ends choose by the frame's length."""

    __slots__ = ("_small", "_big", "seq")

    def __init__(self, key):
        self._small = hashlib.blake2b(key=key, digest_size=MAC_SIZE, person=MAC_PERSON)
        self._big = hmac.new(key, MAC_PERSON, hashlib.sha256)
        self.seq = 0

    def tag(self, frame, piece=None):
        """The tag of the next frame (bytes-like; a CHUNK frame as its head and its piece)."""
        size = len(frame) if piece is None else len(frame) + len(piece)
        h = (self._small if size < MAC_SHA256_FROM else self._big).copy()
        h.update(_SEQ.pack(self.seq))
        h.update(frame)
        if piece is not None:
            h.update(piece)
        self.seq += 1
        return h.digest()[:MAC_SIZE]
