# cython: language_level=3
"""A node's plain GET and SET, answered in C from its own store where the general path would
answer from it at once (docs/resp.md).

With N=1 (or a one-node ring), a plain GET or SET of a key needs no quorum, peer or route: the
node's own store answers. On the direct lane (this node one of a partition's N primaries, every
one up and connected) the local copy is read or written and the request goes straight to the
other primaries (kvnet/coordinator/driver.py put_direct / get_direct). The general path passes
through five layers of Python calls for either (dispatch, the command's `now`, the node, the
replica, the store). `LocalDoor.take` runs the leading commands of a connection's queue that are
exactly such a GET or SET; it stops, having left the command in the queue, at the first one it
does not take, and the general path runs that one with every check and error message. So the
door changes speed, never results: it takes a command only when the general path would take the
same fast path (Node.get_lww_now / set_overwrite_now), with the same store calls, reply,
statistics, session bookkeeping and sync accounting (tests/kvnet/test_localdoor.py).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy
from libc.stdio cimport snprintf
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

from kvcore.ring cimport Ring, partition_c
from kvcore.replicawrite cimport overwrite_c
from kvcore.storage.store cimport LogStore

from kvcore import clockcodec as _codec
from kvnet.coordinator.driver import get_direct as _get_direct, put_direct as _put_direct

cdef object _lww_common = _codec.lww_common
cdef object _MISS = _codec.MISS

cdef bytes _OK = b"+OK\r\n"
cdef dict _NULL = {2: b"$-1\r\n", 3: b"_\r\n"}

# what take() runs
DEF OTHER = 0
DEF GET = 1
DEF SET = 2


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


cdef class LocalDoor:
    """The fast path of one node's front door (kvnet/resp/server.py calls `take`)."""

    cdef object node
    cdef object replica
    cdef object identity
    cdef dict node_stats
    cdef dict command_stats
    cdef object get_cmd, set_cmd
    cdef Py_ssize_t max_key
    cdef Py_ssize_t max_value
    cdef bint sets              # False under fsync=always: a SET's ack waits for the commit
    cdef public object started  # (future, key) of the command take() left in flight, or None

    def __init__(self, node, commands):
        self.node = node
        self.replica = node.replica
        self.identity = node.replica.identity
        self.node_stats = node.stats
        self.command_stats = commands.stats
        self.get_cmd = commands.table[b"get"]
        self.set_cmd = commands.table[b"set"]
        self.max_key = node.cfg.max_key_bytes
        self.max_value = node.cfg.max_value_bytes
        self.sets = node.replica.fsync != "always"
        self.started = None

    def take(self, session, queue, list out, Py_ssize_t budget):
        """Run the leading GETs and SETs of `queue` (a deque of argv lists) that the node
        answers from its own store, appending each reply to `out`, until `budget` bytes are
        appended or a command is not one of those; the bytes appended. A GET or SET of a
        partition on the direct lane (Node._direct_lane: this node one of N primaries, all up
        and connected) is stored or read here and sent to the other primaries: take() stops
        after it, with `started` = (its ReplyFuture, its key) and `session.pending` = its
        command, for the caller to wait on as on Commands.dispatch's future."""
        if not queue or not session.authenticated:
            return 0
        node = self.node
        if type(node.ring) is not Ring:
            return 0
        cdef Ring ring = node.ring
        cdef frozenset solo = node._solo
        cdef dict direct = node._direct
        cdef dict parts = self.replica.partitions
        cdef bytes null = _NULL[session.protocol]
        cdef bytes own = self.identity.prefix
        cdef set dirty = self.replica._dirty      # LocalReplica._written, inlined
        new_epoch = self.identity.new_epoch
        cdef Py_ssize_t added = 0, gets = 0, sets = 0, slot, p
        cdef int kind = OTHER, last = OTHER
        cdef list argv
        cdef bytes key, reply
        cdef object value, raw, part, lane = None
        cdef LogStore store
        cdef timespec now
        while queue and added < budget:
            argv = queue[0] if type(queue[0]) is list else None
            if argv is None:
                break
            kind = _kind(argv)
            if kind == OTHER:
                break
            if type(argv[1]) is not bytes:
                break
            key = <bytes>argv[1]
            if PyBytes_GET_SIZE(key) == 0 or PyBytes_GET_SIZE(key) > self.max_key:
                break
            if kind == SET:
                value = argv[2]
                if not self.sets or type(value) is not bytes \
                        or PyBytes_GET_SIZE(value) > self.max_value:
                    break
            p = partition_c(ring, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
            if p not in solo:
                if p not in direct:
                    break
                try:
                    lane = node._direct_lane(p)
                except Exception:
                    break
                if lane is None:
                    break
            part = parts.get(p)
            if part is None:            # not open yet: the general path opens it
                break
            try:
                store = part.store
                if kind == GET:
                    slot = store.slot_of(key)
                    raw = None if slot < 0 else store.value_in(slot, key)
                    if lane is not None:
                        self._start_get(session, p, key, raw, lane)
                        reply = None
                    elif raw is None:
                        reply = null
                    else:
                        value = _lww_common(raw)
                        if value is _MISS:  # a clock of another shape: decoded there
                            break
                        reply = null if value is None else _bulk(<bytes>value)
                    gets += 1
                else:
                    clock_gettime(CLOCK_REALTIME, &now)
                    raw = overwrite_c(store, part.tree, key, value, own, part.trusted_from,
                                      now.tv_sec * 1000000 + now.tv_nsec // 1000, new_epoch)
                    if raw is None:     # a clock of another shape: minted there
                        break
                    dirty.add(part)
                    sets += 1
                    # (were the sending below to raise, the general path would write it again:
                    # one more event of the same value, as a client's retry makes)
                    if lane is not None:
                        self._start_set(session, p, key, raw, lane)
                        reply = None
                    else:
                        reply = _OK
            except Exception:           # the general path answers it, with its error reply
                break
            queue.popleft()
            last = kind
            if reply is None:           # in flight: the caller waits for it
                break
            out.append(reply)
            added += PyBytes_GET_SIZE(reply)
        if sets:
            self.replica._write_gen += sets
        if last != OTHER:
            self.command_stats["total_commands_processed"] += gets + sets
            if gets:
                self.node_stats["gets"] += gets
            if sets:
                self.node_stats["puts"] += sets
            session.last_command = "get" if last == GET else "set"
            clock_gettime(CLOCK_REALTIME, &now)
            session.last_active = now.tv_sec + now.tv_nsec * 1e-9
        return added

    cdef _start_get(self, session, Py_ssize_t p, bytes key, object raw, tuple lane):
        conns, pl = lane
        fut = _get_direct(self.node, p, key, raw, min(self.node.cfg.r, len(pl.targets)), pl,
                          conns)
        session.pending = self.get_cmd
        self.started = (fut, key)

    cdef _start_set(self, session, Py_ssize_t p, bytes key, object raw, tuple lane):
        conns, pl = lane
        fut = _put_direct(self.node, p, key, raw, min(self.node.cfg.w, len(pl.targets)), pl,
                          conns)
        session.pending = self.set_cmd
        self.started = (fut, key)
