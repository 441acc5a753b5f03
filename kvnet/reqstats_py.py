"""Pure-Python twin of kvnet/reqstats.pyx (RINGKV_NO_EXTENSIONS=1): the same slots, buckets
and API, in lists (see the .pyx for the bucket layout)."""
import time

LOW, HIGH = 10, 33
MAX_SLOTS = 128
NBUCKETS = 94
OVERFLOW = ("other", "other")


def bucket_of(ns):
    if ns <= (1 << LOW):
        return 0
    v = ns - 1
    e = v.bit_length() - 1
    if e >= HIGH:
        return NBUCKETS - 1
    return 1 + (e - LOW) * 4 + ((v >> (e - 2)) & 3)


def _bounds():
    out = [1 << LOW]
    for e in range(LOW, HIGH):
        for s in range(4):
            out.append((4 + s + 1) << (e - 2))
    out.append(None)
    assert len(out) == NBUCKETS
    return out


BOUNDS_NS = _bounds()


class ReqStats:
    def __init__(self):
        self.slots = {}
        self.keys = []
        self._counts = []
        self._sums = []

    def slot(self, command, quorum="none"):
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
            self._counts.append([0] * NBUCKETS)
            self._sums.append(0)
        return s

    def add_ns(self, slot, ns):
        if 0 <= slot < len(self.keys):
            self._counts[slot][bucket_of(ns)] += 1
            self._sums[slot] += ns

    def record(self, slot, start_ns):
        self.add_ns(slot, max(time.monotonic_ns() - start_ns, 0))

    def now(self):
        return time.monotonic_ns()

    def buckets(self, slot):
        if not 0 <= slot < len(self.keys):
            raise IndexError(slot)
        return list(self._counts[slot]), self._sums[slot]

    def snapshot(self):
        out = []
        for s, key in enumerate(self.keys):
            b, total = self.buckets(s)
            if any(b):
                out.append((key[0], key[1], b, total))
        return out
