# The request path's counters in C (kvnet/reqstats.pyx): the front door's LocalDoor
# (kvnet/localdoor.pyx) adds to them with cdef calls, no Python object made per command.

cimport cython
from libc.stdint cimport uint64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cdef enum:
    MAX_SLOTS = 128     # (command, quorum) pairs counted apart; later ones share OVERFLOW_SLOT
    NBUCKETS = 94       # log-spaced latency buckets (reqstats.pyx: _bucket), the last +Inf


cdef inline uint64_t now_ns() noexcept nogil:
    """CLOCK_MONOTONIC in nanoseconds (time.monotonic_ns's clock): one vDSO call."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


@cython.final    # its cpdef methods are direct C calls from typed callers (no override check)
cdef class ReqStats:
    cdef uint64_t counts[MAX_SLOTS][NBUCKETS]
    cdef uint64_t sums[MAX_SLOTS]           # nanoseconds
    cdef readonly dict slots                # (command, quorum) -> slot
    cdef readonly list keys                 # slot -> (command, quorum)

    cdef void add(self, int slot, uint64_t ns) noexcept nogil
    cdef void add_n(self, int slot, uint64_t n, uint64_t ns_each) noexcept nogil
    # the general path's timing (kvnet/resp/commands.py, server.py): C calls compiled
    cpdef record(self, int slot, uint64_t start_ns)
    cpdef uint64_t now(self) noexcept
