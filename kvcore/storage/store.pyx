"""LogStore: a Bitcask-shaped log store with a C keydir (docs/storage.md).

Writes copy records into a writable shared mmap of the active segment (the page
cache itself, so a killed process loses nothing acknowledged), into file space
reserved ahead with posix_fallocate, and index them once they are there; reads
go through the same shared mmaps, so neither a put nor a get makes a system
call in the common case.

LogStore is the API; its work is done by parts cut by concern, each a cdef class or
module of its own (docs/storage.md, "Code layout"): segments.pyx (the segment table,
its maps, reserved space, injected faults), index.pyx (the keydir and reads through
it), writes.pyx, durability.pyx (the active segment, seals, syncs, read-only after a
failed sync), recovery.pyx (the open and hint files), merge.pyx and folds.pyx (SCAN,
snapshots, Merkle leaves). The parts call each other's cdef methods: C calls, so
a get or a put goes through no Python-level call besides its own.
"""
import os
import weakref

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint32_t

from kvcore.errors import KeyTooLarge, MergeError, StoreClosed, ValueTooLarge
from kvcore.storage import folds
from kvcore.storage import layout as L
from kvcore.storage import syncer
from kvcore.storage.folds import Snapshot  # noqa: F401  (the module's API, as before)
from kvcore.storage.lock import DirLock
from kvcore.storage.merge import MergeJob  # noqa: F401  (kvcore.storage.MergeJob)
from kvcore.storage.options import check_options
from kvcore.storage.recovery import Recovery

from kvcore.merkle cimport MerkleTree
from kvcore.storage cimport merge as M
from kvcore.storage.durability cimport Durability
from kvcore.storage.index cimport Index, key_hash
from kvcore.storage.jbuffer cimport JournalBuffer
from kvcore.storage.segments cimport SegmentTable
from kvcore.storage.writes cimport Writer

include "format.pxi"

MAP_CACHE = 8                       # sealed segments a store keeps mapped (docs/storage.md)


# ---- checks (inline: every get and put makes them) ------------------------------------------

cdef inline int _check_open(LogStore s) except -1:
    if s.tab.closed:
        raise StoreClosed(f"LogStore {s.path} is closed")
    return 0


cdef inline int _check_key(LogStore s, object key) except -1:
    if type(key) is not bytes:
        raise TypeError(f"keys must be bytes, not {type(key).__name__}")
    cdef size_t n = PyBytes_GET_SIZE(key)
    if n == 0:
        raise KeyTooLarge("keys must not be empty")
    if n > s.max_key:
        raise KeyTooLarge(f"key of {n} bytes is over the limit of {s.max_key}")
    return 0


cdef inline int _check_value(LogStore s, object value) except -1:
    if type(value) is not bytes:
        raise TypeError(f"values must be bytes, not {type(value).__name__}")
    if <size_t>PyBytes_GET_SIZE(value) > s.max_value:
        raise ValueTooLarge(
            f"value of {PyBytes_GET_SIZE(value)} bytes is over the limit of {s.max_value}")
    return 0


cdef inline Py_ssize_t _slot(LogStore s, object key) except -3:
    """The keydir slot of a checked key, or -1."""
    cdef const char *k = PyBytes_AS_STRING(key)
    cdef size_t klen = PyBytes_GET_SIZE(key)
    return s.ix.lookup(key_hash(s.ix, k, klen), k, klen)


cdef int _shutdown(LogStore s, bint clean) except -1:
    """close() (clean) or _abandon(): a running merge cancelled and waited for, then the
    files' part (Durability.shutdown), then the lock; a StoreReadOnly that part met is
    raised once the store is unlocked."""
    if s.tab is None or s.tab.closed:
        return 0
    syncer.unregister(s)
    job = s.merge_job
    if job is not None:
        s.merge_job = None
        job._wait()
    error = s.dur.shutdown(clean)
    s._lock.release()
    if error is not None:
        raise error
    return 0


cdef class LogStore:
    """A Bitcask-shaped log store in one directory; see docs/storage.md."""

    def __init__(self, path, fsync="interval", *, sync_interval_ms=1000, max_segment_bytes=64 << 20,
                 max_key_bytes=8 << 10, max_value_bytes=32 << 20, compress_min_bytes=512,
                 index_skip_bits=0, min_free_percent=0.0, seal_later=False,
                 map_cache=MAP_CACHE, _hash_mask=0xFFFFFFFFFFFFFFFF):
        # map_cache: how many sealed segments stay mapped between reads (the least recently
        # read is unmapped past it; docs/storage.md, "Resources").
        # _hash_mask is for tests only: it forces hash collisions, which get and put
        # must survive by comparing the key stored on disk. Reopen with the same mask.
        # seal_later: a roll (a full segment, roll(), begin_merge) only opens the next
        # segment, and the old one is sealed by seal_pending() on another thread (the
        # syncer's, a sync(), close()): see docs/storage.md, "Rolling without waiting".
        # "manual": not the syncer's (tests and simulations seal when they choose).
        if seal_later not in (False, True, "manual"):
            raise ValueError(f"seal_later must be False, True or 'manual', not {seal_later!r}")
        self._opts = check_options(fsync=fsync, sync_interval_ms=sync_interval_ms,
                                   max_segment_bytes=max_segment_bytes, max_key_bytes=max_key_bytes,
                                   max_value_bytes=max_value_bytes, compress_min_bytes=compress_min_bytes,
                                   index_skip_bits=index_skip_bits, min_free_percent=min_free_percent)
        self.on_corrupt = None
        self.max_key = max_key_bytes
        self.max_value = max_value_bytes
        self.path = os.fspath(path)
        self.tab = SegmentTable(self.path, max_segment_bytes, min_free_percent, map_cache)
        self.ix = Index(self.tab, index_skip_bits, _hash_mask, weakref.ref(self))
        self.dur = Durability(self.tab, self.ix, self._opts, seal_later)
        self.wr = Writer(self.tab, self.ix, self.dur, compress_min_bytes)
        os.makedirs(self.path, exist_ok=True)
        self._lock = DirLock(os.path.join(self.path, L.LOCK_NAME))
        try:
            self.recovery, next_id = Recovery(self.tab, self.ix).open()
            self.dur.new_active(next_id)
        except BaseException:
            self.tab.release_all()
            self._lock.release()
            raise
        self.tab.closed = False
        if self.dur.fsync_mode == 1 or self.dur.seal_by_syncer:
            syncer.register(self)

    def __del__(self):
        if self.tab is not None and not self.tab.closed:
            try:
                self.close()
            except Exception:
                pass

    # ---- writes (writes.pyx) -----------------------------------------------------------

    def put(self, key, value):
        """Store value under key (replacing any older value)."""
        cdef int flags
        _check_open(self)
        _check_key(self, key)
        _check_value(self, value)
        self.dur.check_writable()
        stored = self.wr.stored(value, &flags)
        self.wr.write_one(key, stored, flags)
        self.dur.after_write()

    def delete(self, key):
        """Write a tombstone for key; True if the key was live (nothing is written otherwise)."""
        _check_open(self)
        _check_key(self, key)
        if _slot(self, key) < 0:
            return False
        self.dur.check_writable()
        self.wr.write_one(key, b"", FLAG_TOMBSTONE)
        self.dur.after_write()
        return True

    def put_many(self, items):
        """Store many (key, value) pairs; all are checked before any is written."""
        cdef list pairs = []
        _check_open(self)
        for item in items:
            key, value = item
            _check_key(self, key)
            _check_value(self, value)
            pairs.append((key, value))
        if pairs:
            self.dur.check_writable()
            self.wr.put_many(pairs)
            self.dur.after_write()

    # ---- one lookup for a read-modify-write (kvcore/replicawrite.pyx) --------------------
    # A slot from slot_of() stays the key's until the next write to this store: the keydir
    # changes only in writes and finish_merge(), all on the owner's thread.

    cdef Py_ssize_t slot_of(self, object key) except -2:
        _check_open(self)
        _check_key(self, key)
        return _slot(self, key)

    cdef object value_in(self, Py_ssize_t slot, object key):
        # None when the record failed its CRC and was dropped: the slot is then no longer
        # the key's, and the caller writes as to an absent key (put_in with slot -1)
        return self.ix.value_at(slot)

    cdef int put_in(self, Py_ssize_t slot, object key, object value) except -1:
        cdef int flags
        _check_value(self, value)
        self.dur.check_writable()
        stored = self.wr.stored(value, &flags)
        self.wr.write_one(key, stored, flags, slot)
        self.dur.after_write()
        return 0

    # ---- the node's journal (kvcore/storage/journal.py; docs/storage.md, "The journal") ----

    def attach_journal(self, JournalBuffer journal, uint32_t sid):
        """Append a copy of every record written from now on to `journal`, as store `sid`
        (journal None: no more)."""
        self.wr.journal = journal
        self.wr.journal_id = sid

    def apply_records(self, payloads):
        """Write again, in order, the records a journal replay found for this store (the
        payloads of its RECORDS frames: records as a segment holds them), not journaled
        again. A tombstone of an absent key writes nothing, as delete(). Returns (records
        written, payloads cut short by a record failing its check: the frame's CRC makes
        that a bug, never a torn write)."""
        _check_open(self)
        self.dur.check_writable()
        return self.wr.apply_records(payloads)

    # ---- reads (index.pyx, folds.pyx) ----------------------------------------------------

    def get(self, key):
        """The value of key, or None."""
        _check_open(self)
        _check_key(self, key)
        cdef Py_ssize_t i = _slot(self, key)
        if i < 0:
            return None
        return self.ix.value_at(i)

    def get_many(self, keys):
        """[get(k) for k in keys], in one call."""
        cdef list out = []
        cdef Py_ssize_t i
        _check_open(self)
        for key in keys:
            _check_key(self, key)
            i = _slot(self, key)
            out.append(None if i < 0 else self.ix.value_at(i))
        return out

    def __contains__(self, key):
        _check_open(self)
        _check_key(self, key)
        return _slot(self, key) >= 0

    def __len__(self):
        _check_open(self)
        return self.ix.kd.count

    def scan(self, cursor=0, count=100):
        """(next cursor, keys): keys in hash order from cursor; 0 when done (docs/storage.md)."""
        _check_open(self)
        return folds.scan(self.ix, cursor, count)

    def keys(self):
        """Live keys, in batches that survive writes between them (like SCAN)."""
        _check_open(self)
        return folds.iter_keys(self)

    def __iter__(self):
        return self.keys()

    def items(self):
        """(key, value) pairs, read from disk as they are yielded."""
        _check_open(self)
        return folds.iter_items(self)

    def snapshot(self):
        """The live records now, by location: read_snapshot() reads them back later, as they
        were now, however the store is written meanwhile (until a merge moves them)."""
        _check_open(self)
        return folds.snapshot(self.ix, self.merges)

    def read_snapshot(self, snap, Py_ssize_t start, Py_ssize_t count):
        """(next index, [(key, value)]) of snapshot entries start .. start + count. A record
        failing its CRC is left out (and, if the index still points at it, dropped as a get
        would drop it). MergeError once a merge has moved records since the snapshot."""
        _check_open(self)
        return folds.read_snapshot(self.ix, snap, start, count, self.merges)

    def fold_snapshot(self, snap, Py_ssize_t start, Py_ssize_t count, MerkleTree tree not None):
        """Fold snapshot entries start .. start + count into `tree` (kvcore.merkle), as
        tree.update(key, None, value) would for each pair read_snapshot returns, without
        making Python objects of them (a tree fold after a crash reads every record: kvnet/
        replica.py); returns the next index. A record failing its CRC is left out and dropped
        as read_snapshot drops it; MergeError once a merge has moved records since."""
        _check_open(self)
        return folds.fold_snapshot(self.ix, snap, start, count, tree, self.merges)

    def leaf_keys(self, leaves, int leaf_bits=14):
        """{leaf: [key]} for each of `leaves`, the Merkle leaves of kvcore.merkle (a key's
        leaf is token(key) & (2**leaf_bits - 1)). Found in the in-memory index, which holds
        every key's token: only the records of the keys listed are read (for their key bytes),
        not the rest of the store. A key whose record header is visibly damaged is left out
        (as scan leaves it out; its CRC is checked where its value is read)."""
        _check_open(self)
        return folds.leaf_keys(self.ix, self, leaves, leaf_bits)

    # ---- durability (durability.pyx) -----------------------------------------------------

    def roll(self):
        """Start a new active segment now (if the current one holds any record)."""
        self.dur.roll()

    def seal_pending(self):
        """Seal the segments rolls left unsealed (seal_later), oldest first: truncate each to
        its data end, fdatasync it, make its map read-only, close its descriptor, write its
        hint file; then sync the directory of segments created since. Any thread, one at a
        time; a failed fdatasync makes the store read-only (StoreReadOnly), as in a sync."""
        self.dur.seal_pending()

    def sync(self):
        """Make every write so far durable; may be called from a worker thread (GIL released).
        A failure makes the store read-only (StoreReadOnly), for good: see "Faults"."""
        self.dur.sync()

    def _sync_due(self):
        """When the interval syncer (syncer.py) is to call _timer_sync: monotonic seconds, or
        None (not now)."""
        return self.dur._sync_due()

    def _timer_sync(self):
        # The syncer holds the store itself, not its durability part: while its thread works
        # here the store cannot be finalized, whose close would wait for the locks that
        # thread holds (at interpreter exit a daemon thread never comes back to release them)
        self.dur._timer_sync()

    def sync_begin(self):
        """Before a sync of the whole file system (syncfs) that is to cover this store: what
        it covers, (active segment id, its size now). Raises as sync() would: StoreClosed,
        or StoreReadOnly after a failed sync (never "synced" again)."""
        return self.dur.sync_begin()

    def sync_end(self, mark):
        """After that sync succeeded: every write up to `mark` (sync_begin's) is durable. A
        fault injected for "fdatasync" (_fail_next) fails here as this store's own sync
        would (StoreReadOnly); so does a store that turned read-only meanwhile."""
        self.dur.sync_end(mark)

    @property
    def failed(self):
        """None, or the errno of the fdatasync that made the store read-only."""
        return None if self.dur.failed_info is None else self.dur.failed_info[0]

    def _fail(self, int err, what):
        """Make the store read-only as a failed fdatasync does (kvnet/replica.py: a write the
        replica could not make durable); the StoreReadOnly to raise."""
        return self.dur.fail(err, what)

    def _fail_next(self, op, err=0, times=1, after=0):
        """Tests only: make the next `times` calls of one kind of system call fail with errno
        `err` (op None: no more faults): "open" (a new segment or hint file), "write" (record
        bytes, a segment header, a hint file), "ftruncate" (a segment's length: a reservation
        step, the truncation at a seal or close), "fdatasync" (any sync of a segment),
        "mmap" (a sealed segment's map on a cache miss). after: that many calls of the kind
        succeed first."""
        self.tab.fail_next(op, err, times, after)

    # ---- merge (merge.pyx) ---------------------------------------------------------------

    def begin_merge(self, roll=True):
        """Plan a merge of every sealed segment (roll: the active one is rolled out first; with
        seal_later it is then merged only once seal_pending() has sealed it)."""
        _check_open(self)
        if self.merge_job is not None:
            raise MergeError("a merge is already in progress on this store")
        self.dur.check_writable()
        if roll and self.tab.segs[self.dur.active].size > SEG_HEADER_SIZE:
            self.dur.seal_active()
        unsealed = set(self.dur.sealing)
        order = [i for i in self.tab.order() if i != self.dur.active and i not in unsealed]
        self.merge_job = M.plan_merge(self.tab, self.ix, order)
        return self.merge_job

    def finish_merge(self, M.MergeJob job, cleanup=True):
        """Swap the merged segments in; a key written during the merge keeps its newer record.
        The file work is the job's: install() (renames, a directory sync), run here if the
        worker thread did not, and cleanup() (unmapping and deleting the inputs), run here
        unless cleanup=False leaves it to the caller's worker thread. What is left here
        touches memory only: the segment table and the keydir (MergeJob.swap_in)."""
        if job is not self.merge_job:
            raise MergeError("this merge job does not belong to this store")
        self.merge_job = None
        if self.tab.closed:
            job._discard()
            raise StoreClosed(f"LogStore {self.path} is closed")
        if not job.done:
            job._discard()
            raise MergeError("finish_merge() before the job ran")
        if not job.inputs:
            return
        try:
            job.install()
        except BaseException:
            job._discard()
            raise
        job.swap_in(self.ix)
        self.merges += 1
        if cleanup:
            job.cleanup()

    def merge(self):
        """Compact every sealed segment now (begin, run and finish on this thread)."""
        job = self.begin_merge()
        try:
            job.run()
        except BaseException:
            self.merge_job = None
            job._discard()
            raise
        self.finish_merge(job)

    # ---- stats and close ---------------------------------------------------------------

    def sizes(self):
        """(data_bytes, live_bytes): the segments' bytes and the live records' bytes, cheaply
        (no file system calls), for a merge policy to look at often."""
        cdef Py_ssize_t i
        cdef unsigned long long data = 0
        _check_open(self)
        for i in range(self.tab.nsegs):
            if self.tab.segs[i].used:
                data += self.tab.segs[i].size
        return data, self.ix.live_bytes

    def stats(self):
        """Counters and sizes (docs/storage.md lists them)."""
        cdef Py_ssize_t i, act = self.dur.active
        cdef SegmentTable tab = self.tab
        _check_open(self)
        data = hints = nseg = 0
        for i in range(tab.nsegs):
            if tab.segs[i].used:
                nseg += 1
                data += tab.segs[i].size
                p = os.path.join(self.path, L.hint_name(tab.segs[i].id))
                if os.path.exists(p):
                    hints += os.path.getsize(p)
        return {
            "keys": self.ix.kd.count,
            "live_bytes": self.ix.live_bytes,
            "data_bytes": data,
            "hint_bytes": hints,
            "disk_bytes": data + hints,
            "segments": nseg,
            "active_segment": os.path.join(self.path, L.segment_name(tab.segs[act].id)),
            "active_offset": tab.segs[act].size,
            "synced_offset": self.dur.synced_offset,
            "index_bytes": self.ix.kd.nbytes,
            "index_capacity": self.ix.kd.capacity,
            "corrupt_records": self.ix.corrupt,
            "torn_tail_bytes": self.recovery["torn_tail_bytes"],
            "zero_tail_bytes": self.recovery["zero_tail_bytes"],
            "reserved_bytes": tab.segs[act].reserved - tab.segs[act].size,
            "merges": self.merges,
            "mapped_segments": tab.nmapped,
            "map_misses": tab.map_misses,
            "sealing_segments": len(self.dur.sealing),
            "sealing_reserved_bytes": sum(tab.segs[i].reserved - tab.segs[i].size
                                          for i in self.dur.sealing),
            "read_only": self.dur.failed_info is not None,
            "fsync": self._opts.fsync,
        }

    def close(self):
        """Sync, write the active segment's hints and a clean-shutdown marker, unlock."""
        _shutdown(self, True)

    def _abandon(self):
        """Stop as a killed process would: no sync, no hints, no marker (for crash tests)."""
        _shutdown(self, False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        closed = self.tab is None or self.tab.closed
        return f"<LogStore {self.path!r} {'closed' if closed else 'open'}>"
