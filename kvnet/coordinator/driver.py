"""The async side of coordination: send, wait, time out (riak_kv's get/put FSMs).

The quorum values (quorum.py) decide; this module only fans requests out to the
targets, feeds replies in as they come, stops at `enough()`, and leaves the
stragglers to read repair. `Cluster` is what the node gives it: the ring, who
is up, the local replica, and how to call a peer.
"""
import asyncio
import logging

from kvcore import versions as V
from kvnet.coordinator.preflist import preflist_for, write_route
from kvnet.coordinator.quorum import (NOT_FOUND, OK, TIMEOUT, Failed, Found, GetQuorum,
                                      PutQuorum)
from kvnet.errors import Unavailable

log = logging.getLogger("kvnet.coordinator")


class Cluster:
    """The interface the drivers need from a node (kvnet/node.py implements it)."""

    name: str
    ring: object
    replica: object
    timeout: float

    def is_up(self, node):
        raise NotImplementedError

    def targets(self, p):
        """The targets of partition p now (primaries only until sloppy quorum: issue 6)."""
        return preflist_for(self.ring, p, self.is_up, strict=True)

    def coordinator_route(self, p):
        """Who coordinates a write to partition p now."""
        return write_route(self.ring, p, self.is_up, self.name, strict=True)

    async def call(self, node, type, payload, timeout):
        raise NotImplementedError

    def spawn(self, coro):
        raise NotImplementedError


async def _ask_all(cluster, nodes, quorum, ask_local, ask, timeout):
    """Feed every target's reply into quorum until it has enough; returns the tasks still
    running (their replies go to quorum when they come). The local replica answers first,
    with no task: when that is enough (N=1, R=1, W=1) nothing waits on the network."""
    remote = []
    for n in nodes:
        if n == cluster.name and ask_local is not None:
            quorum.add_result(n, ask_local())
        else:
            remote.append(n)
    tasks = {asyncio.ensure_future(ask(n)): n for n in remote}
    pending = set(tasks)
    if quorum.enough():
        return tasks
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and not quorum.enough():
        done, pending = await asyncio.wait(pending, timeout=max(deadline - loop.time(), 0),
                                           return_when=asyncio.FIRST_COMPLETED)
        if not done:
            break
        for t in done:
            quorum.add_result(tasks[t], t.result())
    if not quorum.enough():
        for t in pending:
            quorum.add_result(tasks[t], TIMEOUT)
    return {t: tasks[t] for t in pending}


def _reply_of(exc):
    return TIMEOUT if isinstance(exc, TimeoutError) else Failed(f"{type(exc).__name__}: {exc}")


async def get(cluster, p, key, r, strict=False):
    """(merged clock or None, GetResult) from R replicas; repairs stale ones afterwards."""
    ring = cluster.ring
    pl = cluster.targets(p)
    quorum = GetQuorum(ring.n, r, pl)
    if quorum.enough():
        raise quorum.response()

    def ask_local():
        try:
            clock = cluster.replica.read(p, key)
        except Exception as exc:          # any failure is a reply that does not count
            return _reply_of(exc)
        return NOT_FOUND if clock is None else Found(clock)

    async def ask(node):
        try:
            raw = await cluster.call(node, "get", {"p": p, "k": key}, cluster.timeout)
            clock = None if raw is None else V.decode(raw)
        except Exception as exc:
            return _reply_of(exc)
        return NOT_FOUND if clock is None else Found(clock)

    rest = await _ask_all(cluster, pl.nodes, quorum, ask_local, ask, cluster.timeout)
    result = quorum.response()
    if isinstance(result, Exception):
        raise result
    if rest:
        cluster.spawn(_read_repair(cluster, p, key, quorum, rest))
    else:
        _repair_now(cluster, p, key, quorum)
    return result


def _repair_now(cluster, p, key, quorum):
    """Every target already answered: repair only when some replica was stale."""
    repair = quorum.final()
    if repair is not None and repair.clock is not None and repair.stale:
        cluster.spawn(_send_repairs(cluster, p, key, repair))


async def _read_repair(cluster, p, key, quorum, rest):
    """Wait for the stragglers, then send the merged clock to every replica that lacked it."""
    for t, node in rest.items():
        try:
            quorum.add_result(node, await t)
        except Exception as exc:
            quorum.add_result(node, _reply_of(exc))
    repair = quorum.final()
    if repair is None or repair.clock is None:
        return
    await _send_repairs(cluster, p, key, repair)


async def _send_repairs(cluster, p, key, repair):
    payload = {"p": p, "k": key, "c": V.encode(repair.clock)}
    for target in repair.stale:
        node = target.node
        try:
            if node == cluster.name:
                cluster.replica.merge(p, key, repair.clock)
            else:
                await cluster.call(node, "put", payload, cluster.timeout)
        except Exception as exc:
            log.info("read repair of %r on %s failed: %s", key, node, exc)


async def put(cluster, p, key, sibling, context=None, overwrite=False, w=2, strict=False):
    """Write through the coordinating replica; returns the new clock once W replicas have it."""
    route = cluster.coordinator_route(p)
    if route.coordinator is None:
        raise Unavailable(f"no replica of partition {p} is reachable to coordinate the write")
    if not route.coordinate_locally:
        raw = await cluster.call(route.coordinator, "coord_put", {
            "p": p, "k": key, "v": sibling.value, "ts": sibling.timestamp,
            "ctx": None if context is None else V.encode_context(context),
            "ow": overwrite, "w": w}, cluster.timeout)
        return V.decode(raw)
    return await coordinate_put(cluster, p, key, sibling, context, overwrite, w)


async def coordinate_put(cluster, p, key, sibling, context, overwrite, w):
    """Mint the new version here (a replica), store it, replicate it, await W acks."""
    ring = cluster.ring
    pl = cluster.targets(p)
    quorum = PutQuorum(ring.n, w, pl)
    if quorum.enough():
        raise quorum.response()
    clock = cluster.replica.mint(p, key, sibling, context, overwrite)
    payload = {"p": p, "k": key, "c": V.encode(clock)}

    async def send(node):
        try:
            if node == cluster.name:
                await cluster.replica.after_write()       # fsync="always": the group commit
            else:
                await cluster.call(node, "put", payload, cluster.timeout)
        except Exception as exc:
            return _reply_of(exc)
        return OK

    # Stored above; unless every write waits for a sync, the local ack needs no wait.
    local = None if cluster.replica.fsync == "always" else (lambda: OK)
    rest = await _ask_all(cluster, pl.nodes, quorum, local, send, cluster.timeout)
    for t in rest:                       # stragglers finish in the background
        cluster.spawn(_quiet(t))
    result = quorum.response()
    if isinstance(result, Exception):
        raise result
    return clock


async def _quiet(task):
    try:
        await task
    except Exception:
        pass
