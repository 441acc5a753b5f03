"""One SET, three ways, the same bytes (issue 18 A).

A plain SET or GET of a node's client can take
- the compiled door (kvnet/localdoor.pyx LocalDoor: a partition the node serves alone, or the
  direct lane to the other primaries),
- with the door off, the front door's own fast lane (FrontDoor.set_overwrite_now /
  get_lww_now, kvnet/frontdoor.py), or
- with that off too, the general path (FrontDoor.set_overwrite / get_lww -> the coordinator,
  kvnet/coordinator/driver.py put_raw / get).
The same generated commands (SET, overwrites, GET, DEL, MSET, MGET, KV.PUT siblings, KV.GET
contexts, errors), cut into pieces at random, run once each way on clusters that start from the
same data directory contents (so the same actor ids and epochs) with the wall clock pinned;
every reply, every replica's stored clock bytes and every partition's Merkle tree must then be
equal byte for byte (docs/quorum.md, docs/versions.md: the lanes change speed, never results).
"""
import asyncio
import contextlib
import shutil
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kvnet.config import load
from kvnet.frontdoor import _LocalDoor
from kvnet.node import Node
from kvnet.replica import Identity
from kvnet.resp.server import RespProtocol
from kvnet.testing import free_ports
from kvnet.testing.fakes import CountingDoor

from tests.kvnet.resp.test_server import RecordingTransport

# the compiled door exists only when built (RINGKV_NO_EXTENSIONS=1: the other two run)
MODES = ("door", "now", "general") if _LocalDoor is not None else ("now", "general")
LIMITS = dict(max_key_bytes=32, max_value_bytes=64)
T0 = 1_700_000_000_000_000          # the pinned wall clock's start, in microseconds


def resp(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


class Clock:
    """The wall clock every path stamps a value with, pinned: time.time_ns (the general path
    and FrontDoor) and LocalDoor.clock read `us` while the `with` block runs."""

    def __init__(self):
        self.us = T0

    def __call__(self):
        return self.us

    @contextlib.contextmanager
    def pinned(self):
        saved = time.time_ns
        time.time_ns = lambda: self.us * 1000
        try:
            yield self
        finally:
            time.time_ns = saved


def _identities(base, count):
    """A data directory per node with its identity made once (incarnation and epoch lease),
    copied for each mode: every mode's node i mints with the same actor and epochs."""
    for i in range(count):
        Identity(str(base / "template" / f"n{i}"), f"n{i}")
    for mode in MODES:
        shutil.copytree(base / "template", base / mode)


async def _cluster(base, mode, clock, count, n, rw, fsync="never"):
    ports = free_ports(2 * count)
    members = [f"n{i}@127.0.0.1:{ports[count + i]}" for i in range(count)]
    nodes = []
    try:
        for i in range(count):
            nodes.append(await Node(load(
                name=f"n{i}", port=ports[i], peer_port=ports[count + i], n=n, r=rw, w=rw,
                data_dir=str(base / mode / f"n{i}"), members=members, fsync=fsync,
                request_timeout_ms=10000, **LIMITS)).start())
        await _ready(nodes)
    except BaseException:
        for node in nodes:
            await node.stop()
        raise
    front = nodes[0]
    if mode == "door":
        front.resp.door.clock = clock
    else:
        front.resp.door = None
        front.front.fast_lanes = mode == "now"      # off: the coordinator's general path
    return nodes


async def _ready(nodes):
    """Every partition open on its replicas and, with N > 1, node0's direct lane open for
    every partition, so the fast lanes take what they can from the first command."""
    ring = nodes[0].ring
    for node in nodes:
        for p in range(ring.q):
            if node.name in ring.preference_list(p):
                node.replica.partition(p)
    if len(nodes) == 1:
        return
    for _ in range(500):
        if all(nodes[0].direct_lane(p) is not None for p in range(ring.q)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the direct lane did not open")


async def _feed(node, chunks, clock):
    """The reply bytes to `chunks` (one data_received each, the clock one millisecond on
    before each) through a new connection of node; every command settled before the next
    chunk arrives."""
    proto = RespProtocol(node.resp)
    log = []
    proto.connection_made(RecordingTransport(log, "c"))
    for chunk in chunks:
        clock.us += 1000
        proto.data_received(chunk)
        for _ in range(5000):
            if not proto._running and not proto._queue:
                break
            await asyncio.sleep(0.001)
        else:
            raise AssertionError("a command did not finish")
        await asyncio.sleep(0)          # the round's flush
    proto.connection_lost(None)
    return b"".join(data for _, data in log if type(data) is bytes)


def _state(nodes):
    """Per node: {partition: (stored {key: clock bytes}, tree root, tree leaves)}."""
    out = []
    for node in nodes:
        parts = {}
        for p, part in sorted(node.replica.partitions.items()):
            tree = part.tree
            parts[p] = (dict(part.store.items()), tree.root(), tree.level(tree.depth))
        out.append(parts)
    return out


async def _settled(nodes):
    """The cluster's state once its replicas agree (the write past W arrives after the
    answer), or after 5 s (the comparison then shows what differs)."""
    for _ in range(500):
        state = _state(nodes)
        if all(s == state[0] for s in state):
            return state
        await asyncio.sleep(0.01)
    return _state(nodes)


KEYS = [b"k%d" % i for i in range(5)] + [b"K" * 40]        # the last: over max_key_bytes
VALUES = [b"", b"v", b"w", b"x" * 60, b"y" * 70]            # the last: over max_value_bytes
key, value = st.sampled_from(KEYS), st.sampled_from(VALUES)

command = st.one_of(
    st.tuples(st.sampled_from([b"SET", b"set"]), key, value),
    st.tuples(st.sampled_from([b"SET", b"set"]), key, value),       # overwrites, often
    st.tuples(st.sampled_from([b"GET", b"get"]), key),
    st.tuples(st.just(b"DEL"), key),
    st.tuples(st.just(b"DEL"), key, key),
    st.tuples(st.just(b"MSET"), key, value, key, value),
    st.tuples(st.just(b"MGET"), key, key, key),
    st.tuples(st.just(b"EXISTS"), key, key),
    st.tuples(st.just(b"KV.PUT"), key, st.sampled_from([b"s1", b"s2"])),   # siblings
    st.tuples(st.just(b"KV.GET"), key),                                    # contexts
    st.tuples(st.just(b"SET"), key, st.just(b"v"), st.just(b"NX")),        # errors
    st.tuples(st.just(b"GET"), key, st.just(b"extra")),
)


def _cut(chunks, cuts):
    """The same bytes in other pieces, so commands arrive cut short and joined."""
    out = []
    for i, chunk in enumerate(chunks):
        points = sorted({int(f * len(chunk)) for f in cuts[i % len(cuts)]} | {0, len(chunk)})
        out += [chunk[a:b] for a, b in zip(points, points[1:]) if b > a]
    return out


def _run_modes(base, batches, cuts, count, n, rw, fsync="never"):
    """{mode: (reply bytes, node0's counters, settled state)} for the commands."""
    _identities(base, count)
    chunks = _cut([b"".join(resp(*c) for c in batch) for batch in batches], cuts)

    async def one(mode):
        clock = Clock()
        with clock.pinned():
            nodes = await _cluster(base, mode, clock, count, n, rw, fsync)
            try:
                replies = await _feed(nodes[0], chunks, clock)
                stats = (dict(nodes[0].stats), nodes[0].resp.commands.stats["total_commands_processed"],
                         nodes[0].resp.commands.stats["total_error_replies"])
                return replies, stats, await _settled(nodes)
            finally:
                for node in nodes:
                    await node.stop()

    async def main():
        return {mode: await one(mode) for mode in MODES}

    return asyncio.run(asyncio.wait_for(main(), 120))


def _agree(got):
    first, want = MODES[0], got[MODES[0]]
    for mode in MODES[1:]:
        replies, stats, state = got[mode]
        assert replies == want[0], (first, mode)
        assert stats == want[1], (first, mode)
        for i, (a, b) in enumerate(zip(state, want[2])):
            assert a.keys() == b.keys(), (first, mode, f"n{i}")
            for p in a:
                assert a[p][0] == b[p][0], (first, mode, f"n{i}", p, "stored")
                assert a[p][1:] == b[p][1:], (first, mode, f"n{i}", p, "tree")


batches_st = st.lists(st.lists(command, min_size=1, max_size=10), min_size=1, max_size=6)
cuts_st = st.lists(st.lists(st.floats(0, 1), max_size=3), min_size=1, max_size=3)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=batches_st, cuts=cuts_st)
def test_one_node_the_paths_agree_byte_for_byte(tmp_path_factory, batches, cuts):
    _agree(_run_modes(tmp_path_factory.mktemp("one"), batches, cuts, 1, 1, 1))


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=batches_st, cuts=cuts_st)
def test_three_nodes_the_paths_agree_byte_for_byte(tmp_path_factory, batches, cuts):
    _agree(_run_modes(tmp_path_factory.mktemp("three"), batches, cuts, 3, 3, 2))


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=batches_st, cuts=cuts_st, count=st.sampled_from([1, 3]))
def test_under_fsync_always_the_paths_agree_byte_for_byte(tmp_path_factory, batches, cuts,
                                                          count):
    """The door leaves SETs to the front door, whose acknowledgement waits for the group
    commit (FrontDoor.set_overwrite_now: LATER alone, LocalReplica.durable on the lane)."""
    _agree(_run_modes(tmp_path_factory.mktemp("always"), batches, cuts, count, count,
                      min(count, 2), "always"))


# ---- the switches themselves -----------------------------------------------------------------

PLAIN = [resp(b"SET", b"k1", b"a"), resp(b"SET", b"k1", b"b"), resp(b"GET", b"k1"),
         resp(b"SET", b"k2", b"c"), resp(b"GET", b"k2"), resp(b"GET", b"k3")]


@pytest.mark.parametrize("count, n, rw", [(1, 1, 1), (3, 3, 2)])
def test_each_mode_takes_its_own_path(tmp_path, monkeypatch, count, n, rw):
    """The door takes the plain commands, stamping the pinned clock; with it off the front
    door's lane writes without the coordinator's put_raw; with that off too, put_raw writes
    each SET. Their bytes agree."""
    from kvcore import versions as V
    from kvnet.coordinator import driver

    calls = []
    put_raw = driver.put_raw

    def counted(*args, **kw):
        calls.append(args[2])
        return put_raw(*args, **kw)

    monkeypatch.setattr(driver, "put_raw", counted)
    _identities(tmp_path, count)
    got = {}

    async def main():
        for mode in MODES:
            clock = Clock()
            with clock.pinned():
                nodes = await _cluster(tmp_path, mode, clock, count, n, rw)
                try:
                    door = None
                    if mode == "door":
                        door = nodes[0].resp.door = CountingDoor(nodes[0].resp.door)
                    calls.clear()
                    got[mode] = (await _feed(nodes[0], [b"".join(PLAIN)], clock),
                                 await _settled(nodes))
                    assert got[mode][0] == b"+OK\r\n+OK\r\n$1\r\nb\r\n+OK\r\n$1\r\nc\r\n$-1\r\n"
                    general = mode == "general"
                    assert calls == ([b"k1", b"k1", b"k2"] if general else []), mode
                    if door is not None:
                        assert door.taken == len(PLAIN)
                    raw = nodes[0].replica.read_raw(nodes[0].ring.partition_of(b"k2"), b"k2")
                    assert [s.timestamp for s in V.values(V.decode(raw))] == [T0 + 1000]
                finally:
                    for node in nodes:
                        await node.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
    for mode in MODES[1:]:
        assert got[mode] == got[MODES[0]], mode


def test_a_refused_write_is_not_counted(tmp_path):
    """The general path counts a write once its key is accepted, as it counts a GET and as the
    fast lanes do: a KV.PUT, KV.DEL or SET of a key over the limit counts nothing."""
    _identities(tmp_path, 1)

    async def main():
        clock = Clock()
        with clock.pinned():
            (node,) = await _cluster(tmp_path, "general", clock, 1, 1, 1)
            try:
                long = b"K" * 40
                out = await _feed(node, [resp(b"KV.PUT", long, b"v") + resp(b"KV.DEL", long)
                                         + resp(b"SET", long, b"v") + resp(b"GET", long)],
                                  clock)
                assert out.count(b"-ERR key is 40 bytes") == 4
                assert node.stats == {"gets": 0, "puts": 0, "deletes": 0}
                out = await _feed(node, [resp(b"KV.PUT", b"k", b"v") + resp(b"KV.DEL", b"k")
                                         + resp(b"SET", b"k", b"v")], clock)
                assert node.stats == {"gets": 0, "puts": 2, "deletes": 1}
            finally:
                await node.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
