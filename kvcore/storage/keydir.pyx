"""Robin Hood keydir in C memory (see keydir.pxd and docs/storage.md)."""
from libc.stdint cimport uint64_t
from posix.mman cimport (MAP_ANONYMOUS, MAP_FAILED, MAP_POPULATE, MAP_PRIVATE, PROT_READ, PROT_WRITE,
                         mmap, munmap)

from kvcore.storage.keydir cimport LOC_SHIFT, MIN_CAPACITY, Slot

cdef extern from *:
    """
    static inline size_t kv_fastrange(uint64_t h, size_t n) {
        return (size_t)(((unsigned __int128)h * (unsigned __int128)n) >> 64);
    }
    """
    size_t kv_fastrange(uint64_t h, size_t n) nogil


cdef Slot *_alloc(size_t n) noexcept nogil:
    # Tables come straight from mmap so that the ones left behind by growth go back
    # to the OS at once (malloc's heap would keep them as resident free memory).
    # Populated at once: a table is touched all over as it fills (hashes spread evenly), and
    # one populating call costs far less than a fault per page (an open indexing 5M keys in
    # 16 threads spent a sixth of its time faulting its tables in).
    cdef void *p = mmap(NULL, n * sizeof(Slot), PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
    return NULL if p == MAP_FAILED else <Slot *>p


cdef void _free(Slot *p, size_t n) noexcept nogil:
    if p != NULL:
        munmap(p, n * sizeof(Slot))


cdef class Keydir:
    def __cinit__(self, size_t capacity=MIN_CAPACITY):
        if capacity < MIN_CAPACITY:
            capacity = MIN_CAPACITY
        self.slots = _alloc(capacity)
        if self.slots == NULL:
            raise MemoryError()
        self.capacity = capacity
        self.count = 0
        self.grow_at = capacity * 9 // 10
        self.rot = 0
        self.bulk = False

    def __dealloc__(self):
        _free(self.slots, self.capacity)

    cdef size_t home(self, uint64_t h) noexcept nogil:
        return kv_fastrange(h, self.capacity)

    cdef size_t dist(self, size_t i) noexcept nogil:
        cdef size_t hm = kv_fastrange(self.slots[i].hash, self.capacity)
        return i - hm if i >= hm else i + self.capacity - hm

    cdef Py_ssize_t first(self, uint64_t h) noexcept nogil:
        cdef size_t i
        cdef size_t d = 0, sd
        h = self.order(h)
        i = kv_fastrange(h, self.capacity)
        while True:
            if self.slots[i].loc == 0:
                return -1
            if self.slots[i].hash == h:
                return i
            sd = self.dist(i)
            if sd < d or (sd == d and self.slots[i].hash > h):
                return -1
            i += 1
            if i == self.capacity:
                i = 0
            d += 1

    cdef Py_ssize_t next_same(self, Py_ssize_t i, uint64_t h) noexcept nogil:
        h = self.order(h)
        i += 1
        if <size_t>i == self.capacity:
            i = 0
        if self.slots[i].loc != 0 and self.slots[i].hash == h:
            return i
        return -1

    cdef Py_ssize_t find_loc(self, uint64_t h, uint64_t loc) noexcept nogil:
        cdef Py_ssize_t i = self.first(h)
        while i >= 0:
            if self.slots[i].loc == loc:
                return i
            i = self.next_same(i, h)
        return -1

    cdef int insert(self, uint64_t h, uint64_t loc) except -1 nogil:
        if self.count + 1 > self.grow_at:
            # 1.5x keeps the table 60-90 % full; a bulk load (an open indexing its segments)
            # grows 4x, so a table re-places its entries about 1.3 times instead of 3 and
            # frees (munmaps: TLB shootdowns across the opener threads) fewer old tables,
            # then fit() brings it back into the band
            self.resize(self.capacity * 4 if self.bulk else self.capacity + self.capacity // 2)
        self._place(self.order(h), loc)
        self.count += 1
        return 0

    cdef void _place(self, uint64_t h, uint64_t loc) noexcept nogil:
        cdef size_t i = kv_fastrange(h, self.capacity)
        cdef size_t d = 0, sd
        cdef Slot cur, tmp
        cur.hash = h
        cur.loc = loc
        while True:
            if self.slots[i].loc == 0:
                self.slots[i] = cur
                return
            sd = self.dist(i)
            if sd < d or (sd == d and self.slots[i].hash > cur.hash):
                tmp = self.slots[i]
                self.slots[i] = cur
                cur = tmp
                d = sd
            i += 1
            if i == self.capacity:
                i = 0
            d += 1

    cdef void remove_at(self, Py_ssize_t i) noexcept nogil:
        cdef size_t j = i + 1
        if j == self.capacity:
            j = 0
        while self.slots[j].loc != 0 and self.dist(j) > 0:
            self.slots[i] = self.slots[j]
            i = j
            j += 1
            if j == self.capacity:
                j = 0
        self.slots[i].hash = 0
        self.slots[i].loc = 0
        self.count -= 1

    cdef int resize(self, size_t capacity) except -1 nogil:
        cdef Slot *old = self.slots
        cdef size_t old_cap = self.capacity, k
        if capacity < self.count + 1:
            capacity = self.count + 1
        self.slots = _alloc(capacity)
        if self.slots == NULL:
            self.slots = old
            with gil:
                raise MemoryError()
        self.capacity = capacity
        self.grow_at = capacity * 9 // 10
        for k in range(old_cap):
            if old[k].loc != 0:
                self._place(old[k].hash, old[k].loc)
        _free(old, old_cap)
        return 0

    cdef int fit(self) except -1 nogil:
        """End a bulk load: a table under 60 % full shrinks to about 75 % full."""
        cdef size_t target = self.count * 4 // 3 + 1
        self.bulk = False
        if target < MIN_CAPACITY:
            target = MIN_CAPACITY
        if self.capacity > MIN_CAPACITY and self.count * 10 < self.capacity * 6:
            self.resize(target)
        return 0

    cdef list scan(self, uint64_t cursor, Py_ssize_t count, uint64_t *next_cursor):
        """Locations of up to count entries with hash >= cursor, in hash order (ties whole)."""
        cdef list out = []
        cdef size_t cap = self.capacity, i, hm
        cdef uint64_t last = 0
        cdef Slot *s
        next_cursor[0] = 0
        if self.count == 0:
            return out
        i = kv_fastrange(cursor, cap)
        # first lap: home .. end, skipping entries that wrapped from the end to the start
        while i < cap and len(out) < count:
            s = &self.slots[i]
            if s.loc != 0 and s.hash >= cursor and kv_fastrange(s.hash, cap) <= i:
                out.append(s.loc)
                last = s.hash
            i += 1
        if len(out) < count:
            # second lap: the wrapped entries at the start (largest hashes)
            i = 0
            while i < cap and len(out) < count:
                s = &self.slots[i]
                if s.loc == 0 or kv_fastrange(s.hash, cap) <= i:
                    break
                if s.hash >= cursor:
                    out.append(s.loc)
                    last = s.hash
                i += 1
            if len(out) < count:
                return out                      # the walk is complete
        # full batch: take the rest of the last hash's entries too, then resume after it
        if i == cap:
            i = 0
        while self.slots[i].loc != 0 and self.slots[i].hash == last and len(out) <= <Py_ssize_t>self.count:
            if self.slots[i].loc not in out:
                out.append(self.slots[i].loc)
            i += 1
            if i == cap:
                i = 0
        next_cursor[0] = last + 1               # 0 after the largest hash: done
        return out

    def __len__(self):
        return self.count

    @property
    def nbytes(self):
        return self.capacity * sizeof(Slot)
