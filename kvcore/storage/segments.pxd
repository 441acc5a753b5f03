# The segment table of a LogStore: its files, their maps (the map cache), the active
# segment's reserved space, and injected faults (docs/storage.md, "Code layout").
from libc.errno cimport errno
from libc.stdint cimport uint64_t
from cpython.pythread cimport PyThread_type_lock
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec
from posix.unistd cimport fdatasync


cdef struct Segment:
    uint64_t id             # sequence << 32 | merge output number (file name)
    int used                # the index slot holds a segment (0: free for reuse)
    int fd                  # read-write descriptor while active (or being opened), else -1:
                            # a sealed segment is read through its map, which keeps the file
    char *map               # MAP_SHARED view, writable while active; a sealed segment's is
                            # made on demand and unmapped by the map cache (NULL: not mapped now)
    int pins                # > 0: the map cache never unmaps it (active, sealing, being loaded,
                            # or a reader holding a pointer across calls); 0: a cache entry
    uint64_t used_at        # map cache clock of its last read (the least recent is unmapped)
    size_t map_len          # mapped length (the active segment's grows with its reservation)
    uint64_t size           # bytes written so far (the data end)
    uint64_t reserved       # file length: size plus zero space allocated ahead (active segment)


cdef struct Buffer:
    char *data
    size_t len
    size_t cap


cdef enum:                          # fail_next() ops (options.FAULT_OPS)
    F_OPEN = 1
    F_WRITE = 2
    F_FTRUNCATE = 3
    F_FDATASYNC = 4
    F_MMAP = 5                      # the map of a sealed segment on a cache miss

cdef enum:
    PAGE = 4096


cdef int buf_reserve(Buffer *b, size_t extra) except -1 nogil
cdef int pwrite_full(int fd, const char *data, size_t n, uint64_t off, str what) except -1


cdef inline uint64_t now_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000000 + <uint64_t>(ts.tv_nsec // 1000)


cdef inline double now_mono() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline int datasync(int fd, int injected_errno) noexcept nogil:
    """0, or the errno of fdatasync(fd); an injected fault's errno (fail_next) instead of
    the call when there is one."""
    if injected_errno:
        return injected_errno
    if fdatasync(fd) != 0:
        return errno
    return 0


cdef class SegmentTable:
    cdef readonly object path
    cdef bint closed                    # the store is closed (its files released)
    cdef Segment *segs                  # indexed by keydir locations
    cdef Py_ssize_t nsegs               # used length of segs (some slots may be free)
    cdef Py_ssize_t segs_cap
    cdef Py_ssize_t map_cache           # at most this many unpinned sealed maps (docs/storage.md)
    cdef Py_ssize_t nmapped             # unpinned segments mapped now (<= map_cache)
    cdef uint64_t map_clock             # ticks once per read of a segment's map (LRU order)
    cdef int map_errno                  # errno of the last failed map (seg_map returned NULL)
    cdef long long map_misses           # sealed segments mapped on demand (stats)
    cdef bytes dir_b                    # path, encoded: the directory a miss opens files in
    cdef const char *dir_c              # (dir_b's bytes, for a miss without the GIL)
    cdef PyThread_type_lock io_lock     # fd lifetime vs. sync() from other threads
    cdef size_t max_segment
    cdef double min_free                # free-space watermark in percent (0: off)
    cdef int fault_op                   # fail_next(): op number (0: none), errno, times left
    cdef int fault_errno
    cdef int fault_times
    cdef int fault_after

    cdef Py_ssize_t new_slot(self) except -1
    cdef Py_ssize_t open_segment(self, uint64_t seg_id, bint create) except -1
    cdef int map_segment(self, Py_ssize_t i, size_t length, bint writable) except -1
    # the one accessor of a segment's bytes (NULL, with map_errno set, when a map fails)
    cdef const char *seg_map(self, Py_ssize_t i) noexcept nogil
    cdef const char *map_miss(self, Py_ssize_t i) noexcept nogil
    cdef const char *seg_base(self, Py_ssize_t i) except NULL nogil    # raises OSError instead
    cdef void evict_one(self) noexcept nogil
    cdef const char *pin(self, Py_ssize_t i) except NULL
    cdef void unpin(self, Py_ssize_t i) noexcept nogil
    cdef int grow_map(self, Py_ssize_t i, size_t length) except -1
    cdef int reserve(self, Py_ssize_t i, uint64_t need) except -1
    cdef int close_fd(self, Py_ssize_t i) except -1
    cdef int drop(self, Py_ssize_t i, bint unlink) except -1
    cdef int injected(self, int op) noexcept nogil
    cdef int pwrite_all(self, int fd, const char *data, size_t n, uint64_t off) except -1


cdef inline const char *seg_addr(SegmentTable t, Py_ssize_t i) except NULL nogil:
    """The address of segment i's bytes, through the map cache (SegmentTable.seg_map): a hit
    inline (a few instructions: this is every read's hot path), a miss maps the segment or
    raises OSError (SegmentTable.seg_base)."""
    cdef Segment *seg = &t.segs[i]
    if seg.map != NULL:
        t.map_clock += 1
        seg.used_at = t.map_clock
        return seg.map
    return t.seg_base(i)
