"""Model-based test: LogStore against a dict, with merge, reopen, crash and injected disk
faults (docs/design.md, habit 8).

A crash abandons the store (no sync, no hints, no clean marker) and truncates the
active segment at a random byte after the last synced offset, then may append
zeros (what a killed compiled store leaves: its reserved space). Every synced
write must survive; of the unsynced ones, exactly those whose record ends
before the cut do, and recovery cuts the file back to the last whole record.

The machines with map_cache=1 read older segments through a one-entry map cache.

The simulator's storage twin (kvnet/sim/storage.py, records in memory) runs the same machine:
only its crash differs, being file-specific (no segment file to truncate and no zeros left
behind): the twin's disk is cut at the drawn offset, and the next open counts the torn tail.

A write with an injected fault (LogStore._fail_next: open, write, ftruncate or fdatasync
failing with ENOSPC, EIO or EMFILE) either succeeds (the fault hit no call) or raises and
changes nothing; a failed fdatasync makes the store read-only (StoreReadOnly), and a reopen
after it loses nothing acknowledged.
"""
import errno
import importlib
import random
import os
import shutil
import tempfile

from hypothesis import event, settings, strategies as st
from kvcore.storage.options import maybe_compress
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kvcore.errors import StoreReadOnly

KEYS = st.sampled_from([b"a", b"b", b"c", b"key-%d" % 7, b"k" * 300, bytes(range(1, 40))])
FAULT_OPS = st.sampled_from(["open", "write", "ftruncate", "fdatasync"])
ERRNOS = st.sampled_from([errno.ENOSPC, errno.EIO, errno.EMFILE])
VALUES = st.one_of(st.binary(max_size=64), st.just(b"z" * 700), st.binary(min_size=200, max_size=900))
OPTS = dict(fsync="never", max_segment_bytes=4096, compress_min_bytes=128)


def make_machine(module_name, **extra):
    class StoreMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.mod = importlib.import_module(module_name)
            self.memory = module_name == "kvnet.sim.storage"   # (the twin: no files)
            self.dir = tempfile.mkdtemp(prefix="ringkv-model-")
            self.durable = {}           # what a crash cannot lose
            self.pending = []           # (segment path, end offset, key, value or None) not yet synced
            self.store = None

        @initialize()
        def open(self):
            self.store = self.mod.LogStore(self.dir, **OPTS, **extra)

        def teardown(self):
            if self.store is not None:
                self.store.close()
            if self.memory:
                self.mod.DISK.forget(self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)

        def model(self):
            m = dict(self.durable)
            for _, _, k, v in self.pending:
                self._apply(m, k, v)
            return m

        @staticmethod
        def _apply(m, k, v):
            if v is None:
                m.pop(k, None)
            else:
                m[k] = v

        def _settle(self):
            """Move writes that are known synced (sealed segment or below synced_offset) to durable."""
            st_ = self.store.stats()
            keep = []
            for seg, end, k, v in self.pending:
                if seg != st_["active_segment"] or end <= st_["synced_offset"]:
                    self._apply(self.durable, k, v)
                else:
                    keep.append((seg, end, k, v))
            self.pending = keep

        def _record(self, k, v):
            st_ = self.store.stats()
            self.pending.append((st_["active_segment"], st_["active_offset"], k, v))
            self._settle()

        @rule(k=KEYS, v=VALUES)
        def put(self, k, v):
            self.store.put(k, v)
            self._record(k, v)

        @rule(items=st.lists(st.tuples(KEYS, VALUES), max_size=6))
        def put_many(self, items):
            self.store.put_many(items)
            if not items:
                return
            # Records land in order; walk back from the end offset to place each one.
            # Those before the active segment's header were sealed (synced) by a roll.
            st_ = self.store.stats()
            end = st_["active_offset"]
            placed = []
            for k, v in reversed(items):
                placed.append((end, k, v))
                stored, _ = maybe_compress(v, OPTS["compress_min_bytes"])
                end -= 24 + len(k) + len(stored)
            for end, k, v in reversed(placed):
                seg = st_["active_segment"] if end > 32 else None
                self.pending.append((seg, end, k, v))
            self._settle()

        @rule(k=KEYS)
        def delete(self, k):
            expect = k in self.model()
            assert self.store.delete(k) is expect
            if expect:
                self._record(k, None)

        @rule()
        def sync(self):
            self.store.sync()
            self._settle()

        @rule()
        def merge(self):
            self.store.merge()
            self._settle()
            assert not self.pending

        @rule(k=KEYS, v=VALUES, op=FAULT_OPS, err=ERRNOS, after=st.sampled_from([0, 1]),
              kind=st.sampled_from(["put", "delete", "put_many"]), roll=st.integers(0, 3))
        def faulty_write(self, k, v, op, err, after, kind, roll):
            """A write with a fault injected: it succeeds (no call of that kind was made, or
            `after` of them were) or raises having changed nothing; a failed fdatasync (the
            seal of a roll) leaves the store read-only, and a reopen loses nothing. roll 0: a
            value that does not fit the active segment (incompressible), so the write rolls."""
            before = self.store.stats()
            if roll == 0 and kind != "delete" and before["active_offset"] > 32:
                room = OPTS["max_segment_bytes"] - before["active_offset"]
                v = random.Random(len(self.pending)).randbytes(max(room, 0) + 1)
            was = k in self.model()
            self.store._fail_next(op, err, after=after)
            try:
                if kind == "put":
                    self.store.put(k, v)
                elif kind == "put_many":
                    self.store.put_many([(k, v)])
                else:
                    assert self.store.delete(k) is was
            except StoreReadOnly as exc:
                assert op == "fdatasync" and exc.errno == err
                event("a failed fdatasync: read-only")
                self._reopen_failed()
                return
            except OSError as exc:
                assert exc.errno == err
                event(f"a write refused ({op})")
                after_ = self.store.stats()
                assert after_["keys"] == before["keys"] and not after_["read_only"]
                if after_["active_segment"] == before["active_segment"]:   # (or it rolled)
                    assert after_["active_offset"] == before["active_offset"]
                self.store._fail_next(None)
                self._settle()              # (a roll before the refusal sealed the old segment)
                return
            self.store._fail_next(None)
            if kind == "delete":
                if was:
                    self._record(k, None)
            else:
                self._record(k, v)

        @rule(fail=st.booleans())
        def seal(self, fail):
            """seal_later: what the syncer thread does after rolls (elsewhere: nothing to do)."""
            pending = self.store.stats()["sealing_segments"]
            if fail:
                self.store._fail_next("fdatasync", errno.EIO)
            try:
                self.store.seal_pending()
            except StoreReadOnly:
                assert fail and pending
                self._reopen_failed()
                return
            self.store._fail_next(None)
            assert self.store.stats()["sealing_segments"] == 0
            self._settle()

        @rule()
        def faulty_sync(self):
            self.store._fail_next("fdatasync", errno.EIO)
            try:
                self.store.sync()
            except StoreReadOnly:
                assert self.store.stats()["read_only"]
                self._reopen_failed()
                return
            raise AssertionError("an injected fdatasync failure did not fail sync()")

        def _reopen_failed(self):
            """Close a read-only store (as a crash leaves it: no CLEAN) and open it again: this
            process's page cache still holds every write, so none is lost."""
            for write in (lambda: self.store.put(b"a", b"x"), self.store.sync):
                try:
                    write()
                except StoreReadOnly:
                    pass
                else:
                    raise AssertionError("a read-only store took a write or a sync")
            self.store.close()
            self.store = self.mod.LogStore(self.dir, **OPTS, **extra)
            assert not self.store.recovery["clean"]
            assert self.store.recovery["corrupt_records"] == 0
            self.durable = self.model()
            self.pending = []

        @rule()
        def reopen(self):
            self.store.close()
            self.store = self.mod.LogStore(self.dir, **OPTS, **extra)
            assert self.store.recovery["clean"]
            self.durable = self.model()
            self.pending = []

        def _crash_memory(self, data):
            """The crash of the twin: its disk cut at a drawn offset after the last sync."""
            st_ = self.store.stats()
            path = st_["active_segment"]
            cut = data.draw(st.integers(st_["synced_offset"], st_["active_offset"]), label="cut")
            self.store = None
            self.mod.DISK.crash(self.dir, at=cut)
            data_end = max([st_["synced_offset"]] + [end for seg, end, _, _ in self.pending
                                                     if seg == path and end <= cut])
            for seg, end, k, v in self.pending:
                if seg != path or end <= cut:
                    self._apply(self.durable, k, v)
            self.pending = []
            self.store = self.mod.LogStore(self.dir, **OPTS, **extra)
            rec = self.store.recovery
            assert not rec["clean"]
            assert rec["corrupt_records"] == 0
            assert rec["torn_tail_bytes"] == cut - data_end

        @rule(data=st.data())
        def crash(self, data):
            if self.memory:
                return self._crash_memory(data)
            st_ = self.store.stats()
            self.store._abandon()
            self.store = None
            path = st_["active_segment"]
            left = os.path.getsize(path)        # the compiled store leaves its reserved zeros
            assert left == st_["active_offset"] + st_["reserved_bytes"]
            cut = data.draw(st.integers(st_["synced_offset"], st_["active_offset"]), label="cut")
            # Zeros after the cut: the reserved space a kill leaves, or pages a power cut
            # lost; a cut inside a record then leaves a torn record followed by zeros.
            zeros = data.draw(st.sampled_from([0, 1, 4096 + 7, max(left - cut, 0)]), label="zeros")
            with open(path, "r+b") as f:
                f.truncate(cut)
                f.truncate(cut + zeros)
            data_end = max([st_["synced_offset"]] + [end for seg, end, _, _ in self.pending
                                                     if seg == path and end <= cut])
            for seg, end, k, v in self.pending:
                if seg != path or end <= cut:       # (a kill loses no page of another file)
                    self._apply(self.durable, k, v)
            self.pending = []
            self.store = self.mod.LogStore(self.dir, **OPTS, **extra)
            rec = self.store.recovery
            assert not rec["clean"]
            assert rec["corrupt_records"] == 0
            assert rec["zero_tail_bytes"] >= zeros
            assert rec["torn_tail_bytes"] + rec["zero_tail_bytes"] == \
                cut + zeros - data_end + st_["sealing_reserved_bytes"]   # (seal_later)
            assert os.path.getsize(path) == data_end

        @invariant()
        def matches_model(self):
            if self.store is None:
                return
            m = self.model()
            assert len(self.store) == len(m)
            for k in [b"a", b"b", b"c", b"key-7", b"k" * 300, bytes(range(1, 40))]:
                assert self.store.get(k) == m.get(k), k
                assert (k in self.store) == (k in m)
            assert sorted(self.store.keys()) == sorted(m)
            if "map_cache" in extra:            # (the cache's maps, or the twin's descriptors)
                st_ = self.store.stats()
                assert st_["mapped_segments"] <= extra["map_cache"]
                if st_["map_misses"] > 2:
                    event("sealed segments mapped on demand")

    StoreMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
    return StoreMachine


TestCythonStore = make_machine("kvcore.storage.store").TestCase
TestPythonStore = make_machine("kvcore.storage.store_py").TestCase
TestCythonStoreCollisions = make_machine("kvcore.storage.store", _hash_mask=0xC000000000000000).TestCase
# a roll only opens the next segment; seal_pending() (the rule `seal`, a sync, a close) seals
TestCythonStoreSealLater = make_machine("kvcore.storage.store", seal_later="manual").TestCase
# a map cache of one sealed segment: nearly every read of an older segment is a miss that
# unmaps the one mapped (docs/storage.md, "Resources"); with collisions, lookups compare keys
# across segments; with seal_later, rolled-out segments are pinned until sealed
TestCythonStoreTinyMapCache = make_machine("kvcore.storage.store", map_cache=1).TestCase
TestCythonStoreTinyMapCacheCollisions = make_machine(
    "kvcore.storage.store", map_cache=1, _hash_mask=0xC000000000000000).TestCase
TestCythonStoreTinyMapCacheSealLater = make_machine(
    "kvcore.storage.store", map_cache=1, seal_later="manual").TestCase
TestPythonStoreTinyMapCache = make_machine("kvcore.storage.store_py", map_cache=1).TestCase
# the simulator's storage twin (kvnet/sim/storage.py), with and without narrowed hashes
TestMemoryStore = make_machine("kvnet.sim.storage").TestCase
TestMemoryStoreCollisions = make_machine("kvnet.sim.storage",
                                         _hash_mask=0xC000000000000000).TestCase
