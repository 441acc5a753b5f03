"""LogStore options: defaults, bounds and the checks both twins share."""
from dataclasses import dataclass

import lz4.block

FSYNC_POLICIES = ("always", "interval", "never")


@dataclass(frozen=True)
class StoreOptions:
    fsync: str = "interval"
    sync_interval_ms: int = 1000
    max_segment_bytes: int = 64 << 20
    max_key_bytes: int = 8 << 10
    max_value_bytes: int = 32 << 20
    compress_min_bytes: int = 512
    index_skip_bits: int = 0


_BOUNDS = {
    "sync_interval_ms": (1, 3_600_000),
    "max_segment_bytes": (4096, 1 << 40),
    "max_key_bytes": (1, 65535),
    "max_value_bytes": (0, (1 << 31) - 1),
    "compress_min_bytes": (0, 1 << 31),
    "index_skip_bits": (0, 32),
}


def rotate_token(h, bits):
    """The index order of a token: rotated left by `bits`, so that keys sharing their top
    `bits` bits (one ring partition's keys) spread over the whole index (docs/storage.md)."""
    if not bits:
        return h
    return ((h << bits) | (h >> (64 - bits))) & 0xFFFFFFFFFFFFFFFF


def check_options(**kw):
    """Validated StoreOptions; a bad option raises ValueError naming it."""
    opts = StoreOptions(**kw)
    if opts.fsync not in FSYNC_POLICIES:
        raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {opts.fsync!r}")
    for name, (lo, hi) in _BOUNDS.items():
        v = getattr(opts, name)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
    return opts


def maybe_compress(value, min_bytes):
    """(stored bytes, compressed?) : lz4 when the value is big enough and it saves >= 10 %."""
    if len(value) < min_bytes or not value:
        return value, False
    packed = lz4.block.compress(value, store_size=True)
    if len(packed) * 10 <= len(value) * 9:
        return packed, True
    return value, False


def decompress(stored):
    return lz4.block.decompress(stored)
