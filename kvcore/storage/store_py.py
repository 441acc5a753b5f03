"""Reference twin of kvcore.storage.store: the same LogStore, in plain Python.

Same files, same API, same merge and recovery rules; a dict is its keydir. It
is the oracle the tests compare the Cython store with (docs/storage.md).
"""
import os
import threading
import time

import errno as E

from kvcore.errors import (KeyTooLarge, MergeError, StoreClosed, StoreReadOnly, ValueTooLarge)
from kvcore.hashing_py import crc32c, token
from kvcore.storage import layout as L
from kvcore.storage import record_py as R
from kvcore.storage import syncer
from kvcore.storage.files import fsync_dir, write_file
from kvcore.storage.lock import DirLock
from kvcore.storage.twin import SnapshotFold, check_scan, leaf_table, replay_records, scan_page
from kvcore.storage.options import (FaultState, check_format, check_map_cache, check_options,
                                    decompress, maybe_compress, rotate_token,
                                    space_allowed, space_refused)

JOURNAL_RECORDS = 1            # kvcore/storage/journal.py RECORDS
SPACE_CHECK_BYTES = 64 << 10    # the free-space watermark is checked at least this often

MERGE_STEP = 1 << 20        # a throttled merge copies this much between its sleeps


FD_CACHE = 4                # descriptors of sealed segments a store keeps open for reads
                            # (map_cache=: the compiled store's maps of them, 8 by default)


class _Segment:
    __slots__ = ("id", "path", "fd", "size", "hints")

    def __init__(self, seg_id, path, fd, size):
        # fd: read-write descriptor while active (or being opened); None once sealed: reads
        # then borrow one from the store's _FdCache (the compiled store reads its maps)
        self.id, self.path, self.fd, self.size = seg_id, path, fd, size
        self.hints = []             # (hash, offset, size, flags, key) of every record


class _FdCache:
    """Read-only descriptors of the sealed segments read last, at most `size` of them, so a
    store holds a bounded number of descriptors however many segments it has."""

    def __init__(self, size=FD_CACHE):
        self.size = size
        self._fds = {}              # seg id -> fd, least recently used first
        self._lock = threading.Lock()
        self.misses = 0

    def fd(self, seg, on_miss=None):
        """A descriptor to read seg with; on a miss on_miss() runs first (LogStore: an
        injected "mmap" fault), and an OSError (EMFILE) leaves the cache as it was."""
        if seg.fd is not None:
            return seg.fd
        with self._lock:
            fd = self._fds.pop(seg.id, None)
            if fd is None:
                if on_miss is not None:
                    on_miss()
                fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)   # (EMFILE: no change)
                while len(self._fds) >= self.size:
                    os.close(self._fds.pop(next(iter(self._fds))))
                self.misses += 1
            self._fds[seg.id] = fd
            return fd

    def forget(self, seg_id):
        with self._lock:
            fd = self._fds.pop(seg_id, None)
        if fd is not None:
            os.close(fd)

    def clear(self):
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)

    def __len__(self):
        return len(self._fds)


class Snapshot:
    """The store's live records at one moment (LogStore.snapshot): their locations, read back
    with LogStore.read_snapshot while the store goes on being written."""

    def __init__(self, entries, merges):
        self.entries = entries      # (seg id, offset, size, key), in file order
        self.merges = merges        # the store's merge count then: a merge since moves records

    def __len__(self):
        return len(self.entries)


class MergeJob:
    """The disk work of a merge: safe to run() in a worker thread while the owner goes on."""

    def __init__(self, store, inputs, live, out_base):
        self._store = store
        self.inputs = inputs        # sealed segments, oldest first
        self.live = live            # seg id -> sorted offsets live at planning time
        self.out_base = out_base
        self.outputs = []           # (seg id, data path, hint path, size, hint entries)
        self.moves = []             # (key, old seg id, old offset, new seg id, new offset)
        self.corrupt = 0
        self.done = False
        self.cancelled = False
        self.running = threading.Lock()     # held by run(), so close() can wait for it

    def cancel(self):
        self.cancelled = True

    def install(self):
        """(finish_merge does the file work in this twin)"""

    def cleanup(self):
        """(finish_merge does the file work in this twin)"""

    def run(self, max_bytes_per_s=0):
        with self.running:
            if self.done:
                raise MergeError("this merge job already ran")
            if self._store._closed:
                raise StoreClosed("the store was closed before the merge ran")
            self._run(max_bytes_per_s)

    def _discard(self):
        for _, data_path, hint_path, _, _ in self.outputs:
            for p in (data_path, hint_path):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        self.outputs = []

    def _run(self, max_bytes_per_s):
        opts = self._store._opts
        out_id = self.out_base
        buf, hints = [], []
        size = L.SEG_HEADER_SIZE
        t0, total, step_end = time.monotonic(), 0, MERGE_STEP

        def flush():
            data_path = os.path.join(self._store.path, L.segment_name(out_id) + L.MERGING_SUFFIX)
            hint_path = os.path.join(self._store.path, L.hint_name(out_id) + L.MERGING_SUFFIX)
            write_file(data_path, R.encode_segment_header(out_id) + b"".join(buf))
            write_file(hint_path, R.encode_hints(out_id, hints))
            self.outputs.append((out_id, data_path, hint_path, size, list(hints)))

        for seg in self.inputs:
            offsets = self.live.get(seg.id, ())
            if not offsets:
                continue
            fd = os.open(seg.path, os.O_RDONLY)   # (the job's own: the store's may close)
            try:
                for off in offsets:
                    if self.cancelled:
                        raise MergeError("the merge was cancelled")
                    if max_bytes_per_s > 0 and total >= step_end:
                        step_end = total + MERGE_STEP
                        ahead = total / max_bytes_per_s - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
                    head = os.pread(fd, L.REC_HEADER_SIZE, off)
                    klen = int.from_bytes(head[18:20], "little")
                    vlen = int.from_bytes(head[20:24], "little")
                    raw = os.pread(fd, L.REC_HEADER_SIZE + klen + vlen, off)
                    rec = R.decode_record(raw, 0, len(raw))
                    if rec is None:
                        self.corrupt += 1
                        continue
                    _, flags, key, _, rsize = rec
                    if size + rsize > opts.max_segment_bytes and size > L.SEG_HEADER_SIZE:
                        flush()
                        out_id += 1
                        buf, hints, size = [], [], L.SEG_HEADER_SIZE
                    buf.append(raw)
                    total += rsize
                    hints.append((token(key) & self._store._mask, size, rsize, flags, key))
                    self.moves.append((key, seg.id, off, out_id, size))
                    size += rsize
            finally:
                os.close(fd)
        if buf:
            flush()
        self.done = True


class LogStore(SnapshotFold, FaultState):
    """A Bitcask-shaped log store in one directory; see docs/storage.md."""

    def __init__(self, path, fsync="interval", *, sync_interval_ms=1000, max_segment_bytes=64 << 20,
                 max_key_bytes=8 << 10, max_value_bytes=32 << 20, compress_min_bytes=512,
                 index_skip_bits=0, min_free_percent=0.0, seal_later=False,
                 map_cache=FD_CACHE, _hash_mask=0xFFFFFFFFFFFFFFFF):
        # map_cache: read descriptors of sealed segments kept open (the compiled store: maps)
        # seal_later is accepted and changes nothing here: this twin always seals a segment
        # when it rolls (seal_pending() has nothing to do)
        self._mask = _hash_mask     # tests only: forces hash collisions (same file format)
        check_map_cache(map_cache)
        self._opts = check_options(fsync=fsync, sync_interval_ms=sync_interval_ms,
                                   max_segment_bytes=max_segment_bytes, max_key_bytes=max_key_bytes,
                                   max_value_bytes=max_value_bytes, compress_min_bytes=compress_min_bytes,
                                   index_skip_bits=index_skip_bits, min_free_percent=min_free_percent)
        self.path = os.fspath(path)
        self._closed = True
        self.on_corrupt = None      # called (segment id, offset) for each record dropped as corrupt
        self._failed = None         # (errno, what) once an fdatasync failed: read-only
        self._fault = None          # [op number, errno, times left]: _fail_next()
        self._unchecked = SPACE_CHECK_BYTES     # bytes appended since free space was checked
        os.makedirs(self.path, exist_ok=True)
        self._lock = DirLock(os.path.join(self.path, L.LOCK_NAME))
        self._io_lock = threading.Lock()
        self._fds = _FdCache(map_cache)
        self._keydir = {}           # key -> [hash, seg id, offset, size]
        self._segments = {}         # seg id -> _Segment, oldest first
        self._live_bytes = 0
        self._corrupt = 0
        self._corrupt_at = []       # (segment id, offset) of records the open's scan skipped
        self._torn_tail_bytes = 0
        self._zero_tail_bytes = 0
        self._scanned = 0
        self._merges = 0
        self._dirty_since = None
        self._synced_offset = 0
        self._merge_job = None
        self._journal = None        # the node's journal buffer (attach_journal), and our id
        self._journal_id = 0
        try:
            self.recovery = self._open()
        except BaseException:
            self._release_files()
            self._lock.release()
            raise
        self._closed = False
        if self._opts.fsync == "interval":
            syncer.register(self)

    # ---- open and recovery -------------------------------------------------------------

    def _open(self):
        check_format(self.path, L.segment_ids(self.path), crc32c, L)
        for name in os.listdir(self.path):
            if name.endswith(L.MERGING_SUFFIX):
                os.unlink(os.path.join(self.path, name))
        clean_path = os.path.join(self.path, L.CLEAN_NAME)
        clean = os.path.exists(clean_path)
        if clean:
            os.unlink(clean_path)
        ids = L.segment_ids(self.path)
        for i, seg_id in enumerate(ids):
            self._load_segment(seg_id, last=(i == len(ids) - 1))
        for seg in self._segments.values():         # all sealed now
            os.close(seg.fd)
            seg.fd = None
        next_seq = (ids[-1] >> L.SEQ_SHIFT) + 1 if ids else 1
        self._new_active(next_seq << L.SEQ_SHIFT)
        return {"clean": clean, "corrupt_records": self._corrupt,
                "torn_tail_bytes": self._torn_tail_bytes, "zero_tail_bytes": self._zero_tail_bytes,
                "scanned_segments": self._scanned, "corrupt_at": self._corrupt_at}

    def _load_segment(self, seg_id, last):
        path = os.path.join(self.path, L.segment_name(seg_id))
        fd = os.open(path, os.O_RDWR)
        size = os.fstat(fd).st_size
        seg = _Segment(seg_id, path, fd, size)
        self._segments[seg_id] = seg
        hint_path = os.path.join(self.path, L.hint_name(seg_id))
        entries = None
        if os.path.exists(hint_path):
            with open(hint_path, "rb") as f:
                entries = R.decode_hints(f.read(), seg_id)
            if entries is not None and any(off + sz > size for _, off, sz, _, _ in entries):
                entries = None
        if entries is None:
            self._scan_segment(seg, last)
            self._write_hints(seg, quiet=True, sync=False)
        else:
            seg.hints = entries
            for h, off, sz, flags, key in entries:
                self._apply(key, h, seg_id, off, sz, flags)

    def _scan_segment(self, seg, last):
        self._scanned += 1
        buf = os.pread(seg.fd, seg.size, 0)
        off = L.SEG_HEADER_SIZE
        if not R.check_segment_header(buf, seg.id):
            if last and seg.size <= L.SEG_HEADER_SIZE:   # died while creating it
                self._torn_tail_bytes += seg.size
                os.ftruncate(seg.fd, 0)
                seg.size = 0
                return
            self._scan_corrupt(seg, 0)
        end = len(buf)
        while off < end:
            rec = R.decode_record(buf, off, end)
            if rec is not None:
                tstamp, flags, key, _, size = rec
                h = token(key) & self._mask
                seg.hints.append((h, off, size, flags, key))
                self._apply(key, h, seg.id, off, size, flags)
                off += size
                continue
            nxt = R.resync(buf, off, end)
            if nxt is None:
                # Zeros to the end: space the compiled store reserved ahead and did not
                # give back (no clean close), the end of the data in any segment. Bytes
                # before them: a torn record (newest segment) or one corrupt record.
                data_end = len(buf[off:end].rstrip(b"\0")) + off
                if data_end > off and not last:
                    self._scan_corrupt(seg, off)
                    break
                self._torn_tail_bytes += data_end - off
                self._zero_tail_bytes += end - data_end
                os.ftruncate(seg.fd, off)
                os.fsync(seg.fd)
                seg.size = off
                break
            self._scan_corrupt(seg, off)
            off = nxt

    def _scan_corrupt(self, seg, off):
        """A bad record the open's scan skips: counted, and listed in recovery["corrupt_at"]."""
        self._corrupt += 1
        if len(self._corrupt_at) < 10_000:
            self._corrupt_at.append((seg.id, off))

    def _apply(self, key, h, seg_id, off, size, flags):
        old = self._keydir.get(key)
        if old is not None:
            self._live_bytes -= old[3]
        if flags & L.FLAG_TOMBSTONE:
            if old is not None:
                del self._keydir[key]
        else:
            self._keydir[key] = [h, seg_id, off, size]
            self._live_bytes += size

    def _write_hints(self, seg, quiet=False, sync=True):
        """Write a segment's hint file. quiet: a failure (a full disk) is left alone: a hint
        file only saves a scan at the next open, which writes it then. sync=False (an open's
        rescan): not synced, as the compiled store does: a hint file checks itself."""
        hint_path = os.path.join(self.path, L.hint_name(seg.id))
        tmp = hint_path + L.MERGING_SUFFIX
        try:
            self._inject("open", "hint file")
            self._inject("write", "hint file")
            write_file(tmp, R.encode_hints(seg.id, seg.hints), sync=sync)
            os.rename(tmp, hint_path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if not quiet:
                raise

    # ---- faults (docs/storage.md, "Faults") ---------------------------------------------

    # (_fail_next, _inject, failed, _check_writable: FaultState in kvcore/storage/options.py)

    def _fail(self, err, what):
        self._dirty_since = None
        return FaultState._fail(self, err, what)

    def _check_space(self, extra):
        """The free-space watermark, checked every SPACE_CHECK_BYTES appended (and at a roll)."""
        mf = self._opts.min_free_percent
        if mf <= 0:
            return
        self._unchecked += extra
        if self._unchecked < SPACE_CHECK_BYTES:
            return
        if space_allowed(self.path, mf) < extra:
            raise space_refused(self.path, mf)
        self._unchecked = 0

    def _sync_fd(self, fd, what):
        """fdatasync; a failure makes the store read-only (StoreReadOnly)."""
        try:
            self._inject("fdatasync", what)
            os.fdatasync(fd)
        except OSError as exc:
            raise self._fail(exc.errno or E.EIO, what) from exc

    # ---- segments ----------------------------------------------------------------------

    def _create_segment(self, seg_id):
        """A new segment file with its header, synced; on any failure nothing is left."""
        path = os.path.join(self.path, L.segment_name(seg_id))
        self._inject("open", "opening a new segment")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            self._inject("write", "writing a segment header")
            os.write(fd, R.encode_segment_header(seg_id))
            self._inject("fdatasync", "fdatasync of a new segment")
            os.fdatasync(fd)
            fsync_dir(self.path)
        except BaseException as exc:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            if isinstance(exc, OSError) and not exc.filename:
                raise OSError(exc.errno, exc.strerror, f"starting segment {seg_id:016x}") from exc
            raise
        return _Segment(seg_id, path, fd, L.SEG_HEADER_SIZE)

    def _new_active(self, seg_id):
        self._active = self._create_segment(seg_id)
        self._segments[seg_id] = self._active
        self._synced_offset = L.SEG_HEADER_SIZE

    def _seal_active(self):
        """Start the next segment, then seal the active one (synced, with hints). The next
        segment is opened first: if that fails (EMFILE, ENOSPC) nothing has changed, and if
        sealing fails it is removed again, so the active segment is always writable."""
        seg = self._active
        if self._opts.min_free_percent > 0:
            self._unchecked = SPACE_CHECK_BYTES
            self._check_space(L.SEG_HEADER_SIZE)
        new = self._create_segment(((seg.id >> L.SEQ_SHIFT) + 1) << L.SEQ_SHIFT)
        try:
            self._inject("ftruncate", "truncating the sealed segment")
            with self._io_lock:
                self._sync_fd(seg.fd, f"fdatasync of segment {seg.id:016x}")
        except BaseException:
            os.close(new.fd)
            try:
                os.unlink(new.path)
            except OSError:
                pass
            raise
        self._active = new
        self._segments[new.id] = new
        with self._io_lock:             # (a sync on another thread may hold it)
            os.close(seg.fd)
            seg.fd = None
        self._synced_offset = L.SEG_HEADER_SIZE
        self._dirty_since = None
        self._write_hints(seg, quiet=True)

    # ---- checks ------------------------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise StoreClosed(f"LogStore {self.path} is closed")

    def _check_key(self, key):
        if type(key) is not bytes:
            raise TypeError(f"keys must be bytes, not {type(key).__name__}")
        if not key:
            raise KeyTooLarge("keys must not be empty")
        if len(key) > self._opts.max_key_bytes:
            raise KeyTooLarge(f"key of {len(key)} bytes is over the limit of {self._opts.max_key_bytes}")

    def _check_value(self, value):
        if type(value) is not bytes:
            raise TypeError(f"values must be bytes, not {type(value).__name__}")
        if len(value) > self._opts.max_value_bytes:
            raise ValueTooLarge(
                f"value of {len(value)} bytes is over the limit of {self._opts.max_value_bytes}")

    # ---- writes ------------------------------------------------------------------------

    def _encode(self, key, value, tombstone=False):
        if tombstone:
            stored, flags = b"", L.FLAG_TOMBSTONE
        else:
            stored, packed = maybe_compress(value, self._opts.compress_min_bytes)
            flags = L.FLAG_COMPRESSED if packed else 0
        return R.encode_record(key, stored, flags, time.time_ns() // 1000), flags

    def _append(self, records):
        """Write encoded (key, record, flags) triples; index them only once they are on disk.
        A failure (injected, a full disk, a failed roll) raises with nothing of the failing
        batch written (a put_many may have stored the batches before it)."""
        self._check_writable()
        i = 0
        while i < len(records):
            if (self._active.size + len(records[i][1]) > self._opts.max_segment_bytes
                    and self._active.size > L.SEG_HEADER_SIZE):
                self._seal_active()
            seg = self._active
            batch, size = [], seg.size
            while i < len(records):
                rlen = len(records[i][1])
                if batch and size + rlen > self._opts.max_segment_bytes:
                    break
                batch.append(records[i])
                size += rlen
                i += 1
            data = b"".join(r for _, r, _ in batch)
            self._check_space(len(data))
            self._inject("ftruncate", "growing the segment")
            self._inject("write", "writing records")
            view, pos = memoryview(data), seg.size
            try:
                while view:
                    n = os.pwrite(seg.fd, view, pos)
                    view, pos = view[n:], pos + n
            except OSError:
                try:
                    os.ftruncate(seg.fd, seg.size)    # no part of the batch stays behind
                except OSError:
                    pass                              # (a later append writes over it)
                raise
            off = seg.size
            for key, rec, flags in batch:
                h = token(key) & self._mask
                seg.hints.append((h, off, len(rec), flags, key))
                self._apply(key, h, seg.id, off, len(rec), flags)
                off += len(rec)
            seg.size = off
            if self._journal is not None:
                self._journal.add(self._journal_id, JOURNAL_RECORDS, data)
        self._after_write()

    def _after_write(self):
        policy = self._opts.fsync
        if policy == "always":
            self._sync_fd(self._active.fd, f"fdatasync of segment {self._active.id:016x}")
            self._synced_offset = self._active.size
        elif self._dirty_since is None:
            self._dirty_since = time.monotonic()
            if policy == "interval":
                syncer.poke()

    def put(self, key, value):
        self._check_open()
        self._check_key(key)
        self._check_value(value)
        rec, flags = self._encode(key, value)
        self._append([(key, rec, flags)])

    def put_many(self, items):
        self._check_open()
        records = []
        for item in items:
            key, value = item
            self._check_key(key)
            self._check_value(value)
            rec, flags = self._encode(key, value)
            records.append((key, rec, flags))
        if records:
            self._append(records)

    def delete(self, key):
        self._check_open()
        self._check_key(key)
        if key not in self._keydir:
            return False
        self._check_writable()
        rec, flags = self._encode(key, b"", tombstone=True)
        self._append([(key, rec, flags)])
        return True

    # ---- the node's journal (kvcore/storage/journal.py) ------------------------------------

    def attach_journal(self, journal, sid):
        self._journal, self._journal_id = journal, sid

    def apply_records(self, payloads):
        """As the compiled store's: write a replay's records again, not journaled again."""
        self._check_open()
        self._check_writable()
        written = 0
        records, bad = replay_records(payloads)
        journal, self._journal = self._journal, None
        try:
            for flags, key, _, record in records:
                if not flags & L.FLAG_TOMBSTONE or key in self._keydir:
                    self._append([(key, record, flags)])
                    written += 1
        finally:
            self._journal = journal
        return written, bad

    # ---- reads -------------------------------------------------------------------------

    def _read(self, key, entry):
        _, seg_id, off, size = entry
        seg = self._segments[seg_id]
        raw = os.pread(self._read_fd(seg), size, off)
        rec = R.decode_record(raw, 0, len(raw))
        if rec is None or rec[2] != key:
            self._drop_corrupt(key, entry)
            return None
        _, flags, _, stored, _ = rec
        return decompress(stored) if flags & L.FLAG_COMPRESSED else stored

    def _read_fd(self, seg):
        return self._fds.fd(seg, self._on_miss)

    def _on_miss(self):
        self._inject("mmap", "mapping a segment for a read")

    def _drop_corrupt(self, key, entry):
        """A record that fails its CRC is missing data: out of the index, counted, reported
        to on_corrupt(segment id, offset) once (docs/storage.md, "Faults")."""
        if self._keydir.get(key) is entry:
            del self._keydir[key]
            self._live_bytes -= entry[3]
        self._corrupt += 1
        cb = self.on_corrupt
        if cb is not None:
            cb(entry[1], entry[2])

    # ---- snapshots (a fold over the store while it is written: kvnet/replica.py) ----------

    def snapshot(self):
        """The live records now, by location: read_snapshot() reads them back later, as they
        were now, however the store is written meanwhile (until a merge moves them)."""
        self._check_open()
        return Snapshot(sorted((e[1], e[2], e[3], k) for k, e in self._keydir.items()),
                        self._merges)

    def read_snapshot(self, snap, start, count):
        """(next index, [(key, value)]) of snapshot entries start .. start + count. A record
        failing its CRC is left out (and, if the index still points at it, dropped as a get
        would drop it). MergeError once a merge has moved records since the snapshot."""
        self._check_open()
        if snap.merges != self._merges:
            raise MergeError("a merge moved records since this snapshot: take another")
        out = []
        end = min(len(snap.entries), start + count)
        for seg_id, off, size, key in snap.entries[start:end]:
            seg = self._segments[seg_id]
            raw = os.pread(self._read_fd(seg), size, off)
            rec = R.decode_record(raw, 0, len(raw))
            if rec is None or rec[2] != key:
                entry = self._keydir.get(key)
                if entry is not None and entry[1] == seg_id and entry[2] == off:
                    self._drop_corrupt(key, entry)
                continue
            _, flags, _, stored, _ = rec
            out.append((key, decompress(stored) if flags & L.FLAG_COMPRESSED else stored))
        return end, out

    # ---- keys by Merkle leaf (anti-entropy's key lists: kvnet/antientropy) -----------------

    def leaf_keys(self, leaves, leaf_bits=14):
        """{leaf: [key]} for each of `leaves`, the Merkle leaves of kvcore.merkle (a key's
        leaf is token(key) & (2**leaf_bits - 1)), from the in-memory index alone (this twin's
        keydir holds the keys; the compiled store reads the listed keys' records)."""
        self._check_open()
        lmask, out = leaf_table(leaves, leaf_bits)
        if not out:
            return out
        exact = (self._mask & lmask) == lmask       # tests' narrowed hashes: tokens from keys
        for key, entry in self._keydir.items():
            lst = out.get((entry[0] if exact else token(key)) & lmask)
            if lst is not None:
                lst.append(key)
        return out

    def get(self, key):
        self._check_open()
        self._check_key(key)
        entry = self._keydir.get(key)
        return None if entry is None else self._read(key, entry)

    def get_many(self, keys):
        return [self.get(k) for k in keys]

    def __contains__(self, key):
        self._check_open()
        self._check_key(key)
        return key in self._keydir

    def __len__(self):
        self._check_open()
        return len(self._keydir)

    def scan(self, cursor=0, count=100):
        """(next cursor, keys): keys in hash order from cursor; 0 when done (docs/storage.md)."""
        self._check_open()
        check_scan(cursor, count)
        rot = self._opts.index_skip_bits
        return scan_page(sorted((o, k) for o, k in ((rotate_token(e[0], rot), k)
                                                     for k, e in self._keydir.items())
                                if o >= cursor), count)

    def _iter_keys(self):
        cursor = 0
        while True:
            cursor, keys = self.scan(cursor, 1000)
            yield from keys
            if cursor == 0:
                return

    def keys(self):
        self._check_open()
        return self._iter_keys()

    __iter__ = keys

    def items(self):
        self._check_open()
        for key in self._iter_keys():
            value = self.get(key)
            if value is not None:
                yield key, value

    # ---- durability --------------------------------------------------------------------

    def sync(self):
        """Make every write so far durable (callable from a worker thread)."""
        self._check_open()
        self._check_writable()          # never "synced" after a failed sync
        with self._io_lock:
            seg = self._active
            size = seg.size
            self._sync_fd(seg.fd, f"fdatasync of segment {seg.id:016x}")
        if seg is self._active:
            self._synced_offset = max(self._synced_offset, size)
            if size == seg.size:
                self._dirty_since = None

    def _sync_due(self):
        if self._closed or self._dirty_since is None or self._failed is not None:
            return None
        return self._dirty_since + self._opts.sync_interval_ms / 1000.0

    def _timer_sync(self):
        if not self._closed:
            self.sync()

    # ---- durability by one file system sync (kvnet/replica.py, kvcore/storage/syncfs.py) ----

    def sync_begin(self):
        """Before a sync of the whole file system (syncfs) that is to cover this store: what
        it covers, (active segment id, its size now). Raises as sync() would: StoreClosed,
        or StoreReadOnly after a failed sync (never "synced" again)."""
        self._check_open()
        self._check_writable()
        seg = self._active
        return (seg.id, seg.size)

    def sync_end(self, mark):
        """After that sync succeeded: every write up to `mark` (sync_begin's) is durable. A
        fault injected for "fdatasync" (_fail_next) fails here as this store's own sync
        would (StoreReadOnly); so does a store that turned read-only meanwhile."""
        seg_id, size = mark
        if self._closed:
            return
        self._check_writable()
        what = f"sync of segment {seg_id:016x} (syncfs)"
        try:
            self._inject("fdatasync", what)
        except OSError as exc:
            raise self._fail(exc.errno or E.EIO, what) from exc
        seg = self._active
        if seg.id == seg_id:
            self._synced_offset = max(self._synced_offset, size)
            if size == seg.size:
                self._dirty_since = None

    # ---- merge -------------------------------------------------------------------------

    def roll(self):
        """Start a new active segment now (if the current one holds any record)."""
        self._check_open()
        self._check_writable()
        if self._active.size > L.SEG_HEADER_SIZE:
            self._seal_active()

    def seal_pending(self):
        """Nothing to do: this twin seals when it rolls."""

    def begin_merge(self, roll=True):
        """Plan a merge of every sealed segment (roll: the active one is sealed first)."""
        self._check_open()
        if self._merge_job is not None:
            raise MergeError("a merge is already in progress on this store")
        self._check_writable()
        if roll and self._active.size > L.SEG_HEADER_SIZE:
            self._seal_active()
        inputs = [s for sid, s in sorted(self._segments.items()) if s is not self._active]
        ids = {s.id for s in inputs}
        live = {}
        for _, sid, off, _ in self._keydir.values():
            if sid in ids:
                live.setdefault(sid, []).append(off)
        for offs in live.values():
            offs.sort()
        out_base = (inputs[-1].id + 1) if inputs else 0
        self._merge_job = MergeJob(self, inputs, live, out_base)
        return self._merge_job

    def finish_merge(self, job, cleanup=True):
        """Swap the merged segments in; a key written during the merge keeps its new record.
        (install() and cleanup() of the job are the compiled store's split of the file work;
        here it all happens in this call.)"""
        if job is not self._merge_job:
            raise MergeError("this merge job does not belong to this store")
        self._merge_job = None
        if self._closed:
            job._discard()
            raise StoreClosed(f"LogStore {self.path} is closed")
        if not job.done:
            job._discard()
            raise MergeError("finish_merge() before the job ran")
        if not job.inputs:
            return
        self._corrupt += job.corrupt
        new_segments = {}
        for out_id, data_path, hint_path, size, hints in job.outputs:
            os.rename(hint_path, os.path.join(self.path, L.hint_name(out_id)))
            final = os.path.join(self.path, L.segment_name(out_id))
            os.rename(data_path, final)
            seg = _Segment(out_id, final, None, size)
            seg.hints = hints
            new_segments[out_id] = seg
        fsync_dir(self.path)
        self._segments.update(new_segments)
        for key, old_id, old_off, new_id, new_off in job.moves:
            entry = self._keydir.get(key)
            if entry is not None and entry[1] == old_id and entry[2] == old_off:
                entry[1], entry[2] = new_id, new_off
        gone = {seg.id for seg in job.inputs}
        dropped = [(k, e) for k, e in self._keydir.items() if e[1] in gone]
        for key, entry in dropped:                           # skipped as corrupt: lost here
            del self._keydir[key]
            self._live_bytes -= entry[3]
        cb = self.on_corrupt                                 # (counted by the job already)
        if cb is not None:
            for _, entry in dropped:
                cb(entry[1], entry[2])
        for seg in job.inputs:               # oldest first: see docs/storage.md, "Merge"
            del self._segments[seg.id]
            self._fds.forget(seg.id)
            hint_path = os.path.join(self.path, L.hint_name(seg.id))
            if os.path.exists(hint_path):
                os.unlink(hint_path)
            os.unlink(seg.path)
        self._segments = dict(sorted(self._segments.items()))
        self._merges += 1

    def merge(self):
        """Compact every sealed segment now (begin, run, finish on this thread)."""
        job = self.begin_merge()
        try:
            job.run()
        except BaseException:
            self._merge_job = None
            job._discard()
            raise
        self.finish_merge(job)

    def _wait_merge(self):
        job = self._merge_job
        if job is not None:
            job.cancelled = True            # a throttled run stops at its next step
            with job.running:
                pass
            self._merge_job = None
            job._discard()

    # ---- stats and close ---------------------------------------------------------------

    def sizes(self):
        self._check_open()
        return sum(s.size for s in self._segments.values()), self._live_bytes

    def stats(self):
        self._check_open()
        data = sum(s.size for s in self._segments.values())
        hints = 0
        for s in self._segments.values():
            p = os.path.join(self.path, L.hint_name(s.id))
            if os.path.exists(p):
                hints += os.path.getsize(p)
        return {
            "keys": len(self._keydir),
            "live_bytes": self._live_bytes,
            "data_bytes": data,
            "hint_bytes": hints,
            "disk_bytes": data + hints,
            "segments": len(self._segments),
            "active_segment": self._active.path,
            "active_offset": self._active.size,
            "synced_offset": self._synced_offset,
            "index_bytes": 0,
            "index_capacity": 0,
            "corrupt_records": self._corrupt,
            "torn_tail_bytes": self._torn_tail_bytes,
            "zero_tail_bytes": self._zero_tail_bytes,
            "reserved_bytes": 0,                        # this twin writes with pwrite
            "merges": self._merges,
            "mapped_segments": len(self._fds),          # (read descriptors in this twin)
            "map_misses": self._fds.misses,
            "sealing_segments": 0,
            "sealing_reserved_bytes": 0,
            "read_only": self._failed is not None,
            "fsync": self._opts.fsync,
        }

    def _release_files(self):
        for seg in self._segments.values():
            if seg.fd is not None:
                try:
                    os.close(seg.fd)
                except OSError:
                    pass
        self._fds.clear()
        self._segments = {}

    def close(self):
        """Sync, write the active segment's hints and a clean-shutdown marker, unlock."""
        self._shutdown(True)

    def _abandon(self):
        """Stop as a killed process would: no sync, no hints, no marker (for crash tests)."""
        self._shutdown(False)

    def _shutdown(self, clean):
        """A clean close syncs, writes hints and CLEAN. A read-only store (a failed sync) is
        closed as a crash leaves it, so the next open recovers (and distrusts) it; a sync that
        fails here does the same and raises StoreReadOnly once the files are released."""
        if self._closed:
            return
        syncer.unregister(self)
        self._wait_merge()
        error = None
        with self._io_lock:
            self._closed = True
            clean = clean and self._failed is None
            active = self._active
            try:
                if clean and active.size > L.SEG_HEADER_SIZE:
                    self._sync_fd(active.fd, f"fdatasync of segment {active.id:016x}")
                    self._write_hints(active, quiet=True)
                elif clean:                             # an empty segment is not worth a file
                    del self._segments[active.id]
                    os.close(active.fd)
                    os.unlink(active.path)
                if clean:
                    write_file(os.path.join(self.path, L.CLEAN_NAME), b"")
                    fsync_dir(self.path)
            except StoreReadOnly as exc:
                error = exc
            except OSError:
                pass                                    # no CLEAN: the next open recovers
            finally:
                self._release_files()
        self._lock.release()
        if error is not None:
            raise error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    def __repr__(self):
        return f"<LogStore {self.path!r} {'closed' if self._closed else 'open'}>"
