"""A LogStore's merge (docs/storage.md, "Merge" and "Code layout"): plan_merge lists the live
records of the sealed segments, MergeJob.run copies them into new segments (in a worker
thread, no index changes), install() renames them into place, swap_in points the index at
the copies (on the owner's thread) and cleanup() deletes the inputs."""
import os
import threading
import time

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, mmap, munmap
from posix.unistd cimport fdatasync, write as c_write

from kvcore.errors import MergeError, StoreClosed
from kvcore.storage import layout as L
from kvcore.storage.files import fsync_dir, write_file
from kvcore.storage.recovery import hint_file
from kvcore.storage.segments import segment_header

from kvcore.hashing cimport token_of
from kvcore.storage.index cimport Index
from kvcore.storage.keydir cimport LOC_SHIFT, loc_off, loc_seg, make_loc
from kvcore.storage.record cimport check_record, load16, record_size
from kvcore.storage.recovery cimport put_hint
from kvcore.storage.segments cimport Segment, SegmentTable, buf_reserve, now_mono

include "format.pxi"

cdef size_t MERGE_STEP = 1 << 20    # a throttled merge copies this much between its sleeps


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


cdef MergeJob plan_merge(SegmentTable tab, Index ix, list order):
    """A merge of segments `order` (indexes, oldest first): every live location in them, in
    one C pass (the loop waits for this part only); run() sorts and splits them by segment
    in the worker thread."""
    cdef Py_ssize_t i, k
    cdef size_t s
    cdef uint64_t loc
    cdef MergeJob job
    cdef Py_ssize_t *input_of
    cdef size_t total = 0, pos = 0
    cdef uint64_t[::1] locs
    input_of = <Py_ssize_t *>malloc(max(tab.nsegs, 1) * sizeof(Py_ssize_t))
    if input_of == NULL:
        raise MemoryError()
    try:
        for i in range(tab.nsegs):
            input_of[i] = -1
        for k, i in enumerate(order):
            input_of[i] = k
        for s in range(ix.kd.capacity):
            loc = ix.kd.slots[s].loc
            if loc != 0 and input_of[loc_seg(loc)] >= 0:
                total += 1
        import numpy
        live_all = numpy.empty(total, dtype=numpy.uint64)
        if total:
            locs = live_all
            for s in range(ix.kd.capacity):
                loc = ix.kd.slots[s].loc
                if loc != 0 and input_of[loc_seg(loc)] >= 0 and pos < total:
                    locs[pos] = loc
                    pos += 1
    finally:
        free(input_of)
    job = MergeJob()
    job.tab = tab
    job.hash_mask = ix.hash_mask
    job.inputs = [(idx, tab.segs[idx].id, tab.segs[idx].size) for idx in order]
    job.live_all = live_all
    job.out_base = (tab.segs[order[len(order) - 1]].id + 1) if order else 0
    job.outputs = []
    job.moves_cap = total
    job.moves = <Move *>malloc(max(job.moves_cap, 1) * sizeof(Move))
    if job.moves == NULL:
        raise MemoryError()
    job.running = threading.Lock()
    return job


cdef class MergeJob:
    """The disk work of a merge: run() may go in a worker thread while the owner goes on."""

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
            if self.tab.closed:
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
                m = _map_readonly(os.path.join(self.tab.path, L.segment_name(seg_id)), seg_size,
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
            if self.out_len + size + SEG_HEADER_SIZE > self.tab.max_segment and self.out_len > 0:
                return j
            if self.copied >= step:
                return j
            if self.out_len + size > self.out_cap and self._grow_out(self.out_len + size) < 0:
                return j                    # (out of memory: run() raises MemoryError)
            memcpy(self.out + self.out_len, p, size)
            self.copied += size
            h = token_of(p + REC_HEADER_SIZE, load16(p + REC_OFF_KEYLEN)) & self.hash_mask
            if buf_reserve(&self.hints, HINT_ENTRY_SIZE + load16(p + REC_OFF_KEYLEN)) < 0:
                return j    # unreachable: buf_reserve raises under the GIL
            put_hint(&self.hints, h, SEG_HEADER_SIZE + self.out_len, size,
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
        data_path = os.path.join(self.tab.path, L.segment_name(out_id) + L.MERGING_SUFFIX)
        hint_path = os.path.join(self.tab.path, L.hint_name(out_id) + L.MERGING_SUFFIX)
        header = segment_header(out_id)
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
        write_file(hint_path, hint_file(out_id, entries, self.hint_count))
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
            path = self.tab.path
            for out_id, data_path, hint_path, size in self.outputs:
                os.rename(hint_path, os.path.join(path, L.hint_name(out_id)))
                os.rename(data_path, os.path.join(path, L.segment_name(out_id)))
            fsync_dir(path)
            self.installed = True

    cdef int swap_in(self, Index ix) except -1:
        """finish_merge's memory work, after install(): the outputs into the segment table,
        the index's entries moved to their copies (a key written during the merge keeps its
        newer record), and the inputs out of the table (their maps and files are cleanup()'s)."""
        cdef SegmentTable tab = self.tab
        cdef Py_ssize_t i, s, idx
        cdef Move *m
        ix.corrupt += self.corrupt
        out_idx = []
        for out_id, _, _, size in self.outputs:
            s = tab.new_slot()              # (unmapped: the map cache maps it when read)
            tab.segs[s].used = 1
            tab.segs[s].fd = -1
            tab.segs[s].id = out_id
            tab.segs[s].size = tab.segs[s].reserved = size
            out_idx.append(s)
        for i in range(self.nmoves):
            m = &self.moves[i]
            s = ix.kd.find_loc(m.hash, m.old_loc)
            if s >= 0:
                ix.kd.slots[s].loc = make_loc(out_idx[m.out_no], m.off)
        self._forget_inputs(ix, {idx for idx, _, _ in self.inputs})
        for idx, _, _ in self.inputs:        # oldest first: see docs/storage.md, "Merge"
            # (its map, if the cache holds one, is unmapped by cleanup(): off the loop)
            self.garbage.append((tab.segs[idx].id, <size_t>tab.segs[idx].map,
                                 tab.segs[idx].map_len))
            if tab.segs[idx].fd >= 0:
                tab.close_fd(idx)
            if tab.segs[idx].map != NULL and tab.segs[idx].pins == 0:
                tab.nmapped -= 1
            tab.segs[idx].map = NULL
            tab.segs[idx].map_len = 0
            tab.segs[idx].pins = 0
            tab.segs[idx].used = 0
        return 0

    cdef int _forget_inputs(self, Index ix, set gone) except -1:
        """Drop index entries still pointing into segments about to go: records the
        merge skipped as corrupt. They are lost here (counted); replicas repair them."""
        cdef SegmentTable tab = self.tab
        cdef size_t s = 0, size
        cdef uint64_t loc
        cdef Segment *seg
        cdef const char *base
        dropped = []
        while s < ix.kd.capacity:
            loc = ix.kd.slots[s].loc
            if loc != 0 and loc_seg(loc) in gone:
                # (a failed map here only leaves live_bytes counting the record: the swap,
                # half done, must not stop)
                base = tab.seg_map(loc_seg(loc))
                seg = &tab.segs[loc_seg(loc)]
                if base != NULL:
                    size = record_size(base + loc_off(loc))
                    if loc_off(loc) + size <= seg.size:
                        ix.live_bytes -= size
                ix.kd.remove_at(s)
                dropped.append((seg.id, loc_off(loc)))
                continue                     # the shifted-in entry now sits at s
            s += 1
        ix.report_corrupt(dropped)
        return 0

    def cleanup(self):
        """After finish_merge, for the worker thread: unmap the merged inputs and delete their
        files, oldest first (docs/storage.md, "Merge")."""
        garbage, self.garbage = self.garbage, []
        path = self.tab.path
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
            paths = [os.path.join(self.tab.path, n) for out in self.outputs
                     for n in (L.hint_name(out[0]), L.segment_name(out[0]))]
        else:
            paths = [p for out in self.outputs for p in out[1:3]]
        for p in paths:
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
