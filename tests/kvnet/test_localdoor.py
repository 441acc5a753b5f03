"""The compiled door (kvnet/localdoor.pyx) changes speed, never results: any sequence of
commands gets the same replies, counters and stored values with the door as without it, and
it takes only plain GETs and SETs of the partitions the node alone replicates."""
import asyncio
import collections
import contextlib

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kvcore import versions as V
from kvnet.config import load
from kvnet.coordinator import driver
from kvnet.frontdoor import _LocalDoor
from kvnet.node import Node
from kvnet.peer.protocol import PeerConnection
from kvnet.resp.server import RespProtocol
from kvnet.routes import Lanes, Routes
from kvnet.testing import free_ports
from kvnet.testing.fakes import CountingDoor

from tests.kvnet.resp.test_server import RecordingTransport

pytestmark = pytest.mark.skipif(_LocalDoor is None, reason="the door is compiled only "
                                "(RINGKV_NO_EXTENSIONS=1 runs every command the general way)")


def resp(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


async def _nodes(base, count=1, n=1, rw=1, **kw):
    kw.setdefault("fsync", "never")
    kw.setdefault("request_timeout_ms", 10000)
    ports = free_ports(2 * count)
    members = [f"n{i}@127.0.0.1:{ports[count + i]}" for i in range(count)]
    return [await Node(load(name=f"n{i}", port=ports[i], peer_port=ports[count + i], n=n, r=rw,
                            w=rw, data_dir=str(base / f"n{i}"), members=members,
                            **kw)).start()
            for i in range(count)]


@contextlib.asynccontextmanager
async def _lane_cluster(base):
    """Three nodes (N=3, R=W=2) whose node0 has its direct lane open; stopped after."""
    nodes = await _nodes(base, count=3, n=3, rw=2)
    try:
        await _lanes_open(nodes)
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def _lanes_open(nodes):
    """Until node0's direct lane is open for every partition (peer connections up)."""
    ring = nodes[0].ring
    for _ in range(500):
        if all(nodes[0].direct_lane(p) is not None for p in range(ring.q)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the direct lane did not open")


async def _feed(node, chunks, door):
    """The replies to `chunks` (one data_received each) through a new connection of `node`,
    with its door on or off; settles every command before returning."""
    saved, node.resp.door = node.resp.door, door
    try:
        proto = RespProtocol(node.resp)
        log = []
        proto.connection_made(RecordingTransport(log, "c"))
        for chunk in chunks:
            proto.data_received(chunk)
            for _ in range(5000):       # a command that suspends: let it finish
                if not proto._running and not proto._queue:
                    break
                await asyncio.sleep(0.001)
            await asyncio.sleep(0)      # the round's flush
        proto.connection_lost(None)
    finally:
        node.resp.door = saved
    return b"".join(data for _, data in log if type(data) is bytes)


def _replies(data):
    reader = hiredis.Reader(notEnoughData=_END)
    reader.feed(data)
    out = []
    while (reply := reader.gets()) is not _END:
        out.append(reply if not isinstance(reply, hiredis.ReplyError) else ("error", str(reply)))
    return out


_END = object()


def _values(raw):
    """A stored clock's sibling values (None: a tombstone), sorted."""
    return sorted((s.value is not None, s.value or b"") for s in V.values(V.decode(raw)))

KEYS = [b"k%d" % i for i in range(6)] + [b"K" * 40]       # the last: over max_key_bytes
VALUES = [b"", b"v", b"x" * 100, b"y" * 70]                 # the last: over max_value_bytes

command = st.one_of(
    st.tuples(st.sampled_from([b"SET", b"set", b"Set"]), st.sampled_from(KEYS),
              st.sampled_from(VALUES)),
    st.tuples(st.sampled_from([b"GET", b"get", b"gEt"]), st.sampled_from(KEYS)),
    st.tuples(st.just(b"GET"), st.sampled_from(KEYS), st.just(b"extra")),
    st.tuples(st.just(b"SET"), st.sampled_from(KEYS), st.just(b"v"), st.just(b"NX")),
    st.tuples(st.just(b"DEL"), st.sampled_from(KEYS)),
    st.tuples(st.just(b"KV.PUT"), st.sampled_from(KEYS), st.just(b"sib")),   # siblings
    st.tuples(st.just(b"PING")),
    st.tuples(st.just(b"HELLO"), st.sampled_from([b"2", b"3"])),
)


def _cut(chunks, cuts):
    """The same bytes in other pieces: each chunk split at the fractions in `cuts`, so commands
    arrive cut short and joined (the door then leaves them to the parser)."""
    out = []
    for i, chunk in enumerate(chunks):
        points = sorted({int(f * len(chunk)) for f in cuts[i % len(cuts)]} | {0, len(chunk)})
        out += [chunk[a:b] for a, b in zip(points, points[1:]) if b > a]
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=st.lists(st.lists(command, min_size=1, max_size=12), min_size=1, max_size=8),
       cuts=st.lists(st.lists(st.floats(0, 1), max_size=3), min_size=1, max_size=4))
def test_replies_counters_and_values_agree_with_the_general_path(tmp_path_factory, batches,
                                                                 cuts):
    base = tmp_path_factory.mktemp("door")

    async def main():
        fast, slow = await _nodes(base / "fast", max_key_bytes=32, max_value_bytes=64) + \
            await _nodes(base / "slow", max_key_bytes=32, max_value_bytes=64)
        try:
            chunks = _cut([b"".join(resp(*c) for c in batch) for batch in batches], cuts)
            door = CountingDoor(fast.resp.door)
            got = _replies(await _feed(fast, chunks, door))
            want = _replies(await _feed(slow, chunks, None))
            assert len(got) == len(want) == sum(map(len, batches))
            # KV.PUT answers a context, which names each node's own actor
            cmds = [c for batch in batches for c in batch]
            assert [g for g, c in zip(got, cmds) if c[0] != b"KV.PUT"] == \
                [w for w, c in zip(want, cmds) if c[0] != b"KV.PUT"]
            for k in ("total_commands_processed", "total_error_replies"):
                assert fast.resp.commands.stats[k] == slow.resp.commands.stats[k], k
            assert fast.stats == slow.stats
            # the next sync covers every write the door stored
            assert fast.replica.group.write_gen == slow.replica.group.write_gen
            assert fast.replica.group.dirty_partitions() == slow.replica.group.dirty_partitions()
            for key in KEYS:
                a, b = (n.replica.read_raw(n.ring.partition_of(key), key) if len(key) <= 32 else None
                        for n in (fast, slow))
                assert (a is None) == (b is None), key
                if a is not None:
                    assert _values(a) == _values(b), key
            return door.taken
        finally:
            await fast.stop()
            await slow.stop()

    taken = asyncio.run(main())
    plain = sum(1 for b in batches for c in b
                if c[0] in (b"GET", b"get", b"SET", b"set") and len(c) == (2 if c[0] in
                    (b"GET", b"get") else 3) and len(c[1]) <= 32
                and (len(c) == 2 or len(c[2]) <= 64))
    assert taken <= plain


def test_it_takes_plain_gets_and_sets_and_stops_at_anything_else(tmp_path):
    async def main():
        (node,) = await _nodes(tmp_path)
        door = CountingDoor(node.resp.door)
        try:   # the general path opens the partitions; the door takes open ones only
            await _feed(node, [resp(b"GET", b"a") + resp(b"GET", b"none") + resp(b"GET", b"b")],
                        None)
            pipeline = [resp(b"SET", b"a", b"1"), resp(b"get", b"a"), resp(b"GET", b"none"),
                        resp(b"PING"), resp(b"SET", b"b", b"2"), resp(b"GET", b"b")]
            out = await _feed(node, [b"".join(pipeline)], door)
            assert out == b"+OK\r\n$1\r\n1\r\n$-1\r\n+PONG\r\n+OK\r\n$1\r\n2\r\n"
            assert door.taken == 5          # all but PING
            assert node.stats["puts"] == 2 and node.stats["gets"] == 3 + 3   # and the warm-up
            # RESP3's null, and a tombstone reads as absent
            out = await _feed(node, [resp(b"HELLO", b"3") + resp(b"DEL", b"a") +
                                     resp(b"GET", b"a")], door)
            assert out.endswith(b":1\r\n_\r\n")
        finally:
            await node.stop()

    asyncio.run(main())


def test_a_key_with_siblings_is_read_and_written_by_the_general_path(tmp_path):
    async def main():
        (node,) = await _nodes(tmp_path)
        door = CountingDoor(node.resp.door)
        try:
            await _feed(node, [resp(b"KV.PUT", b"s", b"one") + resp(b"KV.PUT", b"s", b"two")],
                        None)
            out = await _feed(node, [resp(b"GET", b"s"), resp(b"SET", b"s", b"three"),
                                     resp(b"GET", b"s")], door)
            # GET of two siblings: the newer, read by the general path; SET writes over both
            # (this node's own one-entry clock, the shape the byte-level SET takes), and the
            # one-value clock it leaves is read by the door
            assert out == b"$3\r\ntwo\r\n+OK\r\n$5\r\nthree\r\n"
            assert door.taken == 2
        finally:
            await node.stop()

    asyncio.run(main())


def test_sets_wait_for_the_group_commit_under_fsync_always(tmp_path):
    async def main():
        (node,) = await _nodes(tmp_path, fsync="always")
        door = node.resp.door
        try:
            session = node.resp.commands.open_session("t", "t")
            queue = collections.deque([[b"SET", b"a", b"1"]])
            out = []
            assert door.take(session, queue, out, 1 << 16) == (0, None) and len(queue) == 1
            assert await _feed(node, [resp(b"SET", b"a", b"1"), resp(b"GET", b"a")],
                               CountingDoor(door)) == b"+OK\r\n$1\r\n1\r\n"
        finally:
            await node.stop()

    asyncio.run(main())


def test_nothing_is_taken_before_auth_or_for_another_nodes_partition(tmp_path):
    async def main():
        nodes = await _nodes(tmp_path, count=2, n=1, password="pw")
        try:
            door = CountingDoor(nodes[0].resp.door)
            out = await _feed(nodes[0], [resp(b"SET", b"a", b"1")], door)
            assert out.startswith(b"-NOAUTH") and door.taken == 0
            ring = nodes[0].ring
            mine = [b"m%d" % i for i in range(200) if ring.preference_list(
                ring.partition_of(b"m%d" % i))[0] == "n0"][:5]
            theirs = [b"m%d" % i for i in range(200) if ring.preference_list(
                ring.partition_of(b"m%d" % i))[0] == "n1"][:5]
            await _feed(nodes[0], [resp(b"AUTH", b"pw") + b"".join(resp(b"GET", k) for k in mine)],
                        None)
            # the first command routed to n1 suspends; the door takes this node's keys, first
            # its SETs and then, beside the routed ones still in flight, its GETs
            cmds = [resp(b"AUTH", b"pw")] + [resp(b"SET", k, k) for k in mine + theirs] + \
                [resp(b"GET", k) for k in mine + theirs]
            out = await _feed(nodes[0], [b"".join(cmds)], door)
            assert out == b"+OK\r\n" + b"+OK\r\n" * 10 + \
                b"".join(b"$%d\r\n%b\r\n" % (len(k), k) for k in mine + theirs)
            assert door.taken == 10         # this node's five SETs and five GETs
            for k in theirs:                # the others were routed to n1, which holds them
                assert nodes[1].replica.read_raw(nodes[1].ring.partition_of(k), k) is not None
        finally:
            for node in nodes:
                await node.stop()

    asyncio.run(main())


# ---- the direct lane: a 3-node cluster, N=3, R=W=2 ------------------------------------------

def _held(nodes, key):
    """Each node's sibling values of key (None: not held)."""
    out = []
    for node in nodes:
        raw = node.replica.read_raw(node.ring.partition_of(key), key)
        out.append(None if raw is None else _values(raw))
    return out


async def _settled(nodes, keys):
    """Every node holds what the others hold of `keys` (the third replica's copy arrives after
    the W=2 answer), or 2 s have passed."""
    for _ in range(200):
        if all(len({repr(v) for v in _held(nodes, k)}) == 1 for k in keys):
            return
        await asyncio.sleep(0.01)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=st.lists(st.lists(command, min_size=1, max_size=8), min_size=1, max_size=5))
def test_the_lane_agrees_with_the_general_path(tmp_path_factory, batches):
    base = tmp_path_factory.mktemp("lane")

    async def main():
        fast = await _nodes(base / "fast", count=3, n=3, rw=2, max_key_bytes=32,
                            max_value_bytes=64)
        slow = await _nodes(base / "slow", count=3, n=3, rw=2, max_key_bytes=32,
                            max_value_bytes=64)
        try:
            await _lanes_open(fast)
            await _lanes_open(slow)
            chunks = [b"".join(resp(*c) for c in batch) for batch in batches]
            door = CountingDoor(fast[0].resp.door)
            got = _replies(await _feed(fast[0], chunks, door))
            want = _replies(await _feed(slow[0], chunks, None))
            cmds = [c for batch in batches for c in batch]
            assert len(got) == len(want) == len(cmds)
            assert [g for g, c in zip(got, cmds) if c[0] != b"KV.PUT"] == \
                [w for w, c in zip(want, cmds) if c[0] != b"KV.PUT"]
            for k in ("total_commands_processed", "total_error_replies"):
                assert fast[0].resp.commands.stats[k] == slow[0].resp.commands.stats[k], k
            assert fast[0].stats == slow[0].stats
            keys = [k for k in KEYS if len(k) <= 32]
            await _settled(fast, keys)
            await _settled(slow, keys)
            for key in keys:
                assert _held(fast, key) == _held(slow, key), key
        finally:
            for node in fast + slow:
                await node.stop()

    asyncio.run(main())


def test_the_lane_takes_one_command_then_waits_for_its_replicas(tmp_path):
    async def main():
        async with _lane_cluster(tmp_path) as nodes:
            door = CountingDoor(nodes[0].resp.door)
            out = await _feed(nodes[0], [resp(b"SET", b"a", b"1"), resp(b"GET", b"a"),
                                         resp(b"GET", b"nothing")], door)
            assert out == b"+OK\r\n$1\r\n1\r\n$-1\r\n"
            assert door.taken == 3          # every partition is open from the start
            await _settled(nodes, [b"a"])
            assert _held(nodes, b"a") == [[(True, b"1")]] * 3
            assert nodes[0].stats["puts"] == 1
            # pipelined: the door takes the first, and the next ones while it is in flight
            # as each may start (GET a waits for SET a: the same key); replies stay in order
            door.taken = 0
            out = await _feed(nodes[0], [resp(b"SET", b"a", b"2") + resp(b"GET", b"a") +
                                         resp(b"SET", b"b", b"3")], door)
            assert out == b"+OK\r\n$1\r\n2\r\n+OK\r\n" and door.taken == 3
            # a lane that is not open (a primary down, say): the general path
            nodes[0].rings.routes = Routes(nodes[0].ring_state, nodes[0].name, frozenset(),
                                           frozenset(), {})     # (routes without a lane)
            door.taken = 0
            out = await _feed(nodes[0], [resp(b"SET", b"a", b"4"), resp(b"GET", b"a")], door)
            assert out == b"+OK\r\n$1\r\n4\r\n" and door.taken == 0

    asyncio.run(main())


def test_a_pipeline_of_lane_commands_is_in_flight_at_once(tmp_path):
    async def main():
        async with _lane_cluster(tmp_path) as nodes:
            keys = [b"p%d" % i for i in range(16)]
            await _feed(nodes[0], [b"".join(resp(b"GET", k) for k in keys)], None)   # open
            door = CountingDoor(nodes[0].resp.door)
            out = await _feed(nodes[0], [b"".join(resp(b"SET", k, k) for k in keys) +
                                         b"".join(resp(b"GET", k) for k in keys)], door)
            assert out == b"+OK\r\n" * 16 + b"".join(b"$%d\r\n%b\r\n" % (len(k), k)
                                                   for k in keys)
            # the first SET by take(), the fifteen behind it while it is in flight (before
            # any replica could answer), each GET once its key's SET is done
            assert door.taken == 32 and door.beside >= 15
            await _settled(nodes, keys)
            for k in keys:
                assert _held(nodes, k) == [[(True, k)]] * 3
            assert nodes[0].stats["puts"] == 16
            assert nodes[0].resp.run_ahead == nodes[0].resp.lane_ahead == 0   # all released
            # the connection lost with a pipeline in flight: its bookkeeping released too
            saved, nodes[0].resp.door = nodes[0].resp.door, door
            try:
                proto = RespProtocol(nodes[0].resp)
                proto.connection_made(RecordingTransport([], "c"))
                proto.data_received(b"".join(resp(b"SET", k, b"x") for k in keys))
                # (lane commands ahead of the first count in lane_ahead, not run_ahead)
                assert len(proto._running) == 16 and nodes[0].resp.lane_ahead == 15
                assert nodes[0].resp.run_ahead == 0
                proto.connection_lost(None)
                assert not proto._running and not proto._keys and not proto._slots
                assert nodes[0].resp.lane_ahead == 0
            finally:
                nodes[0].resp.door = saved

    asyncio.run(main())


def test_pipelines_past_the_run_ahead_cap_are_in_flight_at_once_and_answered_in_one_write(
        tmp_path):
    """Eight clients pipelining 16 lane SETs each (120 commands beside their connection's
    first: max_run_ahead is 64): every one is in flight at once (counted in lane_ahead), and
    each connection's 16 replies leave in one or two writes (one per batch answer that settles
    them), not one per command."""
    async def main():
        async with _lane_cluster(tmp_path) as nodes:
            server = nodes[0].resp
            keys = [[b"c%d-%d" % (c, i) for i in range(16)] for c in range(8)]
            await _feed(nodes[0], [b"".join(resp(b"GET", k) for ks in keys for k in ks)],
                        None)           # every partition open
            assert server.max_run_ahead < 8 * 15
            log = []
            conns = []
            for c in range(8):
                conns.append(RespProtocol(server))
                conns[c].connection_made(RecordingTransport(log, c))
            try:
                for conn, ks in zip(conns, keys):
                    conn.data_received(b"".join(resp(b"SET", k, k) for k in ks))
                assert server.lane_ahead == 8 * 15 and server.run_ahead == 0
                for _ in range(5000):
                    if not any(conn._running for conn in conns):
                        break
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0)  # the round's flush
                for c in range(8):
                    writes = [data for who, data in log if who == c and type(data) is bytes]
                    assert b"".join(writes) == b"+OK\r\n" * 16
                    assert len(writes) <= 2
                assert server.lane_ahead == 0 and server.run_ahead == 0
                await _settled(nodes, [k for ks in keys for k in ks])
                for k in (keys[0][0], keys[7][15]):
                    assert _held(nodes, k) == [[(True, k)]] * 3
            finally:
                for conn in conns:
                    conn.connection_lost(None)

    asyncio.run(main())


def test_the_door_reads_the_lane_as_lanes_pick_decides_it(tmp_path):
    async def main():
        async with _lane_cluster(tmp_path) as nodes:
            node, door = nodes[0], nodes[0].resp.door
            await _feed(node, [resp(b"GET", b"a")], None)          # opens the partition
            p = node.ring.partition_of(b"a")
            peer = node.rings.routes.lane(p)[0][0]
            session = node.resp.commands.open_session("t", "t")

            def taken():
                queue, out = collections.deque([[b"SET", b"a", b"1"]]), []
                return door.take(session, queue, out, 1 << 16)[1]

            # a primary marked down, or its connection's write buffer full: neither the
            # door nor the node's own decision takes the lane
            node.gossip.down_peers.add(peer)
            assert taken() is None and node.direct_lane(p) is None
            node.gossip.down_peers.discard(peer)
            conn = node.lanes.conns[peer]
            conn._write_paused = True
            assert taken() is None and node.direct_lane(p) is None
            conn._write_paused = False
            # a cached connection that is not ready (one never connected, here): the door
            # asks Lanes.pick, which asks the pool again, and the lane is taken
            node.lanes.conns[peer] = PeerConnection(node.name, b"secret", initiator=True)
            started = taken()
            assert started is not None and started[1] == b"a"
            assert node.lanes.conns[peer] is conn
            assert await asyncio.wait_for(started[0], 10) is not None
            # a call of the door made while one runs (a completion it caused, running the
            # next command of another connection) takes nothing: the outer call's counts hold
            nested = []

            class Reentering:
                def get(self, peer):
                    queue, out = collections.deque([[b"GET", b"a"]]), []
                    nested.append((door.take(session, queue, out, 1 << 16), len(queue)))
                    return node.pool.get(peer)

            lanes = Lanes(Reentering(), node.gossip.down_peers)
            door = _LocalDoor(node.resp.commands, node, node.rings, lanes, node.replica,
                              node.stats, node.cfg)
            lanes.conns.update(node.lanes.conns)
            lanes.conns[peer] = PeerConnection(node.name, b"secret", initiator=True)
            puts = node.stats["puts"]
            started = taken()
            assert nested == [((0, None), 1)] and started is not None
            assert node.stats["puts"] == puts + 1
            await asyncio.wait_for(started[0], 10)

    asyncio.run(main())


def test_a_lane_send_that_raises_is_that_replicas_failed_reply(tmp_path):
    """A connection can stop being ready between the lane's choice and the send. The SET is
    stored here already, so the send's error is that replica's failed reply: the write meets
    W with the others or fails by quorum rules, and is never raised to run it again."""
    async def main():
        async with _lane_cluster(tmp_path) as nodes:
            node = nodes[0]
            await _feed(node, [resp(b"GET", b"a")], None)          # opens the partition
            p = node.ring.partition_of(b"a")
            conns, pl = node.direct_lane(p)

            def not_ready(peer):
                conn = PeerConnection(node.name, b"secret", initiator=True)   # never connected
                conn.peer_id = peer
                return conn

            raw = node.replica.mint_raw(p, b"a", V.sibling(b"1"), None, True)
            fut = driver.put_direct(node, p, b"a", raw, 2, pl, [not_ready(conns[0].peer_id),
                                                                conns[1]])
            assert await asyncio.wait_for(fut, 10) == raw          # W=2: here and conns[1]
            await asyncio.sleep(0.2)
            held = [h for h in _held(nodes, b"a") if h]
            assert held == [[(True, b"1")]] * 2                      # one write, two copies
            raw = node.replica.mint_raw(p, b"a", V.sibling(b"2"), None, True)
            fut = driver.put_direct(node, p, b"a", raw, 2, pl,
                                    [not_ready(c.peer_id) for c in conns])
            with pytest.raises(Exception, match="quorum not met: 1 of 2") as err:
                await asyncio.wait_for(fut, 10)
            assert conns[0].peer_id in str(err.value) and "ready" in str(err.value)

    asyncio.run(main())


def test_receive_takes_complete_commands_from_the_bytes_and_stops_where_the_parser_must(
        tmp_path):
    async def main():
        (node,) = await _nodes(tmp_path)
        door = node.resp.door
        try:
            await _feed(node, [resp(b"GET", b"a") + resp(b"GET", b"b")], None)   # open them
            session = node.resp.commands.open_session("t", "t")
            limits = (1 << 20, 1024, 1 << 30)           # max_bulk, max_args, max_command

            def receive(data, limits=limits):
                out = []
                pos, added = door.receive(session, data, out, 1 << 16, limits)
                assert added == sum(map(len, out))
                return pos, b"".join(out)

            two = resp(b"SET", b"a", b"1") + resp(b"get", b"a")
            assert receive(two) == (len(two), b"+OK\r\n$1\r\n1\r\n")
            # cut short: the complete ones, then the parser's turn at the cut command's start
            assert receive(two + resp(b"GET", b"b")[:-3]) == (len(two), b"+OK\r\n$1\r\n1\r\n")
            for other in (resp(b"PING"), b"GET a\r\n", resp(b"GET", b"a", b"x"),
                          resp(b"Get", b"a"), b"*2\r\n$3\r\nGET\r\n$01\r\na\r\n",
                          resp(b"SET", b"a", b"1", b"NX")):
                assert receive(other + two) == (0, b""), other
            # over a parser limit: the parser answers with its error
            assert receive(resp(b"SET", b"a", b"x" * 10), (5, 1024, 1 << 30)) == (0, b"")
            assert receive(resp(b"SET", b"a", b"x" * 10), (1 << 20, 2, 1 << 30)) == (0, b"")
            assert receive(resp(b"SET", b"a", b"x" * 10), (1 << 20, 1024, 20)) == (0, b"")
            assert node.stats["puts"] == 2 and node.stats["gets"] == 2 + 2
            session.authenticated = False
            assert receive(two) == (0, b"")
        finally:
            await node.stop()

    asyncio.run(main())


# ---- the replica's side of the lane (LaneReplica) --------------------------------------------

LANE_KEYS = [b"a", b"b", b"key-c", b"d" * 40]     # the last one above the key limit
OTHER_ACTOR = V.actor_prefix("n9", 3)

lane_item = st.one_of(
    # a replicated write: another node's fresh or bumped clock, an earlier one, the stored
    # bytes, damaged bytes, or a clock that is not bytes / missing
    st.tuples(st.just("put"), st.sampled_from(LANE_KEYS),
              st.sampled_from(["right", "right", "right", "wrong", "off-ring", "not-int"]),
              st.sampled_from(["fresh", "bump", "earlier", "same", "damaged", "int", "none"]),
              st.integers(0, 2**40)),
    st.tuples(st.just("odd"), st.sampled_from([[1, 2], b"k", None, {"p": True, "k": b"a"}])),
)


def _lane_item(node, spec, seen, n):
    """A replicated-write payload as a coordinator (or a broken or hostile peer) sends it."""
    if spec[0] == "odd":
        return spec[1]
    _, key, where, clock, ts = spec
    right = node.ring.partition_of(key)
    p = {"right": right, "wrong": (right + 1) % node.ring.q, "off-ring": node.ring.q,
         "not-int": str(right)}[where]
    old = node.replica.read_raw(right, key) if node.replica.partitions.get(right) else None
    if clock == "fresh":
        c = V.fresh_raw(OTHER_ACTOR, n + 1, b"v%d" % n, ts)
    elif clock == "bump" and old is not None:
        c = V.bump_own_raw(old, OTHER_ACTOR, 0, b"w%d" % n, ts) or V.fresh_raw(
            OTHER_ACTOR, n + 1, b"x%d" % n, ts)
    elif clock == "earlier" and seen:
        c = seen[n % len(seen)]
    elif clock == "same" and old is not None:
        c = old
    elif clock == "int":
        c = 12
    elif clock == "none":
        return {"p": p, "k": key}
    else:
        c = (old or b"\x93\x01\x91") + b"\xc1"
    if type(c) is bytes:
        seen.append(c)
    return {"p": p, "k": key, "c": c}


async def _replica_node(base, ports, **kw):
    """Node n1 of a 4-member ring with N=3 (so it is not a primary of every partition); the
    other members are never started."""
    members = [f"n{i}@127.0.0.1:{ports[4 + i]}" for i in range(4)]
    return await Node(load(name="n1", port=ports[0], peer_port=ports[5], n=3, r=2, w=2,
                           data_dir=str(base), members=members, fsync="never",
                           max_key_bytes=32, request_timeout_ms=10000, **kw)).start()


def _replica_state(node):
    rep = node.replica
    held = {}
    for p, part in rep.partitions.items():
        held[p] = (sorted(part.store.items()), part.tree.to_bytes())
    dirty = rep.group.dirty_partitions()
    return held, rep.group.write_gen, dirty


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=st.lists(st.lists(lane_item, max_size=10), min_size=1, max_size=6),
       budget=st.sampled_from([1, 40, 1 << 20]))
def test_lane_replica_answers_as_answer_batch_does(tmp_path_factory, batches, budget):
    from kvnet.replicahandlers import _LaneReplica
    from kvnet.peer.batching import answer_batch
    base = tmp_path_factory.mktemp("lanereplica")

    async def main():
        fast = await _replica_node(base / "fast", free_ports(9))
        slow = await _replica_node(base / "slow", free_ports(9))
        try:
            lane = _LaneReplica(fast.rings, fast.replica, fast.answers.stored,
                                fast.answers.read_now, fast.cfg.max_key_bytes, 10, budget)
            for node in (fast, slow):   # held, but not by the ring: the writes are refused
                node.replica.partition(node.ring.partition_of(b"b"))
            assert "n1" not in fast.ring.preference_list(fast.ring.partition_of(b"b"))
            seen = []
            n = 0
            for batch in batches:
                items = []
                for spec in batch:
                    items.append(_lane_item(slow, spec, seen, n))
                    n += 1
                got = lane.mput(items)
                want = answer_batch(slow.answers.stored, items, 10, budget)
                assert got == want
                assert _replica_state(fast) == _replica_state(slow)
                reads = [{"p": it["p"], "k": it["k"]} if type(it) is dict and "k" in it else it
                         for it in items]
                assert lane.mget(reads) == answer_batch(slow.answers.read_now, reads, 10, budget)
            # over max_items: refused whole, the same way
            with pytest.raises(Exception) as fast_err:
                lane.mput([{}] * 11)
            with pytest.raises(Exception) as slow_err:
                answer_batch(slow.answers.stored, [{}] * 11, 10, budget)
            assert str(fast_err.value) == str(slow_err.value)
        finally:
            await fast.stop()
            await slow.stop()

    asyncio.run(main())
