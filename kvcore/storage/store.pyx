"""LogStore: a Bitcask-shaped log store with a C keydir (docs/storage.md).

Writes copy records into a writable shared mmap of the active segment (the page
cache itself, so a killed process loses nothing acknowledged), into file space
reserved ahead with posix_fallocate, and index them once they are there; reads
go through the same shared mmaps, so neither a put nor a get makes a system
call in the common case.
"""
import os
import struct
import threading
import time

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pythread cimport (PyThread_acquire_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_release_lock, WAIT_LOCK)
from libc.errno cimport EINVAL, EIO, ENOSPC, errno
from libc.stdio cimport snprintf
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, mprotect, munmap
from posix.fcntl cimport O_CLOEXEC, O_RDONLY, open as c_open
from posix.types cimport off_t
from posix.unistd cimport close as c_close, fdatasync, ftruncate, pwrite, write as c_write
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

import errno as E

from kvcore.errors import (KeyTooLarge, MergeError, StoreClosed, StoreReadOnly, ValueTooLarge)
from kvcore.storage import layout as L
from kvcore.storage import syncer
from kvcore.storage.files import fsync_dir, write_file
from kvcore.storage.lock import DirLock
from kvcore.storage.options import (check_fault, check_format, check_map_cache, check_options,
                                    decompress,
                                    injected, maybe_compress, space_allowed, space_refused)

from kvcore.hashing cimport kv_crc32c, token_of
from kvcore.merkle cimport MerkleTree
from kvcore.storage.jbuffer cimport JournalBuffer
from kvcore.storage.keydir cimport LOC_SHIFT, Keydir, Slot, loc_off, loc_seg, make_loc
from kvcore.storage.record cimport (check_record, load16, load32, load64, record_size, resync,
                                    store16, store32, store64, write_record)

include "format.pxi"

cdef extern from "sys/mman.h" nogil:
    void *mremap(void *old_address, size_t old_size, size_t new_size, int flags)
    int MREMAP_MAYMOVE

cdef extern from "fcntl.h" nogil:
    # Linux/glibc; returns an error number (not -1 and errno). Python.h sets the
    # feature macros that declare it.
    int posix_fallocate(int fd, off_t offset, off_t length)

cdef enum:
    J_RECORDS = 1                   # kvcore/storage/journal.py RECORDS

cdef enum:                          # _fail_next() ops (options.FAULT_OPS)
    F_OPEN = 1
    F_WRITE = 2
    F_FTRUNCATE = 3
    F_FDATASYNC = 4
    F_MMAP = 5                      # the map of a sealed segment on a cache miss

cdef size_t PAGE = 4096
MAP_CACHE = 8                       # sealed segments a store keeps mapped (docs/storage.md)
cdef size_t CHUNK = 1 << 20         # put_many copies at most this much per step
cdef size_t MERGE_STEP = 1 << 20    # a throttled merge copies this much between its sleeps
cdef uint64_t RESERVE_FIRST = 64 << 10     # first reservation of an active segment
cdef uint64_t RESERVE_DOUBLE_UNTIL = 4 << 20   # then it doubles up to here, then grows by this
_SEG_HEAD = struct.Struct("<QHHIQI")
_HINT_HEAD = struct.Struct("<QHHIQQ")


cdef inline uint64_t now_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000000 + <uint64_t>(ts.tv_nsec // 1000)


cdef inline double now_mono() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


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


def _segment_header(uint64_t seg_id):
    head = _SEG_HEAD.pack(L.SEG_MAGIC, FORMAT_VERSION, SEG_HEADER_SIZE, 0, seg_id, 0)
    return head + struct.pack("<I", kv_crc32c(0, <const char *>head, 28))


cdef bint _segment_header_ok(const char *p, size_t size, uint64_t seg_id) noexcept nogil:
    return (size >= SEG_HEADER_SIZE and load64(p) == <uint64_t>SEG_MAGIC and load16(p + 8) == FORMAT_VERSION
            and load16(p + 10) == SEG_HEADER_SIZE and load64(p + 16) == seg_id
            and load32(p + 28) == kv_crc32c(0, p, 28))


cdef size_t _nonzero_end(const char *p, size_t start, size_t end) noexcept nogil:
    """One past the last nonzero byte of p[start:end], or start if they are all zero."""
    while end > start and p[end - 1] == 0:
        end -= 1
    return end


def _crc32c(data):
    cdef bytes b = bytes(data)
    return kv_crc32c(0, <const char *>b, len(b))


cdef inline uint64_t unrotate(uint64_t h, int rot) noexcept nogil:
    """The token of a keydir order value (Keydir.order rotates it left by rot)."""
    if rot == 0:
        return h
    return (h >> rot) | (h << (64 - rot))


class Snapshot:
    """The store's live records at one moment (LogStore.snapshot): their locations, read back
    with LogStore.read_snapshot while the store goes on being written."""

    def __init__(self, locs, hashes, merges):
        self.locs = locs            # numpy uint64 keydir locations, in file order
        self.hashes = hashes        # their keys' tokens
        self.merges = merges        # the store's merge count then: a merge since moves records

    def __len__(self):
        return len(self.locs)


cdef inline int _datasync(int fd, int injected_errno) noexcept nogil:
    """0, or the errno of fdatasync(fd); an injected fault's errno (_fail_next) instead of
    the call when there is one."""
    if injected_errno:
        return injected_errno
    if fdatasync(fd) != 0:
        return errno
    return 0


cdef int _pwrite_full(int fd, const char *data, size_t n, uint64_t off,
                      str what="writing a hint file") except -1:
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


def _hint_file(uint64_t seg_id, bytes entries, uint64_t count):
    body = _HINT_HEAD.pack(L.HINT_MAGIC, FORMAT_VERSION, HINT_HEADER_SIZE, 0, seg_id, count) + entries
    crc = kv_crc32c(0, <const char *>body, len(body))
    return body + struct.pack("<II", crc, HINT_TRAILER_MAGIC)


cdef inline void _put_hint(Buffer *b, uint64_t h, uint64_t off, size_t size, uint8_t flags,
                           const char *key, size_t klen) noexcept nogil:
    cdef char *p = b.data + b.len
    store64(p, h)
    store64(p + 8, off)
    store32(p + 16, <uint32_t>size)
    p[20] = <char>flags
    p[21] = 0
    store16(p + 22, <uint16_t>klen)
    memcpy(p + HINT_ENTRY_SIZE, key, klen)
    b.len += HINT_ENTRY_SIZE + klen


cdef void *_map_readonly(str path, size_t size, str what) except NULL:
    """A read-only shared map of the first `size` bytes of the file at path (its descriptor
    closed again); OSError when the open or the mmap fails."""
    cdef void *m
    cdef int err
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0)
        err = errno
    finally:
        os.close(fd)
    if m == MAP_FAILED:
        raise OSError(err, os.strerror(err), f"{what}: {path}")
    return m


cdef inline const char *_addr(LogStore st, Py_ssize_t i) except NULL nogil:
    """The address of segment i's bytes, through the map cache (LogStore._seg_map): a hit
    inline (a few instructions: this is every read's hot path), a miss maps the segment or
    raises OSError (LogStore._seg_base)."""
    cdef Segment *seg = &st.segs[i]
    if seg.map != NULL:
        st.map_clock += 1
        seg.used_at = st.map_clock
        return seg.map
    return st._seg_base(i)


cdef struct Move:
    uint64_t hash
    uint64_t old_loc
    uint64_t out_no         # which output segment of the job
    uint64_t off


cdef class MergeJob:
    """The disk work of a merge: run() may go in a worker thread while the owner goes on."""
    cdef LogStore store
    cdef list inputs                # (segment index, id, size), oldest first
    cdef object live_locs           # list of sorted location arrays, one per input (run())
    cdef object live_all            # every live location in the inputs, unsorted (begin_merge)
    cdef uint64_t out_base
    cdef readonly list outputs      # (id, data path, hint path, size)
    cdef Move *moves
    cdef Py_ssize_t nmoves
    cdef Py_ssize_t moves_cap
    cdef readonly long long corrupt
    cdef readonly bint done
    cdef object running             # held while run() works, so close() can wait for it
    cdef char *out                  # the output segment being built (after its header)
    cdef size_t out_len
    cdef size_t out_cap
    cdef Buffer hints
    cdef uint64_t hint_count
    cdef uint64_t nflushed          # outputs written so far (len(outputs), readable without the GIL)
    cdef size_t copied              # bytes copied by the current step (run's throttle)
    cdef readonly bint cancelled    # set by cancel(): run() stops at its next step
    cdef bint oom                   # _copy could not grow the output buffer
    cdef readonly bint installed    # install() renamed the outputs into place
    cdef list garbage               # (id, map address, length) of the inputs, until cleanup()

    def __cinit__(self):
        self.moves = NULL
        self.out = NULL
        self.hints.data = NULL
        self.hints.len = self.hints.cap = 0
        self.garbage = []

    def __dealloc__(self):
        free(self.moves)
        free(self.out)
        free(self.hints.data)
        for _, addr, length in self.garbage:
            if addr:
                munmap(<void *><size_t>addr, <size_t>length)

    def cancel(self):
        """Stop a run() in progress (any thread) at its next step: it raises MergeError, and
        the owner discards the job (finish_merge refuses it). A store closing cancels too."""
        self.cancelled = True

    def run(self, double max_bytes_per_s=0):
        """Copy the live records of the inputs into new segments (no index changes).
        max_bytes_per_s > 0: copy in steps of MERGE_STEP bytes and sleep between them so the
        copy averages at most that rate (the sleeps release the GIL). Each input is read
        through a map of its own, made here and unmapped once copied: one map more while a
        merge runs, and none the store's map cache could unmap under this thread (the input
        files stay until cleanup() deletes them)."""
        cdef Py_ssize_t k, j, n
        cdef uint64_t idx
        cdef const char *base
        cdef void *m
        cdef size_t seg_size, step = MERGE_STEP if max_bytes_per_s > 0 else <size_t>-1
        cdef uint64_t[::1] locs
        cdef double t0 = now_mono(), total = 0, ahead
        with self.running:
            if self.done:
                raise MergeError("this merge job already ran")
            if self.store.closed:
                raise StoreClosed("the store was closed before the merge ran")
            # grown as records need (_copy): not sized to the largest segment up front (with
            # a node's unbounded value limit that was gigabytes of address space per merge)
            self.out_cap = MERGE_STEP
            self.out = <char *>malloc(self.out_cap)
            if self.out == NULL:
                raise MemoryError()
            import numpy
            live = self.live_all
            live.sort()                             # (numpy sorts without the GIL)
            self.live_locs = []
            shift = int(LOC_SHIFT)              # (a location is segment index << LOC_SHIFT | ..;
            for entry in self.inputs:           # Python ints here: no overflow)
                lo = live.searchsorted(numpy.uint64(entry[0] << shift))
                hi = live.searchsorted(numpy.uint64(min((entry[0] + 1) << shift, 2 ** 64) - 1),
                                       side="right")
                self.live_locs.append(live[lo:hi])
            self.live_all = None
            for k, (idx, seg_id, seg_size) in enumerate(self.inputs):
                arr = self.live_locs[k]
                n = len(arr)
                if n == 0:
                    continue
                locs = arr
                m = _map_readonly(os.path.join(self.store.path, L.segment_name(seg_id)), seg_size,
                                  "mapping a merge input")
                base = <const char *>m
                try:
                    j = 0
                    while j < n:
                        if self.cancelled:
                            raise MergeError("the merge was cancelled")
                        self.copied = 0
                        with nogil:
                            j = self._copy(base, seg_size, &locs[0], j, n, step)
                        if self.oom:
                            raise MemoryError("growing a merge's output buffer")
                        total += self.copied
                        if j < n and self.copied < step:
                            self._flush()
                        if max_bytes_per_s > 0:
                            ahead = total / max_bytes_per_s - (now_mono() - t0)
                            if ahead > 0:
                                time.sleep(ahead)
                finally:
                    munmap(m, seg_size)
            if self.out_len:
                self._flush()
            free(self.out)
            self.out = NULL
            self.done = True

    cdef Py_ssize_t _copy(self, const char *base, size_t seg_size, const uint64_t *locs,
                          Py_ssize_t j, Py_ssize_t n, size_t step) noexcept nogil:
        """Copy records from locs[j:] until the output is full or `step` bytes were copied;
        returns where it stopped."""
        cdef uint64_t off
        cdef size_t size
        cdef const char *p
        cdef Move *m
        cdef uint64_t h
        while j < n:
            off = loc_off(locs[j])
            p = base + off
            size = check_record(p, seg_size - off)
            if size == 0:
                self.corrupt += 1
                j += 1
                continue
            if self.out_len + size + SEG_HEADER_SIZE > self.store.max_segment and self.out_len > 0:
                return j
            if self.copied >= step:
                return j
            if self.out_len + size > self.out_cap and self._grow_out(self.out_len + size) < 0:
                return j                    # (out of memory: run() raises MemoryError)
            memcpy(self.out + self.out_len, p, size)
            self.copied += size
            h = token_of(p + REC_HEADER_SIZE, load16(p + REC_OFF_KEYLEN)) & self.store.hash_mask
            if buf_reserve(&self.hints, HINT_ENTRY_SIZE + load16(p + REC_OFF_KEYLEN)) < 0:
                return j    # unreachable: buf_reserve raises under the GIL
            _put_hint(&self.hints, h, SEG_HEADER_SIZE + self.out_len, size,
                      <uint8_t>p[REC_OFF_FLAGS], p + REC_HEADER_SIZE, load16(p + REC_OFF_KEYLEN))
            self.hint_count += 1
            m = &self.moves[self.nmoves]
            m.hash = h
            m.old_loc = locs[j]
            m.out_no = self.nflushed
            m.off = SEG_HEADER_SIZE + self.out_len
            self.nmoves += 1
            self.out_len += size
            j += 1
        return j

    cdef int _grow_out(self, size_t need) noexcept nogil:
        cdef size_t cap = self.out_cap * 2
        cdef char *p
        if cap < need:
            cap = need
        p = <char *>realloc(self.out, cap)
        if p == NULL:
            self.oom = 1
            return -1
        self.out = p
        self.out_cap = cap
        return 0

    cdef int _flush(self) except -1:
        out_id = self.out_base + len(self.outputs)
        data_path = os.path.join(self.store.path, L.segment_name(out_id) + L.MERGING_SUFFIX)
        hint_path = os.path.join(self.store.path, L.hint_name(out_id) + L.MERGING_SUFFIX)
        header = _segment_header(out_id)
        fd = os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        cdef int cfd = fd
        cdef size_t done_n = 0
        cdef ssize_t w
        cdef int err = 0
        try:
            os.write(fd, header)
            with nogil:
                while done_n < self.out_len:
                    w = c_write(cfd, self.out + done_n, self.out_len - done_n)
                    if w < 0:
                        err = errno
                        break
                    done_n += w
                if err == 0 and fdatasync(cfd) != 0:
                    err = errno
            if err:
                raise OSError(err, os.strerror(err), data_path)
        finally:
            os.close(fd)
        entries = PyBytes_FromStringAndSize(self.hints.data, self.hints.len)
        write_file(hint_path, _hint_file(out_id, entries, self.hint_count))
        self.outputs.append((out_id, data_path, hint_path, SEG_HEADER_SIZE + self.out_len))
        self.out_len = 0
        self.hints.len = 0
        self.hint_count = 0
        self.nflushed += 1
        return 0

    def install(self):
        """The file work of finish_merge, for the worker thread: rename the outputs into place
        and sync the directory (the outputs are mapped when first read, by the store's map
        cache). Before it a crash leaves only .merging files (removed at open); after it,
        outputs and inputs both (an open reads the outputs' copies after the inputs: the same
        records)."""
        with self.running:
            if self.installed:
                return
            if not self.done or self.cancelled:
                raise MergeError("install() of a merge that did not run to its end")
            path = self.store.path
            for out_id, data_path, hint_path, size in self.outputs:
                os.rename(hint_path, os.path.join(path, L.hint_name(out_id)))
                os.rename(data_path, os.path.join(path, L.segment_name(out_id)))
            fsync_dir(path)
            self.installed = True

    def cleanup(self):
        """After finish_merge, for the worker thread: unmap the merged inputs and delete their
        files, oldest first (docs/storage.md, "Merge")."""
        garbage, self.garbage = self.garbage, []
        path = self.store.path
        for seg_id, addr, length in garbage:
            if addr:
                munmap(<void *><size_t>addr, <size_t>length)
            for name in (L.hint_name(seg_id), L.segment_name(seg_id)):
                try:
                    os.unlink(os.path.join(path, name))
                except FileNotFoundError:
                    pass

    def _discard(self):
        if self.installed:
            paths = [os.path.join(self.store.path, n) for out in self.outputs
                     for n in (L.hint_name(out[0]), L.segment_name(out[0]))]
        else:
            paths = [p for out in self.outputs for p in out[1:3]]
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        self.outputs = []




cdef class LogStore:
    """A Bitcask-shaped log store in one directory; see docs/storage.md."""

    def __cinit__(self):
        self.segs = NULL
        self.nsegs = self.segs_cap = 0
        self.active = -1
        self.rec.data = self.hints.data = NULL
        self.rec.len = self.rec.cap = self.hints.len = self.hints.cap = 0
        self.closed = True
        self._io_lock = PyThread_allocate_lock()
        self._seal_lock = PyThread_allocate_lock()
        if self._io_lock == NULL or self._seal_lock == NULL:
            raise MemoryError()
        self.sealing = []
        self.map_cache = MAP_CACHE

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
        self.hash_mask = _hash_mask
        self.seal_later = bool(seal_later)
        self.seal_by_syncer = seal_later is True
        self._opts = check_options(fsync=fsync, sync_interval_ms=sync_interval_ms,
                                   max_segment_bytes=max_segment_bytes, max_key_bytes=max_key_bytes,
                                   max_value_bytes=max_value_bytes, compress_min_bytes=compress_min_bytes,
                                   index_skip_bits=index_skip_bits, min_free_percent=min_free_percent)
        self.min_free = min_free_percent
        self.map_cache = check_map_cache(map_cache)
        self.on_corrupt = None
        self.failed_info = None
        self.corrupt_at = []
        self.fsync_mode = {"never": 0, "interval": 1, "always": 2}[fsync]
        self.max_segment = max_segment_bytes
        self.max_key = max_key_bytes
        self.max_value = max_value_bytes
        self.compress_min = compress_min_bytes
        reserve = max(max_segment_bytes, SEG_HEADER_SIZE + REC_HEADER_SIZE + max_key_bytes + max_value_bytes)
        self.active_reserve = (reserve + PAGE - 1) // PAGE * PAGE
        self.path = os.fspath(path)
        self.dir_b = os.fsencode(self.path)
        self.dir_c = self.dir_b
        if len(self.dir_b) > 4000 or b"\0" in self.dir_b:
            raise ValueError(f"a store's path must be under 4000 bytes, without NUL: {self.path!r}")
        self.dirty_since = -1
        self.kd = Keydir()
        self.kd.rot = index_skip_bits
        os.makedirs(self.path, exist_ok=True)
        self._lock = DirLock(os.path.join(self.path, L.LOCK_NAME))
        try:
            self.recovery = self._open()
        except BaseException:
            self._release_files()
            self._lock.release()
            raise
        self.closed = False
        if self.fsync_mode == 1 or self.seal_by_syncer:
            syncer.register(self)

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
        free(self.rec.data)
        free(self.hints.data)
        if self._io_lock != NULL:
            PyThread_free_lock(self._io_lock)
        if self._seal_lock != NULL:
            PyThread_free_lock(self._seal_lock)

    def __del__(self):
        if not self.closed:
            try:
                self.close()
            except Exception:
                pass

    # ---- segment table -----------------------------------------------------------------

    cdef Py_ssize_t _new_segment_slot(self) except -1:
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

    cdef int _map_segment(self, Py_ssize_t i, size_t length, bint writable) except -1:
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
    # Every read of a segment's bytes gets its address from _addr() (inline; a miss goes to
    # _seg_base, which raises) or _seg_map (NULL on failure, without the GIL). A pinned segment (pins > 0: the active one, one rolled out and not yet sealed,
    # one being loaded by the open, one a reader holds across other calls) keeps its map; of
    # the others at most map_cache stay mapped, and a miss unmaps the least recently read one
    # first. A pointer from _seg_map is good until the next _seg_map, _pin or _unpin call of
    # this store (which may unmap it), unless its segment is pinned. All of this runs with the
    # GIL held (or in the open, on the one thread that opens the store): the other threads
    # that read segments read pinned ones (a seal) or their own maps (a merge's run()).

    cdef inline const char *_seg_map(self, Py_ssize_t i) noexcept nogil:
        cdef Segment *seg = &self.segs[i]
        if seg.map != NULL:
            self.map_clock += 1
            seg.used_at = self.map_clock
            return seg.map
        return self._map_miss(i)

    cdef const char *_map_miss(self, Py_ssize_t i) noexcept nogil:
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
        err = self._injected(F_MMAP)
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
                self._evict_one()
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

    cdef const char *_seg_base(self, Py_ssize_t i) except NULL nogil:
        """_seg_map, raising OSError (naming the segment) where it returns NULL."""
        cdef const char *p = self._seg_map(i)
        if p == NULL:
            with gil:
                raise self._map_error(i)
        return p

    def _map_error(self, Py_ssize_t i):
        err = self.map_errno or EIO
        return OSError(err, os.strerror(err),
                       f"mapping segment {self.segs[i].id:016x} of store {self.path} for a read")

    cdef void _evict_one(self) noexcept nogil:
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

    cdef const char *_pin(self, Py_ssize_t i) except NULL:
        """Map segment i (if it is not) and keep it mapped until _unpin(i)."""
        cdef const char *p = _addr(self, i)
        if self.segs[i].pins == 0:
            self.nmapped -= 1
        self.segs[i].pins += 1
        return p

    cdef void _unpin(self, Py_ssize_t i) noexcept nogil:
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
                self._evict_one()

    cdef int _drop_segment(self, Py_ssize_t i, bint unlink) except -1:
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

    def _segment_order(self):
        """Indexes of the open segments, oldest first."""
        cdef Py_ssize_t i
        return sorted((i for i in range(self.nsegs) if self.segs[i].used), key=lambda i: self.segs[i].id)

    cdef int _close_fd(self, Py_ssize_t i) except -1:
        """A sealed segment needs no descriptor: its read-only map keeps the file (and is all
        any read uses), so a store holds one descriptor (its active segment's) besides its
        lock, however many segments it has (docs/storage.md, "Resources"). Under _io_lock: a
        sync on another thread may still hold the descriptor of the segment just sealed."""
        cdef int fd = self.segs[i].fd
        if fd < 0:
            return 0
        with nogil:
            PyThread_acquire_lock(self._io_lock, WAIT_LOCK)
            self.segs[i].fd = -1
            c_close(fd)
            PyThread_release_lock(self._io_lock)
        return 0

    cdef Py_ssize_t _open_segment(self, uint64_t seg_id, bint create) except -1:
        cdef Py_ssize_t i = self._new_segment_slot()
        path = os.path.join(self.path, L.segment_name(seg_id))
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        self.segs[i].fd = os.open(path, flags, 0o644)
        self.segs[i].used = 1
        self.segs[i].pins = 1          # (until loaded, or while active: _unpin at its seal)
        self.segs[i].id = seg_id
        self.segs[i].size = os.fstat(self.segs[i].fd).st_size
        self.segs[i].reserved = self.segs[i].size
        return i

    cdef int _reserve(self, Py_ssize_t i, uint64_t need) except -1:
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
        rc = self._injected(F_FTRUNCATE)
        if rc:
            raise injected(rc, "reserving segment space")
        with nogil:
            rc = posix_fallocate(seg.fd, <off_t>old, <off_t>(target - old))
            if rc == ENOSPC and target > need:      # no room for a step: try for this write alone
                target = need
                rc = posix_fallocate(seg.fd, <off_t>old, <off_t>(target - old))
        if rc != 0:
            raise OSError(rc, os.strerror(rc), "reserving segment space")
        self._grow_map(i, target)
        seg.reserved = target
        return 0

    cdef int _grow_map(self, Py_ssize_t i, size_t length) except -1:
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

    # ---- open and recovery -------------------------------------------------------------

    def _open(self):
        check_format(self.path, L.segment_ids(self.path), _crc32c, L)
        for name in os.listdir(self.path):
            if name.endswith(L.MERGING_SUFFIX):
                os.unlink(os.path.join(self.path, name))
        clean_path = os.path.join(self.path, L.CLEAN_NAME)
        clean = os.path.exists(clean_path)
        if clean:
            os.unlink(clean_path)
        ids = L.segment_ids(self.path)
        self.kd.bulk = True             # (the index grows in larger steps while it loads)
        for n, seg_id in enumerate(ids):
            i = self._load_segment(seg_id, n == len(ids) - 1)
            # sealed now: its descriptor is closed and its map is one of the cache's, so
            # an open holds map_cache + 1 maps and 1 segment descriptor at any time
            self._close_fd(i)
            self._unpin(i)
        self.kd.fit()
        next_seq = (ids[len(ids) - 1] >> L.SEQ_SHIFT) + 1 if ids else 1
        self._new_active(next_seq << L.SEQ_SHIFT)
        return {"clean": clean, "corrupt_records": self.corrupt,
                "torn_tail_bytes": self.torn_tail, "zero_tail_bytes": self.zero_tail,
                "scanned_segments": self.scanned, "corrupt_at": self.corrupt_at}

    def _load_segment(self, uint64_t seg_id, bint last):
        """Index segment i (pinned: created so by _open_segment) from its hints, or by a
        scan; returns its index."""
        cdef Py_ssize_t i = self._open_segment(seg_id, False)
        self._map_segment(i, self.segs[i].size, False)
        hint_path = os.path.join(self.path, L.hint_name(seg_id))
        if os.path.exists(hint_path):
            with open(hint_path, "rb") as f:
                data = f.read()
            if self._load_hints(i, data):
                return i
        self._scan_segment(i, last)
        self._write_hints(seg_id, i)
        return i

    cdef bint _load_hints(self, Py_ssize_t i, bytes data) except -1:
        """Index a segment from its hint file; False (nothing indexed) if the file is bad."""
        cdef const char *p = PyBytes_AS_STRING(data)
        cdef size_t n = PyBytes_GET_SIZE(data), pos, end, klen
        cdef uint64_t count, k, off, size
        cdef uint64_t seg_size = self.segs[i].size
        if n < HINT_HEADER_SIZE + HINT_TRAILER_SIZE:
            return False
        end = n - HINT_TRAILER_SIZE
        if (load32(p + end + 4) != HINT_TRAILER_MAGIC or load32(p + end) != kv_crc32c(0, p, end)
                or load64(p) != <uint64_t>HINT_MAGIC or load16(p + 8) != FORMAT_VERSION
                or load16(p + 10) != HINT_HEADER_SIZE or load64(p + 16) != self.segs[i].id):
            return False
        count = load64(p + 24)
        # validate every entry before indexing any
        pos = HINT_HEADER_SIZE
        for k in range(count):
            if pos + HINT_ENTRY_SIZE > end:
                return False
            off = load64(p + pos + 8)
            size = load32(p + pos + 16)
            klen = load16(p + pos + 22)
            if off < SEG_HEADER_SIZE or off + size > seg_size or size < REC_HEADER_SIZE + klen:
                return False
            pos += HINT_ENTRY_SIZE + klen
        if pos != end:
            return False
        with nogil:
            self._index_hints(i, p, count)
        return True

    cdef int _index_hints(self, Py_ssize_t i, const char *p, uint64_t count) except -1 nogil:
        """Index the `count` checked entries of hint file data p (of segment i)."""
        cdef size_t pos = HINT_HEADER_SIZE, klen
        cdef uint64_t k
        for k in range(count):
            klen = load16(p + pos + 22)
            self._index(load64(p + pos), p + pos + HINT_ENTRY_SIZE, klen, i, load64(p + pos + 8),
                        load32(p + pos + 16), <uint8_t>p[pos + 20])
            pos += HINT_ENTRY_SIZE + klen
        return 0

    def _scan_segment(self, Py_ssize_t i, bint last):
        cdef const char *base = self._seg_map(i)       # (pinned while loaded; NULL if empty)
        cdef size_t end = self.segs[i].size, off = SEG_HEADER_SIZE, nxt, data_end
        self.scanned += 1
        self.hints.len = 0
        # its hints are smaller than its records (a hint entry is no longer than a record's
        # header and key): one allocation (address space; pages as they are written), no
        # copies as the buffer grows
        buf_reserve(&self.hints, end if end < (256 << 20) else (256 << 20))
        if base == NULL or not _segment_header_ok(base, end, self.segs[i].id):
            if last and end <= SEG_HEADER_SIZE:          # died while creating it
                self.torn_tail += end
                os.ftruncate(self.segs[i].fd, 0)
                self.segs[i].size = 0
                return
            self._scan_corrupt(i, 0)
        while off < end:
            with nogil:
                self._scan_valid(i, &off)
            if off >= end:
                break
            nxt = resync(base, off, end)
            if nxt == 0:
                # No valid record follows. Zeros to the end are space reserved ahead
                # by a store that did not close cleanly: the end of the data, in any
                # segment. Other bytes before them are a torn record (of the newest
                # segment; elsewhere, one corrupt record).
                data_end = _nonzero_end(base, off, end)
                if data_end > off and not last:
                    self._scan_corrupt(i, off)
                    return
                self.torn_tail += data_end - off
                self.zero_tail += end - data_end
                self._truncate_recovered(i, off)
                return
            self._scan_corrupt(i, off)
            off = nxt

    cdef int _scan_valid(self, Py_ssize_t i, size_t *off) except -1 nogil:
        """Index the valid records of segment i from off on (and append their hints), up to
        its end or the first record that fails its check; off is left there. Segment i is
        pinned (being loaded): base stays valid while _index maps other segments."""
        cdef const char *base = self._seg_map(i)
        cdef size_t end = self.segs[i].size, o = off[0], size, klen
        cdef uint64_t h
        while o < end:
            size = check_record(base + o, end - o)
            if not size:
                break
            klen = load16(base + o + REC_OFF_KEYLEN)
            h = self._hash(base + o + REC_HEADER_SIZE, klen)
            self._hint_append(h, o, size, <uint8_t>base[o + REC_OFF_FLAGS],
                              base + o + REC_HEADER_SIZE, klen)
            self._index(h, base + o + REC_HEADER_SIZE, klen, i, o, size,
                        <uint8_t>base[o + REC_OFF_FLAGS])
            o += size
        off[0] = o
        return 0

    def _scan_corrupt(self, Py_ssize_t i, uint64_t off):
        """A bad record the open's scan skips: counted, and listed in recovery["corrupt_at"]."""
        self.corrupt += 1
        if len(self.corrupt_at) < 10_000:
            self.corrupt_at.append((self.segs[i].id, off))

    def _truncate_recovered(self, Py_ssize_t i, uint64_t off):
        os.ftruncate(self.segs[i].fd, off)
        os.fsync(self.segs[i].fd)
        self.segs[i].size = self.segs[i].reserved = off

    def _seal_hints(self, Py_ssize_t i):
        """Write the hint file of a segment this store wrote, read back from its map and
        streamed out 1 MiB at a time: no per-key hint memory, then or between seals. Segment
        i is pinned (active, or rolled out and not yet sealed) until its hints are written."""
        cdef const char *base = _addr(self, i)
        cdef size_t end = self.segs[i].size, off = SEG_HEADER_SIZE, size, klen
        cdef uint64_t count = 0, seg_id = self.segs[i].id
        cdef uint32_t crc
        cdef int err
        while off < end:
            count += 1
            size = record_size(base + off)
            if size < REC_HEADER_SIZE or off + size > end:
                return      # the data is not what this store wrote: no hints, the open scans
            off += size
        head = _HINT_HEAD.pack(L.HINT_MAGIC, FORMAT_VERSION, HINT_HEADER_SIZE, 0, seg_id, count)
        crc = kv_crc32c(0, <const char *>head, len(head))
        path = os.path.join(self.path, L.hint_name(seg_id))
        tmp = path + L.MERGING_SUFFIX
        # A hint file only saves a scan at the next open: failing to write one (a full disk)
        # is not an error of the seal or close that writes it.
        try:
            err = self._injected(F_OPEN)
            if err:
                raise injected(err, "opening a hint file")
            self._write_hint_file(i, tmp, head, crc)
            os.rename(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _write_hint_file(self, Py_ssize_t i, tmp, head, uint32_t crc):
        # (its own buffer: a sealer thread may write one while the owner's thread runs;
        # segment i is pinned, so base stays mapped while the GIL is released)
        cdef const char *base = _addr(self, i)
        cdef size_t end = self.segs[i].size, off = SEG_HEADER_SIZE, size, klen
        cdef Buffer b
        b.data = NULL
        b.len = b.cap = 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._pwrite_all(fd, <const char *>head, len(head), 0)
            pos = len(head)
            off = SEG_HEADER_SIZE
            while off < end:
                size = record_size(base + off)
                klen = load16(base + off + REC_OFF_KEYLEN)
                buf_reserve(&b, HINT_ENTRY_SIZE + klen)
                _put_hint(&b, self._hash(base + off + REC_HEADER_SIZE, klen), off, size,
                          <uint8_t>base[off + REC_OFF_FLAGS], base + off + REC_HEADER_SIZE, klen)
                off += size
                if b.len >= (1 << 20) or off >= end:
                    crc = kv_crc32c(crc, b.data, b.len)
                    self._pwrite_all(fd, b.data, b.len, pos)
                    pos += b.len
                    b.len = 0
            trailer = struct.pack("<II", crc, HINT_TRAILER_MAGIC)
            self._pwrite_all(fd, <const char *>trailer, len(trailer), pos)
            os.fdatasync(fd)
        finally:
            free(b.data)
            os.close(fd)

    def _write_hints(self, uint64_t seg_id, Py_ssize_t i):
        """Write the hint file of segment i (the open's scan) straight from the hint buffer
        (no copy of it), then empty the buffer. Best effort (a missing hint file costs a
        scan, see above), and not synced: the open checks a hint file's CRC and rescans its
        segment if it is bad. (An open after kill -9 writes one per partition, 200 MB at 5M
        keys: its copies and syncs were a third of the time the node took to serve.)"""
        cdef uint64_t count = 0
        cdef size_t pos = 0
        cdef uint32_t crc
        cdef int fd = -1
        while pos < self.hints.len:
            pos += HINT_ENTRY_SIZE + load16(self.hints.data + pos + 22)
            count += 1
        head = _HINT_HEAD.pack(L.HINT_MAGIC, FORMAT_VERSION, HINT_HEADER_SIZE, 0, seg_id, count)
        crc = kv_crc32c(0, <const char *>head, len(head))
        crc = kv_crc32c(crc, self.hints.data, self.hints.len)
        trailer = struct.pack("<II", crc, HINT_TRAILER_MAGIC)
        path = os.path.join(self.path, L.hint_name(seg_id))
        tmp = path + L.MERGING_SUFFIX
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _pwrite_full(fd, <const char *>head, len(head), 0)
                _pwrite_full(fd, self.hints.data, self.hints.len, len(head))
                _pwrite_full(fd, <const char *>trailer, len(trailer), len(head) + self.hints.len)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        self.hints.len = 0
        if self.hints.cap > (1 << 20):              # give the memory back between seals
            free(self.hints.data)
            self.hints.data = NULL
            self.hints.cap = 0

    cdef Py_ssize_t _create_segment(self, uint64_t seg_id) except -1:
        """A new segment file with its header, synced and mapped writable, not yet active. On
        any failure (EMFILE, ENOSPC, EIO) nothing is left of it and OSError is raised."""
        cdef Py_ssize_t i
        cdef int err = self._injected(F_OPEN)
        path = os.path.join(self.path, L.segment_name(seg_id))
        if err:
            raise injected(err, "opening a new segment")
        i = self._open_segment(seg_id, True)
        try:
            err = self._injected(F_WRITE)
            if err:
                raise injected(err, "writing a segment header")
            head = _segment_header(seg_id)
            if os.write(self.segs[i].fd, head) != len(head):
                raise OSError(ENOSPC, os.strerror(ENOSPC), "writing a segment header")
            if self.seal_later:
                self.dir_unsynced = True    # (synced before anything written here is durable)
            else:
                err = self._injected(F_FDATASYNC)
                if err:
                    raise injected(err, "fdatasync of a new segment")
                os.fdatasync(self.segs[i].fd)
                fsync_dir(self.path)
            self.segs[i].size = self.segs[i].reserved = SEG_HEADER_SIZE
            # writable, as long as the reservation (_grow_map); only [0, reserved) is touched
            self._grow_map(i, SEG_HEADER_SIZE)
        except BaseException as exc:
            self._drop_segment(i, False)
            try:
                os.unlink(path)
            except OSError:
                pass
            if isinstance(exc, OSError) and not exc.filename:
                raise OSError(exc.errno, exc.strerror, f"starting segment {seg_id:016x}") from exc
            raise
        return i

    def _new_active(self, uint64_t seg_id):
        cdef Py_ssize_t i = self._create_segment(seg_id)
        self.active = i
        self.hints.len = 0
        self.synced_offset = SEG_HEADER_SIZE

    cdef int _end_active(self, Py_ssize_t i, bint locked) except -1:
        """Give back the reserved space of active segment i (truncate to the data end),
        make it durable, and make its map read-only. locked: the caller holds _io_lock.
        A failed truncate raises OSError with nothing changed (the map stays writable); a
        failed fdatasync makes the store read-only (StoreReadOnly)."""
        cdef Segment *seg = &self.segs[i]
        cdef int fd = seg.fd, rc = 0, err = 0, synced = 0
        cdef off_t size = seg.size
        cdef int inj_t = self._injected(F_FTRUNCATE)
        cdef int inj_s = 0 if inj_t else self._injected(F_FDATASYNC)
        with nogil:
            if not locked:
                PyThread_acquire_lock(self._io_lock, WAIT_LOCK)
            if inj_t:
                rc = -1
                err = inj_t
            elif seg.reserved > <uint64_t>size:
                rc = ftruncate(fd, size)
                if rc != 0:
                    err = errno
            if rc == 0:
                synced = 1          # (truncated, if it had to be)
                err = _datasync(fd, inj_s)
                rc = -1 if err else 0
            if not locked:
                PyThread_release_lock(self._io_lock)
        if synced:
            seg.reserved = seg.size
        if rc != 0:
            if not synced:
                if inj_t:
                    raise injected(err, "truncating the active segment")
                raise OSError(err, os.strerror(err), "truncating the active segment")
            raise self._fail(err, f"fdatasync of segment {seg.id:016x}")
        if seg.map != NULL:
            mprotect(seg.map, seg.map_len, PROT_READ)
        return 0

    def _seal_active(self):
        """Start the next segment, then seal the active one (truncate, sync, read-only map,
        hints). The next segment is opened first: if that fails (EMFILE, ENOSPC) nothing has
        changed, and if sealing fails it is removed again, so the active segment is always
        a writable one (a roll sealed the old one first and left a read-only map active)."""
        cdef Py_ssize_t old = self.active, new
        cdef uint64_t seg_id = self.segs[old].id
        if self.min_free > 0 and space_allowed(self.path, self.min_free) < <long long>PAGE:
            raise space_refused(self.path, self.min_free)
        new = self._create_segment(((seg_id >> L.SEQ_SHIFT) + 1) << L.SEQ_SHIFT)
        if self.seal_later:
            self.active = new
            self.hints.len = 0
            self.synced_offset = SEG_HEADER_SIZE
            self.sealing.append(old)
            if self.seal_by_syncer:
                syncer.poke()               # (its _sync_due is now: a seal is pending)
            return
        try:
            self._end_active(old, False)
        except BaseException:
            path = os.path.join(self.path, L.segment_name(self.segs[new].id))
            self._drop_segment(new, False)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        self.active = new
        self.hints.len = 0
        self.synced_offset = SEG_HEADER_SIZE
        self.dirty_since = -1
        self._close_fd(old)
        try:
            self._seal_hints(old)
        finally:
            self._unpin(old)            # (a sealed segment: one of the map cache's)

    def roll(self):
        """Start a new active segment now (if the current one holds any record)."""
        self._check_open()
        self._check_writable()
        if self.segs[self.active].size > SEG_HEADER_SIZE:
            self._seal_active()

    def seal_pending(self):
        """Seal the segments rolls left unsealed (seal_later), oldest first: truncate each to
        its data end, fdatasync it, make its map read-only, close its descriptor, write its
        hint file; then sync the directory of segments created since. Any thread, one at a
        time; a failed fdatasync makes the store read-only (StoreReadOnly), as in a sync."""
        if not self.sealing and not self.dir_unsynced:
            return
        with nogil:
            PyThread_acquire_lock(self._seal_lock, WAIT_LOCK)
        try:
            while self.sealing and not self.closed:
                self._check_writable()
                self._seal_one(self.sealing[0])
                del self.sealing[0]
            if self.dir_unsynced and not self.closed:
                self._check_writable()
                self.dir_unsynced = False
                try:
                    fsync_dir(self.path)
                except OSError as exc:
                    self.dir_unsynced = True
                    raise self._fail(exc.errno or EIO, "fsync of the store's directory")
        finally:
            PyThread_release_lock(self._seal_lock)

    cdef int _seal_one(self, Py_ssize_t i) except -1:
        """Seal rolled-out segment i (seal_pending holds _seal_lock). The owner's thread
        never writes to it again and only reads its map; a merge leaves it out until sealed,
        so the slot stays this segment's throughout (segs itself may be reallocated by the
        owner meanwhile: nothing here keeps a pointer into it while the GIL is released)."""
        cdef int fd = self.segs[i].fd, err = 0, trunc_rc = 0
        cdef off_t size = self.segs[i].size
        cdef uint64_t reserved = self.segs[i].reserved
        cdef char *m = self.segs[i].map
        cdef size_t mlen = self.segs[i].map_len
        cdef int inj_t = self._injected(F_FTRUNCATE)
        cdef int inj_s = self._injected(F_FDATASYNC)
        with nogil:
            PyThread_acquire_lock(self._io_lock, WAIT_LOCK)
            if reserved > <uint64_t>size:       # (a failed truncate leaves a zero tail, which
                if inj_t:                       # an open reads as the end of the data)
                    trunc_rc = -1
                else:
                    trunc_rc = ftruncate(fd, size)
            err = _datasync(fd, inj_s)
            if err == 0 and m != NULL:
                mprotect(m, mlen, PROT_READ)
            PyThread_release_lock(self._io_lock)
        if err:
            raise self._fail(err, f"fdatasync of segment {self.segs[i].id:016x}")
        if trunc_rc == 0:
            self.segs[i].reserved = size
        self._close_fd(i)
        try:
            self._seal_hints(i)
        finally:
            self._unpin(i)              # (a sealed segment: one of the map cache's)
        return 0

    # ---- faults (docs/storage.md, "Faults") ---------------------------------------------

    def _fail_next(self, op, err=0, times=1, after=0):
        """Tests only: make the next `times` calls of one kind of system call fail with errno
        `err` (op None: no more faults): "open" (a new segment or hint file), "write" (record
        bytes, a segment header, a hint file), "ftruncate" (a segment's length: a reservation step, the truncation at
        a seal or close), "fdatasync" (any sync of a segment). after: that many calls of the
        kind succeed first."""
        if op is None:                  # (clears a fault not triggered yet)
            self.fault_op = 0
            return
        self.fault_op, self.fault_errno, self.fault_times, self.fault_after = \
            check_fault(op, err, times, after)

    cdef int _injected(self, int op) noexcept nogil:
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

    def _fail(self, int err, what):
        """An fdatasync failed: the store is read-only from now on (never synced again as if
        what it held had reached the disk); the StoreReadOnly to raise."""
        if self.failed_info is None:
            self.failed_info = (err, what)
        self.dirty_since = -1
        return self._read_only_error()

    def _read_only_error(self):
        err, what = self.failed_info
        return StoreReadOnly(err, f"{what} failed ({E.errorcode.get(err, err)}: "
                                  f"{os.strerror(err)}); store {self.path} is read-only: "
                                  "writes since its last good sync may be lost")

    @property
    def failed(self):
        """None, or the errno of the fdatasync that made the store read-only."""
        return None if self.failed_info is None else self.failed_info[0]

    cdef int _check_writable(self) except -1:
        if self.failed_info is not None:
            raise self._read_only_error()
        return 0

    # ---- index -------------------------------------------------------------------------

    cdef uint64_t _hash(self, const char *key, size_t klen) noexcept nogil:
        return token_of(key, klen) & self.hash_mask

    cdef Py_ssize_t _lookup(self, uint64_t h, const char *key, size_t klen) except -3 nogil:
        """The slot of key, or -1: probe by hash, then compare the key stored on disk (OSError
        when a segment cannot be mapped). The segment of the slot found is the one mapped
        last (a candidate after it is not read)."""
        cdef Py_ssize_t i = self.kd.first(h)
        cdef uint64_t loc
        cdef const char *p
        while i >= 0:
            loc = self.kd.slots[i].loc
            p = _addr(self, loc_seg(loc)) + loc_off(loc)
            if load16(p + REC_OFF_KEYLEN) == klen and memcmp(p + REC_HEADER_SIZE, key, klen) == 0 \
                    and loc_off(loc) + REC_HEADER_SIZE + klen <= self.segs[loc_seg(loc)].size:
                return i
            i = self.kd.next_same(i, h)
        return -1

    cdef int _index(self, uint64_t h, const char *key, size_t klen, uint64_t seg, uint64_t off,
                    size_t size, int flags, Py_ssize_t i=-2) except -1 nogil:
        """Point key's slot at the record just written. i: its slot from slot_of() (-1:
        absent), or -2 to look it up."""
        cdef uint64_t loc
        cdef size_t old
        if i == -2:
            i = self._lookup(h, key, klen)
        if i >= 0:
            loc = self.kd.slots[i].loc
            old = record_size(_addr(self, loc_seg(loc)) + loc_off(loc))
            if loc_off(loc) + old <= self.segs[loc_seg(loc)].size:    # (not a corrupt header)
                self.live_bytes -= old
        if flags & FLAG_TOMBSTONE:
            if i >= 0:
                self.kd.remove_at(i)
            return 0
        if i >= 0:
            self.kd.slots[i].loc = make_loc(seg, off)
        else:
            self.kd.insert(h, make_loc(seg, off))
        self.live_bytes += size
        return 0

    cdef int _hint_append(self, uint64_t h, uint64_t off, size_t size, int flags,
                          const char *key, size_t klen) except -1 nogil:
        buf_reserve(&self.hints, HINT_ENTRY_SIZE + klen)
        _put_hint(&self.hints, h, off, size, <uint8_t>flags, key, klen)
        return 0

    # ---- checks ------------------------------------------------------------------------

    cdef int _check_open(self) except -1:
        if self.closed:
            raise StoreClosed(f"LogStore {self.path} is closed")
        return 0

    cdef int _check_key(self, object key) except -1:
        if type(key) is not bytes:
            raise TypeError(f"keys must be bytes, not {type(key).__name__}")
        cdef size_t n = PyBytes_GET_SIZE(key)
        if n == 0:
            raise KeyTooLarge("keys must not be empty")
        if n > self.max_key:
            raise KeyTooLarge(f"key of {n} bytes is over the limit of {self.max_key}")
        return 0

    cdef int _check_value(self, object value) except -1:
        if type(value) is not bytes:
            raise TypeError(f"values must be bytes, not {type(value).__name__}")
        if <size_t>PyBytes_GET_SIZE(value) > self.max_value:
            raise ValueTooLarge(
                f"value of {PyBytes_GET_SIZE(value)} bytes is over the limit of {self.max_value}")
        return 0

    # ---- writes ------------------------------------------------------------------------

    cdef int _pwrite_all(self, int fd, const char *data, size_t n, uint64_t off) except -1:
        # hint files, and put_many's chunks into the active segment's reserved space
        cdef int err = self._injected(F_WRITE)
        if err:
            raise injected(err, "write to segment")
        return _pwrite_full(fd, data, n, off, "write to segment")

    cdef int _after_write(self) except -1:
        cdef int fd, err
        if self.fsync_mode == 2:
            if self.sealing or self.dir_unsynced:
                self.seal_pending()
            fd = self.segs[self.active].fd
            err = self._injected(F_FDATASYNC)
            with nogil:
                err = _datasync(fd, err)
            if err:
                raise self._fail(err, f"fdatasync of segment {self.segs[self.active].id:016x}")
            self.synced_offset = self.segs[self.active].size
        elif self.dirty_since < 0:
            self.dirty_since = now_mono()
            if self.fsync_mode == 1:
                syncer.poke()
        return 0

    cdef object _stored(self, object value, int *flags):
        """The bytes to store for value (lz4 when it pays) and its flags."""
        flags[0] = 0
        if <size_t>PyBytes_GET_SIZE(value) < self.compress_min:
            return value
        stored, packed = maybe_compress(value, self.compress_min)
        if packed:
            flags[0] = FLAG_COMPRESSED
        return stored

    cdef int _write_one(self, object key, object stored, int flags, Py_ssize_t slot=-2) except -1:
        cdef size_t klen = PyBytes_GET_SIZE(key), vlen = PyBytes_GET_SIZE(stored)
        cdef size_t size = REC_HEADER_SIZE + klen + vlen
        cdef Segment *seg = &self.segs[self.active]
        cdef uint64_t off, h
        cdef int err
        if seg.size + size > self.max_segment and seg.size > SEG_HEADER_SIZE:
            self._seal_active()
            seg = &self.segs[self.active]
        off = seg.size
        self._reserve(self.active, off + size)
        if self.fault_op == F_WRITE:
            err = self._injected(F_WRITE)
            if err:
                raise injected(err, "writing a record")
        # the key's slot, and its old record mapped, before anything is written: a failed
        # map then refuses the write (nothing maps between here and _index)
        h = self._hash(PyBytes_AS_STRING(key), klen)
        if slot == -2:
            slot = self._lookup(h, PyBytes_AS_STRING(key), klen)
        elif slot >= 0:
            _addr(self, loc_seg(self.kd.slots[slot].loc))
        seg = &self.segs[self.active]       # (the same segment, as _reserve left it)
        # encoded in place: the map is the page cache, so once this returns the record
        # survives a kill of the process (CRC written last: a kill mid-copy leaves a torn tail)
        write_record(seg.map + off, PyBytes_AS_STRING(key), klen, PyBytes_AS_STRING(stored), vlen,
                     <uint8_t>flags, now_us())
        seg.size = off + size
        self._index(h, PyBytes_AS_STRING(key), klen, self.active, off, size, flags, slot)
        if self.journal is not None:
            self.journal.append(self.journal_id, J_RECORDS, seg.map + off, size)
        return 0

    # ---- one lookup for a read-modify-write (kvcore/replicawrite.pyx) --------------------
    # A slot from slot_of() stays the key's until the next write to this store: the keydir
    # changes only in writes and finish_merge(), all on the owner's thread.

    cdef Py_ssize_t slot_of(self, object key) except -2:
        self._check_open()
        self._check_key(key)
        return self._lookup(self._hash(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)),
                            PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))

    cdef object value_in(self, Py_ssize_t slot, object key):
        # None when the record failed its CRC and was dropped: the slot is then no longer
        # the key's, and the caller writes as to an absent key (put_in with slot -1)
        return self._value_at(slot, key)

    cdef int put_in(self, Py_ssize_t slot, object key, object value) except -1:
        cdef int flags
        self._check_value(value)
        self._check_writable()
        stored = self._stored(value, &flags)
        self._write_one(key, stored, flags, slot)
        self._after_write()
        return 0

    def put(self, key, value):
        """Store value under key (replacing any older value)."""
        cdef int flags
        self._check_open()
        self._check_key(key)
        self._check_value(value)
        self._check_writable()
        stored = self._stored(value, &flags)
        self._write_one(key, stored, flags)
        self._after_write()

    def delete(self, key):
        """Write a tombstone for key; True if the key was live (nothing is written otherwise)."""
        self._check_open()
        self._check_key(key)
        if self._lookup(self._hash(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)),
                        PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)) < 0:
            return False
        self._check_writable()
        self._write_one(key, b"", FLAG_TOMBSTONE)
        self._after_write()
        return True

    def put_many(self, items):
        """Store many (key, value) pairs; all are checked before any is written."""
        cdef list pairs = []
        cdef Py_ssize_t n, j, start
        cdef int flags
        cdef size_t size, klen, vlen, pos
        cdef Segment *seg
        cdef uint64_t base_off, h
        cdef char *p
        self._check_open()
        for item in items:
            key, value = item
            self._check_key(key)
            self._check_value(value)
            pairs.append((key, value))
        n = len(pairs)
        if n:
            self._check_writable()
        j = 0
        while j < n:
            # encode a chunk of records into self.rec, bounded by CHUNK and the segment size
            seg = &self.segs[self.active]
            self.rec.len = 0
            start = j
            while j < n:
                key, value = <tuple>pairs[j]
                stored = self._stored(value, &flags)
                klen = PyBytes_GET_SIZE(key)
                vlen = PyBytes_GET_SIZE(stored)
                size = REC_HEADER_SIZE + klen + vlen
                if self.rec.len == 0:
                    if seg.size + size > self.max_segment and seg.size > SEG_HEADER_SIZE:
                        self._seal_active()
                        seg = &self.segs[self.active]
                elif self.rec.len + size > CHUNK or seg.size + self.rec.len + size > self.max_segment:
                    break
                buf_reserve(&self.rec, size)
                write_record(self.rec.data + self.rec.len, PyBytes_AS_STRING(key), klen,
                             PyBytes_AS_STRING(stored), vlen, <uint8_t>flags, now_us())
                self.rec.len += size
                j += 1
            base_off = seg.size
            # one pwrite into reserved space: for a chunk of many pages it is cheaper than
            # taking a page fault per page through the map (the same page cache either way)
            self._reserve(self.active, base_off + self.rec.len)
            self._pwrite_all(seg.fd, self.rec.data, self.rec.len, base_off)
            seg.size = base_off + self.rec.len
            # index the chunk now that it is on disk (a later duplicate wins)
            self._index_chunk(base_off)
        if n:
            self._after_write()

    cdef int _index_chunk(self, uint64_t base_off) except -1:
        """Index the records of put_many's chunk (self.rec), just written at base_off of the
        active segment. A lookup may need to map a sealed segment (the key's old record):
        when that fails, the records not indexed yet are taken back (zeroed in the reserved
        space they were written to, which an open reads as the end of the data, and the
        segment's data end moved back before them) and the OSError raised: those pairs were
        not written, the ones before them were."""
        cdef size_t pos = 0, size, klen
        cdef uint64_t h
        cdef const char *p
        cdef Segment *seg
        try:
            while pos < self.rec.len:
                p = self.rec.data + pos
                klen = load16(p + REC_OFF_KEYLEN)
                size = record_size(p)
                h = self._hash(p + REC_HEADER_SIZE, klen)
                self._index(h, p + REC_HEADER_SIZE, klen, self.active, base_off + pos, size,
                            <uint8_t>p[REC_OFF_FLAGS])
                pos += size
        except OSError:
            seg = &self.segs[self.active]
            memset(seg.map + base_off + pos, 0, self.rec.len - pos)
            seg.size = base_off + pos
            if self.journal is not None and pos:    # (the pairs before it were written)
                self.journal.append(self.journal_id, J_RECORDS, self.rec.data, pos)
            raise
        if self.journal is not None:
            self.journal.append(self.journal_id, J_RECORDS, self.rec.data, self.rec.len)
        return 0

    # ---- the node's journal (kvcore/storage/journal.py; docs/storage.md, "The journal") ----

    def attach_journal(self, JournalBuffer journal, uint32_t sid):
        """Append a copy of every record written from now on to `journal`, as store `sid`
        (journal None: no more)."""
        self.journal = journal
        self.journal_id = sid

    def apply_records(self, payloads):
        """Write again, in order, the records a journal replay found for this store (the
        payloads of its RECORDS frames: records as a segment holds them), not journaled
        again. A tombstone of an absent key writes nothing, as delete(). Returns (records
        written, payloads cut short by a record failing its check: the frame's CRC makes
        that a bug, never a torn write)."""
        cdef const char *p
        cdef size_t n, pos, size, klen
        cdef int flags
        cdef long long written = 0, bad = 0
        self._check_open()
        self._check_writable()
        journal, self.journal = self.journal, None
        try:
            for payload in payloads:
                data = bytes(payload)
                p = PyBytes_AS_STRING(data)
                n = PyBytes_GET_SIZE(data)
                pos = 0
                while pos < n:
                    size = check_record(p + pos, n - pos)
                    if size == 0:
                        bad += 1
                        break
                    klen = load16(p + pos + REC_OFF_KEYLEN)
                    flags = <uint8_t>p[pos + REC_OFF_FLAGS]
                    key = PyBytes_FromStringAndSize(p + pos + REC_HEADER_SIZE, klen)
                    if flags & FLAG_TOMBSTONE:
                        if self._lookup(self._hash(p + pos + REC_HEADER_SIZE, klen),
                                        p + pos + REC_HEADER_SIZE, klen) >= 0:
                            self._write_one(key, b"", FLAG_TOMBSTONE)
                            written += 1
                    else:
                        self._write_one(key, PyBytes_FromStringAndSize(
                            p + pos + REC_HEADER_SIZE + klen, size - REC_HEADER_SIZE - klen),
                            flags)
                        written += 1
                    pos += size
        finally:
            self.journal = journal
        if written:
            self._after_write()
        return written, bad

    # ---- reads -------------------------------------------------------------------------

    cdef object _value_at(self, Py_ssize_t slot, object key):
        """The value of the record keydir slot `slot` points at; None, having dropped it, when
        that record fails its CRC (corruption is missing data: docs/storage.md, "Faults")."""
        cdef uint64_t loc = self.kd.slots[slot].loc
        cdef uint64_t off = loc_off(loc)
        cdef const char *p = _addr(self, loc_seg(loc)) + off
        cdef size_t size = check_record(p, self.segs[loc_seg(loc)].size - off)
        cdef size_t klen
        if size == 0:
            self._drop_slot(slot)
            return None
        klen = load16(p + REC_OFF_KEYLEN)
        value = PyBytes_FromStringAndSize(p + REC_HEADER_SIZE + klen, size - REC_HEADER_SIZE - klen)
        if (<uint8_t>p[REC_OFF_FLAGS]) & FLAG_COMPRESSED:
            return decompress(value)
        return value

    cdef int _drop_slot(self, Py_ssize_t slot) except -1:
        """Drop the corrupt record keydir slot `slot` points at: out of the index, counted, and
        reported once to on_corrupt(segment id, offset)."""
        cdef uint64_t loc = self.kd.slots[slot].loc
        cdef Segment *seg = &self.segs[loc_seg(loc)]
        cdef uint64_t off = loc_off(loc), seg_id = seg.id
        cdef size_t size = record_size(_addr(self, loc_seg(loc)) + off)   # (its header may
        if size >= REC_HEADER_SIZE and off + size <= seg.size:              # be the bad part)
            self.live_bytes -= size
        self.kd.remove_at(slot)
        self.corrupt += 1
        cb = self.on_corrupt
        if cb is not None:
            cb(seg_id, off)
        return 0

    def get(self, key):
        """The value of key, or None."""
        self._check_open()
        self._check_key(key)
        cdef const char *k = PyBytes_AS_STRING(key)
        cdef size_t klen = PyBytes_GET_SIZE(key)
        cdef Py_ssize_t i = self._lookup(self._hash(k, klen), k, klen)
        if i < 0:
            return None
        return self._value_at(i, key)

    def get_many(self, keys):
        """[get(k) for k in keys], in one call."""
        cdef list out = []
        cdef Py_ssize_t i
        cdef const char *k
        cdef size_t klen
        self._check_open()
        for key in keys:
            self._check_key(key)
            k = PyBytes_AS_STRING(key)
            klen = PyBytes_GET_SIZE(key)
            i = self._lookup(self._hash(k, klen), k, klen)
            out.append(None if i < 0 else self._value_at(i, key))
        return out

    def __contains__(self, key):
        self._check_open()
        self._check_key(key)
        return self._lookup(self._hash(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)),
                            PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)) >= 0

    def __len__(self):
        self._check_open()
        return self.kd.count

    cdef object _key_at(self, uint64_t loc):
        """The key stored at loc, or None when the record's header is visibly damaged (its
        CRC is checked where its value is read)."""
        cdef const char *p = _addr(self, loc_seg(loc)) + loc_off(loc)
        cdef size_t klen = load16(p + REC_OFF_KEYLEN)
        if load32(p) != REC_MAGIC or klen == 0 \
                or loc_off(loc) + REC_HEADER_SIZE + klen > self.segs[loc_seg(loc)].size:
            return None
        return PyBytes_FromStringAndSize(p + REC_HEADER_SIZE, klen)

    def scan(self, cursor=0, count=100):
        """(next cursor, keys): keys in hash order from cursor; 0 when done (docs/storage.md)."""
        cdef uint64_t nxt
        self._check_open()
        if not isinstance(cursor, int) or not 0 <= cursor < (1 << 64):
            raise ValueError(f"cursor must be an integer in [0, 2**64), got {cursor!r}")
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        locs = self.kd.scan(cursor, count, &nxt)
        return nxt, [k for k in map(self._key_at_py, locs) if k is not None]

    def _key_at_py(self, uint64_t loc):
        return self._key_at(loc)

    def _iter_keys(self):
        cursor = 0
        while True:
            cursor, keys = self.scan(cursor, 1000)
            yield from keys
            if cursor == 0:
                return

    def keys(self):
        """Live keys, in batches that survive writes between them (like SCAN)."""
        self._check_open()
        return self._iter_keys()

    def __iter__(self):
        return self.keys()

    def items(self):
        """(key, value) pairs, read from disk as they are yielded."""
        self._check_open()
        return self._iter_items()

    def _iter_items(self):
        for key in self._iter_keys():
            value = self.get(key)
            if value is not None:
                yield key, value

    # ---- durability --------------------------------------------------------------------

    def sync(self):
        """Make every write so far durable; may be called from a worker thread (GIL released).
        A failure makes the store read-only (StoreReadOnly), for good: see "Faults"."""
        cdef int fd, err
        cdef uint64_t size
        cdef Py_ssize_t act
        self._check_open()
        self._check_writable()          # never "synced" after a failed sync
        self.seal_pending()             # (rolled-out segments first, and the directory)
        with nogil:
            PyThread_acquire_lock(self._io_lock, WAIT_LOCK)
        if self.closed:
            PyThread_release_lock(self._io_lock)
            raise StoreClosed(f"LogStore {self.path} is closed")
        act = self.active
        fd = self.segs[act].fd
        size = self.segs[act].size
        err = self._injected(F_FDATASYNC)
        with nogil:
            err = _datasync(fd, err)
            PyThread_release_lock(self._io_lock)
        if err:
            raise self._fail(err, f"fdatasync of segment {self.segs[act].id:016x}")
        if act == self.active and size > self.synced_offset:
            self.synced_offset = size
        if act == self.active and size == self.segs[act].size:
            self.dirty_since = -1

    def _sync_due(self):
        if self.closed or self.failed_info is not None:
            return None
        if (self.sealing or self.dir_unsynced) and self.seal_by_syncer:
            return 0.0                  # a roll left a seal to do: now
        if self.dirty_since < 0 or self.fsync_mode != 1:
            return None
        return self.dirty_since + self._opts.sync_interval_ms / 1000.0

    def _timer_sync(self):
        if self.closed:
            return
        if self.fsync_mode == 1:
            self.sync()
        else:
            self.seal_pending()

    # ---- durability by one file system sync (kvnet/replica.py, kvcore/storage/syncfs.py) ----

    def sync_begin(self):
        """Before a sync of the whole file system (syncfs) that is to cover this store: what
        it covers, (active segment id, its size now). Raises as sync() would: StoreClosed,
        or StoreReadOnly after a failed sync (never "synced" again)."""
        cdef Py_ssize_t act
        self._check_open()
        self._check_writable()
        act = self.active
        return (self.segs[act].id, self.segs[act].size)

    def sync_end(self, mark):
        """After that sync succeeded: every write up to `mark` (sync_begin's) is durable. A
        fault injected for "fdatasync" (_fail_next) fails here as this store's own sync
        would (StoreReadOnly); so does a store that turned read-only meanwhile."""
        cdef uint64_t seg_id = mark[0], size = mark[1]
        cdef Py_ssize_t act
        cdef int err
        if self.closed:
            return
        self._check_writable()
        err = self._injected(F_FDATASYNC)
        if err:
            raise self._fail(err, f"sync of segment {seg_id:016x} (syncfs)")
        act = self.active
        if self.segs[act].id == seg_id:
            if size > self.synced_offset:
                self.synced_offset = size
            if size == self.segs[act].size:
                self.dirty_since = -1

    # ---- merge -------------------------------------------------------------------------

    def begin_merge(self, roll=True):
        """Plan a merge of every sealed segment (roll: the active one is rolled out first; with
        seal_later it is then merged only once seal_pending() has sealed it)."""
        cdef Py_ssize_t i, k
        cdef size_t s
        cdef uint64_t loc
        cdef MergeJob job
        cdef Py_ssize_t *input_of
        cdef size_t total = 0, pos = 0
        cdef uint64_t[::1] locs
        self._check_open()
        if self.merge_job is not None:
            raise MergeError("a merge is already in progress on this store")
        self._check_writable()
        if roll and self.segs[self.active].size > SEG_HEADER_SIZE:
            self._seal_active()
        unsealed = set(self.sealing)
        order = [i for i in self._segment_order() if i != self.active and i not in unsealed]
        # every live location in the inputs, in one C pass (the loop waits for this part
        # only); run() sorts and splits them by segment in the worker thread
        input_of = <Py_ssize_t *>malloc(max(self.nsegs, 1) * sizeof(Py_ssize_t))
        if input_of == NULL:
            raise MemoryError()
        try:
            for i in range(self.nsegs):
                input_of[i] = -1
            for k, i in enumerate(order):
                input_of[i] = k
            for s in range(self.kd.capacity):
                loc = self.kd.slots[s].loc
                if loc != 0 and input_of[loc_seg(loc)] >= 0:
                    total += 1
            import numpy
            live_all = numpy.empty(total, dtype=numpy.uint64)
            if total:
                locs = live_all
                for s in range(self.kd.capacity):
                    loc = self.kd.slots[s].loc
                    if loc != 0 and input_of[loc_seg(loc)] >= 0 and pos < total:
                        locs[pos] = loc
                        pos += 1
        finally:
            free(input_of)
        job = MergeJob()
        job.store = self
        job.inputs = [(idx, self.segs[idx].id, self.segs[idx].size) for idx in order]
        job.live_all = live_all
        job.out_base = (self.segs[order[len(order) - 1]].id + 1) if order else 0
        job.outputs = []
        job.moves_cap = total
        job.moves = <Move *>malloc(max(job.moves_cap, 1) * sizeof(Move))
        if job.moves == NULL:
            raise MemoryError()
        job.running = threading.Lock()
        self.merge_job = job
        return job

    def finish_merge(self, MergeJob job, cleanup=True):
        """Swap the merged segments in; a key written during the merge keeps its newer record.
        The file work is the job's: install() (renames, a directory sync, maps), run here if
        the worker thread did not, and cleanup() (unmapping and deleting the inputs), run
        here unless cleanup=False leaves it to the caller's worker thread. What is left here
        touches memory only: the segment table and the keydir."""
        cdef Py_ssize_t i, s, idx
        cdef Move *m
        if job is not self.merge_job:
            raise MergeError("this merge job does not belong to this store")
        self.merge_job = None
        if self.closed:
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
        self.corrupt += job.corrupt
        out_idx = []
        for out_id, _, _, size in job.outputs:
            s = self._new_segment_slot()    # (unmapped: the map cache maps it when read)
            self.segs[s].used = 1
            self.segs[s].fd = -1
            self.segs[s].id = out_id
            self.segs[s].size = self.segs[s].reserved = size
            out_idx.append(s)
        for i in range(job.nmoves):
            m = &job.moves[i]
            s = self.kd.find_loc(m.hash, m.old_loc)
            if s >= 0:
                self.kd.slots[s].loc = make_loc(out_idx[m.out_no], m.off)
        self._forget_segments({idx for idx, _, _ in job.inputs})
        for idx, _, _ in job.inputs:         # oldest first: see docs/storage.md, "Merge"
            # (its map, if the cache holds one, is unmapped by cleanup(): off the loop)
            job.garbage.append((self.segs[idx].id, <size_t>self.segs[idx].map,
                                self.segs[idx].map_len))
            if self.segs[idx].fd >= 0:
                self._close_fd(idx)
            if self.segs[idx].map != NULL and self.segs[idx].pins == 0:
                self.nmapped -= 1
            self.segs[idx].map = NULL
            self.segs[idx].map_len = 0
            self.segs[idx].pins = 0
            self.segs[idx].used = 0
        self.merges += 1
        if cleanup:
            job.cleanup()

    def _forget_segments(self, set gone):
        """Drop index entries still pointing into segments about to go: records the
        merge skipped as corrupt. They are lost here (counted); replicas repair them."""
        cdef size_t s = 0, size
        cdef uint64_t loc
        cdef Segment *seg
        cdef const char *base
        dropped = []
        while s < self.kd.capacity:
            loc = self.kd.slots[s].loc
            if loc != 0 and loc_seg(loc) in gone:
                # (a failed map here only leaves live_bytes counting the record: the swap,
                # half done, must not stop)
                base = self._seg_map(loc_seg(loc))
                seg = &self.segs[loc_seg(loc)]
                if base != NULL:
                    size = record_size(base + loc_off(loc))
                    if loc_off(loc) + size <= seg.size:
                        self.live_bytes -= size
                self.kd.remove_at(s)
                dropped.append((seg.id, loc_off(loc)))
                continue                     # the shifted-in entry now sits at s
            s += 1
        cb = self.on_corrupt
        if cb is not None:
            for seg_id, off in dropped:
                cb(seg_id, off)

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

    # ---- snapshots (a fold over the store while it is written: kvnet/replica.py) ----------

    def snapshot(self):
        """The live records now, by location: read_snapshot() reads them back later, as they
        were now, however the store is written meanwhile (until a merge moves them)."""
        cdef size_t s, n = 0, count = self.kd.count
        cdef uint64_t[::1] locs, hs
        self._check_open()
        import numpy
        la = numpy.empty(count, dtype=numpy.uint64)
        ha = numpy.empty(count, dtype=numpy.uint64)
        if count:
            locs = la
            hs = ha
            for s in range(self.kd.capacity):
                if self.kd.slots[s].loc != 0 and n < count:
                    locs[n] = self.kd.slots[s].loc
                    hs[n] = unrotate(self.kd.slots[s].hash, self.kd.rot)
                    n += 1
        order = numpy.argsort(la, kind="stable")
        return Snapshot(la[order], ha[order], self.merges)

    cdef Py_ssize_t _snapshot_end(self, object snap, Py_ssize_t start, Py_ssize_t count) except -1:
        """Where a read of snapshot entries start .. start + count ends (checks the store is
        open and no merge moved records since the snapshot)."""
        self._check_open()
        if snap.merges != self.merges:
            raise MergeError("a merge moved records since this snapshot: take another")
        return min(len(snap.locs), start + count)

    cdef int _snapshot_record(self, uint64_t loc, uint64_t h, const char **rec,
                              size_t *size) except -1:
        """The record a snapshot entry points at (rec, size), or rec NULL when it fails its
        CRC: then dropped from the index, as a get drops it, if the index still points at it."""
        cdef const char *base = _addr(self, loc_seg(loc))
        cdef uint64_t off = loc_off(loc)
        cdef Py_ssize_t slot
        size[0] = check_record(base + off, self.segs[loc_seg(loc)].size - off)
        if size[0] == 0:
            rec[0] = NULL
            slot = self.kd.find_loc(h, loc)
            if slot >= 0:
                self._drop_slot(slot)
            return 0
        rec[0] = base + off
        return 0

    def read_snapshot(self, snap, Py_ssize_t start, Py_ssize_t count):
        """(next index, [(key, value)]) of snapshot entries start .. start + count. A record
        failing its CRC is left out (and, if the index still points at it, dropped as a get
        would drop it). MergeError once a merge has moved records since the snapshot."""
        cdef uint64_t[::1] locs, hs
        cdef Py_ssize_t j, end = self._snapshot_end(snap, start, count)
        cdef const char *p
        cdef size_t size, klen
        out = []
        if start >= end:
            return max(start, end), out
        locs = snap.locs
        hs = snap.hashes
        for j in range(start, end):
            self._snapshot_record(locs[j], hs[j], &p, &size)
            if p == NULL:
                continue
            klen = load16(p + REC_OFF_KEYLEN)
            key = PyBytes_FromStringAndSize(p + REC_HEADER_SIZE, klen)
            value = PyBytes_FromStringAndSize(p + REC_HEADER_SIZE + klen, size - REC_HEADER_SIZE - klen)
            if (<uint8_t>p[REC_OFF_FLAGS]) & FLAG_COMPRESSED:
                value = decompress(value)
            out.append((key, value))
        return end, out

    def fold_snapshot(self, snap, Py_ssize_t start, Py_ssize_t count, MerkleTree tree not None):
        """Fold snapshot entries start .. start + count into `tree` (kvcore.merkle), as
        tree.update(key, None, value) would for each pair read_snapshot returns, without
        making Python objects of them (a tree fold after a crash reads every record: kvnet/
        replica.py); returns the next index. A record failing its CRC is left out and dropped
        as read_snapshot drops it; MergeError once a merge has moved records since."""
        cdef uint64_t[::1] locs, hs
        cdef Py_ssize_t j, end = self._snapshot_end(snap, start, count), seg_i
        cdef const char *p
        cdef size_t size, klen
        if start >= end:
            return max(start, end)
        locs = snap.locs
        hs = snap.hashes
        for j in range(start, end):
            self._snapshot_record(locs[j], hs[j], &p, &size)
            if p == NULL:
                continue
            klen = load16(p + REC_OFF_KEYLEN)
            if (<uint8_t>p[REC_OFF_FLAGS]) & FLAG_COMPRESSED:
                # decompress is Python code, which may read this store (and so unmap p's
                # segment) before the key is read: pinned meanwhile
                seg_i = loc_seg(locs[j])
                self._pin(seg_i)
                try:
                    value = decompress(PyBytes_FromStringAndSize(p + REC_HEADER_SIZE + klen,
                                                                 size - REC_HEADER_SIZE - klen))
                    tree.update_c(p + REC_HEADER_SIZE, klen, NULL, -1, PyBytes_AS_STRING(value),
                                  PyBytes_GET_SIZE(value))
                finally:
                    self._unpin(seg_i)
            else:
                tree.update_c(p + REC_HEADER_SIZE, klen, NULL, -1, p + REC_HEADER_SIZE + klen,
                              size - REC_HEADER_SIZE - klen)
        return end

    # ---- keys by Merkle leaf (anti-entropy's key lists: kvnet/antientropy) -----------------

    def leaf_keys(self, leaves, int leaf_bits=14):
        """{leaf: [key]} for each of `leaves`, the Merkle leaves of kvcore.merkle (a key's
        leaf is token(key) & (2**leaf_bits - 1)). Found in the in-memory index, which holds
        every key's token: only the records of the keys listed are read (for their key bytes),
        not the rest of the store. A key whose record header is visibly damaged is left out
        (as scan leaves it out; its CRC is checked where its value is read)."""
        cdef uint64_t lmask, tok, loc
        cdef size_t s
        cdef int rot = self.kd.rot
        cdef const unsigned char[::1] want
        self._check_open()
        if not 1 <= leaf_bits <= 24:
            raise ValueError(f"leaf_bits must be from 1 to 24, got {leaf_bits}")
        lmask = ((<uint64_t>1) << leaf_bits) - 1
        out = {}
        bitmap = bytearray((lmask >> 3) + 1)
        for leaf in leaves:
            if not isinstance(leaf, int) or not 0 <= leaf <= lmask:
                raise ValueError(f"a leaf must be an integer from 0 to {lmask}, got {leaf!r}")
            bitmap[leaf >> 3] |= 1 << (leaf & 7)
            out[leaf] = []
        if not out or self.kd.count == 0:
            return out
        if (self.hash_mask & lmask) != lmask:       # tests' narrowed hashes: tokens from keys
            for key in self._iter_keys():
                lst = out.get(token_of(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)) & lmask)
                if lst is not None:
                    lst.append(key)
            return out
        want = bitmap
        for s in range(self.kd.capacity):
            loc = self.kd.slots[s].loc
            if loc == 0:
                continue
            tok = unrotate(self.kd.slots[s].hash, rot) & lmask
            if want[tok >> 3] & (1 << (tok & 7)):
                key = self._key_at(loc)
                if key is not None:
                    out[tok].append(key)
        return out

    # ---- stats and close ---------------------------------------------------------------

    def sizes(self):
        """(data_bytes, live_bytes): the segments' bytes and the live records' bytes, cheaply
        (no file system calls), for a merge policy to look at often."""
        cdef Py_ssize_t i
        cdef uint64_t data = 0
        self._check_open()
        for i in range(self.nsegs):
            if self.segs[i].used:
                data += self.segs[i].size
        return data, self.live_bytes

    def stats(self):
        """Counters and sizes (docs/storage.md lists them)."""
        cdef Py_ssize_t i
        self._check_open()
        data = hints = nseg = 0
        for i in range(self.nsegs):
            if self.segs[i].used:
                nseg += 1
                data += self.segs[i].size
                p = os.path.join(self.path, L.hint_name(self.segs[i].id))
                if os.path.exists(p):
                    hints += os.path.getsize(p)
        return {
            "keys": self.kd.count,
            "live_bytes": self.live_bytes,
            "data_bytes": data,
            "hint_bytes": hints,
            "disk_bytes": data + hints,
            "segments": nseg,
            "active_segment": os.path.join(self.path, L.segment_name(self.segs[self.active].id)),
            "active_offset": self.segs[self.active].size,
            "synced_offset": self.synced_offset,
            "index_bytes": self.kd.nbytes,
            "index_capacity": self.kd.capacity,
            "corrupt_records": self.corrupt,
            "torn_tail_bytes": self.torn_tail,
            "zero_tail_bytes": self.zero_tail,
            "reserved_bytes": self.segs[self.active].reserved - self.segs[self.active].size,
            "merges": self.merges,
            "mapped_segments": self.nmapped,
            "map_misses": self.map_misses,
            "sealing_segments": len(self.sealing),
            "sealing_reserved_bytes": sum(self.segs[i].reserved - self.segs[i].size
                                          for i in self.sealing),
            "read_only": self.failed_info is not None,
            "fsync": self._opts.fsync,
        }

    def _release_files(self):
        cdef Py_ssize_t i
        for i in range(self.nsegs):
            if self.segs[i].used:
                self._drop_segment(i, False)
        self.nsegs = 0
        self.nmapped = 0
        self.active = -1

    def _wait_merge(self):
        cdef MergeJob job = self.merge_job
        if job is not None:
            job.cancelled = True            # a throttled run stops at its next step
            running = job.running
            with running:
                pass
            self.merge_job = None
            job._discard()

    def close(self):
        """Sync, write the active segment's hints and a clean-shutdown marker, unlock."""
        self._shutdown(True)

    def _abandon(self):
        """Stop as a killed process would: no sync, no hints, no marker (for crash tests)."""
        self._shutdown(False)

    def _shutdown(self, bint clean):
        """A clean close truncates and syncs the active segment, writes its hints and CLEAN.
        A read-only store (a failed sync) is closed as a crash leaves it, so the next open
        recovers (and distrusts) it; a sync failing here does the same and raises
        StoreReadOnly once the files are released."""
        cdef Segment *seg
        if self.closed:
            return
        syncer.unregister(self)
        self._wait_merge()
        error = None
        if clean and self.failed_info is None:
            try:
                self.seal_pending()
            except StoreReadOnly as exc:
                error = exc
            except OSError:
                pass
        with nogil:
            PyThread_acquire_lock(self._seal_lock, WAIT_LOCK)
            PyThread_acquire_lock(self._io_lock, WAIT_LOCK)
        try:
            self.closed = True
            clean = clean and self.failed_info is None
            seg = &self.segs[self.active]
            try:
                if clean and seg.size > SEG_HEADER_SIZE:
                    self._end_active(self.active, True)
                    self._seal_hints(self.active)
                elif clean:                         # an empty segment is not worth a file
                    self._drop_segment(self.active, True)
                if clean:
                    write_file(os.path.join(self.path, L.CLEAN_NAME), b"")
                    fsync_dir(self.path)
            except StoreReadOnly as exc:
                error = exc
            except OSError:
                pass                                # no CLEAN: the next open recovers
            self._release_files()
            self.sealing = []
        finally:
            PyThread_release_lock(self._io_lock)
            PyThread_release_lock(self._seal_lock)
        self._lock.release()
        if error is not None:
            raise error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<LogStore {self.path!r} {'closed' if self.closed else 'open'}>"
