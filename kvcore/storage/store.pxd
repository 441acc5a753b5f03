# LogStore: one directory of numbered segments, a C keydir, hint files, merge.
# docs/storage.md explains the design; format.pxi owns the bytes.
from libc.stdint cimport uint32_t, uint64_t
from cpython.pythread cimport PyThread_type_lock

from kvcore.storage.jbuffer cimport JournalBuffer
from kvcore.storage.keydir cimport Keydir


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


cdef class LogStore:
    cdef readonly object path
    cdef readonly dict recovery         # what open() found: clean, corrupt, torn tail, scanned
    cdef object _opts                   # StoreOptions
    cdef object _lock                   # DirLock
    cdef PyThread_type_lock _io_lock    # fd lifetime vs. sync() from other threads
    cdef Keydir kd
    cdef Segment *segs                  # segment table, indexed by keydir locations
    cdef Py_ssize_t nsegs               # used length of segs (some slots may be free)
    cdef Py_ssize_t segs_cap
    cdef Py_ssize_t map_cache           # at most this many unpinned sealed maps (docs/storage.md)
    cdef Py_ssize_t nmapped             # unpinned segments mapped now (<= map_cache)
    cdef uint64_t map_clock             # ticks once per read of a segment's map (LRU order)
    cdef int map_errno                  # errno of the last failed map (_seg_map returned NULL)
    cdef bytes dir_b                    # path, encoded: the directory a miss opens files in
    cdef const char *dir_c              # (dir_b's bytes, for a miss without the GIL)
    cdef long long map_misses           # sealed segments mapped on demand (stats)
    cdef Py_ssize_t active              # index of the active segment
    cdef Buffer rec                     # scratch for encoding records
    cdef Buffer hints                   # hint entries of the active segment
    cdef bint closed
    cdef int fsync_mode                 # 0 never, 1 interval, 2 always
    cdef size_t max_segment
    cdef size_t max_key
    cdef size_t max_value
    cdef size_t compress_min
    cdef size_t active_reserve          # mapped length of an active segment
    cdef double dirty_since             # monotonic seconds of the first unsynced write, < 0 if none
    cdef uint64_t synced_offset
    cdef long long live_bytes
    cdef long long corrupt
    cdef long long torn_tail
    cdef long long zero_tail
    cdef long long scanned
    cdef long long merges
    cdef object merge_job
    cdef uint64_t hash_mask             # all ones; tests narrow it to force collisions
    cdef public object on_corrupt       # called (segment id, offset) per record dropped as corrupt
    cdef object failed_info             # None, or (errno, what): a failed fdatasync, read-only
    cdef list corrupt_at                # (segment id, offset) of records the open's scan skipped
    cdef double min_free                # free-space watermark in percent (0: off)
    cdef int fault_op                   # _fail_next(): op number (0: none), errno, times left
    cdef int fault_errno
    cdef int fault_times
    cdef int fault_after
    cdef object __weakref__             # the interval syncer holds stores weakly
    cdef bint seal_later                # a roll only switches segments; seal_pending() seals
    cdef bint seal_by_syncer            # ... and the syncer thread calls it (seal_later=True)
    cdef list sealing                   # segment indexes rolled out, not yet sealed (oldest first)
    cdef bint dir_unsynced              # a segment was created and its directory not yet synced
    cdef PyThread_type_lock _seal_lock  # one sealer at a time (the syncer, a commit, close)
    cdef JournalBuffer journal          # the node's journal: a copy of every record written
    cdef uint32_t journal_id            # ... under this store id (kvcore/storage/journal.py)

    cdef int _check_open(self) except -1
    cdef int _check_key(self, object key) except -1
    cdef int _check_value(self, object value) except -1
    cdef Py_ssize_t _open_segment(self, uint64_t seg_id, bint create) except -1
    cdef bint _load_hints(self, Py_ssize_t i, bytes data) except -1    # False: bad file, nothing indexed
    cdef object _stored(self, object value, int *flags)                 # lz4 when it pays
    cdef int _write_one(self, object key, object stored, int flags, Py_ssize_t slot=*) except -1
    cdef int _index_chunk(self, uint64_t base_off) except -1
    # a read-modify-write with one lookup: slot_of (-1: absent), value_in, then put_in with
    # that slot and no other write between (kvcore/replicawrite.pyx)
    cdef Py_ssize_t slot_of(self, object key) except -2
    cdef object value_in(self, Py_ssize_t slot, object key)
    cdef int put_in(self, Py_ssize_t slot, object key, object value) except -1
    cdef object _key_at(self, uint64_t loc)
    cdef uint64_t _hash(self, const char *key, size_t klen) noexcept nogil
    cdef Py_ssize_t _lookup(self, uint64_t h, const char *key, size_t klen) except -3 nogil
    cdef int _index(self, uint64_t h, const char *key, size_t klen, uint64_t seg, uint64_t off,
                    size_t size, int flags, Py_ssize_t i=*) except -1 nogil
    cdef object _value_at(self, Py_ssize_t slot, object key)   # None: absent or dropped as corrupt
    cdef int _drop_slot(self, Py_ssize_t slot) except -1
    cdef int _injected(self, int op) noexcept nogil
    cdef int _check_writable(self) except -1
    cdef Py_ssize_t _create_segment(self, uint64_t seg_id) except -1
    cdef int _pwrite_all(self, int fd, const char *data, size_t n, uint64_t off) except -1
    cdef int _after_write(self) except -1
    cdef int _hint_append(self, uint64_t h, uint64_t off, size_t size, int flags,
                          const char *key, size_t klen) except -1 nogil
    # the open's loops over valid records and hint entries, run without the GIL (partitions
    # open in threads: kvnet/replica.py)
    cdef int _scan_valid(self, Py_ssize_t i, size_t *off) except -1 nogil
    cdef int _index_hints(self, Py_ssize_t i, const char *p, uint64_t count) except -1 nogil
    cdef Py_ssize_t _new_segment_slot(self) except -1
    cdef int _map_segment(self, Py_ssize_t i, size_t length, bint writable) except -1
    # the one accessor of a segment's bytes (NULL, with map_errno set, when a map fails)
    cdef const char *_seg_map(self, Py_ssize_t i) noexcept nogil
    cdef const char *_map_miss(self, Py_ssize_t i) noexcept nogil
    cdef const char *_seg_base(self, Py_ssize_t i) except NULL nogil    # raises OSError instead
    cdef void _evict_one(self) noexcept nogil
    cdef const char *_pin(self, Py_ssize_t i) except NULL
    cdef void _unpin(self, Py_ssize_t i) noexcept nogil
    cdef int _grow_map(self, Py_ssize_t i, size_t length) except -1
    cdef int _close_fd(self, Py_ssize_t i) except -1
    cdef int _reserve(self, Py_ssize_t i, uint64_t need) except -1
    cdef int _end_active(self, Py_ssize_t i, bint locked) except -1
    cdef int _seal_one(self, Py_ssize_t i) except -1
    cdef Py_ssize_t _snapshot_end(self, object snap, Py_ssize_t start, Py_ssize_t count) except -1
    cdef int _snapshot_record(self, uint64_t loc, uint64_t h, const char **rec,
                              size_t *size) except -1
    cdef int _drop_segment(self, Py_ssize_t i, bint unlink) except -1
