"""LogStore options: defaults, bounds and the checks both twins share."""
import errno
import os
from dataclasses import dataclass

import lz4.block

from kvcore.errors import StoreFull, StoreReadOnly

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
    min_free_percent: float = 0.0


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
    v = opts.min_free_percent
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 50:
        raise ValueError(f"min_free_percent must be a number in [0, 50], got {v!r}")
    return opts


MAP_CACHE_MAX = 1 << 16


def check_map_cache(v):
    """A store's map_cache (sealed segments kept mapped, docs/storage.md "Resources"), checked."""
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAP_CACHE_MAX:
        raise ValueError(f"map_cache must be an integer in [1, {MAP_CACHE_MAX}], got {v!r}")
    return v


def space_allowed(path, min_free):
    """Bytes that may still be taken on the file system of `path` before its free space (for
    unprivileged use) falls below `min_free` percent; negative when it is below already."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    if total <= 0:
        return 1 << 62
    return st.f_bavail * st.f_frsize - int(total * min_free / 100.0)


def space_refused(path, min_free):
    """The StoreFull a write below the free-space watermark raises (both twins)."""
    st = os.statvfs(path)
    pct = st.f_bavail * 100.0 / st.f_blocks if st.f_blocks else 100.0
    return StoreFull(errno.ENOSPC, f"write refused: {pct:.1f} % of the file system of {path} "
                                   f"is free, below min_free_percent={min_free:g} (free some "
                                   "space: writes resume by themselves)")


# Test-only fault injection (LogStore._fail_next): the next call(s) of one kind of system call
# fail with a chosen errno, in either twin at the same logical steps (docs/storage.md, "Faults").
FAULT_OPS = {"open": 1, "write": 2, "ftruncate": 3, "fdatasync": 4, "mmap": 5}
# ("mmap": the map of a sealed segment on a map cache miss, the twin's descriptor open)


def check_fault(op, err, times, after):
    """(op number, errno, times, after) of a _fail_next() call, checked."""
    if op not in FAULT_OPS:
        raise ValueError(f"op must be one of {', '.join(FAULT_OPS)}, got {op!r}")
    if not isinstance(err, int) or err <= 0 or not isinstance(times, int) or times < 1 \
            or not isinstance(after, int) or after < 0:
        raise ValueError("err must be a positive errno, times a positive integer, after >= 0")
    return FAULT_OPS[op], err, times, after


def injected(err, what):
    return OSError(err, os.strerror(err), f"{what} (injected)")


class FaultInjection:
    """Injected faults of the pure-Python stores (kvcore/storage/store_py.py's SegmentTable,
    the simulator's twin in kvnet/sim/storage.py); the compiled store's are segments.pyx's.
    Needs `_fault` on the instance."""

    def _fail_next(self, op, err=0, times=1, after=0):
        """Tests only: make the next `times` calls of one kind of system call fail with errno
        `err` (op None: no more faults); after: that many calls of the kind succeed first.
        The kinds are FAULT_OPS' (docs/storage.md, "Faults")."""
        self._fault = None if op is None else list(check_fault(op, err, times, after))

    def _inject(self, op, what):
        f = self._fault
        if f is not None and f[0] == FAULT_OPS[op]:
            if f[3] > 0:
                f[3] -= 1
                return
            f[2] -= 1
            if f[2] == 0:
                self._fault = None
            raise injected(f[1], what)


class ReadOnlyState:
    """Turning read-only after a failed sync, in the pure-Python stores (store_py.py's
    Durability, the simulator's twin); the compiled store's is durability.pyx's. Needs
    `_failed` (None or (errno, what)) and `path` on the instance."""

    def _fail(self, err, what):
        """A sync failed: read-only from now on (never synced again as if what the store held
        had reached the disk)."""
        if self._failed is None:
            self._failed = (err, what)
        return self._read_only_error()

    def _read_only_error(self):
        err, what = self._failed
        return StoreReadOnly(err, f"{what} failed ({errno.errorcode.get(err, err)}: "
                                  f"{os.strerror(err)}); store {self.path} is read-only: "
                                  "writes since its last good sync may be lost")

    @property
    def failed(self):
        """None, or the errno of the sync that made the store read-only."""
        return None if self._failed is None else self._failed[0]

    def _check_writable(self):
        if self._failed is not None:
            raise self._read_only_error()


class FaultState(FaultInjection, ReadOnlyState):
    """Both, on one object (the simulator's MemoryStore)."""


def foreign_segment_version(head, crc32c, seg_magic, version, header_size):
    """A segment header that is whole (its magic and CRC check out) but of a format version
    other than `version`: that version; else None (a current header, or a damaged one)."""
    if len(head) < header_size:
        return None
    magic, v = int.from_bytes(head[0:8], "little"), int.from_bytes(head[8:10], "little")
    if magic != seg_magic or v == version:
        return None
    if int.from_bytes(head[28:32], "little") != crc32c(bytes(head[:28])):
        return None
    return v


def check_format(path, seg_ids, crc32c, layout):
    """Refuse (StoreFormatError) a store directory holding a segment of another format version,
    before its open changes anything in it."""
    for seg_id in seg_ids:
        seg_path = os.path.join(path, layout.segment_name(seg_id))
        with open(seg_path, "rb") as f:
            head = f.read(layout.SEG_HEADER_SIZE)
        found = foreign_segment_version(head, crc32c, layout.SEG_MAGIC, layout.FORMAT_VERSION,
                                        layout.SEG_HEADER_SIZE)
        if found is not None:
            raise format_refused(seg_path, found, layout.FORMAT_VERSION)


def format_refused(path, found, version):
    from kvcore.errors import StoreFormatError
    return StoreFormatError(
        f"{path} is in storage format version {found}; this ringkv reads format version "
        f"{version} only (run the ringkv release that wrote it, or restore a backup)")


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
