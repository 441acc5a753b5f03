# cython: language_level=3
"""Request counts and latency histograms of a node's front door, in C arrays
(docs/observability.md).

One slot per (command, quorum) pair: a uint64 count per latency bucket and the sum of the
latencies, nothing else. The compiled door (kvnet/localdoor.pyx) adds to them with a cdef call
and the general path (kvnet/resp/commands.py, kvnet/resp/server.py) through `record`; the
metrics collector (kvnet/metrics.py) and INFO's latencystats read them at scrape time. So a
command costs an array increment and its share of two clock reads, no Python object.

The buckets are log-spaced with four steps per power of two (HdrHistogram's idea, 2 bits of
mantissa): a latency of v ns falls in the bucket whose upper bound is the least
((4 + s + 1) << (e - 2)) >= v, for 2**10 <= bound <= 2**33 ns (about 1 us to 8.6 s); below
1.024 us is bucket 0, above the top bound the last (+Inf). A percentile is then known to
within a quarter of its power of two (at most 25 %), as Redis's latency percentiles are to
HdrHistogram's precision. Prometheus gets every fourth bound (the powers of two: 24 buckets).
"""
from libc.stdint cimport uint64_t
from libc.string cimport memset

cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil

DEF LOW = 10            # 2**10 ns: the first bucket's bound
DEF HIGH = 33           # 2**33 ns: the last finite bound

OVERFLOW = ("other", "other")


cdef inline int _bucket(uint64_t ns) noexcept nogil:
    """The bucket of a latency of ns nanoseconds: the least upper bound >= ns."""
    cdef uint64_t v
    cdef int e
    if ns <= (1 << LOW):
        return 0
    v = ns - 1
    e = 63 - __builtin_clzll(v)
    if e >= HIGH:
        return NBUCKETS - 1
    return 1 + (e - LOW) * 4 + <int>((v >> (e - 2)) & 3)


def bucket_of(ns):
    """_bucket for tests."""
    return _bucket(ns)


def _bounds():
    """Each bucket's upper bound in nanoseconds (the last is None: +Inf)."""
    out = [1 << LOW]
    for e in range(LOW, HIGH):
        for s in range(4):
            out.append((4 + s + 1) << (e - 2))
    out.append(None)
    assert len(out) == NBUCKETS
    return out


BOUNDS_NS = _bounds()


cdef class ReqStats:
    """The counts and histograms of one front door (one per RespServer's Commands)."""

    def __cinit__(self):
        memset(self.counts, 0, sizeof(self.counts))
        memset(self.sums, 0, sizeof(self.sums))
        self.slots = {}
        self.keys = []

    def slot(self, command, quorum="none"):
        """The slot of (command, quorum), made on first use; past MAX_SLOTS pairs, one
        shared ("other", "other") slot (the labels stay bounded whatever clients send)."""
        key = (command, quorum)
        s = self.slots.get(key)
        if s is None:
            if len(self.keys) >= MAX_SLOTS - 1:
                key = OVERFLOW
                s = self.slots.get(key)
                if s is not None:
                    return s
            s = len(self.keys)
            self.keys.append(key)
            self.slots[key] = s
        return s

    cdef void add(self, int slot, uint64_t ns) noexcept nogil:
        self.counts[slot][_bucket(ns)] += 1
        self.sums[slot] += ns

    cdef void add_n(self, int slot, uint64_t n, uint64_t ns_each) noexcept nogil:
        """n commands of `slot` that took ns_each nanoseconds each (the door's commands of one
        call, which share its clock reads)."""
        self.counts[slot][_bucket(ns_each)] += n
        self.sums[slot] += ns_each * n

    cpdef record(self, int slot, uint64_t start_ns):
        """One command of `slot` that started at `start_ns` (time.monotonic_ns()) ended now."""
        cdef uint64_t end = now_ns()
        if 0 <= slot < len(self.keys):
            self.add(slot, end - start_ns if end > start_ns else 0)

    def add_ns(self, int slot, ns):
        """One command of `slot` that took `ns` nanoseconds (tests)."""
        if 0 <= slot < len(self.keys):
            self.add(slot, ns)

    cpdef uint64_t now(self) noexcept:
        return now_ns()

    def buckets(self, int slot):
        """Slot's count per bucket (a list of NBUCKETS ints, not cumulative), and its sum in
        nanoseconds."""
        if not 0 <= slot < len(self.keys):
            raise IndexError(slot)
        return [self.counts[slot][i] for i in range(NBUCKETS)], self.sums[slot]

    def snapshot(self):
        """[(command, quorum, buckets, sum_ns)] of every slot counted at least once."""
        out = []
        for s, key in enumerate(self.keys):
            b, total = self.buckets(s)
            if any(b):
                out.append((key[0], key[1], b, total))
        return out
