"""The anti-entropy service of a node: Merkle exchanges over the peer protocol, one partition at a
time, and the tombstone reaper (docs/algorithms.md, sections 4 and 6; docs/antientropy.md).

    A -> B  ae_root   {p, w, d}                       -> {root, count}
    A -> B  ae_diff   {p, sid, level, nodes, hashes}  -> {children, empty}  (per level, chunked)
    A -> B  ae_keys   {p, sid, segments, after}       -> {entries, want, reap, done, after}
    A -> B  ae_repair {p, entries}                    -> {merged, reap}     (batched)
    A -> B  ae_done   {sid}                           -> True
    reaper: ae_clocks, ae_hints, ae_mark, ae_cad (reaper.py)

Every message is bounded by a byte budget, `max_bytes` and at most 1/8 of the peer message
limit (about; one segment's key list or one key's clock may exceed it), and `max_keys`: an
`ae_keys` answer is cut inside a segment where need be, and `after` (a key) resumes it. The
keys of the differing segments (leaves) come from the store's
in-memory index (LogStore.leaf_keys): an exchange reads the records of those keys only, about
d x K / 16,384 of a partition's K keys for d differing leaves, never the whole partition; it
counts the records and bytes it reads (`records_read`, `bytes_read`; the responder's in
`served_records_read`, `served_bytes_read`). The responder keeps a small per-exchange cache (the
keys of the differing segments); losing it costs an index walk, never a key.
"""
import asyncio
import bisect
import logging
import random
import time
from collections import deque

from kvcore import merkle as M
from kvcore import versions as V
from kvcore.storage import layout as L
from kvnet.antientropy import exchange as X
from kvnet.antientropy.reaper import Reaper
from kvnet.payload import entries, fields, integer, key, primary_of, seq
from kvnet.errors import CommandError, ProtocolError
from kvnet.peer.errors import RemoteError

log = logging.getLogger("kvnet.antientropy")

MAX_BATCH_KEYS = 2000            # keys per repair message
MAX_BATCH_BYTES = 1 << 20        # about this many bytes per key-list, clocks or repair message
MAX_SEGMENTS = 1024              # segments per key-list message
MESSAGE_SHARE = 8                # a message's objects: at most 1/8 of the peer message limit
READ_GROUP = 64                  # keys whose records are read at once, while they are small
MAX_SESSIONS = 4                 # responder caches kept at once
SESSION_TTL = 120.0              # seconds a responder cache lives unused
REC_HEADER = L.REC_HEADER_SIZE   # bytes of a record besides its key and value (reads counted)
EQUAL_PAUSE = 0.02               # seconds between exchanges while roots keep being equal
CATCHUP_PAUSE = 0.02             # seconds between the exchanges of a catch-up
WATCH_PERIOD = 0.5               # seconds between two looks at the peers' restarts
START_DELAY = 1.0                # seconds before a starting node's first exchange, at most
CATCHUP_TRIES = 3                # a catch-up exchange that fails is tried this often


class TreeNotBuilt(CommandError):
    """A handler's refusal of a partition whose tree is not built here yet (folding after a
    crash, or after a corrupt record): the initiator skips the exchange and retries later."""


def refused_unbuilt(exc):
    """Is `exc` a peer's refusal because its tree of the partition is not built? (Nodes of an
    earlier version refuse with a CommandError of the same message.)"""
    return isinstance(exc, RemoteError) and (
        exc.code == "TreeNotBuilt"
        or (exc.code == "CommandError" and str(exc.remote_message).endswith("is not built yet")))


class Reads:
    """Records read from a partition's store by one side of an exchange: each key listed (its
    record's header and key) and each clock read (the whole record), with their bytes."""

    __slots__ = ("records", "bytes")

    def __init__(self):
        self.records = self.bytes = 0

    def listed(self, keys):
        self.records += len(keys)
        self.bytes += sum(REC_HEADER + len(k) for k in keys)

    def read(self, k, raw):
        if raw is not None:
            self.records += 1
            self.bytes += REC_HEADER + len(k) + len(raw)
        return raw


def read_keys(store, keys, reads, budget):
    """(key, raw) of each of `keys` in order (raw None: not stored), counted in `reads`. Read in
    groups (`get_many`) of about budget / 4 bytes, by the sizes read so far: a segment of
    large objects is read a few objects at a time, never all at once."""
    i, n, group = 0, len(keys), 8
    while i < n:
        ks = keys[i:i + group]
        raws = store.get_many(ks)
        got = 0
        for k, raw in zip(ks, raws):
            reads.read(k, raw)
            if raw is not None:
                got += len(k) + len(raw)
        i += len(ks)
        group = max(1, min(READ_GROUP, budget // 4 * len(ks) // max(got, 1)))
        for pair in zip(ks, raws):
            yield pair


def segment_keys(part, segments, reads=None):
    """{segment: [key]} for the given segments (Merkle leaves) of a partition, from its store's
    in-memory index: only those keys' records are read (LogStore.leaf_keys)."""
    if not segments:
        return {}
    bits = part.tree.leaves.bit_length() - 1
    out = part.store.leaf_keys(segments, bits)
    if reads is not None:
        for ks in out.values():
            reads.listed(ks)
    return out


def _leaf_hashes(tree, segments):
    """{segment: its leaf hash in tree}."""
    wbits = tree.width.bit_length() - 1
    level = tree.depth - 1
    out, branches = {}, {}
    for s in segments:
        j = s >> wbits
        br = branches.get(j)
        if br is None:
            br = branches[j] = tree.branch(level, j)
        i = (s - (j << wbits)) * 8
        out[s] = int.from_bytes(br[i:i + 8], "little")
    return out


class _Session:
    """The responder's cache for one exchange: the differing segments and their keys here."""

    __slots__ = ("p", "frontier", "index", "touched", "reads")

    def __init__(self, p):
        self.p = p
        self.frontier = None
        self.index = {}
        self.touched = time.monotonic()
        self.reads = Reads()


class _Run:
    """Counters of one exchange started here."""

    def __init__(self, p, peer):
        self.p, self.peer = p, peer
        self.equal = False
        self.segments = 0
        self.messages = 0
        self.sent = self.received = 0
        self.repaired_here = self.repaired_there = 0
        self.reaped = 0
        self.duration = 0.0
        self.reads = Reads()
        self.partition_keys = 0          # keys the partition held here when the exchange began

    def as_dict(self):
        return dict(partition=self.p, peer=self.peer, equal=self.equal, segments=self.segments,
                    messages=self.messages, bytes_sent=self.sent, bytes_received=self.received,
                    repaired_here=self.repaired_here, repaired_there=self.repaired_there,
                    reaped=self.reaped, duration_s=self.duration,
                    records_read=self.reads.records, bytes_read=self.reads.bytes,
                    partition_keys=self.partition_keys)


class AntiEntropy:
    """`node.add_service(AntiEntropy(node))` before `await node.start()`.

    Every `interval_ms` (default cfg.ae_interval_ms) the scheduler takes the next partition this
    node is a primary of, exchanges it with the next up primary of it, then runs one reaper pass.
    One exchange at a time. `stats` sums the exchanges this node started.

    Catch-up comes first: a node that starts, and every node that sees a peer restart (a new
    generation) or come back up, queues the partitions it shares with that peer and exchanges
    them back to back (CATCHUP_PAUSE apart) before the paced round goes on, so a node that
    missed writes while it was down is repaired in seconds, not in a round of Q intervals.
    """

    def __init__(self, node, *, interval_ms=None, grace_s=None, max_keys=MAX_BATCH_KEYS,
                 max_bytes=MAX_BATCH_BYTES, **reaper_opts):
        self.node = node
        cfg = node.cfg
        self.interval = (cfg.ae_interval_ms if interval_ms is None else interval_ms) / 1000.0
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self.reaper = Reaper(node, cfg.tombstone_grace_s if grace_s is None else grace_s,
                             **reaper_opts)
        self.stats = {"exchanges": 0, "exchanges_equal": 0, "exchanges_failed": 0,
                      "keys_repaired_here": 0, "keys_repaired_there": 0,
                      "bytes_sent": 0, "bytes_received": 0, "last_duration_s": None,
                      "last_partition": None, "last_peer": None, "served_repairs": 0,
                      "records_read": 0, "bytes_read": 0, "last_records_read": None,
                      "last_bytes_read": None, "served_records_read": 0,
                      "served_bytes_read": 0, "skipped_unbuilt": 0}
        self._empty = M.MerkleTree()     # the tree of a partition not open here
        self._sessions = {}
        self._task = None
        self._stopping = False
        self._ring = None
        self._mine = []
        self._sharing_of = None          # the ring _sharing was derived from
        self._sharing = []
        self._turn = 0
        self._peer_turn = {}
        self._urgent = deque()           # (partition, peer or None, tries left): catch-up first
        self._queued = set()             # (partition, peer) in _urgent
        self._seen = {}                  # peer -> (generation, up) at the last look
        self._watched_at = float("-inf")  # loop time of the last look (_sleep)

    def handlers(self):
        h = {"ae_root": self._h_root, "ae_diff": self._h_diff, "ae_keys": self._h_keys,
             "ae_repair": self._h_repair, "ae_done": self._h_done}
        h.update(self.reaper.handlers())
        return h

    async def start(self):
        if self.node.cfg.ae_enabled and self._task is None:
            self._stopping = False
            self._seen = {}
            self._watched_at = float("-inf")
            self._mine_of(self.node.ring)
            for p in self._mine:                    # this node may have missed writes while down
                self._queue(p, None)
            rep = getattr(self.node, "replica", None)
            if rep is not None and hasattr(rep, "on_tree_rebuilt"):
                rep.on_tree_rebuilt = self.tree_rebuilt
            self._task = asyncio.ensure_future(self._loop())

    async def stop(self):
        self._stopping = True
        task, self._task = self._task, None
        # Cancel until it is done: a cancellation swallowed below us (an inner wait_for that
        # finished at the same moment) must not leave stop() waiting for the next tick forever.
        # asyncio.wait never raises the task's CancelledError, so our own cancellation still
        # reaches our caller.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=0.2)
        self._sessions.clear()

    # ---- scheduler ----------------------------------------------------------------------------

    async def _loop(self):
        delay, quick, last_reap = self.interval, 0, float("-inf")
        loop = asyncio.get_running_loop()
        # the first exchanges wait a moment (at most a second): the members this node just
        # greeted are still connecting, and their own catch-up with it starts as they see it
        await asyncio.sleep(min(self.interval, START_DELAY))
        while not self._stopping:
            await self._sleep(delay, loop)
            out = None
            reap = loop.time() - last_reap >= self.interval      # the reaper: once an interval
            if reap:
                last_reap = loop.time()
            urgent = bool(self._urgent)
            try:
                out = await self.tick(reap=reap)
            except Exception as exc:
                log.info("anti-entropy on %s: %r", self.node.name, exc)
            # Equal roots cost one small message each way: go on to the next partition after a
            # short pause, for at most one round of this node's partitions; an exchange that
            # found differences (or failed) waits the full interval, so foreground work comes
            # first. A catch-up goes on at once. One exchange at a time either way.
            if urgent or self._urgent:
                delay, quick = CATCHUP_PAUSE, 0
            elif out is not None and out["equal"] and quick < len(self._mine):
                delay, quick = min(self.interval, EQUAL_PAUSE), quick + 1
            else:
                delay, quick = self.interval, 0

    async def _sleep(self, delay, loop):
        """Sleep up to `delay`, looking at the peers every WATCH_PERIOD: a catch-up to run
        ends the sleep. (`loop`: the running one, which asyncio.get_running_loop() finds with a
        getpid() system call.)"""
        end = loop.time() + delay
        while not self._stopping:
            # (not at every short pause between exchanges: a look costs O(ring nodes); half
            # a period, so that a wake-up after a whole one always looks)
            if loop.time() - self._watched_at >= WATCH_PERIOD / 2:
                self._watched_at = loop.time()
                try:
                    self._watch_peers()
                except Exception as exc:             # never let the scheduler die of it
                    log.info("anti-entropy on %s: watching peers: %r", self.node.name, exc)
            left = end - loop.time()
            if left <= 0 or (self._urgent and delay > CATCHUP_PAUSE):
                return
            await asyncio.sleep(min(left, WATCH_PERIOD))

    def _watch_peers(self):
        """Queue a catch-up with every peer that restarted (a newer generation) or came back
        up since the last look. Only the peers this node shares a partition with are looked
        at (a catch-up with another has nothing to exchange): a handful, not every member."""
        node = self.node
        gossip = getattr(node, "gossip", None)
        if node.ring is None:                        # out of the ring (left): nothing to do
            return
        for peer in self._sharing_peers():
            m = None if gossip is None else gossip.table.get(peer)
            now = (None if m is None else m.generation, node.is_up(peer))
            before = self._seen.get(peer)
            self._seen[peer] = now
            if before is None or not now[1]:
                continue
            if not before[1] or (before[0] is not None and now[0] is not None and now[0] > before[0]):
                self.catch_up(peer)

    def catch_up(self, peer):
        """Queue an exchange with `peer` of every partition both hold (primaries of it). The
        paced round's place is kept (its next partition is the same after as before)."""
        ring = self.node.ring
        self._mine_of(ring)
        n = 0
        for p in self._mine:
            if peer in ring.preference_list(p) and self._queue(p, peer):
                n += 1
        if n:
            log.info("anti-entropy on %s: catching up %d partitions with %s",
                     self.node.name, n, peer)

    def tree_rebuilt(self, p):
        """A partition's tree was rebuilt without records found corrupt here (kvnet/replica.py):
        queue an exchange of it with each other primary, so the dropped keys come back now."""
        if self._stopping or self.node.name not in self.node.ring.preference_list(p):
            return
        for peer in self.node.ring.preference_list(p):
            if peer != self.node.name:
                self._queue(p, peer)

    def _queue(self, p, peer, tries=CATCHUP_TRIES):
        if (p, peer) in self._queued:
            return False
        self._queued.add((p, peer))
        self._urgent.append((p, peer, tries))
        return True

    def catchup_pending(self):
        """Catch-up exchanges still queued (kvctl status)."""
        return len(self._urgent)

    async def tick(self, reap=True):
        """One scheduled step: exchange the next partition with its next up primary, then one
        reaper pass (unless reap is False). Returns the exchange's counters (a dict) or None
        if none ran."""
        out = None
        if self._urgent:
            return await self._catch_up_one(reap)
        p = self._next_partition()
        if p is not None:
            peer = self._next_peer(p)
            if peer is not None:
                out = await self.exchange(p, peer)
        if reap:
            await self.reaper.pass_once()
        return out

    async def _catch_up_one(self, reap):
        p, peer, tries = self._urgent.popleft()
        self._queued.discard((p, peer))
        ring = self.node.ring
        out = None
        if self.node.name in ring.preference_list(p):          # (the ring may have changed)
            target = self._next_peer(p) if peer is None else peer
            if target is not None and target in ring.preference_list(p) and self.node.is_up(target):
                try:
                    out = await self.exchange(p, target)
                except Exception:
                    if tries > 1:
                        self._queue(p, peer, tries - 1)
                    raise
                if out is None and tries > 1:       # a tree, here or there, is not built yet
                    self._queue(p, peer, tries - 1)
        if reap:
            await self.reaper.pass_once()
        return out

    def _sharing_peers(self):
        """The ring's other members that are primaries of a partition this node is a primary
        of, in the ring's order; derived again only when node.ring is a new object."""
        ring = self.node.ring
        if ring is not self._sharing_of:
            self._mine_of(ring)
            me = self.node.name
            sharing = {n for p in self._mine for n in ring.preference_list(p)}
            self._sharing = [n for n in ring.nodes if n in sharing and n != me]
            self._sharing_of = ring
        return self._sharing

    def _mine_of(self, ring):
        """Fill _mine (the partitions this node is a primary of) for `ring`, if not done."""
        if ring is None:
            self._ring, self._mine = None, []
        elif ring is not self._ring:
            self._ring = ring
            self._mine = [p for p in range(ring.q) if self.node.name in ring.preference_list(p)]

    def _next_partition(self):
        ring = self.node.ring
        self._mine_of(ring)
        if ring is None:
            return None
        if not self._mine:
            return None
        p = self._mine[self._turn % len(self._mine)]
        self._turn += 1
        return p

    def _next_peer(self, p):
        node = self.node
        others = [n for n in node.ring.preference_list(p) if n != node.name]
        turn = self._peer_turn.get(p, 0)
        for i in range(len(others)):
            peer = others[(turn + i) % len(others)]
            if node.is_up(peer):
                self._peer_turn[p] = turn + i + 1
                return peer
        return None

    # ---- initiator ------------------------------------------------------------------------------

    async def _call(self, run, peer, type_, payload):
        run.messages += 1
        run.sent += X.wire_size(payload)
        reply = await self.node.call(peer, type_, payload, self.node.cfg.request_timeout_ms / 1000.0)
        run.received += X.wire_size(reply)
        return reply

    async def exchange(self, p, peer):
        """Exchange partition p with `peer` (both primaries of it) and repair both sides.

        Returns the counters of this exchange (a dict), or None if p's tree is not built here
        or there (skipped, not failed: counted in stats["skipped_unbuilt"]; a catch-up tries it
        again, and the node whose tree is folded queues it once the fold is done). Raises on a
        failed or malformed exchange (the scheduler logs it and goes on)."""
        prefs = self.node.ring.preference_list(p)
        if self.node.name not in prefs or peer not in prefs or peer == self.node.name:
            raise ValueError(f"{self.node.name} and {peer} are not both primaries of partition {p}")
        part = self.node.replica.opened(p)
        if part is not None and not part.tree_built:
            self.stats["skipped_unbuilt"] += 1
            return None
        tree = self._empty if part is None else part.tree
        run = _Run(p, peer)
        run.partition_keys = 0 if part is None else len(part.store)
        t0 = time.perf_counter()
        sid = random.getrandbits(62)
        began = ok = skipped = False
        try:
            r = await self._call(run, peer, "ae_root", {"p": p, "w": tree.width, "d": tree.depth})
            if type(r) is not dict or type(r.get("root")) is not int:
                raise ProtocolError("malformed ae_root reply")
            if r["root"] == tree.root():
                run.equal = True
            else:
                began = True
                frontier, empty = [0], []
                per_msg = max(1, self.max_bytes // (8 * tree.width))
                for level in range(tree.depth):
                    children, empty = [], []
                    limit = tree.width ** (level + 1) - 1
                    for i in range(0, len(frontier), per_msg):
                        msg = X.branches_msg(tree, level, frontier[i:i + per_msg])
                        del msg["t"]
                        msg.update(p=p, sid=sid)
                        d = await self._call(run, peer, "ae_diff", msg)
                        if type(d) is not dict:
                            raise ProtocolError("malformed ae_diff reply")
                        for c in seq(d.get("children"), "children", error=ProtocolError):
                            children.append(integer(c, 0, limit, "child", ProtocolError))
                        for c in seq(d.get("empty", []), "empty", error=ProtocolError):
                            empty.append(integer(c, 0, limit, "empty child", ProtocolError))
                    frontier = children
                    if not frontier:
                        break
                run.segments = len(frontier)
                if frontier:
                    await self._keys_and_repair(run, peer, p, sid, tree, frontier, set(empty))
            ok = True
        except RemoteError as exc:
            if not refused_unbuilt(exc):
                self.stats["exchanges_failed"] += 1
                raise
            skipped = True               # its tree is folding: not a failure, retried later
            self.stats["skipped_unbuilt"] += 1
            log.debug("anti-entropy on %s: partition %d skipped: %s", self.node.name, p, exc)
        except Exception:
            self.stats["exchanges_failed"] += 1
            raise
        finally:
            if began and ok:
                await self._done(run, peer, sid)
            elif began:                  # failing or cancelled: do not wait for the peer
                self.node.spawn(self._done(run, peer, sid))
            run.duration = time.perf_counter() - t0
            if began or not skipped:     # (refused at the root: nothing ran)
                self._account(run)
        return None if skipped else run.as_dict()

    async def _done(self, run, peer, sid):
        try:
            await self._call(run, peer, "ae_done", {"sid": sid})
        except Exception:
            pass                         # the peer's cache expires by itself

    def _account(self, run):
        s = self.stats
        s["exchanges"] += 1
        s["exchanges_equal"] += run.equal
        s["keys_repaired_here"] += run.repaired_here
        s["keys_repaired_there"] += run.repaired_there
        s["bytes_sent"] += run.sent
        s["bytes_received"] += run.received
        s["last_duration_s"] = run.duration
        s["last_partition"], s["last_peer"] = run.p, run.peer
        s["records_read"] += run.reads.records
        s["bytes_read"] += run.reads.bytes
        s["last_records_read"], s["last_bytes_read"] = run.reads.records, run.reads.bytes

    async def _keys_and_repair(self, run, peer, p, sid, tree, frontier, empty_there):
        """Key lists of the differing segments, the peer's clocks, repairs both ways.

        A segment whose leaf is empty there is not listed: its keys are pushed at once. A
        segment empty here is listed empty (no walk)."""
        rep = self.node.replica
        mine = _leaf_hashes(tree, frontier)
        part = rep.opened(p)
        walk = [s for s in frontier if mine[s] != 0]
        reads = run.reads
        index = segment_keys(part, walk, reads) if part is not None and walk else {}
        budget = self._budget()
        push = _Pusher(self, run, peer, p, budget)
        for s in frontier:
            if s in empty_there and s in index:
                for k, raw in read_keys(part.store, index[s], reads, budget):
                    if raw is None:
                        continue
                    if self.reaper.pending and self.reaper.is_pending(p, k, raw):
                        run.reaped += self.reaper.finish(p, k, raw)
                    else:
                        await push.offer(k, raw)
        queue = deque(s for s in frontier if s not in empty_there)
        listed = {}                      # segment -> its [[key, entry hash]] here, in key order
        after = None                     # queue[0] is answered up to this key (cut answers)
        while queue:
            chunk, size = [], 0
            while queue and len(chunk) < MAX_SEGMENTS:
                s = queue[0]
                lst = listed.get(s)
                if lst is None:          # read once per exchange, however often it is resent
                    ks = sorted(index.get(s, ()))  # (none where the partition is not open here)
                    lst = listed[s] = [[k, M.entry_hash(k, raw)] for k, raw in
                                       read_keys(part.store, ks, reads, budget)
                                       if raw is not None] if ks else []
                if not chunk and after is not None:
                    lst = lst[bisect.bisect_right(lst, after, key=_first):]
                n = 4 + sum(len(k) + 12 for k, _ in lst)
                if chunk and size + n > budget:
                    break
                queue.popleft()
                chunk.append([s, lst])
                size += n
            r = await self._call(run, peer, "ae_keys",
                                 {"p": p, "sid": sid, "segments": chunk, "after": after})
            if type(r) is not dict:
                raise ProtocolError("malformed ae_keys reply")
            done = integer(r.get("done"), 0, len(chunk), "done", ProtocolError)
            cut = r.get("after")
            if cut is not None:
                key(self.node, cut, p, ProtocolError)
                if done == len(chunk) or (done == 0 and after is not None and cut <= after):
                    raise ProtocolError("ae_keys reply cut a segment it did not cover")
            elif done == 0:
                raise ProtocolError("ae_keys reply covered nothing")
            for s, _ in chunk[:done]:
                listed.pop(s, None)
            for s, _ in reversed(chunk[done:]):
                queue.appendleft(s)
            after = cut
            got = entries(self.node, r.get("entries"), p, ProtocolError)
            want = seq(r.get("want"), "want", error=ProtocolError)
            for k in want:
                key(self.node, k, p, ProtocolError)
            await self._absorb(run, p, got, push)
            for k in want:
                raw = reads.read(k, _raw(rep, p, k))
                if raw is None:
                    continue              # gone here since the list was made
                if self.reaper.pending and self.reaper.is_pending(p, k, raw):
                    run.reaped += self.reaper.finish(p, k, raw)
                else:
                    await push.offer(k, raw)
            await asyncio.sleep(0)
        await push.flush()
        await push.flush_cad()

    async def _absorb(self, run, p, got, push):
        """Merge the peer's clocks here; queue the merged clock for the peer where it differs."""
        rep = self.node.replica
        pending = self.reaper.pending
        for k, theirs_raw, theirs in got:
            mine_raw = run.reads.read(k, _raw(rep, p, k))
            if mine_raw is None:
                if pending and self.reaper.is_pending(p, k, theirs_raw):
                    await push.cad_offer(k, theirs_raw)   # reaped or reaping here: finish there
                    continue
                run.repaired_here += rep.repair(p, k, theirs)
                continue
            merged_raw = V.encode(V.sync(V.decode(mine_raw), theirs))
            if merged_raw != mine_raw:
                run.repaired_here += rep.repair(p, k, theirs)
            if merged_raw != theirs_raw:
                await push.offer(k, merged_raw)

    def _budget(self):
        """About the bytes of keys and objects one message of an exchange carries: max_bytes,
        and at most 1/MESSAGE_SHARE of the peer message limit (a message holding one object
        bigger than that carries it alone)."""
        limit = getattr(getattr(self.node, "pool", None), "max_message_size", None)
        return self.max_bytes if limit is None else max(1, min(self.max_bytes,
                                                              limit // MESSAGE_SHARE))

    # ---- responder ------------------------------------------------------------------------------

    def _tree(self, p):
        """(open partition or None, its tree); refuses a partition whose tree is not built."""
        part = self.node.replica.opened(p)
        if part is None:
            return None, self._empty
        if not part.tree_built:
            raise TreeNotBuilt(f"the tree of partition {p} is not built yet")
        return part, part.tree

    def _session(self, sid, p):
        now = time.monotonic()
        for old in [s for s, v in self._sessions.items() if now - v.touched > SESSION_TTL]:
            del self._sessions[old]
        sess = self._sessions.get(sid)
        if sess is None or sess.p != p:
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[min(self._sessions, key=lambda s: self._sessions[s].touched)]
            sess = self._sessions[sid] = _Session(p)
        sess.touched = now
        return sess

    async def _h_root(self, m):
        p = primary_of(self.node, m)
        w, d = fields(m, "w", "d")
        _, tree = self._tree(p)
        if (w, d) != (tree.width, tree.depth):
            raise CommandError(f"tree shape {w!r}x{d!r} differs from {tree.width}x{tree.depth}")
        return {"root": tree.root(), "count": tree.count}

    async def _h_diff(self, m):
        p = primary_of(self.node, m)
        sid, level, nodes, hashes = fields(m, "sid", "level", "nodes", "hashes")
        _, tree = self._tree(p)
        integer(sid, 0, (1 << 63) - 1, "sid")
        integer(level, 0, tree.depth - 1, "level")
        seq(nodes, "nodes", max_len=tree.width ** level)
        for j in nodes:
            integer(j, 0, tree.width ** level - 1, "node")
        step = 8 * tree.width
        if type(hashes) is not bytes or len(hashes) != step * len(nodes):
            raise CommandError(f"hashes must be {step} bytes per node")
        children = []
        for i, j in enumerate(nodes):
            children.extend(tree.diff_branch(level, j, hashes[i * step:(i + 1) * step]))
        empty = []
        if level == tree.depth - 1:
            leaves = _leaf_hashes(tree, children)
            empty = [s for s in children if leaves[s] == 0]
            sess = self._session(sid, p)
            sess.frontier = (sess.frontier or set()) | set(children)
        return {"children": children, "empty": empty}

    async def _h_keys(self, m):
        p = primary_of(self.node, m)
        sid, segs = fields(m, "sid", "segments")
        part, tree = self._tree(p)
        integer(sid, 0, (1 << 63) - 1, "sid")
        # An initiator that sends "after" (None or a key) takes an answer cut inside a segment:
        # "after" in the answer names the last key of segment `done` it covers, and it asks
        # again from there. Without it (an older node) an answer ends at a segment's end.
        resume = "after" in m
        after = m.get("after")
        if after is not None:
            key(self.node, after, p)
        theirs, total = [], 0
        for e in seq(segs, "segments", max_len=MAX_SEGMENTS):
            if type(e) is not list or len(e) != 2:
                raise CommandError("a segment must be [segment, [[key, hash], ...]]")
            s, lst = e
            integer(s, 0, tree.leaves - 1, "segment")
            total += len(seq(lst, "key list"))
            if total > 4 * MAX_BATCH_BYTES // 8:
                raise CommandError("too many keys in one key-list message")
            hs = {}
            for kh in lst:
                if type(kh) is not list or len(kh) != 2:
                    raise CommandError("a key-list entry must be [key, hash]")
                hs[key(self.node, kh[0], p)] = integer(kh[1], 0, (1 << 64) - 1, "hash")
            theirs.append((s, hs))
        if part is None:
            want = [k for _, hs in theirs for k in hs]
            return {"entries": [], "want": want, "reap": [], "done": len(theirs)}
        sess = self._session(sid, p)
        reads = sess.reads
        before = reads.records, reads.bytes
        missing = [s for s, _ in theirs if s not in sess.index]
        if missing:
            wanted = set(missing)
            if sess.frontier and wanted <= sess.frontier:
                wanted = sess.frontier - set(sess.index)
            sess.index.update(segment_keys(part, sorted(wanted), reads))
            sess.touched = time.monotonic()
        store, pending = part.store, self.reaper.pending
        budget, most = self._budget(), 8 * self.max_keys
        out, want, reap, size, done, cursor, full = [], [], [], 0, 0, None, False
        for i, (s, hs) in enumerate(theirs):
            # its keys here and there, in key order: a cursor that survives a lost cache
            order = sorted(set(sess.index.get(s, ())).union(hs))
            if i == 0 and after is not None:
                order = order[bisect.bisect_right(order, after):]
            cursor = None
            for k, raw in read_keys(store, order, reads, budget):
                h = hs.get(k)
                if raw is None:
                    if h is None:
                        continue                        # deleted here since the listing
                    n = len(k) + 3                      # theirs only: want it
                elif h is None or h != M.entry_hash(k, raw):
                    n = len(k) + len(raw) + 8
                else:
                    cursor = k                          # equal on both sides
                    continue
                if resume and (out or want or reap) and (size + n > budget or len(out) >= most):
                    full = True                         # the rest in the next answer
                    break
                if raw is None:
                    want.append(k)
                elif h is None and pending and self.reaper.is_pending(p, k, raw):
                    self.reaper.finish(p, k, raw)       # never copied back: the reap ends here
                    reap.append(k)
                    n = len(k) + 3
                else:
                    out.append([k, raw])
                size += n
                cursor = k
            if full:
                break
            done += 1
            if size >= budget or len(out) >= most:
                break
        self.stats["served_records_read"] += reads.records - before[0]
        self.stats["served_bytes_read"] += reads.bytes - before[1]
        reply = {"entries": out, "want": want, "reap": reap, "done": done}
        if full and cursor is not None:
            reply["after"] = cursor
        return reply

    async def _h_repair(self, m):
        p = primary_of(self.node, m)
        es = entries(self.node, fields(m, "entries")[0], p)
        self._tree(p)
        rep = self.node.replica
        merged, refused = 0, []
        pending = self.reaper.pending
        for k, raw, c in es:
            if pending and self.reaper.is_pending(p, k, raw) and _raw(rep, p, k) is None:
                refused.append(k)                       # reaped here: the sender finishes it
                continue
            merged += rep.repair(p, k, c)
        self.stats["served_repairs"] += merged
        await rep.after_write(p)
        return {"merged": merged, "reap": refused}

    async def _h_done(self, m):
        (sid,) = fields(m, "sid")
        self._sessions.pop(integer(sid, 0, (1 << 63) - 1, "sid"), None)
        return True


def _first(entry):
    return entry[0]


def _raw(rep, p, k):
    part = rep.opened(p)
    return None if part is None else part.store.get(k)


class _Pusher:
    """Batches of merged clocks for the peer (`ae_repair`), sent as they fill: each at most
    max_keys keys and `budget` bytes, or one object alone."""

    def __init__(self, svc, run, peer, p, budget):
        self.svc, self.run, self.peer, self.p = svc, run, peer, p
        self.budget = budget
        self.batch, self.size = [], 0
        self.cad = []                    # [key, tombstone] the peer should compare-and-delete
        self.cad_size = 0

    async def offer(self, k, raw):
        n = len(k) + len(raw) + 8
        if self.batch and self.size + n > self.budget:
            await self.flush()
        self.batch.append([k, raw])
        self.size += n
        if len(self.batch) >= self.svc.max_keys or self.size >= self.budget:
            await self.flush()

    async def cad_offer(self, k, raw):
        self.cad.append([k, raw])
        self.cad_size += len(k) + len(raw) + 8
        if len(self.cad) >= self.svc.max_keys or self.cad_size >= self.budget:
            await self.flush_cad()

    async def flush_cad(self):
        if self.cad:
            cad, self.cad, self.cad_size = self.cad, [], 0
            await self.svc._call(self.run, self.peer, "ae_cad", {"p": self.p, "entries": cad})

    async def flush(self):
        if not self.batch:
            return
        batch, self.batch, self.size = self.batch, [], 0
        r = await self.svc._call(self.run, self.peer, "ae_repair", {"p": self.p, "entries": batch})
        if type(r) is not dict:
            raise ProtocolError("malformed ae_repair reply")
        self.run.repaired_there += integer(r.get("merged"), 0, len(batch), "merged", ProtocolError)
        refused = {bytes(k) for k in seq(r.get("reap", []), "reap", error=ProtocolError)}
        if refused:
            # the peer holds a reap-pending mark for exactly this tombstone: finish the reap here
            rep = self.svc.node.replica
            for k, raw in batch:
                if k in refused and rep.delete_if(self.p, k, raw):
                    self.run.reaped += 1
                    self.svc.reaper.stats["deleted_here"] += 1
