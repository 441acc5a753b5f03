# A LogStore's merge (compaction): the plan, the job that copies live records into new
# segments (in a worker thread), and the swap of the merged segments into the index
# (docs/storage.md, "Merge" and "Code layout").
from libc.stdint cimport uint64_t

from kvcore.storage.index cimport Index
from kvcore.storage.segments cimport Buffer, SegmentTable


cdef struct Move:
    uint64_t hash
    uint64_t old_loc
    uint64_t out_no         # which output segment of the job
    uint64_t off


cdef class MergeJob:
    cdef SegmentTable tab
    cdef uint64_t hash_mask
    cdef list inputs                # (segment index, id, size), oldest first
    cdef object live_locs           # list of sorted location arrays, one per input (run())
    cdef object live_all            # every live location in the inputs, unsorted (plan_merge)
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

    cdef Py_ssize_t _copy(self, const char *base, size_t seg_size, const uint64_t *locs,
                          Py_ssize_t j, Py_ssize_t n, size_t step) noexcept nogil
    cdef int _grow_out(self, size_t need) noexcept nogil
    cdef int _flush(self) except -1
    cdef int swap_in(self, Index ix) except -1
    cdef int _forget_inputs(self, Index ix, set gone) except -1


cdef MergeJob plan_merge(SegmentTable tab, Index ix, list order)
