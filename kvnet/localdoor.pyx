# cython: language_level=3
"""A node's plain GET and SET, answered in C from its own store where the general path would
answer from it at once (docs/resp.md).

With N=1 (or a one-node ring), a plain GET or SET of a key needs no quorum, peer or route: the
node's own store answers. On the direct lane (this node one of a partition's N primaries, every
one up and connected) the local copy is read or written and the request goes straight to the
other primaries (kvnet/coordinator/driver.py put_direct / get_direct). The general path passes
through five layers of Python calls for either (dispatch, the command's `now`, the node, the
replica, the store). `LocalDoor.take` runs the leading commands of a connection's queue that are
exactly such a GET or SET of a session whose role allows it (kvnet/acl.py); it stops, having
left the command in the queue, at the first one it does not take, and the general path runs that one with every check and error message. So the
door changes speed, never results: it takes a command only when the general path would take the
same fast path (FrontDoor.get_lww_now / set_overwrite_now), with the same store calls, reply,
statistics, session bookkeeping and sync accounting (tests/kvnet/test_localdoor.py).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint16_t, uint64_t
from libc.string cimport memcmp, memcpy
from libc.stdio cimport snprintf
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

from kvcore.ring cimport Ring, partition_c, pref_c
from kvcore.replicawrite cimport MISS_C, STORED_C, merge_superseding_c, overwrite_c
from kvcore.storage.store cimport LogStore
from kvnet.resp.respscan cimport resp_number as _number

from kvnet.coordinator.driver cimport get_direct, put_direct
from kvnet.peer.protocol cimport PeerConnection
from kvnet.routes cimport Lanes, Routes
from kvnet.resp.commands cimport Session
from kvnet.reqstats cimport ReqStats, now_ns

from kvcore import clockcodec as _codec
from kvnet.peer.core import READY as _PEER_READY
from kvnet.peer.batching import DEFERRED as _DEFERRED, DEFERRED_MESSAGE as _DEFERRED_MESSAGE, \
    answer_batch as _answer_batch, item_error as _item_error

cdef object _lww_common = _codec.lww_common
cdef object _MISS = _codec.MISS
cdef object _READY = _PEER_READY

cdef bytes _OK = b"+OK\r\n"
cdef dict _NULL = {2: b"$-1\r\n", 3: b"_\r\n"}

# the levels of kvnet/acl.py a session's role must reach: READ for a GET, WRITE for a SET
DEF LEVEL_READ = 1
DEF LEVEL_WRITE = 2

# what take() runs
DEF OTHER = 0
DEF GET = 1
DEF SET = 2
DEF WALL_EVERY = 1024           # calls between two reads of the wall clock's offset


cdef inline int _kind(list argv):
    cdef Py_ssize_t n = len(argv)
    cdef object name
    if n == 2 or n == 3:
        name = argv[0]
        if type(name) is bytes and PyBytes_GET_SIZE(name) == 3:
            if n == 2 and (name == b"GET" or name == b"get"):
                return GET
            if n == 3 and (name == b"SET" or name == b"set"):
                return SET
    return OTHER


cdef bytes _bulk(bytes value):
    """`$<len>\r\n<value>\r\n`."""
    cdef char head[24]
    cdef Py_ssize_t vlen = PyBytes_GET_SIZE(value)
    cdef int hlen = snprintf(head, sizeof(head), b"$%zd\r\n", vlen)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hlen + vlen + 2)
    cdef char *o = PyBytes_AS_STRING(out)
    memcpy(o, head, hlen)
    memcpy(o + hlen, PyBytes_AS_STRING(value), vlen)
    o[hlen + vlen] = 13
    o[hlen + vlen + 1] = 10
    return out


cdef inline Py_ssize_t _bulk_at(const char *p, Py_ssize_t i, Py_ssize_t n, long long max_bulk,
                                Py_ssize_t *body, Py_ssize_t *length):
    """A complete `$<len>\r\n<bytes>\r\n` at p[i]: the offset after it, with the bytes' offset
    and length; -1 for anything else (cut, malformed, above max_bulk)."""
    cdef long long blen
    cdef Py_ssize_t b, end
    if i >= n or p[i] != 36:           # '$'
        return -1
    b = _number(p, i + 1, n, &blen)
    if b < 0 or blen > max_bulk:
        return -1
    end = b + <Py_ssize_t>blen + 2
    if end > n or p[end - 2] != 13 or p[end - 1] != 10:
        return -1
    body[0] = b
    length[0] = <Py_ssize_t>blen
    return end


cdef class LocalDoor:
    """The fast path of one node's front door (kvnet/resp/server.py calls `take` and
    `receive`)."""

    cdef object cluster
    cdef object rings
    cdef Lanes lanes
    cdef object replica
    cdef object identity
    cdef dict node_stats
    cdef dict command_stats
    cdef object get_cmd, set_cmd
    cdef Py_ssize_t max_key
    cdef Py_ssize_t max_value
    cdef bint sets              # False under fsync=always: a SET's ack waits for the commit
    cdef Py_ssize_t r, w        # the node's default R and W
    cdef dict lane_conns        # Lanes.conns: peer -> its connection
    cdef object down            # the peers marked down (Lanes.down: Gossip.down_peers)
    cdef bytes own              # this node's actor prefix, and the minting of new epochs
    cdef object new_epoch
    cdef public object clock    # None: a SET's value is stamped with the wall clock read in C;
                                # else clock() gives the microseconds (tests pin it with the
                                # general path's time.time_ns, tests/kvnet/test_set_paths.py)
    # what one call of take() or receive() reads once (_begin) and counts (_end)
    cdef Routes routes
    cdef Ring ring
    cdef dict parts
    cdef bytes null
    cdef object written         # LocalReplica.written: a SET stored here, for the next sync
    cdef Py_ssize_t gets, set_count
    cdef int last
    cdef bint busy              # within take(), one() or receive(): a nested call takes nothing
    # the request counts and latency histograms (kvnet/reqstats.pyx, Commands.reqstats): the
    # commands one call answers share its two clock reads (t0 at the first one taken, 0 until
    # then; the other in _end), each counted with the call's time over their number
    cdef ReqStats reqstats
    cdef int get_slot, set_slot
    cdef uint64_t t0
    cdef Py_ssize_t answered_gets, answered_sets
    cdef int64_t wall_offset    # CLOCK_REALTIME - CLOCK_MONOTONIC, ns (session.last_active)
    cdef int wall_left          # calls until it is read again

    def __init__(self, commands, cluster, rings, Lanes lanes, replica, dict stats, cfg):
        """`commands`: the front door's Commands; `cluster`: the coordinator's
        driver.Cluster (the lane's put_direct / get_direct); `rings`: the node's RingHolder
        (its `routes`, kvnet/routes.py); `lanes`: the lane's connections; `replica`: the
        LocalReplica; `stats`: the node's counters ("gets", "puts"); `cfg`: its NodeConfig."""
        self.cluster = cluster
        self.rings = rings
        self.lanes = lanes
        self.replica = replica
        self.identity = replica.identity
        self.node_stats = stats
        self.command_stats = commands.stats
        self.get_cmd = commands.table[b"get"]
        self.set_cmd = commands.table[b"set"]
        self.max_key = cfg.max_key_bytes
        self.max_value = cfg.max_value_bytes
        self.sets = replica.fsync != "always"
        self.r = cfg.r
        self.w = cfg.w
        self.lane_conns = lanes.conns           # (both live for the node's life, never replaced)
        self.down = lanes.down
        self.own = self.identity.prefix         # (the identity's, fixed at its start)
        self.new_epoch = self.identity.new_epoch
        self.written = replica.group.written
        self.reqstats = commands.reqstats
        self.get_slot = commands.slot_of(self.get_cmd)
        self.set_slot = commands.slot_of(self.set_cmd)

    cdef bint _begin(self, Session session) except -1:
        """Read what the commands of one call share; False when the door takes nothing. A
        call made while another runs (a send failing at once settles other connections'
        futures, whose completion runs their commands) takes nothing: the call it is nested
        in holds the counts."""
        if self.busy or not session.authenticated or session.level < LEVEL_READ:
            return False
        routes = self.rings.routes
        if type(routes) is not Routes or type((<Routes>routes).ring) is not Ring:
            return False
        self.routes = <Routes>routes
        self.ring = <Ring>self.routes.ring
        self.parts = self.replica.partitions
        self.null = _NULL[session.protocol]
        self.gets = self.set_count = 0
        self.last = OTHER
        self.t0 = 0
        self.answered_gets = self.answered_sets = 0
        self.busy = True
        return True

    cdef int _end(self, Session session) except -1:
        cdef timespec now
        cdef Py_ssize_t answered = self.answered_gets + self.answered_sets
        cdef uint64_t t, each
        if self.last != OTHER:
            # one read of the monotonic clock ends the call's commands and, with the wall
            # clock's offset to it (read again every WALL_EVERY calls), dates the session
            t = now_ns()
            if answered:
                each = (t - self.t0) // <uint64_t>answered if t > self.t0 else 0
                if self.answered_gets:
                    self.reqstats.add_n(self.get_slot, self.answered_gets, each)
                if self.answered_sets:
                    self.reqstats.add_n(self.set_slot, self.answered_sets, each)
            self.command_stats["total_commands_processed"] += self.gets + self.set_count
            if self.gets:
                self.node_stats["gets"] += self.gets
            if self.set_count:
                self.node_stats["puts"] += self.set_count
            session.last_command = "get" if self.last == GET else "set"
            if self.wall_left <= 0:
                clock_gettime(CLOCK_REALTIME, &now)
                self.wall_offset = (<int64_t>now.tv_sec * 1000000000 + now.tv_nsec) - <int64_t>t
                self.wall_left = WALL_EVERY
            self.wall_left -= 1
            session.last_active = (<int64_t>t + self.wall_offset) * 1e-9
        self.parts = None
        self.routes = None
        self.busy = False
        return 0

    cdef inline void _count(self, int kind) noexcept:
        """A command taken and answered here (counted in _end)."""
        if kind == GET:
            self.answered_gets += 1
        else:
            self.answered_sets += 1

    cdef object _lane(self, tuple lane):
        """Lanes.pick(lane) read in C while its cache of connections holds: (the ready
        connections to the lane's other primaries, its Preflist), or None. When a cached
        entry is not a ready PeerConnection, Lanes.pick decides (it asks the pool again)."""
        cdef list conns = []
        cdef object conn
        for x in <tuple>lane[0]:
            conn = self.lane_conns.get(x)
            if type(conn) is not PeerConnection or (<PeerConnection>conn).state is not _READY:
                return self.lanes.pick(lane)
            if (<PeerConnection>conn)._write_paused or x in self.down:
                return None
            conns.append(conn)
        return conns, lane[1]

    cdef object _one(self, Session session, int kind, bytes key, object value, bint lane_ok):
        """One GET (value None) or SET: its reply (bytes); None, having done nothing, when the
        door does not take it (nor a partition of the direct lane unless lane_ok); its
        ReplyFuture when it is in flight on the lane (`session.pending` its command)."""
        cdef Py_ssize_t slot, p
        cdef object raw, part, lane = None, direct, ts
        cdef LogStore store
        cdef timespec now
        if PyBytes_GET_SIZE(key) == 0 or PyBytes_GET_SIZE(key) > self.max_key:
            return None
        if kind == SET:
            if not self.sets or type(value) is not bytes \
                    or PyBytes_GET_SIZE(value) > self.max_value or session.level < LEVEL_WRITE:
                return None
        p = partition_c(self.ring, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        if p not in self.routes.solo:
            if not lane_ok:
                return None
            direct = self.routes._direct.get(p)
            if direct is None:
                return None
            try:
                lane = self._lane(<tuple>direct)
            except Exception:
                return None
            if lane is None:
                return None
        part = self.parts.get(p)
        if part is None:                # not open yet: the general path opens it
            return None
        try:
            store = part.store
            if kind == GET:
                slot = store.slot_of(key)
                raw = None if slot < 0 else store.value_in(slot, key)
                if lane is not None:
                    value = self._start(session, GET, p, key, raw, lane)
                    self.gets += 1
                    return value
                if raw is None:
                    self.gets += 1
                    return self.null
                value = _lww_common(raw)
                if value is _MISS:      # a clock of another shape: decoded there
                    return None
                self.gets += 1
                return self.null if value is None else _bulk(<bytes>value)
            if self.clock is None:
                clock_gettime(CLOCK_REALTIME, &now)
                ts = now.tv_sec * 1000000 + now.tv_nsec // 1000
            else:
                ts = self.clock()
            raw = overwrite_c(store, part.tree, key, value, self.own, part.trusted_from, ts,
                              self.new_epoch)
            if raw is None:             # a clock of another shape: minted there
                return None
            self.written(part)
            self.set_count += 1
            # (were the sending below to raise, the general path would write it again: one
            # more event of the same value, as a client's retry makes)
            if lane is not None:
                return self._start(session, SET, p, key, raw, lane)
            return _OK
        except Exception:               # the general path answers it, with its error reply
            return None

    def take(self, Session session, queue, list out, Py_ssize_t budget):
        """Run the leading GETs and SETs of `queue` (a deque of argv lists) that the node
        answers from its own store, appending each reply to `out`, until `budget` bytes are
        appended or a command is not one of those: (the bytes appended, None). A GET or SET
        of a partition on the direct lane (Routes.lane and Lanes.pick: this node one of N
        primaries, all up and connected) is stored or read here and sent to the other
        primaries: take() stops after it and returns (the bytes appended, (its ReplyFuture,
        its key)), with `session.pending` = its command, for the caller to wait on as on
        Commands.dispatch's future."""
        if not queue or not self._begin(session):
            return 0, None
        cdef Py_ssize_t added = 0
        cdef int kind
        cdef list argv
        cdef object reply, started = None
        try:
            while queue and added < budget:
                argv = queue[0] if type(queue[0]) is list else None
                if argv is None:
                    break
                kind = _kind(argv)
                if kind == OTHER or type(argv[1]) is not bytes:
                    break
                if self.t0 == 0:
                    self.t0 = now_ns()
                reply = self._one(session, kind, <bytes>argv[1],
                                  argv[2] if kind == SET else None, True)
                if reply is None:
                    break
                queue.popleft()
                self.last = kind
                if type(reply) is not bytes:    # in flight: the caller waits for it
                    started = (reply, argv[1])
                    break
                self._count(kind)
                out.append(reply)
                added += PyBytes_GET_SIZE(reply)
        finally:
            self._end(session)
        return added, started

    def one(self, Session session, list argv):
        """take() for one command that runs beside earlier ones of its connection still in
        flight (a pipeline behind a lane command; the caller has checked that it may start):
        its reply, already encoded (bytes), for the caller to hold in reply order; its
        ReplyFuture on the direct lane (`session.pending` = its command); or None, having done
        nothing, when the general path must run it."""
        cdef int kind = _kind(argv)
        cdef object reply
        if kind == OTHER or type(argv[1]) is not bytes or not self._begin(session):
            return None
        try:
            self.t0 = now_ns()
            reply = self._one(session, kind, <bytes>argv[1], argv[2] if kind == SET else None,
                              True)
            if reply is None:
                return None
            self.last = kind
            if type(reply) is bytes:
                self._count(kind)
            return reply
        finally:
            self._end(session)

    def receive(self, Session session, bytes data, list out, Py_ssize_t budget, tuple limits):
        """take() straight from a connection's bytes, before the parser makes argument lists:
        run the complete plain GETs and SETs of the node's own partitions at the start of
        `data`, appending their replies to `out`, until `budget` bytes are appended or the next
        command is anything else (cut short, another command, on the direct lane, over a
        parser limit: `limits` = (max_bulk, max_args, max_command), RespServer.door_limits).
        Returns (the offset reached, where the parser takes over, the bytes appended). A
        command of the direct lane is left to the parser and take(), which hands its future
        over."""
        cdef const char *p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t pos = 0, off, name_at, name_len, key_at, key_len, end
        cdef Py_ssize_t val_at = 0, val_len = 0
        cdef Py_ssize_t added = 0
        cdef long long count, max_bulk, max_args, max_command
        cdef int kind
        cdef bytes key
        cdef object value, reply
        if n == 0 or p[0] != 42 or not (<Routes>self.rings.routes).solo:
            return 0, 0                 # (a cluster with N > 1 has no partition of its own)
        max_bulk, max_args, max_command = limits
        if max_args < 2 or not self._begin(session):
            return 0, 0
        try:
            while pos < n and added < budget:
                if p[pos] != 42:       # '*'
                    break
                off = _number(p, pos + 1, n, &count)
                if off < 0 or count < 2 or count > 3 or count > max_args:
                    break
                off = _bulk_at(p, off, n, max_bulk, &name_at, &name_len)
                if off < 0 or name_len != 3:
                    break
                if count == 2 and (memcmp(p + name_at, b"GET", 3) == 0
                                   or memcmp(p + name_at, b"get", 3) == 0):
                    kind = GET
                elif count == 3 and (memcmp(p + name_at, b"SET", 3) == 0
                                     or memcmp(p + name_at, b"set", 3) == 0):
                    kind = SET
                else:
                    break
                end = _bulk_at(p, off, n, max_bulk, &key_at, &key_len)
                if end < 0:
                    break
                value = None
                if kind == SET:
                    end = _bulk_at(p, end, n, max_bulk, &val_at, &val_len)
                    if end < 0:
                        break
                if end - pos > max_command:
                    break
                key = PyBytes_FromStringAndSize(p + key_at, key_len)
                if kind == SET:
                    value = PyBytes_FromStringAndSize(p + val_at, val_len)
                if self.t0 == 0:
                    self.t0 = now_ns()
                reply = self._one(session, kind, key, value, False)
                if reply is None:
                    break
                pos = end
                self.last = kind
                self._count(kind)
                out.append(reply)
                added += PyBytes_GET_SIZE(reply)
        finally:
            self._end(session)
        return pos, added

    cdef object _start(self, Session session, int kind, Py_ssize_t p, bytes key, object raw,
                       tuple lane):
        """Send a lane GET or SET (its local copy read or stored) to the other primaries: its
        future, for the caller to wait on as on Commands.dispatch's."""
        cdef list conns = lane[0]
        pl = lane[1]
        cdef Py_ssize_t targets = len(pl.targets)
        if kind == GET:
            fut = get_direct(self.cluster, p, key, raw, min(self.r, targets), pl, conns)
            session.pending = self.get_cmd
            session.slot = self.get_slot
        else:
            fut = put_direct(self.cluster, p, key, raw, min(self.w, targets), pl, conns)
            session.pending = self.set_cmd
            session.slot = self.set_slot
        session.started = self.t0     # counted when it is answered (kvnet/resp/server.py)
        return fut


cdef class LaneReplica:
    """The other end of the direct lane: a replica's answer to a batch of replicated writes
    ("mput") or reads ("mget"), as answer_batch(store or read, items) gives it (the replica's
    handlers, kvnet/replicahandlers.py), with the common item checked and stored or read
    here in C: a
    map of an int partition on the ring that this node is a primary of and already holds,
    a key of that partition within the key limit, and (a write) clock bytes that are the
    stored ones or supersede them (kvcore/replicawrite.pyx merge_superseding). Any other
    item, and every item while the ring moves (its writes also go to the replicas being
    added), goes to `store` or `read`, errors and all. `rings` is the node's RingHolder,
    `replica` its LocalReplica."""

    cdef object rings
    cdef object replica
    cdef object store, read, written
    cdef Py_ssize_t max_key
    cdef Py_ssize_t max_items
    cdef Py_ssize_t budget

    def __init__(self, rings, replica, store, read, max_key, max_items, budget):
        self.rings = rings
        self.replica = replica
        self.store = store
        self.read = read
        self.written = replica.group.written
        self.max_key = max_key
        self.max_items = max_items
        self.budget = budget

    cdef int _me(self, Ring ring) except -2:
        """This node's member index in ring, or -1."""
        cdef Py_ssize_t i
        name = self.rings.me
        for i in range(len(ring.nodes)):
            if ring.nodes[i] == name:
                return <int>i
        return -1

    cdef object _part(self, Ring ring, int me, dict parts, object item):
        """The open partition of a common item (its key is item["k"]), or None."""
        cdef Py_ssize_t p, i
        cdef const uint16_t *pref
        if type(item) is not dict:
            return None
        p_obj = (<dict>item).get("p")
        k = (<dict>item).get("k")
        if type(p_obj) is not int or type(k) is not bytes or not 0 <= p_obj < ring.q:
            return None
        p = p_obj
        if PyBytes_GET_SIZE(k) == 0 or PyBytes_GET_SIZE(k) > self.max_key \
                or partition_c(ring, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k)) != p:
            return None
        pref = pref_c(ring, p)
        for i in range(ring.nr):
            if pref[i] == me:
                break
        else:
            return None
        return parts.get(p)

    def mput(self, items):
        """[values, {index: [code, message]}] of the replicated writes `items`."""
        ring = self.rings.ring
        if type(items) is not list or len(items) > self.max_items or type(ring) is not Ring \
                or self.rings.state.next is not None:
            return _answer_batch(self.store, items, self.max_items, self.budget)
        cdef int me = self._me(<Ring>ring)
        cdef dict parts = self.replica.partitions
        cdef list values = []
        cdef dict errors = {}
        cdef bytes key = None
        cdef int done
        cdef object part, raw
        for item in <list>items:
            part = None if me < 0 else self._part(<Ring>ring, me, parts, item)
            if part is not None:
                key = (<dict>item)["k"]
                raw = (<dict>item).get("c")
                if type(raw) is bytes:
                    try:
                        done = merge_superseding_c(part.store, part.tree, key, <bytes>raw)
                    except Exception as exc:    # as self.store would raise it
                        errors[len(values)] = _item_error(self.replica.write_error(part, exc))
                        values.append(None)
                        continue
                    if done != MISS_C:
                        if done == STORED_C:
                            self.written(part)
                        values.append(True)
                        continue
            try:
                values.append(self.store(item))
            except Exception as exc:
                errors[len(values)] = _item_error(exc)
                values.append(None)
        return [values, errors]

    def mget(self, items):
        """[values, {index: [code, message]}] of the replica reads `items` (stored clock
        bytes or None each; past `budget` bytes, an item with bytes is deferred)."""
        ring = self.rings.ring
        if type(items) is not list or len(items) > self.max_items or type(ring) is not Ring:
            return _answer_batch(self.read, items, self.max_items, self.budget)
        cdef int me = self._me(<Ring>ring)
        cdef dict parts = self.replica.partitions
        cdef list values = []
        cdef dict errors = {}
        cdef Py_ssize_t size = 0, slot
        cdef bytes key = None
        cdef object part, value
        cdef LogStore store
        for item in <list>items:
            part = None if me < 0 else self._part(<Ring>ring, me, parts, item)
            try:
                if part is not None:
                    key = (<dict>item)["k"]
                    store = part.store
                    slot = store.slot_of(key)
                    value = None if slot < 0 else store.value_in(slot, key)
                else:
                    value = self.read(item)
            except Exception as exc:
                errors[len(values)] = _item_error(exc)
                values.append(None)
                continue
            if type(value) is bytes:
                size += PyBytes_GET_SIZE(value)
                if size > self.budget and values:
                    errors[len(values)] = [_DEFERRED, _DEFERRED_MESSAGE]
                    values.append(None)
                    continue
            values.append(value)
        return [values, errors]
