"""The async side of coordination: send, wait, time out (riak_kv's get/put FSMs).

The quorum values (quorum.py) decide; this module only fans requests out to the
targets, feeds replies in as they come, stops at `enough()`, and leaves the
stragglers to read repair. `Cluster` is what the node gives it: the ring, who
is up, the local replica, and how to call a peer.
"""
import asyncio
import logging

from kvcore import versions as V
from kvnet.coordinator import staleness as S
from kvnet.coordinator.preflist import preflist_for, write_route
from kvnet.coordinator.quorum import (DURABLE, NOT_FOUND, OK, TIMEOUT, Failed, Found,
                                      GetQuorum, GetResult, PutQuorum)
from kvnet.payload import DURABLE_ACK
from kvnet.errors import ObjectTooLarge, QuorumError, TooManySiblings, Unavailable
from kvnet.peer.errors import PeerUnavailable, RemoteError
from kvnet.stepping import ReplyFuture, reject, resolve

log = logging.getLogger("kvnet.coordinator")


class Cluster:
    """The interface the drivers need from a node (kvnet/node.py implements it)."""

    name: str
    ring: object
    replica: object
    timeout: float
    # the running loop, when known: asyncio.get_running_loop() makes a getpid() system call
    # each time (its fork check), a few percent of a request on the hot path
    loop = None
    # counters of outcomes and read repairs (new_coord_stats(); None or absent: not
    # counted), read by kvnet/metrics.py
    coord_stats = None

    def is_up(self, node):
        raise NotImplementedError

    def targets(self, p, strict=False):
        """The targets of partition p now: up primaries, and fallbacks for the down ones
        unless strict (sloppy quorum, docs/algorithms.md, section 2)."""
        return preflist_for(self.ring, p, self.is_up, strict=strict)

    def coordinator_route(self, p, strict=False):
        """Who coordinates a write to partition p now."""
        return write_route(self.ring, p, self.is_up, self.name, strict=strict)

    def route_and_targets(self, p, strict=False):
        """(coordinator_route, targets) of p from one look at who is up."""
        return self.coordinator_route(p, strict), self.targets(p, strict)

    def hint_read(self, p, key, hint_for):
        """This node's hint copy of key for primary `hint_for` (a fallback's read), or None."""
        raise NotImplementedError

    def hint_store(self, p, key, hint_for, clock):
        """Keep clock as a hint for `hint_for`, merged with any copy held (a fallback's write)."""
        raise NotImplementedError

    def mint_hint(self, p, key, sibling, context, overwrite, hint_for):
        """Coordinate a write as a fallback: mint from the hint copy under a fresh epoch."""
        raise NotImplementedError

    async def after_hint(self, durable=False):
        """Wait until stored hints are as durable as the fsync policy asks (durable: fsynced,
        whatever the policy: a write asking for DURABLE k)."""

    def extra_targets(self, p):
        """Nodes a ring change is adding to p's replicas: writes go to them too, uncounted."""
        return ()

    def reap_pending(self, p, key, raw):
        """Is this exact tombstone clock marked for reaping here (docs/algorithms.md, section 6)?"""
        return False

    async def call(self, node, type, payload, timeout):
        raise NotImplementedError

    def call_future(self, node, type, payload, timeout):
        """A future of call()'s answer (a node sends at once on a ready connection)."""
        return asyncio.ensure_future(self.call(node, type, payload, timeout))

    def spawn(self, coro):
        raise NotImplementedError


async def _ask_all(cluster, nodes, quorum, ask_local, ask, convert, timeout, step=None):
    """Feed every target's reply into quorum until it has enough, or `timeout` passes.

    The local replica answers first, inline: when that is enough (N=1, R=1, W=1) nothing waits
    on the network. `ask(node)` returns a future of the raw answer (no Task per replica: a
    callback converts it with `convert(future)` and feeds the quorum, first reply wins).
    Returns {future: node} of the requests still running; their replies keep going to quorum
    as they come (read repair waits for them). `step`: a KV.TRACE step told every reply, or
    None."""
    pending = {}
    remote = []
    if step is not None:
        step.ask(nodes)
    for n in nodes:
        if n == cluster.name and ask_local is not None:
            reply = ask_local()
            quorum.add_result(n, reply)
            if step is not None:
                step.reply(n, reply, quorum)
        else:
            remote.append(n)
    if not remote:
        return pending
    loop = cluster.loop or asyncio.get_running_loop()
    wake = loop.create_future()

    def settled(fut):
        node = pending.pop(fut, None)
        if node is None:
            return
        reply = convert(fut)
        quorum.add_result(node, reply)
        if step is not None:
            step.reply(node, reply, quorum)
        if not wake.done() and (not pending or quorum.enough()):
            wake.set_result(None)

    for n in remote:
        try:
            fut = ask(n)
        except Exception as exc:
            quorum.add_result(n, _reply_of(exc))
            if step is not None:
                step.reply(n, _reply_of(exc), quorum)
            continue
        pending[fut] = n
        fut.add_done_callback(settled)
    if not pending or quorum.enough():
        return pending
    timer = loop.call_later(timeout, lambda: wake.done() or wake.set_result(None))
    try:
        await wake
    finally:
        timer.cancel()
    if not quorum.enough():
        for n in list(pending.values()):
            quorum.add_result(n, TIMEOUT)
            if step is not None:
                step.reply(n, TIMEOUT, quorum)
    return pending


def new_coord_stats():
    """The coordinator's counters: (op, quorum, outcome) -> requests, with op "get" or "put",
    quorum "r=2" / "w=3" (the R or W asked for) and outcome ok, unavailable, timeout (a quorum
    not met with a replica timed out) or failed (not met otherwise); and "divergent_reads"
    (reads whose replicas' replies disagreed once all had answered), "read_repairs" (replicas
    sent the merged clock), "forwarded_writes" (writes this node sent to another node to
    coordinate, not being a replica of their partition) and "staleness" (reads checked and
    stale, per R: staleness.py) (docs/observability.md)."""
    return {"divergent_reads": 0, "read_repairs": 0, "forwarded_writes": 0,
            "staleness": S.new_counts()}


def _count(cluster, op, needed, result, quorum=None):
    """One coordinated request's outcome: `result` its answer or the exception it ends with."""
    stats = getattr(cluster, "coord_stats", None)
    if stats is not None:
        _tally(stats, op, needed, result, quorum)


_LABELS = {}       # (op, R or W) -> its label "r=2" / "w=3", formatted once


def _tally(stats, op, needed, result, quorum):
    label = _LABELS.get((op, needed))
    if label is None:
        label = _LABELS[op, needed] = f"{'r' if op == 'get' else 'w'}={needed}"
    if not isinstance(result, BaseException):
        outcome = "ok"
    elif isinstance(result, Unavailable):
        outcome = "unavailable"
    elif isinstance(result, QuorumError) and quorum is not None \
            and TIMEOUT in quorum.replies().values():
        outcome = "timeout"
    else:
        outcome = "failed"
    key = (op, label, outcome)
    stats[key] = stats.get(key, 0) + 1


def _reply_of(exc):
    return TIMEOUT if isinstance(exc, TimeoutError) else Failed(f"{type(exc).__name__}: {exc}")


def _ok(fut):
    """An acknowledgement future -> OK or the failure it ended with."""
    if fut.cancelled():
        return Failed("cancelled")
    exc = fut.exception()
    return OK if exc is None else _reply_of(exc)


def _durable_ok(fut):
    """The acknowledgement of a write asking for durability -> DURABLE (its replica confirmed
    the fsync), OK (stored: a node from before DURABLE answers so) or the failure."""
    if fut.cancelled():
        return Failed("cancelled")
    exc = fut.exception()
    if exc is not None:
        return _reply_of(exc)
    return DURABLE if fut.result() == DURABLE_ACK else OK


async def _fsynced(aw):
    """The local replica's (or hint log's) DURABLE_ACK once `aw`, its durability wait, ends."""
    await aw
    return DURABLE_ACK


def _found(fut):
    """A replica read future (encoded clock or None) -> Found / NOT_FOUND / the failure."""
    if fut.cancelled():
        return Failed("cancelled")
    exc = fut.exception()
    if exc is not None:
        return _reply_of(exc)
    return _found_raw(fut.result())


def _found_raw(raw):
    """A replica's answer to a read (encoded clock or None) -> Found / NOT_FOUND / Failed."""
    if raw is None:
        return NOT_FOUND
    try:
        return Found(V.decode(raw))
    except Exception as exc:
        return _reply_of(exc)


def _only_local_primary(cluster, pl, needed):
    """True when this node, as a primary, is the only target and one reply is the quorum
    (N=1, or every other primary down with R/W=1): the local replica alone decides, so the
    quorum value, futures and read repair have nothing to do (same result as the general path)."""
    if type(needed) is not int or needed != 1:
        return False
    targets = pl.targets
    return len(targets) == 1 and targets[0].node == cluster.name and targets[0].hint_for is None


async def get(cluster, p, key, r, strict=False, trace=None):
    """(merged clock or None, GetResult) from R replicas; repairs stale ones afterwards.
    `trace`: a KV.TRACE Trace (kvnet/coordinator/trace.py) told what happens, or None."""
    ring = cluster.ring
    pl = cluster.targets(p, strict)
    if trace is None and _only_local_primary(cluster, pl, r):
        try:
            clock = cluster.replica.read(p, key)
        except Exception:
            pass                          # the general path below reports the failure
        else:
            _count(cluster, "get", r, None)
            if clock is None:
                return GetResult(V.EMPTY, False, 1, 1)
            return GetResult(clock, True, 1, 1)
    quorum = GetQuorum(ring.n, r, pl)
    step = None if trace is None else trace.step("get", p, quorum, pl)
    if quorum.enough():
        _count(cluster, "get", r, quorum.response(), quorum)
        if step is not None:
            step.answered(quorum.response())
        raise quorum.response()

    def ask_local():
        try:
            hint_for = pl.target(cluster.name).hint_for
            if hint_for is None:
                clock = cluster.replica.read(p, key)
            else:
                raw = cluster.hint_read(p, key, hint_for)
                clock = None if raw is None else V.decode(raw)
        except Exception as exc:          # any failure is a reply that does not count
            return _reply_of(exc)
        return NOT_FOUND if clock is None else Found(clock)

    def ask(node):
        hint_for = pl.target(node).hint_for
        if hint_for is None:
            return cluster.call_future(node, "get", {"p": p, "k": key}, cluster.timeout)
        return cluster.call_future(node, "hget", {"p": p, "k": key, "h": hint_for}, cluster.timeout)

    rest = await _ask_all(cluster, pl.nodes, quorum, ask_local, ask, _found, cluster.timeout,
                          step)
    result = quorum.response()
    _count(cluster, "get", r, result, quorum)
    if isinstance(result, Exception):
        if step is not None:
            step.answered(result)
        raise result
    if step is not None:
        step.answered(result, result.clock)
    if rest:
        _repair_when_answered(cluster, p, key, quorum, list(rest), result.clock, r, step)
    else:
        _repair_now(cluster, p, key, quorum, result.clock, r, step)
    return result


def _repair_when_answered(cluster, p, key, quorum, rest, answer=None, r=None, step=None):
    """Once the stragglers have answered (or timed out: each request has its timeout), repair
    the replicas that were stale. Callbacks, not a Task per read: the callbacks _ask_all put on
    each future first feed the quorum, this one then sees every reply."""
    left = [len(rest)]

    def answered(fut):
        left[0] -= 1
        if left[0] == 0:
            try:
                _repair_now(cluster, p, key, quorum, answer, r, step)
            except Exception:
                log.exception("read repair of %r failed", key)

    for fut in rest:
        fut.add_done_callback(answered)


def _repair_now(cluster, p, key, quorum, answer=None, r=None, step=None):
    """Every target already answered: count whether `answer` (the clock the read returned;
    _LOCAL: this node's replica's; None: none was) was stale (staleness.py), and repair only
    when some replica was."""
    repair = quorum.final()
    stats = getattr(cluster, "coord_stats", None)
    stale = None
    if answer is not None and repair is not None:
        if not repair.stale:
            stale = False       # every reply equals their merge: so does a merge of some
        elif answer is _LOCAL:
            stale = _is_stale_target(cluster.name, repair.stale)
        else:
            stale = S.is_stale(answer, repair.clock)
        if stats is not None:
            _read_checked(stats, r, stale)
    task = None
    if repair is not None and repair.clock is not None and repair.stale:
        if stats is not None:
            stats["divergent_reads"] += 1
        task = cluster.spawn(_send_repairs(cluster, p, key, repair, step))
    if step is not None:
        step.final(repair, stale)
        step.repair_task = task


async def _send_repairs(cluster, p, key, repair, step=None):
    raw = V.encode(repair.clock)
    if cluster.reap_pending(p, key, raw):
        return       # a reap of this tombstone is under way: never copy it back (section 6)
    stats = getattr(cluster, "coord_stats", None)
    for target in repair.stale:
        if stats is not None:
            stats["read_repairs"] += 1
        error = await _store_on(cluster, target, p, key, repair.clock, raw, "read repair")
        if step is not None:
            step.repaired(target, error)


async def _store_on(cluster, target, p, key, clock, raw, why):
    """Sync clock onto one target: a primary's replica, or a fallback's hint for its primary.
    Returns None, or the failure's text (logged)."""
    node, hint_for = target.node, target.hint_for
    try:
        if node != cluster.name:
            await _send_remote(cluster.call, cluster.timeout, node, hint_for, p, key, raw)
        elif hint_for is None:
            cluster.replica.merge(p, key, clock)
        else:
            cluster.hint_store(p, key, hint_for, raw)
    except Exception as exc:
        log.info("%s of %r on %s failed: %s", why, key, node, exc)
        return f"{type(exc).__name__}: {exc}"
    return None


async def store_extra(cluster, node, p, key, raw):
    """A write to a replica a ring change is adding: uncounted, but never lost on the way (the
    old replicas that acknowledged it may all drop the partition once the ring settles), so a
    failure leaves a hint for that node here."""
    try:
        await _send_remote(cluster.call, cluster.timeout, node, None, p, key, raw)
    except Exception as exc:
        log.info("write of %r to new replica %s failed (%s): kept as a hint", key, node, exc)
        cluster.hint_store(p, key, node, raw)


def _send_remote(call, timeout, node, hint_for, p, key, raw, durable=False):
    """A clock to another node through `call` (cluster.call or call_future): `put` into its
    replica, or `hput` into its hints for hint_for; durable: answered once fsynced there
    ("d", docs/peer.md)."""
    if hint_for is None:
        m = {"p": p, "k": key, "c": raw}
    else:
        m = {"p": p, "k": key, "c": raw, "h": hint_for}
    if durable:
        m["d"] = True
    return call(node, "put" if hint_for is None else "hput", m, timeout)


FORWARD_ATTEMPTS = 3     # coordinators tried for one write whose forward finds no connection
# A forwarded write's refusals by its coordinator that the client gets as they are, as if this
# node had coordinated it (not as a failed peer request).
_REFUSALS = {"ObjectTooLarge": ObjectTooLarge, "TooManySiblings": TooManySiblings}


async def put(cluster, p, key, sibling, context=None, overwrite=False, w=2, strict=False,
              durable=0):
    """Write through the coordinating replica; returns the new clock once W replicas have it
    (and, durable=k, once k distinct nodes have fsynced it: docs/quorum.md, "Durable
    writes")."""
    return V.decode(await put_raw(cluster, p, key, sibling, context, overwrite, w, strict,
                                  durable))


async def put_raw(cluster, p, key, sibling, context=None, overwrite=False, w=2, strict=False,
                  durable=0, trace=None):
    """`put`, returning the new clock's bytes (a Redis SET needs no decoded clock). `trace`:
    a KV.TRACE Trace (kvnet/coordinator/trace.py), or None."""
    for attempt in range(FORWARD_ATTEMPTS):
        route, pl = cluster.route_and_targets(p, strict)
        if route.coordinator is None:
            what = "primary" if strict else "replica"
            raise Unavailable(f"no {what} of partition {p} is reachable to coordinate the write")
        if route.coordinate_locally:
            return await coordinate_put_raw(cluster, p, key, sibling, context, overwrite, w,
                                            strict, pl, durable, trace=trace)
        if attempt == 0:
            stats = getattr(cluster, "coord_stats", None)
            if stats is not None:
                stats["forwarded_writes"] += 1
        payload = {"p": p, "k": key, "v": sibling.value, "ts": sibling.timestamp,
                   "ctx": None if context is None else V.encode_context(context),
                   "ow": overwrite, "w": w, "st": strict}
        if durable:
            payload["d"] = durable
        try:
            if trace is not None:
                reply = await _forward_traced(cluster, route.coordinator, payload, trace)
            else:
                # (the coordinator waits up to `timeout` for its replicas: give it that, and
                # the hop)
                reply = await cluster.call(route.coordinator, "coord_put", payload,
                                           2 * cluster.timeout)
            return reply if not durable else _forwarded_durable(route.coordinator, reply)
        except PeerUnavailable:
            # No connection could be made, so nothing was sent: the failed dial now routes
            # around that node (a node killed a moment ago), and the next reachable one of the
            # extended list coordinates instead.
            if attempt == FORWARD_ATTEMPTS - 1:
                raise
        except RemoteError as exc:
            refusal = _REFUSALS.get(exc.code)
            if refusal is None:
                raise
            raise refusal(exc.remote_message) from None


def _forwarded_durable(node, reply):
    """A forwarded durable write's answer (coord_put with "d"): {"c": clock bytes, "d": fsync
    confirmations}. A coordinator from before DURABLE ignores "d" and answers the clock bytes
    alone, having acknowledged the write without the fsyncs asked: refused here."""
    if type(reply) is dict and type(reply.get("c")) is bytes and type(reply.get("d")) is int:
        return reply["c"]
    raise QuorumError(f"write not acknowledged as durable: its coordinator {node} does not "
                      "support DURABLE (an older version); it stored the write without the "
                      "fsync confirmations asked: not acknowledged is not the same as not "
                      "written")


async def _forward_traced(cluster, coordinator, payload, trace):
    """put_raw's forward to `coordinator` under KV.TRACE: "tr" asks it for its own trace
    (kvnet/replicahandlers.py), which becomes this step's; a node that does not know "tr"
    answers the clock's bytes alone."""
    step = trace.forward(payload["p"], coordinator)
    try:
        answer = await cluster.call(coordinator, "coord_put", dict(payload, tr=True),
                                    2 * cluster.timeout)
    except Exception as exc:
        step.answered(exc)
        raise
    if type(answer) is dict:
        step.remote = answer.pop("t", None)
        if not payload.get("d"):
            answer = answer.get("c")        # (a durable write's answer: _forwarded_durable)
    step.answered(None)
    return answer


async def coordinate_put(cluster, p, key, sibling, context, overwrite, w, strict=False,
                         durable=0):
    """Mint the new version here (a primary, or the fallback standing in when every primary is
    down), store it, replicate it, await W acks (and durable=k fsync confirmations); the new
    clock."""
    return V.decode(await coordinate_put_raw(cluster, p, key, sibling, context, overwrite, w,
                                             strict, None, durable))


async def coordinate_put_raw(cluster, p, key, sibling, context, overwrite, w, strict=False,
                             pl=None, durable=0, results=None, trace=None):
    """`coordinate_put`, returning the new clock's bytes (what replication sends). pl: the
    targets, when the caller has them from the same look at who is up. durable (k): every
    target is asked to answer once the write is fsynced there, whatever its fsync policy,
    and the write is acknowledged once k of them did and W acknowledged (docs/quorum.md,
    "Durable writes"). results: a list the PutResult is appended to (none when the local
    replica alone decided). trace: a KV.TRACE Trace, or None."""
    ring = cluster.ring
    if pl is None:
        pl = cluster.targets(p, strict)
    replica = cluster.replica
    if not durable and trace is None and replica.fsync != "always" \
            and _only_local_primary(cluster, pl, w) \
            and not cluster.extra_targets(p):
        raw = replica.mint_raw(p, key, sibling, context, overwrite)
        _count(cluster, "put", w, None)
        return raw
    quorum = PutQuorum(ring.n, w, pl, durable=durable)
    step = None if trace is None else trace.step("put", p, quorum, pl)
    if quorum.enough():
        _count(cluster, "put", w, quorum.response(), quorum)
        if step is not None:
            step.answered(quorum.response())
        raise quorum.response()
    me = pl.target(cluster.name)
    if me is None:
        exc = Unavailable(f"{cluster.name} is not a target of partition {p} now; retry")
        if step is not None:
            step.answered(exc)
        raise exc
    if me.hint_for is None:
        raw = replica.mint_raw(p, key, sibling, context, overwrite)
    else:
        raw = V.encode(cluster.mint_hint(p, key, sibling, context, overwrite, me.hint_for))
    for x in cluster.extra_targets(p):
        cluster.spawn(store_extra(cluster, x, p, key, raw))

    def send(node):
        hint_for = pl.target(node).hint_for
        if node != cluster.name:
            return _send_remote(cluster.call_future, cluster.timeout, node, hint_for, p, key, raw,
                                durable)
        if durable:             # the group commit (or the hint log's sync), whatever the policy
            return asyncio.ensure_future(_fsynced(
                replica.durable_write(p) if hint_for is None else cluster.after_hint(True)))
        # fsync="always": the group commit (or the hint log's sync)
        return asyncio.ensure_future(replica.after_write(p) if hint_for is None
                                     else cluster.after_hint())

    # Stored above; unless every write waits for a sync, the local ack needs no wait.
    local = None if durable or replica.fsync == "always" else (lambda: OK)
    await _ask_all(cluster, pl.nodes, quorum, local, send, _durable_ok if durable else _ok,
                   cluster.timeout, step)
    result = quorum.response()
    _count(cluster, "put", w, result, quorum)
    if step is not None:
        step.answered(result, None if isinstance(result, Exception) else V.decode(raw))
    if isinstance(result, Exception):
        raise result
    if results is not None:
        results.append(result)
    return raw


# ---- the direct lane: every primary up, this node one of them, the ring still -----------------

class DirectWrite:
    """A write's replication without a coroutine, a Task or a timer per replica: the caller
    has stored the new clock `raw` and sent it to the other primaries with
    PeerConnection.batch_request(..., this object). It counts their acknowledgements as
    they come and settles `future` with `raw` at W (the local store counts as one), or with
    the general path's error (a PutQuorum fed the same replies) once W cannot be reached."""

    __slots__ = ("future", "raw", "left", "pending", "replies", "n", "w", "pl", "me", "stats")

    def __init__(self, future, raw, n, w, pl, me, remote, stats=None):
        self.future = future
        self.raw = raw
        self.left = w - 1           # acknowledgements still needed
        self.pending = remote       # replicas yet to answer
        self.replies = []
        self.n, self.w, self.pl, self.me = n, w, pl, me
        self.stats = stats          # the cluster's coord_stats (_count), or None
        if self.left <= 0:
            self._outcome(None, None)
            resolve(future, raw)

    def _outcome(self, result, quorum):
        if self.stats is not None:
            _tally(self.stats, "put", self.w, result, quorum)

    def __call__(self, node, exc, payload):
        self.pending -= 1
        if exc is None:
            self.replies.append((node, OK))
            self.left -= 1
            if self.left == 0 and not self.future.done():
                self._outcome(None, None)
                resolve(self.future, self.raw)
            return
        self.replies.append((node, _reply_of(exc)))
        if self.left > self.pending and not self.future.done():
            quorum = PutQuorum(self.n, self.w, self.pl)
            quorum.add_result(self.me, OK)
            for node, reply in self.replies:
                quorum.add_result(node, reply)
            self._outcome(quorum.response(), quorum)
            reject(self.future, quorum.response())


def put_direct(cluster, p, key, raw, w, pl, conns):
    """Replicate `raw` (stored here already) to the connections of p's other primaries; the
    future of the new clock's bytes at W. The node decides when the lane is open
    (Node.direct_lane); nothing here waits, so the caller needs no coroutine."""
    future = ReplyFuture(loop=cluster.loop or asyncio.get_running_loop())
    write = DirectWrite(future, raw, cluster.ring.n, w, pl, cluster.name, len(conns),
                        getattr(cluster, "coord_stats", None))
    _batch_to(conns, "mput", {"p": p, "k": key, "c": raw}, write, cluster.timeout)
    return future


def _batch_to(conns, rtype, item, callback, timeout):
    """Join `item` to each connection's batch of rtype. A full write buffer, or a send that
    raises (a connection that stopped being ready after the lane chose it), is that replica's
    failed reply: the caller has stored or read the local copy already, so raising would make
    it run the command again by the general path, a second write of the same SET."""
    for conn in conns:
        try:
            sent = conn.batch_request(rtype, item, callback, timeout)
        except Exception as exc:
            callback(conn.peer_id, exc, None)
            continue
        if not sent:
            callback(conn.peer_id, PeerUnavailable(f"node {conn.peer_id}: write buffer full"),
                     None)


class DirectRead:
    """A plain GET's replies without a coroutine, a Task or a timer per replica (the direct
    lane). In the common case every replica answers the same stored bytes: the value is read
    from them in place at R, and nothing needs repair. At the first reply that differs or
    fails, every reply so far goes to a GetQuorum, which then decides exactly as the general
    path does (answer, error) and, once all have answered, drives the same read repair. Once
    all have answered, the read's staleness is counted too (kvnet/coordinator/staleness.py):
    replies all equal are a fresh read at no cost but a counter."""

    __slots__ = ("cluster", "future", "p", "key", "replies", "same", "value", "needed",
                 "pending", "quorum", "n", "pl", "answer")

    def __init__(self, cluster, future, p, key, raw, n, r, pl, remote):
        self.cluster, self.future, self.p, self.key = cluster, future, p, key
        self.same = 1               # replies equal to the local one, the local one included
        self.needed = r
        self.pending = remote
        self.quorum = None
        self.n, self.pl = n, pl
        # the clock answered when the quorum answered; None: the local copy's (answered in
        # place) or, the future not done, none yet; _NO_ANSWER: an error was
        self.answer = None
        try:                        # read in place now: a local clock that does not decode
            self.value = None if raw is None else V.lww_value_raw(raw)
        except Exception as exc:    # is a failed reply, as the general path's local read
            self.replies = [(cluster.name, _reply_of(exc))]
            self._to_quorum()
            return
        self.replies = [(cluster.name, raw)]
        if r == 1:
            _count(cluster, "get", r, None)
            resolve(future, self.value)

    def _to_quorum(self):
        quorum = self.quorum = GetQuorum(self.n, self.needed, self.pl)
        for node, raw in self.replies:
            quorum.add_result(node, raw if type(raw) is Failed else _found_raw(raw))
        self._decide()

    def _decide(self):
        quorum = self.quorum
        result = None
        if not self.future.done() and quorum.enough():
            result = quorum.response()
            self.answer = _NO_ANSWER if isinstance(result, Exception) else result.clock
        if self.pending == 0:   # spawned first: the answer's completion cannot skip it
            try:
                _repair_now(self.cluster, self.p, self.key, quorum, self._answered(),
                            self.needed)
            except Exception:
                log.exception("read repair of %r failed", self.key)
        if result is None:
            return
        _count(self.cluster, "get", self.needed, result, quorum)
        if isinstance(result, Exception):
            reject(self.future, result)
        else:
            resolve(self.future, None if result.not_found else V.lww_value(result.clock))

    def _answered(self):
        """The clock the client was answered with (_LOCAL: the local replica's, read in
        place), None when it was not (an error)."""
        answer = self.answer
        if answer is _NO_ANSWER or (answer is None and not self.future.done()):
            return None
        return _LOCAL if answer is None else answer

    def __call__(self, node, exc, payload):
        self.pending -= 1
        reply = payload if exc is None else _reply_of(exc)
        self.replies.append((node, reply))
        if self.quorum is None:
            if exc is None and payload == self.replies[0][1]:
                self.same += 1
                if self.same == self.needed and not self.future.done():
                    _count(self.cluster, "get", self.needed, None)
                    resolve(self.future, self.value)
                if self.pending == 0:
                    _fresh(self.cluster, self.needed)
                return
            self._to_quorum()
            return
        self.quorum.add_result(node, reply if exc is not None else _found_raw(payload))
        self._decide()


_NO_ANSWER = object()
_LOCAL = object()       # DirectRead's answer: the local replica's copy, read in place


def _fresh(cluster, r):
    """A direct read whose replicas all answered the same bytes: checked, and not stale."""
    stats = getattr(cluster, "coord_stats", None)
    if stats is not None:
        _read_checked(stats, r, False)


def _read_checked(stats, r, stale):
    """One read with R=r checked, stale or not, into coord_stats["staleness"] (the
    {r: [checked, stale]} of staleness.new_counts(); compiled with the driver: a read's hot
    path)."""
    counts = stats["staleness"]
    c = counts.get(r)
    if c is None:
        c = counts[r] = [0, 0]
    c[0] += 1
    if stale:
        c[1] += 1


def _is_stale_target(node, targets):
    for t in targets:
        if t.node == node:
            return True
    return False


def get_direct(cluster, p, key, raw, r, pl, conns):
    """Ask p's other primaries for key (`raw`: the local replica's answer); the future of the
    plain GET's value (None: absent or deleted) at R. The node decides when the lane is open."""
    future = ReplyFuture(loop=cluster.loop or asyncio.get_running_loop())
    read = DirectRead(cluster, future, p, key, raw, cluster.ring.n, r, pl, len(conns))
    _batch_to(conns, "mget", {"p": p, "k": key}, read, cluster.timeout)
    return future
