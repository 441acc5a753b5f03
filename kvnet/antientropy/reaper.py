"""Tombstone reaping: deleting a delete for good, exactly as docs/algorithms.md, section 6 says.

A tombstone is reaped only when (a) every primary holds it with an equal clock (asked by the
partition's first primary), (b) `grace_s` has passed since that confirmation, and (c) every member
answers that it holds no hint for the key; then it is marked reap-pending on every primary and
compare-and-deleted there. State is in memory: a restart only delays a reap (docs/antientropy.md).
The payload checks are kvnet/payload.py's.
"""
import asyncio
import logging
import time

from kvcore import versions as V
from kvnet.errors import CommandError, ProtocolError
from kvnet.payload import entries, fields, keys, on_ring, primary_of, seq

log = logging.getLogger("kvnet.antientropy")

def _keyset(reply, what):
    """The set of keys a peer's reply lists; ProtocolError for anything but a list of bytes."""
    out = set()
    for k in seq(reply, what, error=ProtocolError):
        if type(k) is not bytes:
            raise ProtocolError(f"{what} lists a {type(k).__name__}, not a key")
        out.add(k)
    return out


SCAN_CHUNK = 100        # keys read between two yields to the loop in one scan


def is_tombstone(raw):
    return V.is_deleted_raw(raw)


# ---- the reaper --------------------------------------------------------------------------------

class Reaper:
    """Finds tombstones in the partitions this node is the first primary of and reaps them.

    `pending` holds this node's reap-pending marks ((p, key) -> (clock bytes, expiry)): while a
    mark lives, anti-entropy never copies that tombstone onto a replica lacking the key and
    finishes the reap instead (service.py).
    """

    def __init__(self, node, grace_s, *, scan_batch=1000, reap_batch=500,
                 max_candidates=100_000, pending_ttl_s=600.0):
        self.node = node
        self.grace = float(grace_s)
        self.scan_batch = scan_batch
        self.reap_batch = reap_batch
        self.max_candidates = max_candidates
        self.pending_ttl = float(pending_ttl_s)
        self.pending = {}            # (p, key) -> (raw, monotonic expiry)
        self.candidates = {}         # p -> {key: [raw, confirmed_at monotonic or None]}
        self._cursor = {}            # p -> store scan cursor
        self._turn = 0
        self.stats = {"passes": 0, "scanned": 0, "confirmed": 0, "reaped": 0, "deleted_here": 0,
                      "blocked_down": 0, "blocked_hints": 0, "abandoned": 0}

    # ---- reap-pending marks ----------------------------------------------------------------

    def is_pending(self, p, k, raw):
        """True while this node holds a live reap-pending mark for exactly this clock."""
        e = self.pending.get((p, k))
        if e is None:
            return False
        if e[1] < time.monotonic():
            del self.pending[(p, k)]
            return False
        return e[0] == raw

    def mark(self, p, k, raw):
        """Mark a tombstone reap-pending if this replica still holds exactly `raw`."""
        part = self.node.replica.opened(p)
        if part is None or part.store.get(k) != raw:
            return False
        self.pending[(p, k)] = (raw, time.monotonic() + self.pending_ttl)
        return True

    def finish(self, p, k, raw):
        """Finish a reap here (compare-and-delete) if the key is reap-pending with this clock."""
        if self.is_pending(p, k, raw) and self.node.replica.delete_if(p, k, raw):
            self.stats["deleted_here"] += 1
            return True
        return False

    def _expire(self):
        now = time.monotonic()
        for pk in [pk for pk, e in self.pending.items() if e[1] < now]:
            del self.pending[pk]

    # ---- peer handlers ---------------------------------------------------------------------

    def handlers(self):
        return {"ae_clocks": self._h_clocks, "ae_hints": self._h_hints,
                "ae_mark": self._h_mark, "ae_cad": self._h_cad}

    async def _h_clocks(self, m):
        """{p, keys} -> [clock bytes or None per key] (confirmation (a))."""
        p = primary_of(self.node, m)
        ks = keys(self.node, fields(m, "keys")[0], p)
        part = self.node.replica.opened(p)
        return [None] * len(ks) if part is None else part.store.get_many(ks)

    async def _h_hints(self, m):
        """{p, keys} -> the keys for which this member holds a hint (condition (c))."""
        p = on_ring(self.node, m)
        ks = keys(self.node, fields(m, "keys")[0], p)
        return self._held(p, ks)

    def _held(self, p, ks):
        hints = self.node.hints
        if hints is None:
            raise CommandError(f"{self.node.name} has no hint log open")
        return [k for k in ks if hints.holders(p, k)]

    async def _h_mark(self, m):
        """{p, entries} -> the keys marked reap-pending (those still holding that tombstone)."""
        p = primary_of(self.node, m)
        es = entries(self.node, fields(m, "entries")[0], p)
        return [k for k, raw, c in es if V.is_deleted(c) and self.mark(p, k, raw)]

    async def _h_cad(self, m):
        """{p, entries} -> the keys deleted: compare-and-delete of tombstones only."""
        p = primary_of(self.node, m)
        es = entries(self.node, fields(m, "entries")[0], p)
        if not all(V.is_deleted(c) for _, _, c in es):
            raise CommandError("compare-and-delete takes tombstones only")
        out = [k for k, raw, _ in es if self.node.replica.delete_if(p, k, raw)]
        self.stats["deleted_here"] += len(out)
        return out

    # ---- one pass ----------------------------------------------------------------------------

    def _mine(self):
        """Open partitions whose first primary is this node: it coordinates their reaps."""
        node = self.node
        return [p for p in sorted(node.replica.partitions)
                if p < node.ring.q and node.ring.preference_list(p)[0] == node.name]

    async def pass_once(self):
        """Scan one partition for tombstones and advance its candidates by one step."""
        self._expire()
        mine = self._mine()
        for p in list(self.candidates):
            if p not in mine:
                del self.candidates[p]
        if not mine:
            return
        p = mine[self._turn % len(mine)]
        self._turn += 1
        self.stats["passes"] += 1
        await self._scan(p)
        await self._advance(p)

    async def _scan(self, p):
        """Read the next scan_batch keys of p for tombstones, SCAN_CHUNK at a time with a
        yield to the loop between: requests wait at most one chunk, not the whole batch."""
        part = self.node.replica.opened(p)
        if part is None:
            return
        cand = self.candidates.setdefault(p, {})
        cursor, ks = part.store.scan(self._cursor.get(p, 0), self.scan_batch)
        self._cursor[p] = cursor
        self.stats["scanned"] += len(ks)
        total = sum(len(c) for c in self.candidates.values())
        for i in range(0, len(ks), SCAN_CHUNK):
            if i:
                await asyncio.sleep(0)
                if self.node.replica.opened(p) is not part:    # dropped meanwhile
                    return
            chunk = ks[i:i + SCAN_CHUNK]
            for k, raw in zip(chunk, part.store.get_many(chunk)):
                if raw is None or k in cand or total >= self.max_candidates:
                    continue
                if is_tombstone(raw):
                    cand[k] = [raw, None]
                    total += 1

    async def _ask(self, peers, type_, payload):
        """Replies of every peer, or None if one cannot be asked (down or failing)."""
        node = self.node
        if not all(node.is_up(n) for n in peers):
            return None
        timeout = node.cfg.request_timeout_ms / 1000.0
        replies = await asyncio.gather(*(node.call(n, type_, payload, timeout) for n in peers),
                                       return_exceptions=True)
        for n, r in zip(peers, replies):
            if isinstance(r, BaseException):
                log.info("reap: %s did not answer %s: %s", n, type_, r)
                return None
        return replies

    async def _advance(self, p):
        node = self.node
        part = node.replica.opened(p)
        cand = self.candidates.get(p, {})
        if part is None or not cand:
            return
        primaries = list(node.ring.preference_list(p))
        others = [n for n in primaries if n != node.name]
        # (a) every primary holds it with an equal clock
        todo = [k for k, c in cand.items() if c[1] is None][:self.reap_batch]
        for k, raw in zip(todo, part.store.get_many(todo)):
            if raw != cand[k][0]:
                del cand[k]                  # written since: no longer this tombstone
        todo = [k for k in todo if k in cand]
        if todo:
            replies = await self._ask(others, "ae_clocks", {"p": p, "keys": todo})
            if replies is None:
                self.stats["blocked_down"] += 1
                return
            for r in replies:
                seq(r, "clocks reply", error=ProtocolError)
                if len(r) != len(todo):
                    raise ProtocolError("clocks reply of the wrong length")
            now = time.monotonic()
            for i, k in enumerate(todo):
                c = cand.get(k)
                if c is None:
                    continue
                if all(r[i] == c[0] for r in replies):
                    c[1] = now
                    self.stats["confirmed"] += 1
                else:
                    del cand[k]              # anti-entropy or read repair will even them out first
        # (b) grace since confirmation
        now = time.monotonic()
        ripe = [k for k, c in cand.items() if c[1] is not None and now - c[1] >= self.grace]
        ripe = ripe[:self.reap_batch]
        if not ripe:
            return
        # (c) no member holds a hint for the key; an unreachable member blocks the reap
        members = [n for n in node.ring.nodes if n != node.name]
        replies = await self._ask(members, "ae_hints", {"p": p, "keys": ripe})
        if replies is None:
            self.stats["blocked_down"] += 1
            return
        held = set(self._held(p, ripe))
        for r in replies:
            held |= _keyset(r, "hints reply")
        self.stats["blocked_hints"] += len(held)
        ripe = [k for k in ripe if k not in held and k in cand]
        if not ripe:
            return
        # mark reap-pending on every primary, then compare-and-delete on every primary
        es = [[k, cand[k][0]] for k in ripe]
        marked = {k for k, raw in es if self.mark(p, k, raw)}
        replies = await self._ask(others, "ae_mark", {"p": p, "entries": es})
        if replies is None:
            self.stats["blocked_down"] += 1
            return                           # marks expire; nothing deleted
        for r in replies:
            marked &= _keyset(r, "mark reply")
        for k in ripe:
            if k not in marked:
                cand.pop(k, None)
                self.stats["abandoned"] += 1
        es = [[k, raw] for k, raw in es if k in marked]
        if not es:
            return
        for k, raw in es:
            if node.replica.delete_if(p, k, raw):
                self.stats["deleted_here"] += 1
            cand.pop(k, None)
        self.stats["reaped"] += len(es)
        await self._ask(others, "ae_cad", {"p": p, "entries": es})
