"""The segment table of a LogStore (docs/storage.md, "Code layout" and "Resources"): which
segment files the store has, their maps (a map cache of the sealed ones), the active
segment's space reserved ahead, and the faults tests inject into its system calls."""
import os
import struct

from cpython.pythread cimport (PyThread_acquire_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_release_lock, WAIT_LOCK)
from libc.errno cimport EINVAL, EIO, ENOSPC, errno
from libc.stdio cimport snprintf
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, realloc
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.fcntl cimport O_CLOEXEC, O_RDONLY, open as c_open
from posix.types cimport off_t
from posix.unistd cimport close as c_close, pwrite

from kvcore.errors import MergeError
from kvcore.storage import layout as L
from kvcore.storage.options import (check_fault, check_map_cache, injected, space_allowed,
                                    space_refused)

from kvcore.hashing cimport kv_crc32c

include "format.pxi"

cdef extern from "sys/mman.h" nogil:
    void *mremap(void *old_address, size_t old_size, size_t new_size, int flags)
    int MREMAP_MAYMOVE

cdef extern from "fcntl.h" nogil:
    # Linux/glibc; returns an error number (not -1 and errno). Python.h sets the
    # feature macros that declare it.
    int posix_fallocate(int fd, off_t offset, off_t length)

cdef uint64_t RESERVE_FIRST = 64 << 10     # first reservation of an active segment
cdef uint64_t RESERVE_DOUBLE_UNTIL = 4 << 20   # then it doubles up to here, then grows by this
_SEG_HEAD = struct.Struct("<QHHIQI")


cdef int buf_reserve(Buffer *b, size_t extra) except -1 nogil:
    cdef size_t need = b.len + extra, cap
    cdef char *p
    if need <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < need:
        cap *= 2
    p = <char *>realloc(b.data, cap)
    if p == NULL:
        with gil:
            raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef int pwrite_full(int fd, const char *data, size_t n, uint64_t off, str what) except -1:
    """pwrite all of data at off (a short write goes on; an error raises OSError)."""
    cdef ssize_t w
    while n:
        with nogil:
            w = pwrite(fd, data, n, off)
        if w < 0:
            raise OSError(errno, os.strerror(errno), what)
        data += w
        n -= w
        off += w
    return 0


def segment_header(uint64_t seg_id):
    """The 32 bytes a segment file starts with (format.pxi)."""
    head = _SEG_HEAD.pack(L.SEG_MAGIC, FORMAT_VERSION, SEG_HEADER_SIZE, 0, seg_id, 0)
    return head + struct.pack("<I", kv_crc32c(0, <const char *>head, 28))


cdef class SegmentTable:
    """The segments of one store, indexed as keydir locations name them."""

    def __cinit__(self, path, size_t max_segment, double min_free, map_cache):
        self.segs = NULL
        self.nsegs = self.segs_cap = 0
        self.closed = True
        self.io_lock = PyThread_allocate_lock()
        if self.io_lock == NULL:
            raise MemoryError()
        self.map_cache = check_map_cache(map_cache)
        self.path = path
        self.dir_b = os.fsencode(path)
        self.dir_c = self.dir_b
        if len(self.dir_b) > 4000 or b"\0" in self.dir_b:
            raise ValueError(f"a store's path must be under 4000 bytes, without NUL: {path!r}")
        self.max_segment = max_segment
        self.min_free = min_free

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.segs != NULL:
            for i in range(self.nsegs):
                if self.segs[i].used:
                    if self.segs[i].map != NULL:
                        munmap(self.segs[i].map, self.segs[i].map_len)
                    if self.segs[i].fd >= 0:
                        c_close(self.segs[i].fd)
            free(self.segs)
        if self.io_lock != NULL:
            PyThread_free_lock(self.io_lock)

    cdef Py_ssize_t new_slot(self) except -1:
        cdef Py_ssize_t i
        cdef Segment *p
        for i in range(self.nsegs):
            if not self.segs[i].used:
                return i
        if self.nsegs == self.segs_cap:
            cap = self.segs_cap * 2 if self.segs_cap else 16
            p = <Segment *>realloc(self.segs, cap * sizeof(Segment))
            if p == NULL:
                raise MemoryError()
            self.segs = p
            self.segs_cap = cap
        if self.nsegs >= (1 << 20):
            raise MergeError("too many segments (over 2**20): run merge()")
        i = self.nsegs
        self.nsegs += 1
        self.segs[i].used = 0
        self.segs[i].fd = -1
        self.segs[i].map = NULL
        self.segs[i].map_len = 0
        self.segs[i].size = 0
        self.segs[i].reserved = 0
        self.segs[i].id = 0
        self.segs[i].pins = 0
        self.segs[i].used_at = 0
        return i

    cdef Py_ssize_t open_segment(self, uint64_t seg_id, bint create) except -1:
        cdef Py_ssize_t i = self.new_slot()
        path = os.path.join(self.path, L.segment_name(seg_id))
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        self.segs[i].fd = os.open(path, flags, 0o644)
        self.segs[i].used = 1
        self.segs[i].pins = 1          # (until loaded, or while active: unpin at its seal)
        self.segs[i].id = seg_id
        self.segs[i].size = os.fstat(self.segs[i].fd).st_size
        self.segs[i].reserved = self.segs[i].size
        return i

    cdef int map_segment(self, Py_ssize_t i, size_t length, bint writable) except -1:
        cdef void *m
        if length == 0:
            self.segs[i].map = NULL
            self.segs[i].map_len = 0
            return 0
        m = mmap(NULL, length, PROT_READ | (PROT_WRITE if writable else 0), MAP_SHARED,
                 self.segs[i].fd, 0)
        if m == MAP_FAILED:
            raise OSError(errno, os.strerror(errno), "mmap of a segment")
        self.segs[i].map = <char *>m
        self.segs[i].map_len = length
        return 0

    # ---- the map cache (docs/storage.md, "Resources") -----------------------------------
    # Every read of a segment's bytes gets its address from seg_addr() (inline; a miss goes
    # to seg_base, which raises) or seg_map (NULL on failure, without the GIL). A pinned
    # segment (pins > 0: the active one, one rolled out and not yet sealed, one being loaded
    # by the open, one a reader holds across other calls) keeps its map; of the others at
    # most map_cache stay mapped, and a miss unmaps the least recently read one first. A
    # pointer from seg_map is good until the next seg_map, pin or unpin call of this table
    # (which may unmap it), unless its segment is pinned. All of this runs with the GIL held
    # (or in the open, on the one thread that opens the store): the other threads that read
    # segments read pinned ones (a seal) or their own maps (a merge's run()).

    cdef const char *seg_map(self, Py_ssize_t i) noexcept nogil:
        cdef Segment *seg = &self.segs[i]
        if seg.map != NULL:
            self.map_clock += 1
            seg.used_at = self.map_clock
            return seg.map
        return self.map_miss(i)

    cdef const char *map_miss(self, Py_ssize_t i) noexcept nogil:
        """Map sealed segment i read-only (open, mmap, close: no descriptor kept), unmapping
        the least recently read unpinned map first when map_cache are mapped; NULL with
        map_errno set when that fails (EMFILE at the open, ENOMEM at the mmap)."""
        cdef Segment *seg = &self.segs[i]
        cdef char path[4200]
        cdef int fd, err
        cdef void *m
        if seg.size == 0 or not seg.used:
            self.map_errno = EINVAL             # (no record lives in an empty segment)
            return NULL
        err = self.injected(F_MMAP)
        if err:
            self.map_errno = err
            return NULL
        snprintf(path, sizeof(path), "%s/%016llx.data", self.dir_c,
                 <unsigned long long>seg.id)
        fd = c_open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0:                              # (EMFILE: nothing unmapped, nothing changed)
            self.map_errno = errno
            return NULL
        if seg.pins == 0:                       # room first: never more than map_cache maps
            while self.nmapped >= self.map_cache and self.nmapped > 0:
                self.evict_one()
        m = mmap(NULL, <size_t>seg.size, PROT_READ, MAP_SHARED, fd, 0)
        err = errno
        c_close(fd)
        if m == MAP_FAILED:
            self.map_errno = err
            return NULL
        seg.map = <char *>m
        seg.map_len = <size_t>seg.size
        self.map_clock += 1
        seg.used_at = self.map_clock
        self.map_misses += 1
        if seg.pins == 0:
            self.nmapped += 1
        return seg.map

    cdef const char *seg_base(self, Py_ssize_t i) except NULL nogil:
        """seg_map, raising OSError (naming the segment) where it returns NULL."""
        cdef const char *p = self.seg_map(i)
        if p == NULL:
            with gil:
                raise self.map_error(i)
        return p

    def map_error(self, Py_ssize_t i):
        err = self.map_errno or EIO
        return OSError(err, os.strerror(err),
                       f"mapping segment {self.segs[i].id:016x} of store {self.path} for a read")

    cdef void evict_one(self) noexcept nogil:
        """Unmap the least recently read unpinned map."""
        cdef Py_ssize_t i, victim = -1
        cdef uint64_t oldest = <uint64_t>-1
        for i in range(self.nsegs):
            if (self.segs[i].used and self.segs[i].map != NULL and self.segs[i].pins == 0
                    and self.segs[i].used_at <= oldest):
                oldest = self.segs[i].used_at
                victim = i
        if victim < 0:
            self.nmapped = 0                    # (unreachable: the count is of such maps)
            return
        munmap(self.segs[victim].map, self.segs[victim].map_len)
        self.segs[victim].map = NULL
        self.segs[victim].map_len = 0
        self.nmapped -= 1

    cdef const char *pin(self, Py_ssize_t i) except NULL:
        """Map segment i (if it is not) and keep it mapped until unpin(i)."""
        cdef const char *p = seg_addr(self, i)
        if self.segs[i].pins == 0:
            self.nmapped -= 1
        self.segs[i].pins += 1
        return p

    cdef void unpin(self, Py_ssize_t i) noexcept nogil:
        """Undo a pin (or the pin a segment is created with): once it has none, its map is
        one of the cache's, and the least recently read ones past map_cache are unmapped."""
        cdef Segment *seg = &self.segs[i]
        if seg.pins <= 0:
            return
        seg.pins -= 1
        if seg.pins == 0 and seg.map != NULL:
            self.map_clock += 1
            seg.used_at = self.map_clock
            self.nmapped += 1
            while self.nmapped > self.map_cache:
                self.evict_one()

    # ---- the active segment's space ------------------------------------------------------

    cdef int grow_map(self, Py_ssize_t i, size_t length) except -1:
        """Extend active segment i's writable map to cover length bytes: the map follows the
        reservation instead of covering the largest size a segment can reach (64 MiB or the
        value limit) from the start. mremap may move the map, so no pointer into the active
        map is kept across a write (reads and writes look it up; they run on the owner's
        thread, and a merge's thread reads sealed segments only). The file is extended
        before its map, so no mapped page lies past its end."""
        cdef Segment *seg = &self.segs[i]
        cdef void *m
        length = (length + PAGE - 1) // PAGE * PAGE
        if length <= seg.map_len:
            return 0
        if seg.map == NULL:
            m = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, seg.fd, 0)
        else:
            m = mremap(seg.map, seg.map_len, length, MREMAP_MAYMOVE)
        if m == MAP_FAILED:
            raise OSError(errno, os.strerror(errno), "mapping segment space")
        seg.map = <char *>m
        seg.map_len = length
        return 0

    cdef int reserve(self, Py_ssize_t i, uint64_t need) except -1:
        """Make the file of active segment i at least need bytes long, with its blocks
        allocated (posix_fallocate, never a sparse extension), so that writing through
        the map below need cannot SIGBUS on a full disk: ENOSPC raises OSError here and
        nothing is written. Grows 64 KiB, doubling to 4 MiB, then 4 MiB at a time, never
        past the segment limit (or the one record that needs more); when a step does not
        fit on the disk, just what this write needs."""
        cdef Segment *seg = &self.segs[i]
        cdef uint64_t old = seg.reserved, target, cap
        cdef int rc
        if need <= old:
            return 0
        target = old * 2 if old < RESERVE_DOUBLE_UNTIL else old + RESERVE_DOUBLE_UNTIL
        if target < RESERVE_FIRST:
            target = RESERVE_FIRST
        if target < need:
            target = need
        target = (target + PAGE - 1) // PAGE * PAGE
        cap = self.max_segment if self.max_segment > need else need
        if target > cap:
            target = cap
        if self.min_free > 0:
            # the free-space watermark: reserved space is taken already, so only a step
            # needs this one statvfs (every 64 KiB .. 4 MiB written, not every put)
            allowed = space_allowed(self.path, self.min_free)
            if allowed < <long long>(need - old):
                raise space_refused(self.path, self.min_free)
            if <long long>(target - old) > allowed:
                target = old + (<uint64_t>allowed) // PAGE * PAGE
                if target < need:
                    target = need
        rc = self.injected(F_FTRUNCATE)
        if rc:
            raise injected(rc, "reserving segment space")
        with nogil:
            rc = posix_fallocate(seg.fd, <off_t>old, <off_t>(target - old))
            if rc == ENOSPC and target > need:      # no room for a step: try for this write alone
                target = need
                rc = posix_fallocate(seg.fd, <off_t>old, <off_t>(target - old))
        if rc != 0:
            raise OSError(rc, os.strerror(rc), "reserving segment space")
        self.grow_map(i, target)
        seg.reserved = target
        return 0

    # ---- descriptors and files -------------------------------------------------------------

    cdef int close_fd(self, Py_ssize_t i) except -1:
        """A sealed segment needs no descriptor: its read-only map keeps the file (and is all
        any read uses), so a store holds one descriptor (its active segment's) besides its
        lock, however many segments it has (docs/storage.md, "Resources"). Under io_lock: a
        sync on another thread may still hold the descriptor of the segment just sealed."""
        cdef int fd = self.segs[i].fd
        if fd < 0:
            return 0
        with nogil:
            PyThread_acquire_lock(self.io_lock, WAIT_LOCK)
            self.segs[i].fd = -1
            c_close(fd)
            PyThread_release_lock(self.io_lock)
        return 0

    cdef int drop(self, Py_ssize_t i, bint unlink) except -1:
        cdef uint64_t seg_id = self.segs[i].id
        if self.segs[i].map != NULL:
            munmap(self.segs[i].map, self.segs[i].map_len)
            if self.segs[i].pins == 0:
                self.nmapped -= 1
        self.segs[i].pins = 0
        if self.segs[i].fd >= 0:
            c_close(self.segs[i].fd)
        self.segs[i].fd = -1
        self.segs[i].used = 0
        self.segs[i].map = NULL
        self.segs[i].map_len = 0
        if unlink:
            hint = os.path.join(self.path, L.hint_name(seg_id))
            if os.path.exists(hint):
                os.unlink(hint)
            os.unlink(os.path.join(self.path, L.segment_name(seg_id)))
        return 0

    def order(self):
        """Indexes of the open segments, oldest first."""
        cdef Py_ssize_t i
        return sorted((i for i in range(self.nsegs) if self.segs[i].used),
                      key=lambda i: self.segs[i].id)

    def release_all(self):
        """Unmap and close every segment (a close, or a failed open)."""
        cdef Py_ssize_t i
        for i in range(self.nsegs):
            if self.segs[i].used:
                self.drop(i, False)
        self.nsegs = 0
        self.nmapped = 0

    # ---- faults (docs/storage.md, "Faults") ---------------------------------------------

    def fail_next(self, op, err=0, times=1, after=0):
        """LogStore._fail_next (tests only)."""
        if op is None:                  # (clears a fault not triggered yet)
            self.fault_op = 0
            return
        self.fault_op, self.fault_errno, self.fault_times, self.fault_after = \
            check_fault(op, err, times, after)

    cdef int injected(self, int op) noexcept nogil:
        """The errno an injected fault of op makes its next call fail with, or 0."""
        cdef int err
        if self.fault_op != op:
            return 0
        if self.fault_after > 0:
            self.fault_after -= 1
            return 0
        err = self.fault_errno
        self.fault_times -= 1
        if self.fault_times <= 0:
            self.fault_op = 0
        return err

    cdef int pwrite_all(self, int fd, const char *data, size_t n, uint64_t off) except -1:
        # hint files, and put_many's chunks into the active segment's reserved space
        cdef int err = self.injected(F_WRITE)
        if err:
            raise injected(err, "write to segment")
        return pwrite_full(fd, data, n, off, "write to segment")
