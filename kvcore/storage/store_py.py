"""Reference twin of kvcore.storage.store: the same LogStore, in plain Python.

Same files, same API, same merge and recovery rules; a dict is its keydir. It
is the oracle the tests compare the Cython store with (docs/storage.md).

Its parts are the compiled store's, with the same names (docs/storage.md, "Code layout"):
SegmentTable (segments.pyx), Index (index.pyx), Recovery (recovery.pyx), Durability
(durability.pyx), Writer (writes.pyx), MergeJob and plan_merge (merge.pyx), and the fold
functions (folds.pyx); LogStore is the API over them.
"""
import os
import threading
import time
import weakref

import errno as E

from kvcore.errors import MergeError, StoreClosed, StoreReadOnly
from kvcore.hashing_py import crc32c, token
from kvcore.storage import layout as L
from kvcore.storage import record_py as R
from kvcore.storage import syncer
from kvcore.storage.files import fsync_dir, write_file
from kvcore.storage.lock import DirLock
from kvcore.storage.twin import (SnapshotFold, check_key, check_scan, check_value, leaf_table,
                                 replay_records, scan_page)
from kvcore.storage.options import (FaultInjection, ReadOnlyState, check_format,
                                    check_map_cache, check_options, decompress, maybe_compress,
                                    rotate_token, space_allowed, space_refused)

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


# ---- segments (segments.pyx) ------------------------------------------------------------------

class SegmentTable(FaultInjection):
    """The segments of one store (seg id -> _Segment, oldest first), the descriptors sealed
    ones are read through, and injected faults."""

    def __init__(self, path, map_cache):
        self.path = path
        self.closed = True
        self.segments = {}
        self.fds = _FdCache(map_cache)
        self._fault = None          # [op number, errno, times left, after]: _fail_next()
        self.io_lock = threading.Lock()     # descriptors vs. sync() from other threads

    def read_fd(self, seg):
        return self.fds.fd(seg, self._on_miss)

    def _on_miss(self):
        self._inject("mmap", "mapping a segment for a read")

    def pread(self, seg, size, off):
        return os.pread(self.read_fd(seg), size, off)

    def release_all(self):
        for seg in self.segments.values():
            if seg.fd is not None:
                try:
                    os.close(seg.fd)
                except OSError:
                    pass
        self.fds.clear()
        self.segments = {}


# ---- the index (index.pyx) --------------------------------------------------------------------

class Index:
    """key -> [hash, seg id, offset, size], and reads through it."""

    def __init__(self, tab, mask, owner):
        self.tab = tab
        self.mask = mask            # tests only: forces hash collisions (same file format)
        self.owner = owner          # a weak reference to the LogStore (its on_corrupt)
        self.keydir = {}
        self.live_bytes = 0
        self.corrupt = 0

    def apply(self, key, h, seg_id, off, size, flags):
        old = self.keydir.get(key)
        if old is not None:
            self.live_bytes -= old[3]
        if flags & L.FLAG_TOMBSTONE:
            if old is not None:
                del self.keydir[key]
        else:
            self.keydir[key] = [h, seg_id, off, size]
            self.live_bytes += size

    def read(self, key, entry):
        _, seg_id, off, size = entry
        raw = self.tab.pread(self.tab.segments[seg_id], size, off)
        rec = R.decode_record(raw, 0, len(raw))
        if rec is None or rec[2] != key:
            self.drop_corrupt(key, entry)
            return None
        _, flags, _, stored, _ = rec
        return decompress(stored) if flags & L.FLAG_COMPRESSED else stored

    def drop_corrupt(self, key, entry):
        """A record that fails its CRC is missing data: out of the index, counted, reported
        to on_corrupt(segment id, offset) once (docs/storage.md, "Faults")."""
        if self.keydir.get(key) is entry:
            del self.keydir[key]
            self.live_bytes -= entry[3]
        self.corrupt += 1
        self.report_corrupt([(entry[1], entry[2])])

    def report_corrupt(self, dropped):
        store = self.owner()
        cb = None if store is None else store.on_corrupt
        if cb is not None:
            for seg_id, off in dropped:
                cb(seg_id, off)


# ---- the open and hint files (recovery.pyx) -----------------------------------------------------

def write_hints(tab, seg, quiet=False, sync=True):
    """Write a segment's hint file. quiet: a failure (a full disk) is left alone: a hint
    file only saves a scan at the next open, which writes it then. sync=False (an open's
    rescan): not synced, as the compiled store does: a hint file checks itself."""
    hint_path = os.path.join(tab.path, L.hint_name(seg.id))
    tmp = hint_path + L.MERGING_SUFFIX
    try:
        tab._inject("open", "hint file")
        tab._inject("write", "hint file")
        write_file(tmp, R.encode_hints(seg.id, seg.hints), sync=sync)
        os.rename(tmp, hint_path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if not quiet:
            raise


class Recovery:
    """The open of one store: its segments indexed, what it found counted."""

    def __init__(self, tab, ix):
        self.tab, self.ix = tab, ix
        self.torn_tail = self.zero_tail = self.scanned = 0
        self.corrupt_at = []        # (segment id, offset) of records the scan skipped

    def open(self):
        """(what the open found, the id of the next segment to start)."""
        path = self.tab.path
        check_format(path, L.segment_ids(path), crc32c, L)
        for name in os.listdir(path):
            if name.endswith(L.MERGING_SUFFIX):
                os.unlink(os.path.join(path, name))
        clean_path = os.path.join(path, L.CLEAN_NAME)
        clean = os.path.exists(clean_path)
        if clean:
            os.unlink(clean_path)
        ids = L.segment_ids(path)
        for i, seg_id in enumerate(ids):
            self.load_segment(seg_id, last=(i == len(ids) - 1))
        for seg in self.tab.segments.values():      # all sealed now
            os.close(seg.fd)
            seg.fd = None
        next_seq = (ids[-1] >> L.SEQ_SHIFT) + 1 if ids else 1
        return ({"clean": clean, "corrupt_records": self.ix.corrupt,
                 "torn_tail_bytes": self.torn_tail, "zero_tail_bytes": self.zero_tail,
                 "scanned_segments": self.scanned, "corrupt_at": self.corrupt_at},
                next_seq << L.SEQ_SHIFT)

    def load_segment(self, seg_id, last):
        path = os.path.join(self.tab.path, L.segment_name(seg_id))
        fd = os.open(path, os.O_RDWR)
        size = os.fstat(fd).st_size
        seg = _Segment(seg_id, path, fd, size)
        self.tab.segments[seg_id] = seg
        hint_path = os.path.join(self.tab.path, L.hint_name(seg_id))
        entries = None
        if os.path.exists(hint_path):
            with open(hint_path, "rb") as f:
                entries = R.decode_hints(f.read(), seg_id)
            if entries is not None and any(off + sz > size for _, off, sz, _, _ in entries):
                entries = None
        if entries is None:
            self.scan_segment(seg, last)
            write_hints(self.tab, seg, quiet=True, sync=False)
        else:
            seg.hints = entries
            for h, off, sz, flags, key in entries:
                self.ix.apply(key, h, seg_id, off, sz, flags)

    def scan_segment(self, seg, last):
        self.scanned += 1
        buf = os.pread(seg.fd, seg.size, 0)
        off = L.SEG_HEADER_SIZE
        if not R.check_segment_header(buf, seg.id):
            if last and seg.size <= L.SEG_HEADER_SIZE:   # died while creating it
                self.torn_tail += seg.size
                os.ftruncate(seg.fd, 0)
                seg.size = 0
                return
            self.scan_corrupt(seg, 0)
        end = len(buf)
        while off < end:
            rec = R.decode_record(buf, off, end)
            if rec is not None:
                tstamp, flags, key, _, size = rec
                h = token(key) & self.ix.mask
                seg.hints.append((h, off, size, flags, key))
                self.ix.apply(key, h, seg.id, off, size, flags)
                off += size
                continue
            nxt = R.resync(buf, off, end)
            if nxt is None:
                # Zeros to the end: space the compiled store reserved ahead and did not
                # give back (no clean close), the end of the data in any segment. Bytes
                # before them: a torn record (newest segment) or one corrupt record.
                data_end = len(buf[off:end].rstrip(b"\0")) + off
                if data_end > off and not last:
                    self.scan_corrupt(seg, off)
                    break
                self.torn_tail += data_end - off
                self.zero_tail += end - data_end
                os.ftruncate(seg.fd, off)
                os.fsync(seg.fd)
                seg.size = off
                break
            self.scan_corrupt(seg, off)
            off = nxt

    def scan_corrupt(self, seg, off):
        """A bad record the open's scan skips: counted, and listed in recovery["corrupt_at"]."""
        self.ix.corrupt += 1
        if len(self.corrupt_at) < 10_000:
            self.corrupt_at.append((seg.id, off))


# ---- the active segment and durability (durability.pyx) ---------------------------------------

class Durability(ReadOnlyState):
    """The active segment of one store, its seals and syncs, and the read-only state a failed
    sync leaves. (seal_later changes nothing here: this twin seals a segment when it rolls.)"""

    def __init__(self, tab, ix, opts):
        self.tab, self.ix, self.opts = tab, ix, opts
        self.path = tab.path
        self.active = None
        self.synced_offset = 0
        self.dirty_since = None
        self._failed = None         # (errno, what) once an fdatasync failed: read-only
        self._unchecked = SPACE_CHECK_BYTES     # bytes appended since free space was checked

    def _fail(self, err, what):
        self.dirty_since = None
        return ReadOnlyState._fail(self, err, what)

    def check_open(self):
        if self.tab.closed:
            raise StoreClosed(f"LogStore {self.path} is closed")

    def check_space(self, extra):
        """The free-space watermark, checked every SPACE_CHECK_BYTES appended (and at a roll)."""
        mf = self.opts.min_free_percent
        if mf <= 0:
            return
        self._unchecked += extra
        if self._unchecked < SPACE_CHECK_BYTES:
            return
        if space_allowed(self.path, mf) < extra:
            raise space_refused(self.path, mf)
        self._unchecked = 0

    def sync_fd(self, fd, what):
        """fdatasync; a failure makes the store read-only (StoreReadOnly)."""
        try:
            self.tab._inject("fdatasync", what)
            os.fdatasync(fd)
        except OSError as exc:
            raise self._fail(exc.errno or E.EIO, what) from exc

    def create_segment(self, seg_id):
        """A new segment file with its header, synced; on any failure nothing is left."""
        tab = self.tab
        path = os.path.join(self.path, L.segment_name(seg_id))
        tab._inject("open", "opening a new segment")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            tab._inject("write", "writing a segment header")
            os.write(fd, R.encode_segment_header(seg_id))
            tab._inject("fdatasync", "fdatasync of a new segment")
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

    def new_active(self, seg_id):
        self.active = self.create_segment(seg_id)
        self.tab.segments[seg_id] = self.active
        self.synced_offset = L.SEG_HEADER_SIZE

    def seal_active(self):
        """Start the next segment, then seal the active one (synced, with hints). The next
        segment is opened first: if that fails (EMFILE, ENOSPC) nothing has changed, and if
        sealing fails it is removed again, so the active segment is always writable."""
        seg = self.active
        if self.opts.min_free_percent > 0:
            self._unchecked = SPACE_CHECK_BYTES
            self.check_space(L.SEG_HEADER_SIZE)
        new = self.create_segment(((seg.id >> L.SEQ_SHIFT) + 1) << L.SEQ_SHIFT)
        try:
            self.tab._inject("ftruncate", "truncating the sealed segment")
            with self.tab.io_lock:
                self.sync_fd(seg.fd, f"fdatasync of segment {seg.id:016x}")
        except BaseException:
            os.close(new.fd)
            try:
                os.unlink(new.path)
            except OSError:
                pass
            raise
        self.active = new
        self.tab.segments[new.id] = new
        with self.tab.io_lock:          # (a sync on another thread may hold it)
            os.close(seg.fd)
            seg.fd = None
        self.synced_offset = L.SEG_HEADER_SIZE
        self.dirty_since = None
        write_hints(self.tab, seg, quiet=True)

    def roll(self):
        self.check_open()
        self._check_writable()
        if self.active.size > L.SEG_HEADER_SIZE:
            self.seal_active()

    def after_write(self):
        policy = self.opts.fsync
        if policy == "always":
            self.sync_fd(self.active.fd, f"fdatasync of segment {self.active.id:016x}")
            self.synced_offset = self.active.size
        elif self.dirty_since is None:
            self.dirty_since = time.monotonic()
            if policy == "interval":
                syncer.poke()

    def sync(self):
        self.check_open()
        self._check_writable()           # never "synced" after a failed sync
        with self.tab.io_lock:
            seg = self.active
            size = seg.size
            self.sync_fd(seg.fd, f"fdatasync of segment {seg.id:016x}")
        if seg is self.active:
            self.synced_offset = max(self.synced_offset, size)
            if size == seg.size:
                self.dirty_since = None

    def _sync_due(self):
        if self.tab.closed or self.dirty_since is None or self._failed is not None:
            return None
        return self.dirty_since + self.opts.sync_interval_ms / 1000.0

    def _timer_sync(self):
        if not self.tab.closed:
            self.sync()

    def sync_begin(self):
        self.check_open()
        self._check_writable()
        seg = self.active
        return (seg.id, seg.size)

    def sync_end(self, mark):
        seg_id, size = mark
        if self.tab.closed:
            return
        self._check_writable()
        what = f"sync of segment {seg_id:016x} (syncfs)"
        try:
            self.tab._inject("fdatasync", what)
        except OSError as exc:
            raise self._fail(exc.errno or E.EIO, what) from exc
        seg = self.active
        if seg.id == seg_id:
            self.synced_offset = max(self.synced_offset, size)
            if size == seg.size:
                self.dirty_since = None

    def shutdown(self, clean):
        """The files' part of a close (durability.pyx's): the StoreReadOnly to raise, or None."""
        error = None
        tab = self.tab
        with tab.io_lock:
            tab.closed = True
            clean = clean and self._failed is None
            active = self.active
            try:
                if clean and active.size > L.SEG_HEADER_SIZE:
                    self.sync_fd(active.fd, f"fdatasync of segment {active.id:016x}")
                    write_hints(tab, active, quiet=True)
                elif clean:                             # an empty segment is not worth a file
                    del tab.segments[active.id]
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
                tab.release_all()
        return error


# ---- writes (writes.pyx) ------------------------------------------------------------------------

class Writer:
    """The writes of one store: records appended to the active segment, indexed once they are
    on disk, copied to the node's journal."""

    def __init__(self, tab, ix, dur, opts):
        self.tab, self.ix, self.dur, self.opts = tab, ix, dur, opts
        self.journal = None         # the node's journal buffer (attach_journal), and our id
        self.journal_id = 0

    def encode(self, key, value, tombstone=False):
        if tombstone:
            stored, flags = b"", L.FLAG_TOMBSTONE
        else:
            stored, packed = maybe_compress(value, self.opts.compress_min_bytes)
            flags = L.FLAG_COMPRESSED if packed else 0
        return R.encode_record(key, stored, flags, time.time_ns() // 1000), flags

    def append(self, records):
        """Write encoded (key, record, flags) triples; index them only once they are on disk.
        A failure (injected, a full disk, a failed roll) raises with nothing of the failing
        batch written (a put_many may have stored the batches before it)."""
        dur, tab = self.dur, self.tab
        dur._check_writable()
        max_segment = self.opts.max_segment_bytes
        i = 0
        while i < len(records):
            if (dur.active.size + len(records[i][1]) > max_segment
                    and dur.active.size > L.SEG_HEADER_SIZE):
                dur.seal_active()
            seg = dur.active
            batch, size = [], seg.size
            while i < len(records):
                rlen = len(records[i][1])
                if batch and size + rlen > max_segment:
                    break
                batch.append(records[i])
                size += rlen
                i += 1
            data = b"".join(r for _, r, _ in batch)
            dur.check_space(len(data))
            tab._inject("ftruncate", "growing the segment")
            tab._inject("write", "writing records")
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
                h = token(key) & self.ix.mask
                seg.hints.append((h, off, len(rec), flags, key))
                self.ix.apply(key, h, seg.id, off, len(rec), flags)
                off += len(rec)
            seg.size = off
            if self.journal is not None:
                self.journal.add(self.journal_id, JOURNAL_RECORDS, data)
        dur.after_write()

    def apply_records(self, payloads):
        """As the compiled store's: write a replay's records again, not journaled again."""
        written = 0
        records, bad = replay_records(payloads)
        journal, self.journal = self.journal, None
        try:
            for flags, key, _, record in records:
                if not flags & L.FLAG_TOMBSTONE or key in self.ix.keydir:
                    self.append([(key, record, flags)])
                    written += 1
        finally:
            self.journal = journal
        return written, bad


# ---- merge (merge.pyx) --------------------------------------------------------------------------

def plan_merge(tab, ix, inputs, max_segment):
    """A merge of sealed segments `inputs` (oldest first): their live offsets now."""
    ids = {s.id for s in inputs}
    live = {}
    for _, sid, off, _ in ix.keydir.values():
        if sid in ids:
            live.setdefault(sid, []).append(off)
    for offs in live.values():
        offs.sort()
    out_base = (inputs[-1].id + 1) if inputs else 0
    return MergeJob(tab, ix.mask, max_segment, inputs, live, out_base)


class MergeJob:
    """The disk work of a merge: safe to run() in a worker thread while the owner goes on."""

    def __init__(self, tab, mask, max_segment, inputs, live, out_base):
        self._tab = tab
        self._mask = mask
        self._max_segment = max_segment
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
        """(swap_in does the file work in this twin)"""

    def cleanup(self):
        """(swap_in does the file work in this twin)"""

    def run(self, max_bytes_per_s=0):
        with self.running:
            if self.done:
                raise MergeError("this merge job already ran")
            if self._tab.closed:
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

    def _wait(self):
        """A closing store's: cancel a run in progress, wait for it, discard the outputs."""
        self.cancelled = True               # a throttled run stops at its next step
        with self.running:
            pass
        self._discard()

    def _run(self, max_bytes_per_s):
        path = self._tab.path
        out_id = self.out_base
        buf, hints = [], []
        size = L.SEG_HEADER_SIZE
        t0, total, step_end = time.monotonic(), 0, MERGE_STEP

        def flush():
            data_path = os.path.join(path, L.segment_name(out_id) + L.MERGING_SUFFIX)
            hint_path = os.path.join(path, L.hint_name(out_id) + L.MERGING_SUFFIX)
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
                    if size + rsize > self._max_segment and size > L.SEG_HEADER_SIZE:
                        flush()
                        out_id += 1
                        buf, hints, size = [], [], L.SEG_HEADER_SIZE
                    buf.append(raw)
                    total += rsize
                    hints.append((token(key) & self._mask, size, rsize, flags, key))
                    self.moves.append((key, seg.id, off, out_id, size))
                    size += rsize
            finally:
                os.close(fd)
        if buf:
            flush()
        self.done = True

    def swap_in(self, ix):
        """finish_merge's work (install, the index moved to the copies, the inputs deleted:
        the compiled store's install, swap_in and cleanup in one)."""
        tab = self._tab
        ix.corrupt += self.corrupt
        new_segments = {}
        for out_id, data_path, hint_path, size, hints in self.outputs:
            os.rename(hint_path, os.path.join(tab.path, L.hint_name(out_id)))
            final = os.path.join(tab.path, L.segment_name(out_id))
            os.rename(data_path, final)
            seg = _Segment(out_id, final, None, size)
            seg.hints = hints
            new_segments[out_id] = seg
        fsync_dir(tab.path)
        tab.segments.update(new_segments)
        for key, old_id, old_off, new_id, new_off in self.moves:
            entry = ix.keydir.get(key)
            if entry is not None and entry[1] == old_id and entry[2] == old_off:
                entry[1], entry[2] = new_id, new_off
        gone = {seg.id for seg in self.inputs}
        dropped = [(k, e) for k, e in ix.keydir.items() if e[1] in gone]
        for key, entry in dropped:                           # skipped as corrupt: lost here
            del ix.keydir[key]
            ix.live_bytes -= entry[3]
        ix.report_corrupt([(e[1], e[2]) for _, e in dropped])   # (counted by the job already)
        for seg in self.inputs:              # oldest first: see docs/storage.md, "Merge"
            del tab.segments[seg.id]
            tab.fds.forget(seg.id)
            hint_path = os.path.join(tab.path, L.hint_name(seg.id))
            if os.path.exists(hint_path):
                os.unlink(hint_path)
            os.unlink(seg.path)
        tab.segments = dict(sorted(tab.segments.items()))


# ---- SCAN, snapshots, Merkle leaves (folds.pyx) -------------------------------------------------

def scan(ix, rot, cursor, count):
    check_scan(cursor, count)
    return scan_page(sorted((o, k) for o, k in ((rotate_token(e[0], rot), k)
                                                 for k, e in ix.keydir.items())
                            if o >= cursor), count)


def iter_keys(store):
    cursor = 0
    while True:
        cursor, keys = store.scan(cursor, 1000)
        yield from keys
        if cursor == 0:
            return


def iter_items(store):
    for key in iter_keys(store):
        value = store.get(key)
        if value is not None:
            yield key, value


def snapshot(ix, merges):
    return Snapshot(sorted((e[1], e[2], e[3], k) for k, e in ix.keydir.items()), merges)


def read_snapshot(ix, snap, start, count, merges):
    if snap.merges != merges:
        raise MergeError("a merge moved records since this snapshot: take another")
    out = []
    end = min(len(snap.entries), start + count)
    for seg_id, off, size, key in snap.entries[start:end]:
        raw = ix.tab.pread(ix.tab.segments[seg_id], size, off)
        rec = R.decode_record(raw, 0, len(raw))
        if rec is None or rec[2] != key:
            entry = ix.keydir.get(key)
            if entry is not None and entry[1] == seg_id and entry[2] == off:
                ix.drop_corrupt(key, entry)
            continue
        _, flags, _, stored, _ = rec
        out.append((key, decompress(stored) if flags & L.FLAG_COMPRESSED else stored))
    return end, out


def leaf_keys(ix, leaves, leaf_bits):
    lmask, out = leaf_table(leaves, leaf_bits)
    if not out:
        return out
    exact = (ix.mask & lmask) == lmask          # tests' narrowed hashes: tokens from keys
    for key, entry in ix.keydir.items():
        lst = out.get((entry[0] if exact else token(key)) & lmask)
        if lst is not None:
            lst.append(key)
    return out


# ---- the API ----------------------------------------------------------------------------------

class LogStore(SnapshotFold):
    """A Bitcask-shaped log store in one directory; see docs/storage.md."""

    def __init__(self, path, fsync="interval", *, sync_interval_ms=1000, max_segment_bytes=64 << 20,
                 max_key_bytes=8 << 10, max_value_bytes=32 << 20, compress_min_bytes=512,
                 index_skip_bits=0, min_free_percent=0.0, seal_later=False,
                 map_cache=FD_CACHE, _hash_mask=0xFFFFFFFFFFFFFFFF):
        # map_cache: read descriptors of sealed segments kept open (the compiled store: maps)
        # seal_later is accepted and changes nothing here: this twin always seals a segment
        # when it rolls (seal_pending() has nothing to do)
        check_map_cache(map_cache)
        self._opts = check_options(fsync=fsync, sync_interval_ms=sync_interval_ms,
                                   max_segment_bytes=max_segment_bytes, max_key_bytes=max_key_bytes,
                                   max_value_bytes=max_value_bytes, compress_min_bytes=compress_min_bytes,
                                   index_skip_bits=index_skip_bits, min_free_percent=min_free_percent)
        self.path = os.fspath(path)
        self.on_corrupt = None      # called (segment id, offset) for each record dropped as corrupt
        self._tab = SegmentTable(self.path, map_cache)
        self._ix = Index(self._tab, _hash_mask, weakref.ref(self))
        self._dur = Durability(self._tab, self._ix, self._opts)
        self._wr = Writer(self._tab, self._ix, self._dur, self._opts)
        self._merges = 0
        self._merge_job = None
        os.makedirs(self.path, exist_ok=True)
        self._lock = DirLock(os.path.join(self.path, L.LOCK_NAME))
        try:
            self.recovery, next_id = Recovery(self._tab, self._ix).open()
            self._dur.new_active(next_id)
        except BaseException:
            self._tab.release_all()
            self._lock.release()
            raise
        self._tab.closed = False
        if self._opts.fsync == "interval":
            syncer.register(self)

    def _check_open(self):
        if self._tab.closed:
            raise StoreClosed(f"LogStore {self.path} is closed")

    # ---- writes ------------------------------------------------------------------------

    def put(self, key, value):
        self._check_open()
        check_key(key, self._opts)
        check_value(value, self._opts)
        rec, flags = self._wr.encode(key, value)
        self._wr.append([(key, rec, flags)])

    def put_many(self, items):
        self._check_open()
        records = []
        for item in items:
            key, value = item
            check_key(key, self._opts)
            check_value(value, self._opts)
            rec, flags = self._wr.encode(key, value)
            records.append((key, rec, flags))
        if records:
            self._wr.append(records)

    def delete(self, key):
        self._check_open()
        check_key(key, self._opts)
        if key not in self._ix.keydir:
            return False
        self._dur._check_writable()
        rec, flags = self._wr.encode(key, b"", tombstone=True)
        self._wr.append([(key, rec, flags)])
        return True

    def attach_journal(self, journal, sid):
        self._wr.journal, self._wr.journal_id = journal, sid

    def apply_records(self, payloads):
        """As the compiled store's: write a replay's records again, not journaled again."""
        self._check_open()
        self._dur._check_writable()
        return self._wr.apply_records(payloads)

    # ---- reads -------------------------------------------------------------------------

    def get(self, key):
        self._check_open()
        check_key(key, self._opts)
        entry = self._ix.keydir.get(key)
        return None if entry is None else self._ix.read(key, entry)

    def get_many(self, keys):
        return [self.get(k) for k in keys]

    def __contains__(self, key):
        self._check_open()
        check_key(key, self._opts)
        return key in self._ix.keydir

    def __len__(self):
        self._check_open()
        return len(self._ix.keydir)

    def scan(self, cursor=0, count=100):
        """(next cursor, keys): keys in hash order from cursor; 0 when done (docs/storage.md)."""
        self._check_open()
        return scan(self._ix, self._opts.index_skip_bits, cursor, count)

    def keys(self):
        self._check_open()
        return iter_keys(self)

    __iter__ = keys

    def items(self):
        self._check_open()
        return iter_items(self)

    def snapshot(self):
        """The live records now, by location: read_snapshot() reads them back later, as they
        were now, however the store is written meanwhile (until a merge moves them)."""
        self._check_open()
        return snapshot(self._ix, self._merges)

    def read_snapshot(self, snap, start, count):
        """(next index, [(key, value)]) of snapshot entries start .. start + count. A record
        failing its CRC is left out (and, if the index still points at it, dropped as a get
        would drop it). MergeError once a merge has moved records since the snapshot."""
        self._check_open()
        return read_snapshot(self._ix, snap, start, count, self._merges)

    def leaf_keys(self, leaves, leaf_bits=14):
        """{leaf: [key]} for each of `leaves`, the Merkle leaves of kvcore.merkle (a key's
        leaf is token(key) & (2**leaf_bits - 1)), from the in-memory index alone (this twin's
        keydir holds the keys; the compiled store reads the listed keys' records)."""
        self._check_open()
        return leaf_keys(self._ix, leaves, leaf_bits)

    # ---- durability --------------------------------------------------------------------

    def sync(self):
        """Make every write so far durable (callable from a worker thread)."""
        self._dur.sync()

    def _sync_due(self):
        return self._dur._sync_due()

    def _timer_sync(self):
        # (the syncer holds the store, as the compiled store's _timer_sync says why)
        self._dur._timer_sync()

    def sync_begin(self):
        """Before a sync of the whole file system (syncfs) that is to cover this store: what
        it covers, (active segment id, its size now). Raises as sync() would: StoreClosed,
        or StoreReadOnly after a failed sync (never "synced" again)."""
        return self._dur.sync_begin()

    def sync_end(self, mark):
        """After that sync succeeded: every write up to `mark` (sync_begin's) is durable. A
        fault injected for "fdatasync" (_fail_next) fails here as this store's own sync
        would (StoreReadOnly); so does a store that turned read-only meanwhile."""
        self._dur.sync_end(mark)

    def roll(self):
        """Start a new active segment now (if the current one holds any record)."""
        self._dur.roll()

    def seal_pending(self):
        """Nothing to do: this twin seals when it rolls."""

    @property
    def failed(self):
        """None, or the errno of the sync that made the store read-only."""
        return self._dur.failed

    def _fail(self, err, what):
        """Make the store read-only as a failed fdatasync does; the StoreReadOnly to raise."""
        return self._dur._fail(err, what)

    def _fail_next(self, op, err=0, times=1, after=0):
        """Tests only: injected faults (options.FaultInjection; docs/storage.md, "Faults")."""
        self._tab._fail_next(op, err, times, after)

    # ---- merge -------------------------------------------------------------------------

    def begin_merge(self, roll=True):
        """Plan a merge of every sealed segment (roll: the active one is sealed first)."""
        self._check_open()
        if self._merge_job is not None:
            raise MergeError("a merge is already in progress on this store")
        self._dur._check_writable()
        if roll and self._dur.active.size > L.SEG_HEADER_SIZE:
            self._dur.seal_active()
        inputs = [s for sid, s in sorted(self._tab.segments.items()) if s is not self._dur.active]
        self._merge_job = plan_merge(self._tab, self._ix, inputs, self._opts.max_segment_bytes)
        return self._merge_job

    def finish_merge(self, job, cleanup=True):
        """Swap the merged segments in; a key written during the merge keeps its new record.
        (install() and cleanup() of the job are the compiled store's split of the file work;
        here it all happens in this call.)"""
        if job is not self._merge_job:
            raise MergeError("this merge job does not belong to this store")
        self._merge_job = None
        if self._tab.closed:
            job._discard()
            raise StoreClosed(f"LogStore {self.path} is closed")
        if not job.done:
            job._discard()
            raise MergeError("finish_merge() before the job ran")
        if not job.inputs:
            return
        job.swap_in(self._ix)
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

    # ---- stats and close ---------------------------------------------------------------

    def sizes(self):
        self._check_open()
        return sum(s.size for s in self._tab.segments.values()), self._ix.live_bytes

    def stats(self):
        self._check_open()
        tab, active = self._tab, self._dur.active
        data = sum(s.size for s in tab.segments.values())
        hints = 0
        for s in tab.segments.values():
            p = os.path.join(self.path, L.hint_name(s.id))
            if os.path.exists(p):
                hints += os.path.getsize(p)
        return {
            "keys": len(self._ix.keydir),
            "live_bytes": self._ix.live_bytes,
            "data_bytes": data,
            "hint_bytes": hints,
            "disk_bytes": data + hints,
            "segments": len(tab.segments),
            "active_segment": active.path,
            "active_offset": active.size,
            "synced_offset": self._dur.synced_offset,
            "index_bytes": 0,
            "index_capacity": 0,
            "corrupt_records": self._ix.corrupt,
            "torn_tail_bytes": self.recovery["torn_tail_bytes"],
            "zero_tail_bytes": self.recovery["zero_tail_bytes"],
            "reserved_bytes": 0,                        # this twin writes with pwrite
            "merges": self._merges,
            "mapped_segments": len(tab.fds),            # (read descriptors in this twin)
            "map_misses": tab.fds.misses,
            "sealing_segments": 0,
            "sealing_reserved_bytes": 0,
            "read_only": self._dur.failed is not None,
            "fsync": self._opts.fsync,
        }

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
        tab = getattr(self, "_tab", None)
        if tab is None or tab.closed:
            return
        syncer.unregister(self)
        job, self._merge_job = self._merge_job, None
        if job is not None:
            job._wait()
        error = self._dur.shutdown(clean)
        self._lock.release()
        if error is not None:
            raise error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self._shutdown(True)
        except Exception:
            pass

    def __repr__(self):
        tab = getattr(self, "_tab", None)
        return f"<LogStore {self.path!r} {'closed' if tab is None or tab.closed else 'open'}>"
