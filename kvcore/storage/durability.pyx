"""A LogStore's active segment and its durability (docs/storage.md, "Durability", "Rolling
without waiting", "Faults" and "Code layout"): a new segment file, a roll to the next one and
the seal of the old one (truncated, synced, read-only, its hints written: now, or later on
the syncer's thread), syncs, the close's last seal, and the read-only state of a store whose
fdatasync failed."""
import os

import errno as E

from cpython.pythread cimport (PyThread_acquire_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_release_lock, WAIT_LOCK)
from libc.errno cimport EIO, ENOSPC, errno
from libc.stdint cimport uint64_t
from posix.mman cimport PROT_READ, mprotect
from posix.types cimport off_t
from posix.unistd cimport ftruncate

from kvcore.errors import StoreClosed, StoreReadOnly
from kvcore.storage import layout as L
from kvcore.storage import syncer
from kvcore.storage.files import fsync_dir, write_file
from kvcore.storage.options import injected, space_allowed, space_refused
from kvcore.storage.segments import segment_header

from kvcore.storage.index cimport Index
from kvcore.storage.recovery cimport seal_hints
from kvcore.storage.segments cimport (F_FDATASYNC, F_FTRUNCATE, F_OPEN, F_WRITE, PAGE, Segment,
                                      SegmentTable, datasync, now_mono)

include "format.pxi"


cdef class Durability:
    """The active segment of one store, its seals and syncs."""

    def __cinit__(self, SegmentTable tab not None, Index ix not None, opts, seal_later):
        self.tab = tab
        self.ix = ix
        self.opts = opts
        self.active = -1
        self.fsync_mode = {"never": 0, "interval": 1, "always": 2}[opts.fsync]
        self.seal_later = bool(seal_later)
        self.seal_by_syncer = seal_later is True
        self.dirty_since = -1
        self.sealing = []
        self.seal_lock = PyThread_allocate_lock()
        if self.seal_lock == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.seal_lock != NULL:
            PyThread_free_lock(self.seal_lock)

    # ---- segments ----------------------------------------------------------------------

    cdef Py_ssize_t create_segment(self, uint64_t seg_id) except -1:
        """A new segment file with its header, synced and mapped writable, not yet active. On
        any failure (EMFILE, ENOSPC, EIO) nothing is left of it and OSError is raised."""
        cdef Py_ssize_t i
        cdef SegmentTable tab = self.tab
        cdef int err = tab.injected(F_OPEN)
        path = os.path.join(tab.path, L.segment_name(seg_id))
        if err:
            raise injected(err, "opening a new segment")
        i = tab.open_segment(seg_id, True)
        try:
            err = tab.injected(F_WRITE)
            if err:
                raise injected(err, "writing a segment header")
            head = segment_header(seg_id)
            if os.write(tab.segs[i].fd, head) != len(head):
                raise OSError(ENOSPC, os.strerror(ENOSPC), "writing a segment header")
            if self.seal_later:
                self.dir_unsynced = True    # (synced before anything written here is durable)
            else:
                err = tab.injected(F_FDATASYNC)
                if err:
                    raise injected(err, "fdatasync of a new segment")
                os.fdatasync(tab.segs[i].fd)
                fsync_dir(tab.path)
            tab.segs[i].size = tab.segs[i].reserved = SEG_HEADER_SIZE
            # writable, as long as the reservation (grow_map); only [0, reserved) is touched
            tab.grow_map(i, SEG_HEADER_SIZE)
        except BaseException as exc:
            tab.drop(i, False)
            try:
                os.unlink(path)
            except OSError:
                pass
            if isinstance(exc, OSError) and not exc.filename:
                raise OSError(exc.errno, exc.strerror, f"starting segment {seg_id:016x}") from exc
            raise
        return i

    def new_active(self, uint64_t seg_id):
        self.active = self.create_segment(seg_id)
        self.synced_offset = SEG_HEADER_SIZE

    cdef int end_active(self, Py_ssize_t i, bint locked) except -1:
        """Give back the reserved space of active segment i (truncate to the data end),
        make it durable, and make its map read-only. locked: the caller holds io_lock.
        A failed truncate raises OSError with nothing changed (the map stays writable); a
        failed fdatasync makes the store read-only (StoreReadOnly)."""
        cdef Segment *seg = &self.tab.segs[i]
        cdef int fd = seg.fd, rc = 0, err = 0, synced = 0
        cdef off_t size = seg.size
        cdef int inj_t = self.tab.injected(F_FTRUNCATE)
        cdef int inj_s = 0 if inj_t else self.tab.injected(F_FDATASYNC)
        with nogil:
            if not locked:
                PyThread_acquire_lock(self.tab.io_lock, WAIT_LOCK)
            if inj_t:
                rc = -1
                err = inj_t
            elif seg.reserved > <uint64_t>size:
                rc = ftruncate(fd, size)
                if rc != 0:
                    err = errno
            if rc == 0:
                synced = 1          # (truncated, if it had to be)
                err = datasync(fd, inj_s)
                rc = -1 if err else 0
            if not locked:
                PyThread_release_lock(self.tab.io_lock)
        if synced:
            seg.reserved = seg.size
        if rc != 0:
            if not synced:
                if inj_t:
                    raise injected(err, "truncating the active segment")
                raise OSError(err, os.strerror(err), "truncating the active segment")
            raise self.fail(err, f"fdatasync of segment {seg.id:016x}")
        if seg.map != NULL:
            mprotect(seg.map, seg.map_len, PROT_READ)
        return 0

    def seal_active(self):
        """Start the next segment, then seal the active one (truncate, sync, read-only map,
        hints). The next segment is opened first: if that fails (EMFILE, ENOSPC) nothing has
        changed, and if sealing fails it is removed again, so the active segment is always
        a writable one (a roll sealed the old one first and left a read-only map active)."""
        cdef SegmentTable tab = self.tab
        cdef Py_ssize_t old = self.active, new
        cdef uint64_t seg_id = tab.segs[old].id
        if tab.min_free > 0 and space_allowed(tab.path, tab.min_free) < <long long>PAGE:
            raise space_refused(tab.path, tab.min_free)
        new = self.create_segment(((seg_id >> L.SEQ_SHIFT) + 1) << L.SEQ_SHIFT)
        if self.seal_later:
            self.active = new
            self.synced_offset = SEG_HEADER_SIZE
            self.sealing.append(old)
            if self.seal_by_syncer:
                syncer.poke()               # (its _sync_due is now: a seal is pending)
            return
        try:
            self.end_active(old, False)
        except BaseException:
            path = os.path.join(tab.path, L.segment_name(tab.segs[new].id))
            tab.drop(new, False)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        self.active = new
        self.synced_offset = SEG_HEADER_SIZE
        self.dirty_since = -1
        tab.close_fd(old)
        try:
            seal_hints(tab, self.ix, old)
        finally:
            tab.unpin(old)              # (a sealed segment: one of the map cache's)

    def roll(self):
        """LogStore.roll."""
        self.check_open()
        self.check_writable()
        if self.tab.segs[self.active].size > SEG_HEADER_SIZE:
            self.seal_active()

    def seal_pending(self):
        """LogStore.seal_pending: seal the segments rolls left unsealed (seal_later), oldest
        first, then sync the directory of segments created since."""
        if not self.sealing and not self.dir_unsynced:
            return
        with nogil:
            PyThread_acquire_lock(self.seal_lock, WAIT_LOCK)
        try:
            while self.sealing and not self.tab.closed:
                self.check_writable()
                self.seal_one(self.sealing[0])
                del self.sealing[0]
            if self.dir_unsynced and not self.tab.closed:
                self.check_writable()
                self.dir_unsynced = False
                try:
                    fsync_dir(self.tab.path)
                except OSError as exc:
                    self.dir_unsynced = True
                    raise self.fail(exc.errno or EIO, "fsync of the store's directory")
        finally:
            PyThread_release_lock(self.seal_lock)

    cdef int seal_one(self, Py_ssize_t i) except -1:
        """Seal rolled-out segment i (seal_pending holds seal_lock). The owner's thread
        never writes to it again and only reads its map; a merge leaves it out until sealed,
        so the slot stays this segment's throughout (segs itself may be reallocated by the
        owner meanwhile: nothing here keeps a pointer into it while the GIL is released)."""
        cdef SegmentTable tab = self.tab
        cdef int fd = tab.segs[i].fd, err = 0, trunc_rc = 0
        cdef off_t size = tab.segs[i].size
        cdef uint64_t reserved = tab.segs[i].reserved
        cdef char *m = tab.segs[i].map
        cdef size_t mlen = tab.segs[i].map_len
        cdef int inj_t = tab.injected(F_FTRUNCATE)
        cdef int inj_s = tab.injected(F_FDATASYNC)
        with nogil:
            PyThread_acquire_lock(tab.io_lock, WAIT_LOCK)
            if reserved > <uint64_t>size:       # (a failed truncate leaves a zero tail, which
                if inj_t:                       # an open reads as the end of the data)
                    trunc_rc = -1
                else:
                    trunc_rc = ftruncate(fd, size)
            err = datasync(fd, inj_s)
            if err == 0 and m != NULL:
                mprotect(m, mlen, PROT_READ)
            PyThread_release_lock(tab.io_lock)
        if err:
            raise self.fail(err, f"fdatasync of segment {tab.segs[i].id:016x}")
        if trunc_rc == 0:
            tab.segs[i].reserved = size
        tab.close_fd(i)
        try:
            seal_hints(tab, self.ix, i)
        finally:
            tab.unpin(i)                # (a sealed segment: one of the map cache's)
        return 0

    # ---- syncs -------------------------------------------------------------------------

    cdef int after_write(self) except -1:
        cdef int fd, err
        cdef Segment *seg
        if self.fsync_mode == 2:
            if self.sealing or self.dir_unsynced:
                self.seal_pending()
            seg = &self.tab.segs[self.active]
            fd = seg.fd
            err = self.tab.injected(F_FDATASYNC)
            with nogil:
                err = datasync(fd, err)
            if err:
                raise self.fail(err, f"fdatasync of segment {self.tab.segs[self.active].id:016x}")
            self.synced_offset = self.tab.segs[self.active].size
        elif self.dirty_since < 0:
            self.dirty_since = now_mono()
            if self.fsync_mode == 1:
                syncer.poke()
        return 0

    def sync(self):
        """LogStore.sync: every write so far durable; any thread (GIL released)."""
        cdef int fd, err
        cdef uint64_t size
        cdef Py_ssize_t act
        self.check_open()
        self.check_writable()           # never "synced" after a failed sync
        self.seal_pending()             # (rolled-out segments first, and the directory)
        with nogil:
            PyThread_acquire_lock(self.tab.io_lock, WAIT_LOCK)
        if self.tab.closed:
            PyThread_release_lock(self.tab.io_lock)
            raise StoreClosed(f"LogStore {self.tab.path} is closed")
        act = self.active
        fd = self.tab.segs[act].fd
        size = self.tab.segs[act].size
        err = self.tab.injected(F_FDATASYNC)
        with nogil:
            err = datasync(fd, err)
            PyThread_release_lock(self.tab.io_lock)
        if err:
            raise self.fail(err, f"fdatasync of segment {self.tab.segs[act].id:016x}")
        if act == self.active and size > self.synced_offset:
            self.synced_offset = size
        if act == self.active and size == self.tab.segs[act].size:
            self.dirty_since = -1

    def _sync_due(self):
        """LogStore._sync_due: when the syncer (syncer.py) is to call _timer_sync, monotonic
        seconds, or None (not now)."""
        if self.tab.closed or self.failed_info is not None:
            return None
        if (self.sealing or self.dir_unsynced) and self.seal_by_syncer:
            return 0.0                  # a roll left a seal to do: now
        if self.dirty_since < 0 or self.fsync_mode != 1:
            return None
        return self.dirty_since + self.opts.sync_interval_ms / 1000.0

    def _timer_sync(self):
        if self.tab.closed:
            return
        if self.fsync_mode == 1:
            self.sync()
        else:
            self.seal_pending()

    def sync_begin(self):
        """LogStore.sync_begin: (active segment id, its size now)."""
        self.check_open()
        self.check_writable()
        return (self.tab.segs[self.active].id, self.tab.segs[self.active].size)

    def sync_end(self, mark):
        """LogStore.sync_end: every write up to `mark` (sync_begin's) is durable."""
        cdef uint64_t seg_id = mark[0], size = mark[1]
        cdef Py_ssize_t act
        cdef int err
        if self.tab.closed:
            return
        self.check_writable()
        err = self.tab.injected(F_FDATASYNC)
        if err:
            raise self.fail(err, f"sync of segment {seg_id:016x} (syncfs)")
        act = self.active
        if self.tab.segs[act].id == seg_id:
            if size > self.synced_offset:
                self.synced_offset = size
            if size == self.tab.segs[act].size:
                self.dirty_since = -1

    # ---- faults: read-only after a failed sync (docs/storage.md, "Faults") ------------------

    def fail(self, int err, what):
        """An fdatasync failed: the store is read-only from now on (never synced again as if
        what it held had reached the disk); the StoreReadOnly to raise."""
        if self.failed_info is None:
            self.failed_info = (err, what)
        self.dirty_since = -1
        return self.read_only_error()

    def read_only_error(self):
        err, what = self.failed_info
        return StoreReadOnly(err, f"{what} failed ({E.errorcode.get(err, err)}: "
                                  f"{os.strerror(err)}); store {self.tab.path} is read-only: "
                                  "writes since its last good sync may be lost")

    cdef int check_writable(self) except -1:
        if self.failed_info is not None:
            raise self.read_only_error()
        return 0

    def check_open(self):
        if self.tab.closed:
            raise StoreClosed(f"LogStore {self.tab.path} is closed")

    # ---- the close ---------------------------------------------------------------------

    def shutdown(self, bint clean):
        """The files' part of LogStore._shutdown: a clean close truncates and syncs the
        active segment, writes its hints and CLEAN; a read-only store (a failed sync) is
        closed as a crash leaves it, so the next open recovers (and distrusts) it. Returns
        the StoreReadOnly to raise once the store is unlocked, or None."""
        cdef Segment *seg
        error = None
        if clean and self.failed_info is None:
            try:
                self.seal_pending()
            except StoreReadOnly as exc:
                error = exc
            except OSError:
                pass
        with nogil:
            PyThread_acquire_lock(self.seal_lock, WAIT_LOCK)
            PyThread_acquire_lock(self.tab.io_lock, WAIT_LOCK)
        try:
            self.tab.closed = True
            clean = clean and self.failed_info is None
            seg = &self.tab.segs[self.active]
            try:
                if clean and seg.size > SEG_HEADER_SIZE:
                    self.end_active(self.active, True)
                    seal_hints(self.tab, self.ix, self.active)
                elif clean:                         # an empty segment is not worth a file
                    self.tab.drop(self.active, True)
                if clean:
                    write_file(os.path.join(self.tab.path, L.CLEAN_NAME), b"")
                    fsync_dir(self.tab.path)
            except StoreReadOnly as exc:
                error = exc
            except OSError:
                pass                                # no CLEAN: the next open recovers
            self.tab.release_all()
            self.active = -1
            self.sealing = []
        finally:
            PyThread_release_lock(self.tab.io_lock)
            PyThread_release_lock(self.seal_lock)
        return error
