"""Reference codec for records, segment headers and hint files (format.pxi)."""
import struct

from kvcore.hashing_py import crc32c
from kvcore.storage import layout as L

_REC = struct.Struct("<IIQBBHI")          # magic, crc, tstamp, flags, reserved, klen, vlen
_SEG = struct.Struct("<QHHIQI")           # magic, version, hsize, reserved, seg id, reserved
_HINT_HDR = struct.Struct("<QHHIQQ")      # magic, version, hsize, reserved, seg id, count
_HINT_ENT = struct.Struct("<QQIBBH")      # hash, offset, size, flags, reserved, klen
_TRAILER = struct.Struct("<II")
REC_MAGIC_BYTES = struct.pack("<I", L.REC_MAGIC)


def encode_record(key, stored_value, flags, tstamp):
    body = _REC.pack(L.REC_MAGIC, 0, tstamp, flags, 0, len(key), len(stored_value)) + key + stored_value
    crc = crc32c(body[8:])
    return body[:4] + struct.pack("<I", crc) + body[8:]


def decode_record(buf, off, end):
    """(tstamp, flags, key, stored_value, size) of a valid record at off, else None."""
    if off + L.REC_HEADER_SIZE > end:
        return None
    magic, crc, tstamp, flags, reserved, klen, vlen = _REC.unpack_from(buf, off)
    if magic != L.REC_MAGIC or reserved or flags & ~L.FLAGS_KNOWN or klen == 0:
        return None
    size = L.REC_HEADER_SIZE + klen + vlen
    if off + size > end:
        return None
    if crc32c(bytes(buf[off + 8:off + size])) != crc:
        return None
    k0 = off + L.REC_HEADER_SIZE
    return tstamp, flags, bytes(buf[k0:k0 + klen]), bytes(buf[k0 + klen:off + size]), size


def resync(buf, off, end):
    """Offset of the next valid record after a bad one at off, or None."""
    pos = off + 1
    while True:
        pos = buf.find(REC_MAGIC_BYTES, pos, end)
        if pos < 0:
            return None
        if decode_record(buf, pos, end) is not None:
            return pos
        pos += 1


def encode_segment_header(seg_id):
    head = _SEG.pack(L.SEG_MAGIC, L.FORMAT_VERSION, L.SEG_HEADER_SIZE, 0, seg_id, 0)
    return head + struct.pack("<I", crc32c(head))


def check_segment_header(buf, seg_id):
    """True when buf starts with a valid header of segment seg_id."""
    if len(buf) < L.SEG_HEADER_SIZE:
        return False
    magic, version, hsize, _, sid, _ = _SEG.unpack_from(buf, 0)
    (crc,) = struct.unpack_from("<I", buf, 28)
    return (magic == L.SEG_MAGIC and version == L.FORMAT_VERSION and hsize == L.SEG_HEADER_SIZE
            and sid == seg_id and crc == crc32c(bytes(buf[:28])))


def encode_hints(seg_id, entries):
    """entries: (hash, offset, size, flags, key) in file order."""
    parts = [_HINT_HDR.pack(L.HINT_MAGIC, L.FORMAT_VERSION, L.HINT_HEADER_SIZE, 0, seg_id, len(entries))]
    for h, off, size, flags, key in entries:
        parts.append(_HINT_ENT.pack(h, off, size, flags, 0, len(key)))
        parts.append(key)
    body = b"".join(parts)
    return body + _TRAILER.pack(crc32c(body), L.HINT_TRAILER_MAGIC)


def decode_hints(buf, seg_id):
    """The entries of a valid hint file of segment seg_id, or None if it fails any check."""
    n = len(buf)
    if n < L.HINT_HEADER_SIZE + L.HINT_TRAILER_SIZE:
        return None
    crc, tmagic = _TRAILER.unpack_from(buf, n - L.HINT_TRAILER_SIZE)
    body = bytes(buf[:n - L.HINT_TRAILER_SIZE])
    if tmagic != L.HINT_TRAILER_MAGIC or crc32c(body) != crc:
        return None
    magic, version, hsize, _, sid, count = _HINT_HDR.unpack_from(body, 0)
    if magic != L.HINT_MAGIC or version != L.FORMAT_VERSION or hsize != L.HINT_HEADER_SIZE or sid != seg_id:
        return None
    entries, pos = [], L.HINT_HEADER_SIZE
    for _ in range(count):
        if pos + L.HINT_ENTRY_SIZE > len(body):
            return None
        h, off, size, flags, _, klen = _HINT_ENT.unpack_from(body, pos)
        pos += L.HINT_ENTRY_SIZE
        entries.append((h, off, size, flags, body[pos:pos + klen]))
        pos += klen
    return entries if pos == len(body) else None
