"""Reference twin of kvcore.hashing: MurmurHash3 x64-128 in pure Python."""
import crc32c as _crc32c

_M = 0xFFFFFFFFFFFFFFFF
_C1 = 0x87C37B91114253D5
_C2 = 0x4CF5AD432745937F


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M


def _fmix(k):
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M
    k ^= k >> 33
    return k


def token(key):
    """MurmurHash3 x64-128, first 64 bits, unsigned: mmh3.hash64(key, signed=False)[0]."""
    data = bytes(key)
    n = len(data)
    h1 = h2 = 0
    nblocks = n // 16
    for i in range(nblocks):
        k1 = int.from_bytes(data[i * 16:i * 16 + 8], "little")
        k2 = int.from_bytes(data[i * 16 + 8:i * 16 + 16], "little")
        k1 = (_rotl((k1 * _C1) & _M, 31) * _C2) & _M
        h1 ^= k1
        h1 = (_rotl(h1, 27) + h2) & _M
        h1 = (h1 * 5 + 0x52DCE729) & _M
        k2 = (_rotl((k2 * _C2) & _M, 33) * _C1) & _M
        h2 ^= k2
        h2 = (_rotl(h2, 31) + h1) & _M
        h2 = (h2 * 5 + 0x38495AB5) & _M
    tail = data[nblocks * 16:]
    t = len(tail)
    if t > 8:
        k2 = int.from_bytes(tail[8:], "little")
        h2 ^= (_rotl((k2 * _C2) & _M, 33) * _C1) & _M
    if t > 0:
        k1 = int.from_bytes(tail[:8], "little")
        h1 ^= (_rotl((k1 * _C1) & _M, 31) * _C2) & _M
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _M
    h2 = (h2 + h1) & _M
    h1 = _fmix(h1)
    h2 = _fmix(h2)
    return (h1 + h2) & _M


def partition(key, q):
    """token(key) >> (64 - log2 q)."""
    if not isinstance(q, int) or q < 1 or (q & (q - 1)) != 0 or q > (1 << 32):
        raise ValueError(f"q must be a power of two between 1 and 2**32, got {q!r}")
    bits = q.bit_length() - 1
    return token(key) >> (64 - bits) if bits else 0


def crc32c(data, crc=0):
    """CRC-32C of data, continuing from crc (the storage checksum)."""
    return _crc32c.crc32c(bytes(data), crc)
