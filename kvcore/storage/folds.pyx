"""Reads of a LogStore's whole index (docs/storage.md, "SCAN", "Snapshots" and "Code
layout"): SCAN pages, snapshots read back (or folded into a Merkle tree) while the store is
written, and the keys of chosen Merkle leaves. The store checks it is open first."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint64_t

from kvcore.errors import MergeError
from kvcore.storage.options import decompress

from kvcore.hashing cimport token_of
from kvcore.merkle cimport MerkleTree
from kvcore.storage.index cimport Index
from kvcore.storage.keydir cimport loc_off, loc_seg
from kvcore.storage.record cimport check_record, load16
from kvcore.storage.segments cimport seg_addr

include "format.pxi"


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


# ---- SCAN ------------------------------------------------------------------------------------

def scan(Index ix, cursor, count):
    """LogStore.scan: (next cursor, keys) in hash order from cursor; 0 when done."""
    cdef uint64_t nxt
    if not isinstance(cursor, int) or not 0 <= cursor < (1 << 64):
        raise ValueError(f"cursor must be an integer in [0, 2**64), got {cursor!r}")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    locs = ix.kd.scan(cursor, count, &nxt)
    out = []
    for loc in locs:
        key = ix.key_at(loc)
        if key is not None:
            out.append(key)
    return nxt, out


def iter_keys(store):
    """Live keys, in SCAN batches that survive writes between them."""
    cursor = 0
    while True:
        cursor, keys = store.scan(cursor, 1000)
        yield from keys
        if cursor == 0:
            return


def iter_items(store):
    """(key, value) pairs, read from disk as they are yielded."""
    for key in iter_keys(store):
        value = store.get(key)
        if value is not None:
            yield key, value


# ---- snapshots (a fold over the store while it is written: kvnet/replica.py) ------------------

def snapshot(Index ix, long long merges):
    """LogStore.snapshot: the live records now, by location."""
    cdef size_t s, n = 0, count = ix.kd.count
    cdef uint64_t[::1] locs, hs
    import numpy
    la = numpy.empty(count, dtype=numpy.uint64)
    ha = numpy.empty(count, dtype=numpy.uint64)
    if count:
        locs = la
        hs = ha
        for s in range(ix.kd.capacity):
            if ix.kd.slots[s].loc != 0 and n < count:
                locs[n] = ix.kd.slots[s].loc
                hs[n] = unrotate(ix.kd.slots[s].hash, ix.kd.rot)
                n += 1
    order = numpy.argsort(la, kind="stable")
    return Snapshot(la[order], ha[order], merges)


cdef Py_ssize_t _snapshot_end(object snap, Py_ssize_t start, Py_ssize_t count,
                              long long merges) except -1:
    """Where a read of snapshot entries start .. start + count ends (checks no merge moved
    records since the snapshot)."""
    if snap.merges != merges:
        raise MergeError("a merge moved records since this snapshot: take another")
    return min(len(snap.locs), start + count)


cdef int _snapshot_record(Index ix, uint64_t loc, uint64_t h, const char **rec,
                          size_t *size) except -1:
    """The record a snapshot entry points at (rec, size), or rec NULL when it fails its
    CRC: then dropped from the index, as a get drops it, if the index still points at it."""
    cdef const char *base = seg_addr(ix.tab, loc_seg(loc))
    cdef uint64_t off = loc_off(loc)
    cdef Py_ssize_t slot
    size[0] = check_record(base + off, ix.tab.segs[loc_seg(loc)].size - off)
    if size[0] == 0:
        rec[0] = NULL
        slot = ix.kd.find_loc(h, loc)
        if slot >= 0:
            ix.drop_slot(slot)
        return 0
    rec[0] = base + off
    return 0


def read_snapshot(Index ix, snap, Py_ssize_t start, Py_ssize_t count, long long merges):
    """LogStore.read_snapshot: (next index, [(key, value)])."""
    cdef uint64_t[::1] locs, hs
    cdef Py_ssize_t j, end = _snapshot_end(snap, start, count, merges)
    cdef const char *p
    cdef size_t size, klen
    out = []
    if start >= end:
        return max(start, end), out
    locs = snap.locs
    hs = snap.hashes
    for j in range(start, end):
        _snapshot_record(ix, locs[j], hs[j], &p, &size)
        if p == NULL:
            continue
        klen = load16(p + REC_OFF_KEYLEN)
        key = PyBytes_FromStringAndSize(p + REC_HEADER_SIZE, klen)
        value = PyBytes_FromStringAndSize(p + REC_HEADER_SIZE + klen, size - REC_HEADER_SIZE - klen)
        if (<uint8_t>p[REC_OFF_FLAGS]) & FLAG_COMPRESSED:
            value = decompress(value)
        out.append((key, value))
    return end, out


def fold_snapshot(Index ix, snap, Py_ssize_t start, Py_ssize_t count, MerkleTree tree not None,
                  long long merges):
    """LogStore.fold_snapshot: entries folded into `tree` without making Python objects of
    them; the next index."""
    cdef uint64_t[::1] locs, hs
    cdef Py_ssize_t j, end = _snapshot_end(snap, start, count, merges), seg_i
    cdef const char *p
    cdef size_t size, klen
    if start >= end:
        return max(start, end)
    locs = snap.locs
    hs = snap.hashes
    for j in range(start, end):
        _snapshot_record(ix, locs[j], hs[j], &p, &size)
        if p == NULL:
            continue
        klen = load16(p + REC_OFF_KEYLEN)
        if (<uint8_t>p[REC_OFF_FLAGS]) & FLAG_COMPRESSED:
            # decompress is Python code, which may read this store (and so unmap p's
            # segment) before the key is read: pinned meanwhile
            seg_i = loc_seg(locs[j])
            ix.tab.pin(seg_i)
            try:
                value = decompress(PyBytes_FromStringAndSize(p + REC_HEADER_SIZE + klen,
                                                             size - REC_HEADER_SIZE - klen))
                tree.update_c(p + REC_HEADER_SIZE, klen, NULL, -1, PyBytes_AS_STRING(value),
                              PyBytes_GET_SIZE(value))
            finally:
                ix.tab.unpin(seg_i)
        else:
            tree.update_c(p + REC_HEADER_SIZE, klen, NULL, -1, p + REC_HEADER_SIZE + klen,
                          size - REC_HEADER_SIZE - klen)
    return end


# ---- keys by Merkle leaf (anti-entropy's key lists: kvnet/antientropy) -------------------------

def leaf_keys(Index ix, store, leaves, int leaf_bits):
    """LogStore.leaf_keys: {leaf: [key]} from the in-memory index, which holds every key's
    token: only the records of the keys listed are read (for their key bytes)."""
    cdef uint64_t lmask, tok, loc
    cdef size_t s
    cdef int rot = ix.kd.rot
    cdef const unsigned char[::1] want
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
    if not out or ix.kd.count == 0:
        return out
    if (ix.hash_mask & lmask) != lmask:         # tests' narrowed hashes: tokens from keys
        for key in iter_keys(store):
            lst = out.get(token_of(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)) & lmask)
            if lst is not None:
                lst.append(key)
        return out
    want = bitmap
    for s in range(ix.kd.capacity):
        loc = ix.kd.slots[s].loc
        if loc == 0:
            continue
        tok = unrotate(ix.kd.slots[s].hash, rot) & lmask
        if want[tok >> 3] & (1 << (tok & 7)):
            key = ix.key_at(loc)
            if key is not None:
                out[tok].append(key)
    return out
