"""Durable hints, kept per target node (docs/handoff.md; docs/algorithms.md, section 2).

A fallback node that stores a write for a down primary keeps a *hint*: (partition, key, encoded
clock) addressed to that primary (the *target*). Hints live in one kvcore ``LogStore`` per target,
under ``<directory>/<target>/``, so they survive a restart (and, once synced, a crash) of the
fallback. The rules, each one guarding an acknowledged write that may live only in hints:

- A second hint for the same (target, partition, key) is MERGED with the stored one by the
  ``merge(old, new) -> bytes`` callable the node passes (a DVV ``sync`` of the two clocks); it
  never overwrites it.
- A hint is deleted only by ``ack`` with the exact bytes that were sent (compare-and-delete): a
  hint merged meanwhile with a newer write stays, and is sent again.
- Hints never expire. When the target leaves the cluster, ``reassign`` moves (merges) each hint
  into the hint store of its partition's new owner, syncs those, and only then drops the target.

Record key: 2 bytes of partition, big-endian, then the key's bytes (``encode_hint_key``). Record
value: the clock bytes, as given. Replay order is the store's hash order (``LogStore.scan``); the
cursor is kept in memory per target (a reopen restarts replay from the beginning: re-sending a
hint is harmless, the target ``sync``s it).

No asyncio and no network here: the manager/sender/receiver (docs/handoff.md) drive it. Every
read-modify-write (add, ack, reassign) runs under one lock with no ``await`` in between, so it is
atomic per key as docs/algorithms.md, section 1 requires.
"""
import os
import re
import shutil
import threading
from collections import deque

from kvcore.storage import LogStore
from kvcore.storage.files import fsync_dir
from kvcore.storage.lock import DirLock

PARTITION_BYTES = 2
MAX_PARTITION = (1 << (8 * PARTITION_BYTES)) - 1       # 65535
STORE_MAX_KEY_BYTES = 65535                             # LogStore's hard bound on a key
MAX_KEY_BYTES = STORE_MAX_KEY_BYTES - PARTITION_BYTES   # 65533: the longest key a hint can carry
MAX_CLOCK_BYTES = (1 << 31) - 1                         # LogStore's hard bound on a value
MAX_TARGET_CHARS = 128
_TARGET_RE = re.compile(r"[A-Za-z0-9_.\-]{1,%d}" % MAX_TARGET_CHARS)
_DROPPED_PREFIX = "~dropped-"     # '~' is not allowed in a target id, so never mistaken for one
_LOCK_NAME = "~LOCK"              # one HintLog per directory, even before any target exists
_SCAN_CHUNK = 1000


class HintError(Exception):
    """Base of the hint log's errors."""


class BadTarget(HintError, ValueError):
    """A target node id that is not a safe directory name (letters, digits, '_', '.', '-')."""


class BadHint(HintError, ValueError):
    """A partition, key or clock that a hint cannot carry (wrong type, empty, too large)."""


def check_target(target):
    """Return `target` if it is a valid node id, else raise BadTarget saying why."""
    if not isinstance(target, str):
        raise BadTarget(f"a target node id must be a str, not {type(target).__name__}")
    if not _TARGET_RE.fullmatch(target) or target in (".", ".."):
        raise BadTarget(f"bad target node id {target!r}: use 1-{MAX_TARGET_CHARS} letters, digits, "
                        f"'_', '.' or '-' (not '.' or '..')")
    return target


def check_partition(partition):
    if not isinstance(partition, int) or isinstance(partition, bool):
        raise BadHint(f"a partition must be an int, not {type(partition).__name__}")
    if not 0 <= partition <= MAX_PARTITION:
        raise BadHint(f"partition {partition} is outside [0, {MAX_PARTITION}]")
    return partition


def encode_hint_key(partition, key):
    """The LogStore key of a hint: 2-byte big-endian partition, then the key's bytes."""
    return check_partition(partition).to_bytes(PARTITION_BYTES, "big") + key


def decode_hint_key(raw):
    """(partition, key) from a LogStore key made by encode_hint_key."""
    if len(raw) <= PARTITION_BYTES:
        raise BadHint(f"hint record key {raw!r} is too short to hold a partition and a key")
    return int.from_bytes(raw[:PARTITION_BYTES], "big"), raw[PARTITION_BYTES:]


def dvv_merge(old, new):
    """The merge a node passes: the DVV ``sync`` of two encoded clocks (kvcore.versions)."""
    from kvcore import versions as V
    return V.encode(V.sync(V.decode(old), V.decode(new)))


def _check_limit(name, value, lo, hi):
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


class _Target:
    """One target's store and its in-memory replay position."""

    __slots__ = ("store", "cursor", "leftover", "end_of_pass")

    def __init__(self, store):
        self.store = store
        self.cursor = 0            # LogStore.scan cursor of the next chunk
        self.leftover = deque()    # record keys of the current chunk not yet handed out
        self.end_of_pass = False   # the last scan returned cursor 0: the pass ends with leftover


class HintLog:
    """Durable hints per target node; see the module docstring and docs/handoff.md.

    ``merge(old_bytes, new_bytes) -> bytes`` combines two clocks of the same key (``dvv_merge``
    for DVV clocks). ``fsync`` ("always", "interval", "never") and ``sync_interval_ms`` are the
    LogStore policies of every target store; ``max_key_bytes`` and ``max_clock_bytes`` bound what
    ``add`` accepts (a merged clock is bounded only by the store's hard limit: a merge must never
    be refused).
    """

    def __init__(self, directory, merge, *, fsync="interval", sync_interval_ms=1000,
                 max_key_bytes=MAX_KEY_BYTES, max_clock_bytes=MAX_CLOCK_BYTES,
                 max_segment_bytes=64 << 20):
        if not callable(merge):
            raise TypeError("merge must be a callable merge(old_bytes, new_bytes) -> bytes")
        _check_limit("max_key_bytes", max_key_bytes, 1, MAX_KEY_BYTES)
        _check_limit("max_clock_bytes", max_clock_bytes, 1, MAX_CLOCK_BYTES)
        self.directory = os.fspath(directory)
        self._merge = merge
        self._max_key = max_key_bytes
        self._max_clock = max_clock_bytes
        # Stores are opened with the hard bounds so that a reopen with smaller limits still reads
        # every hint; the limits above are checked by add() only.
        self._store_opts = dict(fsync=fsync, sync_interval_ms=sync_interval_ms,
                                max_segment_bytes=max_segment_bytes,
                                max_key_bytes=STORE_MAX_KEY_BYTES, max_value_bytes=MAX_CLOCK_BYTES)
        self._lock = threading.RLock()
        self._targets = {}
        self._closed = False
        os.makedirs(self.directory, exist_ok=True)
        self._dirlock = DirLock(os.path.join(self.directory, _LOCK_NAME))
        try:
            for name in sorted(os.listdir(self.directory)):
                path = os.path.join(self.directory, name)
                if name.startswith(_DROPPED_PREFIX):   # a drop interrupted by a crash: finish it
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.isdir(path) and _TARGET_RE.fullmatch(name) and name not in (".", ".."):
                    self._targets[name] = _Target(LogStore(path, **self._store_opts))
        except BaseException:
            for t in self._targets.values():
                t.store.close()
            self._dirlock.release()
            raise

    # ---- checks ------------------------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise HintError(f"hint log {self.directory} is closed")

    def _check_key(self, key):
        if type(key) is not bytes:
            raise BadHint(f"a hint's key must be bytes, not {type(key).__name__}")
        if not key:
            raise BadHint("a hint's key must not be empty")
        if len(key) > self._max_key:
            raise BadHint(f"a hint's key of {len(key)} bytes is over the limit of {self._max_key}")

    def _check_clock(self, clock, limit):
        if type(clock) is not bytes:
            raise BadHint(f"a hint's clock must be bytes, not {type(clock).__name__}")
        if not clock:
            raise BadHint("a hint's clock must not be empty")
        if len(clock) > limit:
            raise BadHint(f"a hint's clock of {len(clock)} bytes is over the limit of {limit}")

    def _record_key(self, target, partition, key):
        check_target(target)
        check_partition(partition)
        self._check_key(key)
        return encode_hint_key(partition, key)

    def _target(self, target):
        t = self._targets.get(target)
        if t is None:
            t = _Target(LogStore(os.path.join(self.directory, target), **self._store_opts))
            self._targets[target] = t
        return t

    # ---- writes ------------------------------------------------------------------------

    def add(self, target, partition, key, clock_bytes):
        """Store a hint for `target`, merged with any hint it holds for (partition, key).

        Returns the clock bytes now stored. Durable at once with fsync="always", else after the
        next ``sync()`` (or the store's interval sync).
        """
        with self._lock:
            self._check_open()
            rk = self._record_key(target, partition, key)
            self._check_clock(clock_bytes, self._max_clock)
            return self._add_raw(target, rk, clock_bytes)

    def _add_raw(self, target, rk, clock_bytes):
        store = self._target(target).store
        old = store.get(rk)
        if old is None:
            new = clock_bytes
        else:
            new = self._merge(old, clock_bytes)
            self._check_clock(new, MAX_CLOCK_BYTES)
            if new == old:
                return old
        store.put(rk, new)
        return new

    def ack(self, target, partition, key, clock_bytes):
        """The target stored `clock_bytes` for (partition, key): delete the hint if it still
        equals those bytes (compare-and-delete). True if deleted; False if the hint is absent or
        was merged meanwhile with a newer write (it stays, and is replayed again)."""
        with self._lock:
            self._check_open()
            rk = self._record_key(target, partition, key)
            self._check_clock(clock_bytes, MAX_CLOCK_BYTES)
            t = self._targets.get(target)
            if t is None or t.store.get(rk) != clock_bytes:
                return False
            t.store.delete(rk)
            return True

    def reassign(self, target, new_owner_of):
        """`target` left the cluster: merge each of its hints into the hints of
        ``new_owner_of(partition)``, sync those stores, then drop the target's store.

        Returns {new owner: hints moved}. If ``new_owner_of`` raises or names a bad owner, the
        target keeps every hint (some may already be copied: a copy is merged, so harmless) and
        the call can be retried. A crash midway likewise leaves copies, never a loss.
        """
        with self._lock:
            self._check_open()
            check_target(target)
            t = self._targets.get(target)
            if t is None:
                return {}
            moved = {}
            for rk in list(t.store.keys()):
                clock = t.store.get(rk)
                if clock is None:
                    continue
                partition, _ = decode_hint_key(rk)
                owner = new_owner_of(partition)
                try:
                    check_target(owner)
                except BadTarget as e:
                    raise BadTarget(f"new_owner_of({partition}) gave a bad owner: {e}") from None
                if owner == target:
                    raise BadTarget(f"new_owner_of({partition}) gave {target!r}, the target "
                                    f"being removed")
                self._add_raw(owner, rk, clock)
                moved[owner] = moved.get(owner, 0) + 1
            for owner in moved:
                self._targets[owner].store.sync()
            self._drop(target)
            return moved

    def _drop(self, target):
        t = self._targets.pop(target)
        t.store.close()
        path = os.path.join(self.directory, target)
        gone = os.path.join(self.directory, _DROPPED_PREFIX + target)
        if os.path.exists(gone):
            shutil.rmtree(gone)
        os.rename(path, gone)          # atomic: the target's store disappears as a whole
        fsync_dir(self.directory)
        shutil.rmtree(gone, ignore_errors=True)

    # ---- reads -------------------------------------------------------------------------

    def targets(self):
        """Sorted ids of the targets holding at least one hint."""
        with self._lock:
            self._check_open()
            return sorted(name for name, t in self._targets.items() if len(t.store))

    def pending(self, target):
        """How many hints `target` has (0 for a target never seen)."""
        with self._lock:
            self._check_open()
            check_target(target)
            t = self._targets.get(target)
            return 0 if t is None else len(t.store)

    def get(self, target, partition, key):
        """The clock bytes of the hint for (target, partition, key), or None."""
        with self._lock:
            self._check_open()
            rk = self._record_key(target, partition, key)
            t = self._targets.get(target)
            return None if t is None else t.store.get(rk)

    def holders(self, partition, key):
        """Sorted targets holding a hint for (partition, key): a tombstone may be reaped only
        when no member holds one (docs/algorithms.md, section 6 (c))."""
        with self._lock:
            self._check_open()
            check_partition(partition)
            self._check_key(key)
            rk = encode_hint_key(partition, key)
            return sorted(name for name, t in self._targets.items() if rk in t.store)

    def items(self, target):
        """Every (partition, key, clock_bytes) hint of `target`, in no particular order."""
        with self._lock:
            self._check_open()
            check_target(target)
            t = self._targets.get(target)
            if t is None:
                return []
            return [decode_hint_key(rk) + (clock,) for rk, clock in t.store.items()]

    def batch(self, target, max_items=100, max_bytes=1 << 20):
        """The next hints of `target` to replay: a list of (partition, key, clock_bytes).

        At most `max_items` hints and, unless the first hint alone is larger, at most `max_bytes`
        of clocks. Successive calls walk the target's hints in the store's hash order from a
        cursor kept in memory; a batch stops at the end of a pass and the next call starts a new
        pass (hints not yet acknowledged come round again). Returns [] only when the target has
        no hints. Call ``ack`` for each hint the target stored.
        """
        _check_limit("max_items", max_items, 1, 1 << 30)
        _check_limit("max_bytes", max_bytes, 1, 1 << 40)
        with self._lock:
            self._check_open()
            check_target(target)
            t = self._targets.get(target)
            if t is None:
                return []
            out, size = [], 0
            restarted = t.cursor == 0 and not t.leftover and not t.end_of_pass
            while len(out) < max_items and size < max_bytes:
                if not t.leftover:
                    if t.end_of_pass:
                        t.end_of_pass = False
                        if out or restarted:
                            break
                        restarted = True       # nothing found since the cursor: wrap once
                    count = min(max(max_items - len(out), 1), _SCAN_CHUNK)
                    t.cursor, keys = t.store.scan(t.cursor, count)
                    t.end_of_pass = t.cursor == 0
                    t.leftover.extend(keys)
                    continue
                rk = t.leftover[0]
                clock = t.store.get(rk)
                if clock is not None:
                    if out and size + len(clock) > max_bytes:
                        break
                    out.append(decode_hint_key(rk) + (clock,))
                    size += len(clock)
                t.leftover.popleft()
            return out

    def rewind(self, target):
        """Restart `target`'s replay from the beginning of its hints (e.g. after a failed send)."""
        with self._lock:
            self._check_open()
            check_target(target)
            t = self._targets.get(target)
            if t is not None:
                t.cursor, t.end_of_pass = 0, False
                t.leftover.clear()

    # ---- maintenance and durability ----------------------------------------------------

    def compact(self, due=None):
        """Compact every target store (drop the records of acknowledged hints), or only those
        whose (data_bytes, live_bytes) make due(...) true. Runs on the caller's thread: a
        target store is mostly acknowledged hints (deleted records), so little is copied."""
        with self._lock:
            self._check_open()
            n = 0
            for t in self._targets.values():
                if due is None or due(*t.store.sizes()):
                    t.store.merge()
                    n += 1
            return n

    def stats(self):
        """{target: {"pending": n, "store": LogStore.stats()}} for every open target store."""
        with self._lock:
            self._check_open()
            return {name: {"pending": len(t.store), "store": t.store.stats()}
                    for name, t in sorted(self._targets.items())}

    def sync(self):
        """Make every hint added (and every ack) so far durable."""
        with self._lock:
            self._check_open()
            for t in self._targets.values():
                t.store.sync()

    def close(self):
        """Sync and close every target store (idempotent)."""
        self._shutdown(clean=True)

    def _abandon(self):
        """Stop as a killed process would: no final sync (crash tests only)."""
        self._shutdown(clean=False)

    def _shutdown(self, clean):
        with self._lock:
            if self._closed:
                return
            self._closed = True
            error = None
            for t in self._targets.values():
                try:
                    t.store.close() if clean else t.store._abandon()
                except Exception as e:     # close the others anyway; report the first failure
                    error = error or e
            self._targets = {}
            self._dirlock.release()
            if error is not None:
                raise error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._closed else f"{len(self._targets)} targets"
        return f"<HintLog {self.directory!r} {state}>"
