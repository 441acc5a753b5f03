"""The node's local replica: one LogStore per partition, and the rules that keep dots unique.

Every read-modify-write of a key's clock here is synchronous (no await inside),
so on the event loop it is atomic per key, as docs/algorithms.md, section 1 demands.
Actor ids are (node, incarnation, epoch): the incarnation is drawn when the data
directory is created, epochs come from a node-wide counter leased in blocks, and
each partition has a trusted-from epoch raised whenever its store cannot vouch
for every dot it minted (docs/replica.md).
"""
import asyncio
import errno as E
import logging
import os
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import msgpack

from kvcore import merkle as M
from kvcore import versions as V
from kvcore._native import select
from kvcore.errors import MergeError, StoreClosed, StoreReadOnly
from kvcore.storage import LogStore
from kvcore.storage import journal as JR
from kvcore.storage.files import fsync_dir, write_file
from kvnet.errors import DiskError, ObjectTooLarge, TooManySiblings
from kvnet.errors import os_cause as _cause
from kvnet.groupcommit import JOURNAL_CHECKPOINT_BYTES, GroupCommit

EPOCH_BLOCK = 10_000
EMPTY_CHUNK = 4096             # keys per scan step of empty_partition (FLUSHDB)
OPEN_WORKERS = 16              # threads opening partitions at start (open_all)
REBUILD_CHUNK = 256            # records folded between two yields to the loop (tree rebuild):
                               # about 40 us in C, so a request waits little behind one
# Tree folds running at once per node (RebuildGate). They all run on the loop, so more at once
# build no faster and only make each request wait behind more chunks.
REBUILD_CONCURRENCY = 1
log = logging.getLogger("kvnet.replica")
RW = select("kvcore.replicawrite", "kvcore.replicawrite_py")


def _read_msgpack(path):
    try:
        with open(path, "rb") as f:
            return msgpack.unpackb(f.read())
    except FileNotFoundError:
        return None


def _write_msgpack(path, obj):
    write_file(path + ".tmp", msgpack.packb(obj))
    os.replace(path + ".tmp", path)
    fsync_dir(os.path.dirname(path) or ".")


class Identity:
    """The node's data identity: incarnation and the epoch lease (docs/algorithms.md, section 1)."""

    def __init__(self, data_dir, node):
        self.node = node
        os.makedirs(data_dir, exist_ok=True)
        self._id_path = os.path.join(data_dir, "IDENTITY")
        self._lease_path = os.path.join(data_dir, "EPOCH")
        ident = _read_msgpack(self._id_path)
        if ident is None:
            ident = {"node": node, "incarnation": secrets.randbits(64)}
            _write_msgpack(self._id_path, ident)
        if ident["node"] != node:
            raise ValueError(f"data directory {data_dir} belongs to node {ident['node']!r}, not {node!r}")
        self.incarnation = ident["incarnation"]
        self.prefix = V.actor_prefix(node, self.incarnation)   # for the byte-level mint
        leased = _read_msgpack(self._lease_path) or 0
        self._next = leased + 1          # continue after every epoch a previous run may have used
        self._leased = leased            # durable: the file holds this or more
        self._lease_lock = threading.Lock()   # the file only grows, whoever writes it
        self._next_lock = threading.Lock()
        self._extending = None           # the thread leasing the next block, or None
        self._ahead_failed = None        # the lease end at which a thread's write failed
        self._lease_to(self._next + EPOCH_BLOCK - 1)

    def _lease_to(self, end):
        """Make `end` the durable lease unless one as large is already (then nothing)."""
        with self._lease_lock:
            if end > self._leased:
                _write_msgpack(self._lease_path, end)
                self._leased = end       # only once it is durable

    def new_epoch(self):
        """A node-wide epoch never handed out before. Once half of the leased block is used,
        a thread leases the next one, so the caller (the event loop) does not wait for its
        fsync; only when that thread has not finished by the block's end does the caller
        write the lease itself (after the thread's write, under the same lock)."""
        with self._next_lock:            # partitions opened in threads may ask together
            if self._next > self._leased:
                self._lease_to(self._next + EPOCH_BLOCK - 1)
            e = self._next
            self._next += 1
        if self._leased - e < EPOCH_BLOCK // 2 and self._extending is None \
                and self._ahead_failed != self._leased:
            self._extending = threading.Thread(target=self._extend,
                                               args=(self._leased + EPOCH_BLOCK,),
                                               name="ringkv-epoch-lease", daemon=True)
            self._extending.start()
        return e

    def _extend(self, end):
        try:
            self._lease_to(end)
        except Exception:   # the caller leases it itself at the block's end, and fails there
            log.exception("leasing epochs ahead failed")
            self._ahead_failed = self._leased
        finally:
            self._extending = None

    def issued_since(self, epoch):
        """Has any epoch been handed out after `epoch` (by any partition)?"""
        return self._next - 1 > epoch

    def actor(self, epoch):
        return (self.node, self.incarnation, epoch)

    def owns(self, actor):
        return (isinstance(actor, (tuple, list)) and len(actor) == 3
                and actor[0] == self.node and actor[1] == self.incarnation)


class RebuildGate:
    """At most `limit` tree folds at once (per LocalReplica, on its loop): after a crash every
    partition folds its tree in the background, and a fold yields to the loop between chunks;
    with all of them ready at once a request would wait behind one chunk of each."""

    def __init__(self, limit=REBUILD_CONCURRENCY):
        self.limit = limit
        self._loop = self._sem = None

    def slot(self):
        """The semaphore of the running loop (a new loop, as in tests, gets its own)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._sem = loop, asyncio.Semaphore(self.limit)
        return self._sem


class Partition:
    """One partition's store, its Merkle tree and its trusted-from epoch.

    Faults (docs/storage.md, "Faults"; docs/antientropy.md, "Corrupt records"): a record found
    corrupt anywhere is dropped by the store and reported here (`_corrupted`): logged once,
    trusted-from raised before the next write, and the tree marked unbuilt and rebuilt in the
    background (out of exchanges meanwhile). A failed fdatasync makes the partition read-only
    (`fail`): every write is refused with an error naming the node, the partition and errno.
    """

    def __init__(self, path, identity, p=None, replay=None, **store_opts):
        self.path = path
        self.p = p if p is not None else int(os.path.basename(path))
        self.identity = identity
        self.read_only = None           # why writes are refused (a failed fdatasync), or None
        self.corrupt_dropped = 0        # records dropped as corrupt since the open (callbacks)
        self.rebuilds = 0               # background tree rebuilds finished
        self.on_rebuilt = None          # called (partition) after a rebuild (anti-entropy queues it)
        self.on_fail = None             # called (partition) when it turns read-only
        self.rebuild_gate = None        # a RebuildGate: few tree folds at once (start_rebuild)
        self._opening = True            # in __init__: distrusted there, no rebuild scheduled
        self._folding = False           # the rebuild's own reads: their finds need no rerun
        self._rebuild_task = None
        self._rebuild_again = False
        self.store = LogStore(path, **store_opts)
        self.store.on_corrupt = self._corrupted
        self.replayed = 0               # records the journal's replay wrote again at the open
        if replay:
            # what the journal holds since its last checkpoint, written again in order (the
            # store may have lost any of it with the page cache), then made durable here
            # before the journal files are deleted (LocalReplica.open_existing)
            try:
                self.replayed, bad = self.store.apply_records(replay)
                self.store.sync()
            except BaseException:
                self.store.close()
                raise
            if bad:
                log.error("node %s: partition %d: %d journal frames held a record failing its "
                          "check: their rest not replayed", identity.node, self.p, bad)
        self._trusted_path = os.path.join(path, "TRUSTED")
        self._tree_path = os.path.join(path, "TREE")
        self.trusted_from = _read_msgpack(self._trusted_path) or 0
        rec = self.store.recovery
        for seg_id, offset in rec.get("corrupt_at", ()):
            log.warning("node %s: partition %d: the record at offset %d of segment %016x fails "
                        "its CRC (found at open): dropped as missing (the other replicas repair "
                        "it)", identity.node, self.p, offset, seg_id)
        clean = (rec["clean"] and not rec["corrupt_records"] and not rec["torn_tail_bytes"]
                 and not replay)
        if not clean and len(self.store):
            # An empty store vouches for nothing: a key not found here gets a fresh epoch anyway.
            self.distrust(identity.new_epoch())
        self.tree = self._load_tree(clean)
        self._opening = False
        # Anti-entropy leaves out a partition whose tree is not built (docs/algorithms.md,
        # section 4): one opened without a trusted tree (after a crash) until the fold over its store
        # is done, in the background (start_rebuild, then _rebuild: requests never wait for
        # it), and one whose record found corrupt is being folded out of it.
        self.tree_built = self.tree is not None
        self._fold_pending = not self.tree_built
        if not self.tree_built:
            self.tree = M.MerkleTree()              # the live tree: writes update it meanwhile

    @property
    def corrupt_records(self):
        """Records of this partition found corrupt since its open (at the open's scan too)."""
        return self.store.recovery["corrupt_records"] + self.corrupt_dropped

    def _load_tree(self, clean):
        """The tree saved by a clean close, used once (the file is deleted on load, so a crash
        leaves none); the empty tree of an empty store; otherwise None: the tree is folded
        from the store, in the background (docs/algorithms.md, section 4)."""
        tree = None
        try:
            with open(self._tree_path, "rb") as f:
                data = f.read()
            os.unlink(self._tree_path)
            fsync_dir(self.path)
            if clean:
                tree = M.MerkleTree.from_bytes(data)
        except FileNotFoundError:
            pass
        except ValueError:
            tree = None
        if tree is None and not len(self.store):
            tree = M.MerkleTree()
        return tree

    def start_rebuild(self, gate=None):
        """Start the fold of a partition opened without a trusted tree: a task of the running
        loop, `gate` (a RebuildGate) letting few run at once; with no loop in this thread (a
        tool, a test), the fold now. The opener calls it in its own thread once the partition
        is open (LocalReplica opens partitions in worker threads, which have no loop)."""
        if gate is not None:
            self.rebuild_gate = gate
        if self._fold_pending:
            self._fold_pending = False
            self._schedule_rebuild()

    def close(self):
        """Save the tree for the next clean open, then close the store. A tree being rebuilt
        is not saved (it may still hold a dropped record), nor that of a read-only partition
        (its store closes as after a crash: the next open folds and distrusts it), nor that of
        an empty partition (the empty tree, which the open's fold rebuilds for nothing)."""
        task, self._rebuild_task = self._rebuild_task, None
        if task is not None:
            task.cancel()
        if self.tree_built and self.read_only is None and not self.store.failed \
                and len(self.store):
            try:
                write_file(self._tree_path, self.tree.to_bytes())
            except OSError as exc:          # (no tree: the next open folds one)
                log.warning("node %s: partition %d: saving its tree failed: %s",
                            self.identity.node, self.p, _cause(exc))
        self.store.close()

    def distrust(self, epoch):
        """Dots of epochs below this one may have been lost here: never extend them."""
        self.trusted_from = epoch
        _write_msgpack(self._trusted_path, epoch)

    def _distrust_needed(self):
        """False when no epoch was handed out since trusted-from was last raised: no dot of
        this node can then be above it, so raising it again protects nothing."""
        return self.identity.issued_since(self.trusted_from)

    # ---- faults ----------------------------------------------------------------------------

    def _corrupted(self, seg_id, offset):
        """The store dropped a record that fails its CRC (LogStore.on_corrupt): log it once,
        raise trusted-from before the next write, and rebuild the tree without it."""
        self.corrupt_dropped += 1
        log.warning("node %s: partition %d: the record at offset %d of segment %016x fails its "
                    "CRC: dropped as missing (the other replicas repair it)",
                    self.identity.node, self.p, offset, seg_id)
        if self._opening:
            return                  # __init__ distrusts once; its fold left the record out
        if self._distrust_needed():
            try:
                self.distrust(self.identity.new_epoch())
            except OSError as exc:  # unpersisted, it cannot protect the next write: none then
                self.fail(exc, "persisting its trusted-from epoch after a corrupt record")
        self.tree_built = False
        if not self._folding:
            self._schedule_rebuild()

    def fail(self, exc, what=None):
        """Writes are refused from now on: a failed fdatasync (never retried as if it had
        worked), or a trusted-from epoch that could not be persisted. Trusted-from is raised
        (best effort: the store closes without CLEAN, so the next open raises it anyway)."""
        if self.read_only is not None:
            return
        err = exc.errno or E.EIO
        self.read_only = (f"{what or 'fdatasync'} failed: {_cause(exc)}" if what
                          else exc.strerror or str(exc))
        if not self.store.failed:
            self.store._fail(err, what or "a write")
        log.error("node %s: partition %d is read-only: %s (errno %s); reads go on, writes are "
                  "refused until the node restarts on a repaired disk", self.identity.node,
                  self.p, self.read_only, E.errorcode.get(err, err))
        if self.on_fail is not None:
            self.on_fail(self)
        try:
            self.distrust(self.identity.new_epoch())
        except Exception as exc2:
            log.warning("node %s: partition %d: raising its trusted-from epoch failed too: %s",
                        self.identity.node, self.p, exc2)

    def refused(self, exc):
        """The DiskError for a write this partition's store refused with `exc` (an OSError)."""
        node = self.identity.node
        if isinstance(exc, StoreReadOnly) or self.read_only is not None:
            if self.read_only is None:
                self.fail(exc)
            return DiskError(f"node {node}: partition {self.p} is read-only: {self.read_only}; "
                             "restart the node once its disk is repaired")
        return DiskError(f"node {node}: partition {self.p}: write refused: {_cause(exc)}")

    # ---- the tree rebuild ------------------------------------------------------------------

    def _schedule_rebuild(self):
        if self._rebuild_task is not None:
            self._rebuild_again = True          # found by another read meanwhile: fold again
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:                    # no loop here (a thread, a test): now
            self.rebuild_tree_now()
            return
        self._rebuild_task = loop.create_task(self._rebuild())

    async def _rebuild(self):
        gate = self.rebuild_gate.slot() if self.rebuild_gate is not None else nullcontext()
        try:
            async with gate:
                while not await self._rebuild_once():
                    await asyncio.sleep(0)
        except (StoreClosed, asyncio.CancelledError):
            return
        except Exception:
            log.exception("node %s: partition %d: rebuilding its tree failed; it stays out of "
                          "anti-entropy until the node restarts", self.identity.node, self.p)
        finally:
            if self._rebuild_task is asyncio.current_task():
                self._rebuild_task = None
        if self.tree_built and self.on_rebuilt is not None:
            self.on_rebuilt(self)

    async def _rebuild_once(self):
        """Fold the store into a new tree, `chunk` records between two yields to the loop, while
        writes go on updating the live tree (docs/antientropy.md, "Corrupt records"): a
        snapshot of the store and a copy of the tree are taken together; the fold reads the
        records as they were then; `rebase` then replays onto the fold every change made to
        the live tree since the copy. True when done; False to start again (a merge moved the
        records, or another read found a record corrupt meanwhile)."""
        self._rebuild_again = False
        chunk = REBUILD_CHUNK
        store = self.store
        base = self.tree.copy()
        snap = store.snapshot()
        built = M.MerkleTree(self.tree.width, self.tree.depth)
        i, n = 0, len(snap)
        while i < n:
            self._folding = True
            try:
                i = store.fold_snapshot(snap, i, chunk, built)
            except MergeError:
                return False
            finally:
                self._folding = False
            await asyncio.sleep(0)
            if self._rebuild_again:
                return False
        self.tree.rebase(built, base)
        self.tree_built = True
        self.rebuilds += 1
        if self.corrupt_dropped:
            log.info("node %s: partition %d: tree rebuilt without the corrupt records (%d keys)",
                     self.identity.node, self.p, n)
        else:
            log.debug("node %s: partition %d: tree folded (%d keys)", self.identity.node, self.p, n)
        return True

    def rebuild_tree_now(self):
        """The rebuild in one step, when there is no loop to yield to (no write can come
        between the snapshot and the fold: the fold is the tree)."""
        base = self.tree.copy()
        snap = self.store.snapshot()
        built = M.MerkleTree(self.tree.width, self.tree.depth)
        self._folding = True
        try:
            self.store.fold_snapshot(snap, 0, len(snap), built)
        finally:
            self._folding = False
        self.tree.rebase(built, base)
        self.tree_built = True
        self.rebuilds += 1


class LocalReplica:
    """The partitions this node holds, with minting, syncing and group commit."""

    def __init__(self, data_dir, node, *, fsync="interval", sync_interval_ms=1000,
                 max_key_bytes=8 << 10, max_value_bytes=32 << 20, max_siblings=100,
                 max_object_bytes=64 << 20, index_skip_bits=0, min_free_percent=0.0,
                 max_segment_bytes=64 << 20, executor=None, sync_method="auto",
                 journal_checkpoint_bytes=JOURNAL_CHECKPOINT_BYTES):
        self.data_dir = data_dir
        self.identity = Identity(data_dir, node)
        self.fsync = fsync
        # when writes become durable, and what waits for that (kvnet/groupcommit.py)
        self.group = GroupCommit(self, data_dir, node, fsync=fsync,
                                 sync_interval_ms=sync_interval_ms, executor=executor,
                                 sync_method=sync_method,
                                 journal_checkpoint_bytes=journal_checkpoint_bytes)
        self.sync_method = self.group.sync_method
        self.journal = self.group.journal
        self.replay = self.group.replay
        self.replayed_records = 0    # records the start's replay wrote again
        self.max_siblings = max_siblings
        self.max_object_bytes = max_object_bytes    # what a write minted here may leave
        # A stored clock may hold many siblings: the value limit is the coordinator's,
        # per value; the store takes whatever replication brings.
        # index_skip_bits: the ring's partition bits, which every key of a partition shares;
        # the store's index skips them so a partition's keys spread over its whole table.
        # min_free_percent: the stores refuse writes below that share of free disk space.
        # seal_later: a roll on the event loop only opens the next segment; the syncer thread
        # (or the next group commit) seals the old one (docs/storage.md, "Rolling").
        self._store_opts = dict(fsync="never", max_key_bytes=max_key_bytes,
                                max_value_bytes=(1 << 31) - 1, index_skip_bits=index_skip_bits,
                                min_free_percent=min_free_percent,
                                max_segment_bytes=max_segment_bytes, seal_later=True)
        self.partitions = {}
        self.on_tree_rebuilt = None  # fn(p) after a partition's tree is rebuilt (anti-entropy)
        self.rebuild_gate = RebuildGate()   # few tree folds at once (after a crash: all)

    # ---- partitions ----------------------------------------------------------------------

    def partition(self, p):
        part = self.partitions.get(p)
        if part is None:
            try:
                part = self.partitions[p] = self._new_partition(p)
            except OSError as exc:
                raise DiskError(f"node {self.identity.node}: partition {p} cannot be opened: "
                                f"{_cause(exc)}") from exc
            part.start_rebuild(self.rebuild_gate)
        return part

    def _new_partition(self, p):
        rel = _relpath(p)
        path = os.path.join(self.data_dir, rel)
        journal = self.journal
        replay = self.replay.take(rel)
        part = Partition(path, self.identity, p=p, replay=replay, **self._store_opts)
        if replay:
            self.replayed_records += part.replayed
        if journal is not None:
            part.store.attach_journal(journal.buffer, journal.bind(rel))
        part.on_rebuilt = self._rebuilt
        part.on_fail = self.group.failed
        return part

    async def drop(self, p):
        """Delete partition p here (its data handed off: kvnet/node.py _drop_unheld): False
        if it is not open. The store is closed and its directory renamed at once (a later
        ring may give the partition back: it then starts afresh at its path), and deleted in
        a worker thread. With the journal the drop is journaled and made durable before the
        delete, so a replay never writes what was journaled for it before into a partition of
        that number created later."""
        part = self.partitions.pop(p, None)
        if part is None:
            return False
        self.group.forget(part)
        part.store.close()
        gone = f"{part.path}.dropped-{time.monotonic_ns()}"
        os.rename(part.path, gone)      # (a partition(p) from now on starts afresh)
        if self.journal is not None:
            # a replay skips what it holds for a directory not on disk, and once this DROP
            # is durable, what it held before it for a directory of that name
            self.journal.drop(_relpath(p))
            await self.group.commit_all()
        await asyncio.to_thread(shutil.rmtree, gone, True)
        return True

    def _rebuilt(self, part):
        if self.on_tree_rebuilt is not None and self.partitions.get(part.p) is part:
            self.on_tree_rebuilt(part.p)

    def fault_stats(self):
        """Counters of disk faults over the open partitions (INFO shows them)."""
        parts = list(self.partitions.values())
        return {"corrupt_records": sum(part.corrupt_records for part in parts),
                "read_only_partitions": sum(1 for part in parts if part.read_only is not None),
                "trees_rebuilding": sum(1 for part in parts if not part.tree_built),
                "tree_rebuilds": sum(part.rebuilds for part in parts)}

    def write_error(self, part, exc):
        """What a write to `part` that raised `exc` reports: a DiskError naming the node, the
        partition and the cause for a disk fault (an OSError), else `exc` itself."""
        if isinstance(exc, OSError):
            return part.refused(exc)
        return exc

    def open_all(self, parts, workers=OPEN_WORKERS):
        """Open (or create) these partitions now, in up to `workers` threads: creating one
        costs a few directory and file fsyncs (about 7 ms here), so a node that created its
        256 partitions on their first writes served slowly for its first seconds. In threads
        the waits overlap (256 in 0.2 s instead of 1.9 s). Called before the node serves."""
        todo = sorted({p for p in parts if p not in self.partitions})
        if not todo:
            return
        if len(todo) == 1 or workers <= 1:
            for p in todo:
                self.partition(p)
            return
        with ThreadPoolExecutor(min(workers, len(todo)), thread_name_prefix="ringkv-open") as ex:
            for p, part in zip(todo, ex.map(self._new_partition, todo)):
                self.partitions[p] = part
        for p in todo:              # (here, in the caller's thread: its loop runs the folds)
            self.partitions[p].start_rebuild(self.rebuild_gate)

    def opened(self, p):
        """The partition if it is open here, else None (never opens or creates one)."""
        return self.partitions.get(p)

    def open_existing(self):
        """Open every partition this node has on disk (a restart must see all of its data),
        replaying into each what the journal holds for it; then the journal files a crash
        left are deleted (the partitions that replayed have synced their stores)."""
        root = os.path.join(self.data_dir, "partitions")
        if os.path.isdir(root):
            self.open_all(int(name) for name in os.listdir(root) if name.isdigit())
        if self.replay.files:
            replay = self.replay
            for rel in sorted(replay.records):      # (a partition whose directory is gone)
                log.warning("node %s: the journal holds %d frames for %s, which is not on "
                            "disk (dropped): not replayed", self.identity.node,
                            len(replay.records[rel]), rel)
            replay.records.clear()      # (nor into a partition of that number created later)
            log.info("node %s: journal replayed: %d records (%d bytes) into %d partitions "
                     "from %d files", self.identity.node, self.replayed_records,
                     replay.record_bytes, sum(1 for p in self.partitions.values() if p.replayed),
                     len(replay.files))
            failed = [p for p in self.partitions.values() if p.read_only is not None]
            if not failed:
                JR.retire(os.path.join(self.data_dir, "journal"), replay.files)
                replay.files = []
            else:                               # (the next start replays them again)
                self._journal_keep = True

    # ---- reads ---------------------------------------------------------------------------

    def read(self, p, key):
        """The key's clock here, or None."""
        raw = self.partition(p).store.get(key)
        return None if raw is None else V.decode(raw)

    def read_raw(self, p, key):
        """The key's stored clock bytes here, or None."""
        return self.partition(p).store.get(key)

    # ---- writes (each synchronous: atomic on the loop) -----------------------------------

    def _store(self, p, key, clock, old_raw, raw=None):
        """Store a key's new clock (raw: its bytes, when known) and XOR it into the partition's
        tree in place of the old."""
        if raw is None:
            raw = V.encode(clock)
        self._put(self.partition(p), key, old_raw, raw)
        return raw

    def _put(self, part, key, old_raw, raw):
        try:
            part.store.put(key, raw)
        except OSError as exc:
            raise self.write_error(part, exc) from exc
        part.tree.update(key, old_raw, raw)
        self.group.written(part)

    def _local(self, p, key):
        raw = self.partition(p).store.get(key)
        return raw, (None if raw is None else V.decode(raw))

    def _minting_actor(self, part, local, context):
        """The actor to mint with under the per-key epoch rules (docs/algorithms.md, section 1)."""
        ident = self.identity
        if local is not None:
            mine = [e for e in local.entries if ident.owns(e[0])]
            if mine:
                actor, counter, _ = max(mine, key=lambda e: e[0][2])
                seen = dict((tuple(a) if isinstance(a, list) else a, n) for a, n in (context or ()))
                if actor[2] >= part.trusted_from and seen.get(actor, 0) <= counter:
                    return actor
        return ident.actor(ident.new_epoch())

    def mint(self, p, key, sibling, context=None, overwrite=False):
        """Coordinate a write: a new event over the local clock. Returns the stored clock.

        context: a decoded client context, or None for a blind write (a new sibling);
        overwrite=True (Redis SET/DEL) writes with the local clock's own context.
        """
        raw, clock = self._mint(p, key, sibling, context, overwrite)
        return V.decode(raw) if clock is None else clock

    def mint_raw(self, p, key, sibling, context=None, overwrite=False):
        """`mint`, returning the stored clock's bytes (what replication sends)."""
        return self._mint(p, key, sibling, context, overwrite)[0]

    def _mint(self, p, key, sibling, context, overwrite):
        """(stored bytes, the clock or None when the byte-level path made the bytes alone)."""
        part = self.partition(p)
        if overwrite:
            raw = self.overwrite_raw(part, key, sibling.value, sibling.timestamp)
            if raw is not None:
                return raw, None
        old_raw = part.store.get(key)
        ident = self.identity
        if old_raw is None:
            local = None
            actor = ident.actor(ident.new_epoch())
            actor_for = lambda ctx: actor               # noqa: E731
        else:
            local = V.decode(old_raw)
            actor_for = lambda ctx: self._minting_actor(part, local, ctx)   # noqa: E731
        clock = self.next_clock(local, sibling, context, overwrite, actor_for)
        return self._store(p, key, clock, old_raw, self.encode_object(key, clock)), clock

    def overwrite_raw(self, part, key, value, ts):
        """A Redis SET/DEL over nothing (minted by a fresh epoch) or over a clock this node
        minted last, made and stored as bytes directly with one store lookup
        (kvcore/replicawrite.pyx), the same the general path makes. The stored bytes, or None
        (nothing done: take the general path) for any other clock."""
        ident = self.identity
        try:
            raw = RW.overwrite(part.store, part.tree, key, value, ident.prefix, part.trusted_from,
                               ts, ident.new_epoch)
        except OSError as exc:
            raise self.write_error(part, exc) from exc
        if raw is not None:
            self.group.written(part)
        return raw

    def next_clock(self, local, sibling, context, overwrite, actor_for):
        """The clock after writing `sibling` over `local` (None: absent) with `context` (or the
        local clock's own when overwrite), minted by actor_for(context); refused above the
        sibling limit. Shared by mint and a fallback's mint from its hint copy."""
        if overwrite:
            context = V.join(local) if local is not None else ()
        client = V.new_with_context(context, sibling) if context is not None else V.new(sibling)
        clock = V.update(client, local, actor_for(context))
        if V.sibling_count(clock) > self.max_siblings:
            raise TooManySiblings(
                f"key has {V.sibling_count(clock)} siblings (limit {self.max_siblings}): "
                "read it with KV.GET and write back with its context to resolve them")
        return clock

    def encode_object(self, key, clock):
        """The bytes of a clock a write minted here, refused (ObjectTooLarge, nothing stored)
        above max_object_bytes. Only minting refuses: a sync of two objects within the limit
        may be above it, and replicas take it (docs/storage.md, "Limits")."""
        raw = V.encode(clock)
        if len(raw) > self.max_object_bytes:
            raise ObjectTooLarge(
                f"the write would leave key {key[:40]!r} an object of {len(raw)} bytes "
                f"({V.sibling_count(clock)} values and their clock), above max_object_bytes="
                f"{self.max_object_bytes}: read it with KV.GET and write back with its "
                "context to resolve its siblings, or write a smaller value")
        return raw

    def merge(self, p, key, clock, raw=None):
        """Sync an incoming clock (replication, repair, handoff) with the local one; never refuses.
        raw: the clock's canonical bytes when the caller has them (stored as they are when the
        incoming clock is the result, instead of encoding it again)."""
        return self._sync_in(p, key, clock, raw)[0]

    def merge_superseding(self, p, key, raw):
        """`merge` without decoding, for the shape replication brings: True when `raw` is
        the stored bytes already, or supersedes them (versions.supersedes_raw: it is valid,
        and the sync would be it), and is stored as it is; False, having done nothing, for
        anything else (the caller decodes and merges)."""
        part = self.partitions.get(p) or self.partition(p)
        try:
            done = RW.merge_superseding(part.store, part.tree, key, raw)
        except OSError as exc:
            raise self.write_error(part, exc) from exc
        if done == RW.STORED:
            self.group.written(part)
        return done != RW.MISS

    def repair(self, p, key, clock):
        """`merge` for anti-entropy: True if the stored clock changed (one lookup, not three)."""
        return self._sync_in(p, key, clock)[1]

    def _sync_in(self, p, key, clock, raw=None):
        """(the stored clock after syncing `clock` in, whether it changed)."""
        old_raw, local = self._local(p, key)
        merged = clock if local is None else V.sync(local, clock)
        if local is None or merged != local:
            self._store(p, key, merged, old_raw, raw if raw is not None and _same(merged, clock)
                        else None)
            return merged, True
        return merged, False

    def delete_if(self, p, key, raw):
        """Compare-and-delete: remove the key for good if its stored clock bytes still equal
        `raw` (a reaped tombstone, docs/algorithms.md, section 6). True if deleted. Synchronous, so
        atomic per key; never opens a partition."""
        part = self.partitions.get(p)
        if part is None:
            return False
        cur = part.store.get(key)
        if cur is None or cur != raw:
            return False
        try:
            part.store.delete(key)
        except OSError as exc:
            raise self.write_error(part, exc) from exc
        part.tree.update(key, cur, None)
        self.group.written(part)
        return True

    def empty_partition(self, p):
        """Delete every key of a partition (FLUSHDB) and stop trusting its old dots."""
        part = self.partition(p)
        if not len(part.store):
            return                  # nothing held, nothing minted here can be lost
        # in chunks of the store's scan order, never the whole key list in memory (a scan
        # cursor is a position in that order: deleting keys behind it moves nothing ahead)
        try:
            cursor = 0
            while True:
                cursor, keys = part.store.scan(cursor, EMPTY_CHUNK)
                for key in keys:
                    old_raw = part.store.get(key)
                    if old_raw is None:
                        continue        # (its record failed its CRC: dropped already)
                    part.store.delete(key)
                    part.tree.update(key, old_raw, None)
                if cursor == 0:
                    break
            part.distrust(self.identity.new_epoch())
        except OSError as exc:
            raise self.write_error(part, exc) from exc
        self.group.written(part)

    # ---- durability (kvnet/groupcommit.py) -----------------------------------------------

    def after_write(self, parts=None):
        """What a write awaits before it is acknowledged (GroupCommit.after_write): with
        fsync=always the group commit, and a DiskError if a partition written (`parts`)
        turned read-only meanwhile."""
        return self.group.after_write(parts)

    def durable_write(self, parts=None):
        """What a write asked to be durable (DURABLE k) awaits, whatever the fsync policy
        (GroupCommit.durable_write): the group commit covering it, and a DiskError if a
        partition written turned read-only meanwhile."""
        return self.group.durable_write(parts)

    def durable(self, fut, p):
        """A direct-lane write's future settled only once this node's copy in partition p is
        durable too (GroupCommit.durable)."""
        return self.group.durable(fut, p)

    def start(self):
        self.group.start()

    async def close(self):
        await self.group.close()
        parts, self.partitions = list(self.partitions.values()), {}
        for part in parts:          # (a rebuild is a task of this loop: cancelled here)
            task, part._rebuild_task = part._rebuild_task, None
            if task is not None:
                task.cancel()
        failures = 0
        if parts:
            # each close syncs a file or two: in threads, as open_all opens them
            failures = await asyncio.to_thread(_close_all, parts)
        if self.journal is not None:
            # every store closed and synced: nothing left to replay (else the files stay)
            self.journal.close(retire=not failures and self.journal.failed is None
                               and not self.group.journal_kept)
        self.group.shutdown()


def _relpath(p):
    """Partition p's directory, relative to the data directory (the journal's store name)."""
    return os.path.join("partitions", f"{p:05d}")


def _close_one(part):
    """Close a partition: False if its last sync failed or it was read-only already."""
    try:
        part.close()
    except OSError as exc:      # (a failed last sync: read-only, closed as after a crash)
        log.error("node %s: closing partition %d: %s", part.identity.node, part.p, _cause(exc))
        return False
    return part.read_only is None


def _close_all(parts, workers=OPEN_WORKERS):
    """Close partitions (in threads): how many did not close cleanly."""
    if len(parts) == 1:
        return 0 if _close_one(parts[0]) else 1
    with ThreadPoolExecutor(min(workers, len(parts)), thread_name_prefix="ringkv-close") as ex:
        return sum(1 for ok in ex.map(_close_one, parts) if not ok)


def _same(a, b):
    """a is made of b's very entries: its encoding is b's. (== is not enough: 5 == 5.0 == True
    in an actor, and those encode differently.)"""
    return a is b or (a.anonymous is b.anonymous and len(a.entries) == len(b.entries)
                      and all(x is y for x, y in zip(a.entries, b.entries)))
