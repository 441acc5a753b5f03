"""Changing membership: staged join/leave/remove, plan, commit, partition transfers, settle
(riak_core's claimant and handoff manager, one node at a time).

The claimant is the lowest-id member of the current ring that this node sees up. Every admin
request (`kvctl join|leave|remove|plan|commit|transfers`) is forwarded to it. `commit` computes
the next ring with kvcore's claim, refuses unless every owner it keeps is up, and installs a
*moving* ring state (ringstate.py) that gossip spreads. While the claimant sees the state moving
it drives the transfers (`xfer` to each up old replica in turn, which streams the partition
to the new replica in batches with `xfer_recv`, merged there), a few at a time, retrying the
transfer when a source fails. When all are confirmed it installs the *settled* state: new
owners serve, old ones drop what they no longer replicate, a leaving node exits. Rules:
docs/algorithms.md, sections 3 and 5; docs/operations.md.

Zones: the claimant gives the claim each member's zone as gossip carries it from the member's
config (`zone`): a joiner's, and, when the ring's zones differ from what every member of it
announces (a new cluster's first ring is made from names alone; a member restarted with another
zone), it commits a ring change that only sets the zones (Ring.with_zones: owners move only when
the zones ask for spacing the layout lacks), once the ring is settled, nothing is staged and
every member is up (docs/cluster.md, "Zones").

Progress: the node that streams a partition counts its keys and bytes batch by batch
(`sending`); the claimant's `transfers` answer adds the count of the copy in flight (asked of
its source with `xfer_progress`) to the totals of the copies already done, beside an estimate
of the whole transfer taken from the sources' stores when it starts (`cl_sizes` with keys).
"""
import asyncio
import logging

from kvcore import versions as V
from kvcore.errors import RingError
from kvnet import payload as P
from kvnet.errors import CommandError, Unavailable
from kvnet.membership import ringstate as RS
from kvnet.membership import state as S

log = logging.getLogger("kvnet.membership")

__all__ = ["ClusterChanges"]

OPS = ("join", "leave", "remove")
XFER_BATCH_KEYS = 500
XFER_BATCH_BYTES = 1 << 20
XFER_CONCURRENCY = 2


class ClusterChanges:
    """One node's part in membership changes (see the module docstring)."""

    def __init__(self, node, interval=None):
        self.node = node
        self.interval = interval or max(0.05, node.cfg.gossip_interval_ms / 1000.0)
        self.staged = {}             # node id -> op (on the claimant)
        self.relayout = False        # a zone relayout staged (on the claimant)
        self.progress = {}           # (epoch, partition, to) -> {"state", "keys", "bytes", ...}
        self.sending = {}            # (partition, to) -> {"epoch", "keys", "bytes"}: streams from here
        self.stats = {"sent_keys": 0, "sent_bytes": 0, "received_keys": 0}
        self._task = None
        self._running = {}
        self._distrusted = set()     # (ring epoch, partition) filled by a transfer here
        self._bad_zones = None       # (ring epoch, zones) a rezone failed for: not tried again

    def handlers(self):
        return {"cl_stage": self._on_stage, "cl_plan": self._on_plan,
                "cl_commit": self._on_commit, "cl_transfers": self._on_transfers,
                "cl_sizes": self._on_sizes, "xfer": self._on_xfer, "xfer_recv": self._on_xfer_recv,
                "xfer_progress": self._on_xfer_progress}

    async def start(self):
        self._task = asyncio.ensure_future(self._run())

    async def stop(self):
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._running.clear()

    # ---- who decides ---------------------------------------------------------------------

    def claimant(self):
        """The lowest-id member of the current ring that this node sees up."""
        node = self.node
        if node.ring is None:
            raise Unavailable(f"node {node.name} has no ring yet")
        # ring.nodes is sorted by id: the first one up is the lowest (every node asks this
        # every interval; asking about every member was O(N) each time)
        for n in node.ring.nodes:
            if node.is_up(n):
                return n
        raise Unavailable("no member of the ring is up")

    async def request(self, op, payload=None):
        """An admin request (stage/plan/commit/transfers), answered by the claimant."""
        claimant = self.claimant()
        handler = self.handlers()["cl_" + op]
        if claimant == self.node.name:
            return await handler(payload or {})
        return await self.node.call(claimant, "cl_" + op, payload or {}, 4 * self.node.timeout)

    def _claimant_only(self):
        if self.claimant() != self.node.name:
            raise CommandError(f"{self.node.name} is not the claimant ({self.claimant()} is)")

    # ---- staging, plan, commit (on the claimant) -------------------------------------------

    async def _on_stage(self, m):
        self._claimant_only()
        if not isinstance(m, dict) or m.get("op") not in OPS + ("clear", "relayout") \
                or not isinstance(m.get("node"), str):
            raise CommandError("stage needs {'op': join|leave|remove|clear, 'node': id}")
        op, who = m["op"], m["node"]
        node, ring = self.node, self.node.ring
        if op == "relayout":
            if who not in ("", "cancel"):
                raise CommandError("KV.CLUSTER RELAYOUT takes no node (CANCEL unstages it)")
            if who == "cancel":
                self.relayout = False
            else:
                try:          # refused now when there is nothing to do (plan shows the moves)
                    RS.relayout(self._next_ring(relayout=False))
                except ValueError as exc:
                    raise CommandError(f"relayout: {exc}") from None
                self.relayout = True
            return dict(self.staged)
        if op == "clear":
            self.staged.pop(who, None)
            return dict(self.staged)
        if op == "join":
            entry = node.gossip.table.get(who)
            if who in ring.nodes:
                raise CommandError(f"{who} is already a member of the ring")
            if entry is None or not node.is_up(who):
                raise CommandError(f"{who} is not known to gossip or not up: start it with "
                                   "`kvnode start --join` and a seed in --members")
        else:
            if who not in ring.nodes:
                raise CommandError(f"{who} is not a member of the ring")
            if op == "leave" and not node.is_up(who):
                raise CommandError(f"{who} is down: a down node cannot hand off; use remove")
            if op == "remove" and node.is_up(who):
                raise CommandError(f"{who} is up: remove is for dead nodes; use leave")
        self.staged[who] = op
        return dict(self.staged)

    def _zones(self):
        """{member: zone} for every member gossip knows (its config's `zone`, None when unset)."""
        return {who: e.zone for who, e in self.node.gossip.table.items()}

    def _next_ring(self, relayout=None):
        """The ring after the staged changes: the joins and leaves, then (staged, or
        `relayout`) a zone relayout when the ring they leave needs one."""
        ring = self.node.ring
        join = [n for n, op in self.staged.items() if op == "join"]
        out = [n for n, op in self.staged.items() if op in ("leave", "remove")]
        try:
            nxt = RS.plan_ring(ring, join, out, self._zones())
            if (self.relayout if relayout is None else relayout) and RS.zone_problems(nxt):
                nxt = RS.relayout(nxt)
            return nxt
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    async def _on_plan(self, m):
        self._claimant_only()
        node = self.node
        if node.ring_state.moving:
            raise CommandError("a ring change is still moving partitions; see `kvctl transfers`")
        if not self.staged and not self.relayout:
            return {"staged": {}, "transfers": [], "bytes": 0, "moves": {}}
        nxt = self._next_ring()
        xfers = RS.transfers(node.ring, nxt)
        sizes = await self._sizes({x.partition for x in xfers}, xfers)
        moves = {}
        for x in xfers:
            moves[x.to] = moves.get(x.to, 0) + 1
        return {"staged": dict(self.staged), "relayout": self.relayout,
                "zone_problems": RS.zone_problems(nxt),
                "transfers": [[x.partition, x.to, list(x.sources), sizes.get(x.partition)]
                              for x in xfers],
                "bytes": sum(sizes.get(x.partition) or 0 for x in xfers),
                "moves": moves,
                "owned_after": {n: nxt.owners.count(n) for n in nxt.nodes}}

    async def _sizes(self, partitions, xfers):
        """Bytes of each partition, from the stores of a replica that has it (an estimate)."""
        node, asked, out = self.node, {}, {}
        for x in xfers:
            src = next((s for s in x.sources if node.is_up(s)), None)
            if src is not None:
                asked.setdefault(src, set()).add(x.partition)
        for src, ps in asked.items():
            try:
                got = self._local_sizes(ps) if src == node.name else \
                    await node.call(src, "cl_sizes", {"partitions": sorted(ps)}, node.timeout)
                out.update({int(k): v for k, v in got.items()})
            except Exception as exc:
                log.info("plan: sizes from %s: %s", src, exc)
        return out

    def _local_sizes(self, partitions, keys=False):
        """{partition: live bytes} of this node's stores; with keys, {partition: {"bytes",
        "keys"}}."""
        out = {}
        for p in partitions:
            part = self.node.replica.partitions.get(p)
            st = {} if part is None else part.store.stats()
            size = int(st.get("live_bytes", 0))
            out[p] = {"bytes": size, "keys": int(st.get("keys", 0))} if keys else size
        return out

    async def _on_sizes(self, m):
        ps = m.get("partitions") if isinstance(m, dict) else None
        if not isinstance(ps, list) or not all(type(p) is int for p in ps):
            raise CommandError("cl_sizes needs {'partitions': [int, ...]}")
        if type(m.get("keys", False)) is not bool:
            raise CommandError("cl_sizes: 'keys' is true or false")
        return self._local_sizes(ps, m.get("keys", False))

    async def _estimate(self, p, sources):
        """{"keys", "bytes"}: about what a transfer of p from every one of `sources` sends
        (the sum of their stores' counts; a source that does not answer counts as the mean of
        the others), or None when none answers."""
        node = self.node

        async def one(src):
            if src == node.name:
                return self._local_sizes([p], keys=True)[p]
            got = await node.call(src, "cl_sizes", {"partitions": [p], "keys": True}, node.timeout)
            got = got.get(p, got.get(str(p))) if isinstance(got, dict) else None
            if isinstance(got, int):                   # a node that counts bytes only
                return {"bytes": got, "keys": None}
            return got if isinstance(got, dict) else None

        res = await asyncio.gather(*(one(s) for s in sources), return_exceptions=True)
        out = {}
        for field in ("keys", "bytes"):
            known = [r[field] for r in res if isinstance(r, dict) and type(r.get(field)) is int]
            if known:
                out[field] = round(sum(known) * len(sources) / len(known))
        return out or None

    async def _on_commit(self, m):
        self._claimant_only()
        node = self.node
        state = node.ring_state
        if state.moving:
            raise CommandError("a ring change is still moving partitions; see `kvctl transfers`")
        if not self.staged and not self.relayout:
            raise CommandError("nothing staged: use `kvctl join|leave|remove|relayout` first")
        removing = {n for n, op in self.staged.items() if op == "remove"}
        down = [n for n in node.ring.nodes if n not in removing and not node.is_up(n)]
        down += [n for n, op in self.staged.items() if op == "join" and not node.is_up(n)]
        if down:
            raise Unavailable(f"a ring change needs every owner up; down: {', '.join(sorted(down))}")
        nxt = self._next_ring()
        new = RS.RingState(state.current, nxt, state.epoch + 1, node.name)
        table = node.gossip.table
        for who, op in self.staged.items():
            status = {"join": "valid", "leave": "leaving", "remove": "removed"}[op]
            if who in table:
                try:
                    table = S.set_status(table, who, status, new.epoch)
                except ValueError as exc:
                    log.info("status of %s: %s", who, exc)
        node.gossip.table = table
        self.staged.clear()
        self.relayout = False
        node.offer_ring(new)
        log.warning("ring epoch %d committed: %d transfers", new.epoch,
                    len(RS.transfers(state.current, nxt)))
        return {"epoch": new.epoch, "transfers": len(RS.transfers(state.current, nxt))}

    async def _on_transfers(self, m):
        """Every transfer of the moving ring: its state, sources, keys and bytes sent so far
        (running totals while it runs) and the estimate of what it sends in all."""
        state = self.node.ring_state
        rows, asks = [], []
        if state is not None and state.moving:
            for x in RS.transfers(state.current, state.next):
                key = (state.epoch, x.partition, x.to)
                pr = self.progress.get(key, {})
                est = pr.get("estimate") or {}
                row = {"partition": x.partition, "to": x.to, "state": pr.get("state", "waiting"),
                       "from": pr.get("from"), "source": pr.get("source"),
                       "keys": pr.get("keys", 0), "bytes": pr.get("bytes", 0),
                       "est_keys": est.get("keys"), "est_bytes": est.get("bytes"),
                       "tries": pr.get("tries", 0), "error": pr.get("error")}
                rows.append(row)
                if row["state"] == "running" and row["source"]:
                    asks.append((row, key, row["source"]))
        if asks:
            got = await asyncio.gather(*(self._copy_count(key, src) for _, key, src in asks))
            for (row, _, _), count in zip(asks, got):
                row["keys"] += count[0]
                row["bytes"] += count[1]
        return {"epoch": None if state is None else state.epoch,
                "moving": bool(state and state.moving), "transfers": rows}

    async def _copy_count(self, key, src):
        """(keys, bytes) the copy of transfer `key` from `src` in flight has sent so far: asked
        of the source (it counts per batch), else the last count it gave."""
        epoch, p, to = key
        try:
            if src == self.node.name:
                got = self._sent_so_far(p, to, epoch)
            else:
                got = await self.node.call(src, "xfer_progress", {"p": p, "to": to, "epoch": epoch},
                                           self.node.timeout)
        except Exception as exc:
            log.debug("transfer progress of partition %d from %s: %s", p, src, exc)
            got = None
        pr = self.progress.get(key)
        last = pr.get("seen") if pr is not None else None
        last = last[1:] if last is not None and last[0] == src else (0, 0)
        if isinstance(got, dict) and type(got.get("keys")) is int and type(got.get("bytes")) is int:
            count = max(last[0], got["keys"]), max(last[1], got["bytes"])
        else:
            count = last                   # the copy just ended, or its source did not answer
        if pr is not None and pr.get("source") == src:
            pr["seen"] = (src, *count)
        return count

    def _sent_so_far(self, p, to, epoch=None):
        entry = self.sending.get((p, to))
        if entry is None or (epoch is not None and entry["epoch"] not in (None, epoch)):
            return {}
        return {"keys": entry["keys"], "bytes": entry["bytes"]}

    async def _on_xfer_progress(self, m):
        if not isinstance(m, dict) or type(m.get("p")) is not int or not isinstance(m.get("to"), str) \
                or not (m.get("epoch") is None or type(m.get("epoch")) is int):
            raise CommandError("xfer_progress needs {'p': partition, 'to': node, 'epoch': int}")
        return self._sent_so_far(m["p"], m["to"], m.get("epoch"))

    # ---- driving a moving ring (on the claimant) ---------------------------------------------

    async def _run(self):
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.drive()
            except Unavailable:
                pass
            except Exception:
                log.exception("ring change driver failed")

    def drive(self):
        """Start the transfers not yet done; settle the ring once all are confirmed."""
        node = self.node
        state = node.ring_state
        if state is None or self.claimant() != node.name:
            return
        if not state.moving:
            self.rezone(state)
            return
        pending = []
        for x in RS.transfers(state.current, state.next):
            key = (state.epoch, x.partition, x.to)
            if self.progress.get(key, {}).get("state") != "done":
                pending.append((key, x))
        if not pending:
            settled = RS.RingState(state.next, None, state.epoch + 1, node.name)
            table = node.gossip.table
            for who in state.current.nodes:
                if who not in settled.current.nodes and who in table \
                        and table[who].status == "leaving":
                    try:
                        table = S.set_status(table, who, "exiting", settled.epoch)
                    except ValueError:
                        pass
            node.gossip.table = table
            node.offer_ring(settled)
            log.warning("ring epoch %d settled", settled.epoch)
            return
        for key, x in pending:
            if len(self._running) >= XFER_CONCURRENCY:
                break
            if key in self._running or not node.is_up(x.to):
                continue
            # Every old replica but a removed one must be copied from: with W < N the one that
            # acknowledged a write may be any of them. Wait while one of them is down.
            sources = [s for s in x.sources if not self._removed(s)]
            if not sources or not all(node.is_up(s) for s in sources):
                continue
            tries = self.progress.get(key, {}).get("tries", 0)
            self.progress[key] = {"state": "running", "from": ",".join(sources), "tries": tries + 1}
            self._running[key] = node.spawn(self._transfer(key, x, sources))

    def rezone(self, state):
        """On the claimant of a settled ring: when the zones every member announces differ from
        the ring's, commit a ring change that sets them (see the module docstring). Returns the
        new state, or None."""
        node = self.node
        if self.staged or self.relayout:
            return None                          # an operator's change goes first
        table, ring = node.gossip.table, state.current
        zones = {}
        for who in ring.nodes:
            entry = table.get(who)
            if entry is None or not node.is_up(who) or entry.status not in ("valid", "joining"):
                return None
            zones[who] = entry.zone
        changed = RS.zones_differ(ring, zones)
        if not changed or self._bad_zones == (state.epoch, changed):
            return None
        try:
            nxt = ring.with_zones(changed)
        except RingError as exc:
            self._bad_zones = (state.epoch, changed)
            log.warning("zones %s not taken into the ring: %s", changed, exc)
            return None
        new = RS.RingState(ring, nxt, state.epoch + 1, node.name)
        node.offer_ring(new)
        log.warning("ring epoch %d committed: zones %s, %d transfers", new.epoch, changed,
                    len(RS.transfers(ring, nxt)))
        return new

    async def _transfer(self, key, x, sources):
        """Copy partition x.partition to x.to from every up old replica in turn: with W < N a
        single replica may lack acknowledged writes the others hold, and the new replica must
        end with their union (each copy is merged there with sync)."""
        node = self.node
        keys = sent = 0
        src = None
        pr = self.progress[key]
        try:
            try:
                pr["estimate"] = await self._estimate(x.partition, sources)
            except Exception as exc:       # only the progress display misses it
                log.info("size of partition %d: %s", x.partition, exc)
            payload = {"p": x.partition, "to": x.to, "epoch": key[0]}
            for src in sources:
                pr["source"] = src
                if src == node.name:
                    got = await self._send_partition(x.partition, x.to, key[0])
                else:
                    # a whole partition may take a while: a generous deadline, not the usual one
                    got = await node.call(src, "xfer", payload, 600.0)
                keys, sent = keys + got["keys"], sent + got["bytes"]
                pr.update(keys=keys, bytes=sent)          # the copies done so far
            pr.update(state="done", source=None)
        except Exception as exc:
            pr.update(state="failed", error=str(exc))
            log.info("transfer of partition %d to %s from %s failed: %s", x.partition, x.to, src, exc)
        finally:
            self._running.pop(key, None)
        if self.progress[key].get("state") != "done":
            return                         # retried at the next tick, not at once
        try:
            self.drive()                   # the next transfer starts now, not at the next tick
        except Exception as exc:
            log.info("ring change driver: %s", exc)

    def _removed(self, name):
        """Staged for removal (a dead node): the one old replica a transfer does without."""
        entry = self.node.gossip.table.get(name)
        return entry is not None and entry.status == "removed"

    # ---- the transfer itself (on a source and on the new replica) ------------------------

    async def _on_xfer(self, m):
        node = self.node
        if not isinstance(m, dict) or type(m.get("p")) is not int or not isinstance(m.get("to"), str):
            raise CommandError("xfer needs {'p': partition, 'to': node}")
        p, to = m["p"], m["to"]
        state = node.ring_state
        if state is None or not 0 <= p < state.current.q:
            raise CommandError(f"partition {p} is not on the ring")
        if state is None or not state.moving or to not in state.extra_targets(p) \
                or node.name not in state.current.preference_list(p):
            raise CommandError(f"no transfer of partition {p} to {to} from {node.name} "
                               f"at ring epoch {None if state is None else state.epoch}")
        epoch = m.get("epoch") if type(m.get("epoch")) is int else None
        return await self._send_partition(p, to, epoch)

    async def _send_partition(self, p, to, epoch=None):
        """Stream every key of partition p to `to`, in bounded batches; -> counts. The counts
        so far are in `sending` while it runs (xfer_progress)."""
        node = self.node
        part = node.replica.partitions.get(p)
        entry = {"epoch": epoch, "keys": 0, "bytes": 0}
        self.sending[(p, to)] = entry
        try:
            if part is not None:
                cursor = 0
                while True:
                    cursor, ks = part.store.scan(cursor, XFER_BATCH_KEYS)
                    batch, size = [], 0
                    for k in ks:
                        raw = part.store.get(k)
                        if raw is None:
                            continue
                        batch.append([k, raw])
                        size += len(k) + len(raw)
                        if size >= XFER_BATCH_BYTES:
                            await self._push(to, p, batch, entry, size)
                            batch, size = [], 0
                    if batch:
                        await self._push(to, p, batch, entry, size)
                    if cursor == 0:
                        break
        finally:
            if self.sending.get((p, to)) is entry:
                del self.sending[(p, to)]
        return {"keys": entry["keys"], "bytes": entry["bytes"]}

    async def _push(self, to, p, batch, entry, size):
        """Send one batch; once it is acknowledged, count it (entry: the copy's counts)."""
        await self.node.call(to, "xfer_recv", {"p": p, "items": batch}, 4 * self.node.timeout)
        entry["keys"] += len(batch)
        entry["bytes"] += size
        self.stats["sent_keys"] += len(batch)
        self.stats["sent_bytes"] += size

    async def _on_xfer_recv(self, m):
        node = self.node
        if not isinstance(m, dict) or type(m.get("p")) is not int or not isinstance(m.get("items"), list):
            raise CommandError("xfer_recv needs {'p': partition, 'items': [[key, clock], ...]}")
        p, items = m["p"], m["items"]
        if node.ring is None or not 0 <= p < node.ring.q or not node.holds(p):
            raise CommandError(f"{node.name} is not a replica of partition {p} in the next ring")
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is bytes
                    and type(item[1]) is bytes):
                raise CommandError("xfer_recv items must be [key bytes, clock bytes]")
            P.key(node, item[0], p)
        try:
            decoded = [(k, V.decode(raw)) for k, raw in items]
        except V.InvalidClock as exc:
            raise CommandError(f"xfer_recv: bad clock: {exc}") from None
        mark = (node.ring_state.epoch, p)
        if mark not in self._distrusted:
            # This node may have held p before and dropped it: dots of its own in what arrives
            # may be older than ones it minted then. Never extend them (docs/algorithms.md,
            # section 1).
            replica = node.replica
            replica.partition(p).distrust(replica.identity.new_epoch())
            self._distrusted.add(mark)
        for k, clock in decoded:
            node.replica.merge(p, k, clock)
        self.stats["received_keys"] += len(decoded)
        await node.replica.after_write(p)
        return len(decoded)
