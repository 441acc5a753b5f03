"""The simulator's storage twin: kvcore's LogStore in memory, with a disk that can crash
(docs/simulation.md, "Storage").

`MemoryDisk` holds what a machine's disks would: for every store directory, an image of the
records written there, split into what the last sync made durable and the records written
since (in order, each with the offset its record would end at in the real store's active
segment: a 32-byte segment header, then 24 bytes of header, the key and the value, lz4
compressed as the real store would). `MemoryDisk.store(path, ...)` opens a `MemoryStore` on
it with LogStore's arguments, API and errors; `MemoryDisk.crash(prefix)` is a power cut of
every store under a directory: open stores are abandoned (no sync), and every image loses the
records written after its last sync (a cut inside a record leaves a torn tail, counted at the
next open as the real store counts it). `lost_bytes` counts the records so cut off.

The store's directory is real (the replica keeps TRUSTED and TREE files there, and a restart
lists the partition directories); the records are not. A directory that is gone (a dropped
partition, renamed away) opens as a fresh store, as the real store's would.

What the twin leaves out, being in memory: segments (it never rolls on size; `roll()` and a
merge start a new "segment" after a sync, as a seal does), hint files, the map cache, CRC
failures, the free-space watermark, a second process's lock. Durability follows the fsync
policy: "always" syncs each write; "interval" syncs on a timer of the running event loop
(the simulated clock; with no running loop, only sync() and close() do); "never" only on
sync(). Injected faults (`_fail_next`): "write" fails an append, "fdatasync" fails a sync
(the store turns read-only, as the real one); "open", "ftruncate" and "mmap" name calls the
twin never makes, so they never fire.
"""
import asyncio
import errno as E
import os

from kvcore._native import select
from kvcore.errors import MergeError, StoreClosed, StoreLocked
from kvcore.storage import layout as L
from kvcore.storage import record_py as R
from kvcore.storage.options import (FaultState, check_map_cache, check_options, decompress,
                                    maybe_compress, rotate_token)
from kvcore.storage.twin import (SnapshotFold, check_key, check_scan, check_value, leaf_table,
                                 replay_records, scan_page)

_token = select("kvcore.hashing", "kvcore.hashing_py").token

HEADER = L.SEG_HEADER_SIZE          # a segment's header: its first record starts there
REC_HEADER = L.REC_HEADER_SIZE      # a record's header
JOURNAL_RECORDS = 1                 # kvcore/storage/journal.py RECORDS
MASK64 = 0xFFFFFFFFFFFFFFFF


class _Image:
    """What a store directory holds on the simulated disk."""

    __slots__ = ("base", "tail", "seg", "offset", "synced", "data_bytes", "clean", "store",
                 "torn")

    def __init__(self):
        self.base = {}          # key -> (value, size, hash): durable at the last sync
        self.tail = []          # (end offset, key, (value, size, hash) or None): since then
        self.seg = 1            # the active segment's number
        self.offset = HEADER    # where the next record goes in it
        self.synced = HEADER    # what the last sync covered of it
        self.data_bytes = 0     # bytes of every record written since the last merge
        self.clean = False      # closed cleanly (the next open finds CLEAN)
        self.store = None       # the MemoryStore open on it, or None
        self.torn = 0           # bytes of a record a crash cut through (the next open's count)

    def settle(self):
        """Everything written is durable now."""
        base = self.base
        for _, key, entry in self.tail:
            if entry is None:
                base.pop(key, None)
            else:
                base[key] = entry
        self.tail = []
        self.synced = self.offset

    def cut(self, at):
        """A power cut: the records ending after `at` (default: the last sync) are lost.
        Bytes of records lost."""
        at = self.synced if at is None else max(at, self.synced)
        keep = [t for t in self.tail if t[0] <= at]
        end = keep[-1][0] if keep else self.synced
        lost = self.offset - end
        self.torn = max(0, min(at, self.offset) - end)
        self.tail = keep
        self.offset = end
        self.settle()
        return lost


class MemoryDisk:
    """The simulated disks of every node of a run: store directory -> its image."""

    def __init__(self):
        self.images = {}
        self.lost_bytes = 0

    def store(self, path, fsync="interval", **opts):
        """A MemoryStore on `path` (LogStore's arguments)."""
        return MemoryStore(path, fsync, disk=self, **opts)

    __call__ = store            # (the disk stands in for the LogStore class)

    def crash(self, prefix, lose_unsynced=True, at=None):
        """A power cut of every store under directory `prefix`: open ones are abandoned (no
        sync, no clean marker) and (lose_unsynced) each image loses what its last sync did
        not cover. lose_unsynced=False: a kill of the process only (the page cache keeps
        every write). at: the active segment's offset the cut keeps up to instead of the
        last sync (tests: a cut inside the unsynced records). Bytes lost."""
        root = os.path.join(os.path.abspath(prefix), "")
        lost = 0
        for path in sorted(self.images):
            if not (path + os.sep).startswith(root):
                continue
            image = self.images[path]
            if image.store is not None:
                image.store._abandon()
            if lose_unsynced:
                lost += image.cut(at)
        self.lost_bytes += lost
        return lost

    def forget(self, prefix):
        """Drop the images under directory `prefix` (its files deleted: a test's teardown)."""
        root = os.path.join(os.path.abspath(prefix), "")
        for path in [p for p in self.images if (p + os.sep).startswith(root)]:
            image = self.images.pop(path)
            if image.store is not None:
                image.store._abandon()

    def _image(self, path):
        if not os.path.isdir(path):         # new, or dropped (renamed away): afresh
            os.makedirs(path, exist_ok=True)
            self.images.pop(path, None)
        image = self.images.get(path)
        if image is None:
            image = self.images[path] = _Image()
        return image


DISK = MemoryDisk()                 # the default disk of LogStore() below (tests)


def LogStore(path, fsync="interval", **opts):       # noqa: N802 (stands in for the class)
    """A MemoryStore on the module's default disk (the storage model tests use this)."""
    return MemoryStore(path, fsync, disk=DISK, **opts)


class Snapshot:
    """The live records at one moment, as (key, value) pairs in the store's hash order."""

    def __init__(self, entries, merges):
        self.entries = entries
        self.merges = merges

    def __len__(self):
        return len(self.entries)


class MergeJob:
    """A merge's disk work: nothing to copy in memory; finish_merge compacts."""

    def __init__(self, store):
        self._store = store
        self.done = False
        self.cancelled = False

    def cancel(self):
        self.cancelled = True

    def run(self, max_bytes_per_s=0):
        if self.done:
            raise MergeError("this merge job already ran")
        if self._store._closed:
            raise StoreClosed("the store was closed before the merge ran")
        if self.cancelled:
            raise MergeError("the merge was cancelled")
        self.done = True

    def install(self):
        """(nothing: finish_merge does it)"""

    def cleanup(self):
        """(nothing: finish_merge does it)"""


class MemoryStore(SnapshotFold, FaultState):
    """kvcore's LogStore in memory, on a MemoryDisk image (see the module's docstring)."""

    def __init__(self, path, fsync="interval", *, disk, sync_interval_ms=1000,
                 max_segment_bytes=64 << 20, max_key_bytes=8 << 10, max_value_bytes=32 << 20,
                 compress_min_bytes=512, index_skip_bits=0, min_free_percent=0.0,
                 seal_later=False, map_cache=8, _hash_mask=MASK64):
        check_map_cache(map_cache)
        self._opts = check_options(fsync=fsync, sync_interval_ms=sync_interval_ms,
                                   max_segment_bytes=max_segment_bytes,
                                   max_key_bytes=max_key_bytes, max_value_bytes=max_value_bytes,
                                   compress_min_bytes=compress_min_bytes,
                                   index_skip_bits=index_skip_bits,
                                   min_free_percent=min_free_percent)
        self.path = os.path.abspath(os.fspath(path))
        self._closed = True
        self._disk = disk
        image = disk._image(self.path)
        if image.store is not None:
            raise StoreLocked(f"{self.path} is already open by another LogStore (in this or "
                              "another process)")
        self._mask = _hash_mask
        self.on_corrupt = None
        self._failed = None
        self._fault = None
        self._journal = None
        self._journal_id = 0
        self._timer = None
        self._merges = 0
        self._merging = None
        # the open: what the image holds (a crash cut it already), all of it durable now
        clean, torn = image.clean, image.torn
        image.settle()
        image.clean, image.torn = False, 0
        image.seg += 1                      # (the open starts a new active segment)
        image.offset = image.synced = HEADER
        self._image = image
        self._kd = dict(image.base)          # key -> (value, size, hash)
        self._live = sum(e[1] for e in self._kd.values())
        self.recovery = {"clean": clean, "corrupt_records": 0, "torn_tail_bytes": torn,
                         "zero_tail_bytes": 0, "scanned_segments": 0 if clean else 1,
                         "corrupt_at": []}
        image.store = self
        self._closed = False

    # ---- checks and faults ---------------------------------------------------------------
    # (a key's and a value's: check_key, check_value in kvcore/storage/twin.py, shared with
    # kvcore/storage/store_py.py)

    def _check_open(self):
        if self._closed:
            raise StoreClosed(f"LogStore {self.path} is closed")

    # (_fail_next, _inject, _fail, failed, _check_writable: FaultState, shared with
    # kvcore/storage/store_py.py)

    # ---- writes --------------------------------------------------------------------------

    def _entry(self, key, value):
        stored, _ = maybe_compress(value, self._opts.compress_min_bytes)
        return (value, REC_HEADER + len(key) + len(stored), _token(key) & self._mask)

    def _append(self, items):
        """items: [(key, entry or None (a tombstone))], written in order, all or nothing."""
        self._check_writable()
        self._inject("write", "writing records")
        image, kd, tail = self._image, self._kd, self._image.tail
        journal = self._journal
        for key, entry in items:
            size = entry[1] if entry is not None else REC_HEADER + len(key)
            image.offset += size
            image.data_bytes += size
            tail.append((image.offset, key, entry))
            old = kd.get(key)
            if old is not None:
                self._live -= old[1]
            if entry is None:
                kd.pop(key, None)
            else:
                kd[key] = entry
                self._live += size
            if journal is not None:
                journal.add(self._journal_id, JOURNAL_RECORDS, self._record(key, entry))
        policy = self._opts.fsync
        if policy == "always":
            self.sync()
        elif policy == "interval" and self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(self._opts.sync_interval_ms / 1000.0, self._tick)

    def _record(self, key, entry):
        if entry is None:
            return R.encode_record(key, b"", L.FLAG_TOMBSTONE, 0)
        stored, packed = maybe_compress(entry[0], self._opts.compress_min_bytes)
        return R.encode_record(key, stored, L.FLAG_COMPRESSED if packed else 0, 0)

    def _tick(self):
        self._timer = None
        if not self._closed and self._failed is None and self._image.tail:
            try:
                self.sync()
            except OSError:
                pass                # (read-only now: the replica's next write reports it)

    def put(self, key, value):
        self._check_open()
        check_key(key, self._opts)
        check_value(value, self._opts)
        self._append([(key, self._entry(key, value))])

    def put_many(self, items):
        self._check_open()
        batch = []
        for key, value in items:
            check_key(key, self._opts)
            check_value(value, self._opts)
            batch.append((key, self._entry(key, value)))
        if batch:
            self._append(batch)

    def delete(self, key):
        self._check_open()
        check_key(key, self._opts)
        if key not in self._kd:
            return False
        self._append([(key, None)])
        return True

    def attach_journal(self, journal, sid):
        self._journal, self._journal_id = journal, sid

    def apply_records(self, payloads):
        """Write a journal replay's records again (not journaled again): (written, bad)."""
        self._check_open()
        self._check_writable()
        written = 0
        records, bad = replay_records(payloads)
        journal, self._journal = self._journal, None
        try:
            for flags, key, stored, _ in records:
                if flags & L.FLAG_TOMBSTONE:
                    if key in self._kd:
                        self._append([(key, None)])
                        written += 1
                else:
                    value = decompress(stored) if flags & L.FLAG_COMPRESSED else stored
                    self._append([(key, self._entry(key, value))])
                    written += 1
        finally:
            self._journal = journal
        return written, bad

    # ---- reads ---------------------------------------------------------------------------

    def get(self, key):
        self._check_open()
        check_key(key, self._opts)
        entry = self._kd.get(key)
        return None if entry is None else entry[0]

    def get_many(self, keys):
        return [self.get(k) for k in keys]

    def __contains__(self, key):
        self._check_open()
        check_key(key, self._opts)
        return key in self._kd

    def __len__(self):
        self._check_open()
        return len(self._kd)

    def _ordered(self, cursor=0):
        rot = self._opts.index_skip_bits
        return sorted((o, k) for o, k in ((rotate_token(e[2], rot), k)
                                           for k, e in self._kd.items()) if o >= cursor)

    def scan(self, cursor=0, count=100):
        """(next cursor, keys): keys in hash order from cursor; 0 when done (as LogStore)."""
        self._check_open()
        check_scan(cursor, count)
        return scan_page(self._ordered(cursor), count)

    def keys(self):
        self._check_open()
        return iter([k for _, k in self._ordered()])

    __iter__ = keys

    def items(self):
        self._check_open()
        return iter([(k, self._kd[k][0]) for _, k in self._ordered()])

    def snapshot(self):
        self._check_open()
        return Snapshot([(k, self._kd[k][0]) for _, k in self._ordered()], self._merges)

    def read_snapshot(self, snap, start, count):
        self._check_open()
        if snap.merges != self._merges:
            raise MergeError("a merge moved records since this snapshot: take another")
        end = min(len(snap.entries), start + count)
        return end, snap.entries[start:end]

    def leaf_keys(self, leaves, leaf_bits=14):
        self._check_open()
        lmask, out = leaf_table(leaves, leaf_bits)
        if not out:
            return out
        exact = (self._mask & lmask) == lmask
        for key, entry in self._kd.items():
            lst = out.get((entry[2] if exact else _token(key)) & lmask)
            if lst is not None:
                lst.append(key)
        return out

    # ---- durability ----------------------------------------------------------------------

    def sync(self):
        self._check_open()
        self._check_writable()
        self._synced(f"fdatasync of segment {self._image.seg:016x}")

    def _synced(self, what):
        try:
            self._inject("fdatasync", what)
        except OSError as exc:
            raise self._fail(exc.errno or E.EIO, what) from exc
        self._image.settle()

    def sync_begin(self):
        self._check_open()
        self._check_writable()
        return (self._image.seg, self._image.offset)

    def sync_end(self, mark):
        """Every write up to `mark` (sync_begin's) is durable now."""
        seg, offset = mark
        if self._closed:
            return
        self._check_writable()
        what = f"sync of segment {seg:016x} (syncfs)"
        try:
            self._inject("fdatasync", what)
        except OSError as exc:
            raise self._fail(exc.errno or E.EIO, what) from exc
        image = self._image
        if image.seg != seg:
            return                  # (a roll or merge synced it all since)
        tail = image.tail
        n = 0
        while n < len(tail) and tail[n][0] <= offset:
            n += 1
        done, image.tail = tail[:n], tail[n:]
        base = image.base
        for _, key, entry in done:
            if entry is None:
                base.pop(key, None)
            else:
                base[key] = entry
        image.synced = max(image.synced, offset)

    def roll(self):
        """A new active segment (the old one sealed: synced)."""
        self._check_open()
        self._check_writable()
        if self._image.offset > HEADER:
            self._synced(f"fdatasync of segment {self._image.seg:016x}")
            self._image.seg += 1
            self._image.offset = self._image.synced = HEADER

    def seal_pending(self):
        """Nothing to do: a roll seals at once here."""

    def begin_merge(self, roll=True):
        self._check_open()
        if self._merging is not None:
            raise MergeError("a merge is already in progress on this store")
        self._check_writable()
        if roll:
            self.roll()
        self._merging = MergeJob(self)
        return self._merging

    def finish_merge(self, job, cleanup=True):
        """The data is its live records now (a key written meanwhile keeps its record)."""
        if job is not self._merging:
            raise MergeError("this merge job does not belong to this store")
        self._merging = None
        if self._closed:
            raise StoreClosed(f"LogStore {self.path} is closed")
        if not job.done:
            raise MergeError("finish_merge() before the job ran")
        self._image.data_bytes = self._live
        self._merges += 1

    def merge(self):
        job = self.begin_merge()
        try:
            job.run()
        except BaseException:
            self._merging = None
            raise
        self.finish_merge(job)

    # ---- stats and close -----------------------------------------------------------------

    def sizes(self):
        self._check_open()
        return self._image.data_bytes, self._live

    def stats(self):
        self._check_open()
        image = self._image
        return {
            "keys": len(self._kd), "live_bytes": self._live,
            "data_bytes": image.data_bytes, "hint_bytes": 0, "disk_bytes": image.data_bytes,
            "segments": 1, "active_segment": os.path.join(self.path, L.segment_name(image.seg)),
            "active_offset": image.offset, "synced_offset": image.synced,
            "index_bytes": 0, "index_capacity": 0, "corrupt_records": 0,
            "torn_tail_bytes": self.recovery["torn_tail_bytes"], "zero_tail_bytes": 0,
            "reserved_bytes": 0, "merges": self._merges, "mapped_segments": 0,
            "map_misses": 0, "sealing_segments": 0, "sealing_reserved_bytes": 0,
            "read_only": self._failed is not None, "fsync": self._opts.fsync,
        }

    def close(self):
        """Sync and mark the image clean (a read-only store closes as a crash leaves it,
        with every write still there: the page cache holds them)."""
        self._shutdown(True)

    def _abandon(self):
        """Stop as a killed process would: no sync, no clean marker."""
        self._shutdown(False)

    def _shutdown(self, clean):
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._merging = None
        self._closed = True
        image = self._image
        image.store = None
        if clean and self._failed is None:
            image.settle()
            image.clean = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<MemoryStore {self.path!r} {'closed' if self._closed else 'open'}>"
