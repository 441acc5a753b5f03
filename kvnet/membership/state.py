"""The gossiped member table as an immutable value, and its merge (Cassandra `gms/`, riak_core).

Pure values: no sockets, no clocks, no tasks. The one file touched here is the generation file
(`next_generation`, at the bottom, kept apart). Rules: docs/algorithms.md, section 5;
docs/membership.md.

Each entry is two independent parts, merged separately, so the merge is the join of a product of
two total orders (commutative, associative, idempotent):

- the *process* part: (generation, heartbeat) and the addresses and zone that process announced.
  Higher (generation, heartbeat) wins lexicographically; only the member itself advances it
  (`beat` every round, a new generation at every start), so a restarted node's heartbeat 0 under
  a higher generation is news, not history. (Equal pairs with different fields cannot come from
  one honest process; a fixed order of the remaining fields breaks the tie so merge stays a join.)
- the *membership* part: (ring_epoch, status). Changed by the claimant's ring transitions, not by
  the member, so it must not lose to the member's own newer heartbeat. A higher ring epoch wins;
  within one ring epoch the status only moves forward in STATUSES order:
  joining < valid < leaving < exiting < removed.
  A node removed in epoch e can come back only with a higher epoch.

Liveness (up/down) is not in the table: each node derives it locally (detector.py).
"""
import collections.abc
import os
import re
from typing import NamedTuple

__all__ = [
    "STATUSES", "MemberState", "MemberTable", "Digest", "merge", "merge_member", "beat",
    "set_status", "with_member", "digest", "diff", "entries", "apply",
    "encode_member", "decode_member", "encode_table", "decode_table", "encode_entries",
    "decode_entries", "encode_digest", "decode_digest", "table_digest", "diff_beats",
    "beats_of", "apply_beats", "encode_beats", "decode_beats", "next_generation", "GENERATION_FILE",
]

STATUSES = ("joining", "valid", "leaving", "exiting", "removed")
_RANK = {s: i for i, s in enumerate(STATUSES)}
_MAX_U64 = (1 << 64) - 1        # msgpack's unsigned range: generation, heartbeat, epoch fit
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")   # as kvnet.config node names
_HOST = re.compile(r"^[A-Za-z0-9.:_%\[\]-]{1,253}$")


class MemberState(NamedTuple):
    """One member as gossiped. Immutable; build new ones with `_replace`."""

    node: str                   # node id (the configured name)
    host: str                   # peer address
    peer_port: int
    client_host: str            # RESP address
    client_port: int
    generation: int             # process identity: max(previous + 1, wall-clock seconds)
    heartbeat: int              # +1 every gossip round by the member itself
    status: str = "joining"     # one of STATUSES
    ring_epoch: int = 0         # epoch of the ring transition that set `status`
    zone: str | None = None

    @property
    def version(self):
        """The process part's order key: (generation, heartbeat)."""
        return (self.generation, self.heartbeat)

    @property
    def membership(self):
        """The membership part's order key: (ring_epoch, status rank)."""
        return (self.ring_epoch, _RANK[self.status])


def _process_key(m):
    # (generation, heartbeat) first; the rest only breaks ties between impossible twins.
    return (m.generation, m.heartbeat, m.host, m.peer_port, m.client_host, m.client_port,
            m.zone is not None, m.zone or "")


def merge_member(x, y):
    """The join of two entries for the same node: each part from the side where it is higher."""
    if x.node != y.node:
        raise ValueError(f"cannot merge entries of different nodes {x.node!r} and {y.node!r}")
    if x == y:
        return x
    proc = x if _process_key(x) >= _process_key(y) else y
    memb = x if x.membership >= y.membership else y
    if proc is memb:
        return proc
    return proc._replace(status=memb.status, ring_epoch=memb.ring_epoch)


class MemberTable(collections.abc.Mapping):
    """node id -> MemberState, immutable and hashable. Build with MemberTable(entries)."""

    __slots__ = ("_m", "_hash", "_roster")

    def __init__(self, members=()):
        m = {}
        for e in members:
            if not isinstance(e, MemberState):
                raise TypeError(f"MemberTable holds MemberState values, got {type(e).__name__}")
            m[e.node] = merge_member(m[e.node], e) if e.node in m else e
        self._m = dict(sorted(m.items()))
        self._hash = None
        self._roster = None

    @classmethod
    def _of(cls, m, roster=None):
        """A table over `m`, a dict of checked entries sorted by node (no copy, no checks);
        `roster`: the roster of a table with the same one (see `roster`)."""
        t = cls.__new__(cls)
        t._m, t._hash, t._roster = m, None, roster
        return t

    @property
    def roster(self):
        """The table's members and where they are, without their heartbeats: a tuple of
        (node, status, ring_epoch, host, peer_port, client_host, client_port, zone), sorted.
        A table that differs from another only in heartbeats (a beat, most merges) shares
        the other's roster object, so `a.roster is b.roster` tells a caller cheaply that what
        it derived from the roster (whom to gossip with, the peers' addresses) still holds."""
        if self._roster is None:
            self._roster = tuple(_roster_entry(e) for e in self._m.values())
        return self._roster

    def __getitem__(self, node):
        return self._m[node]

    def get(self, node, default=None):
        return self._m.get(node, default)

    def __contains__(self, node):
        return node in self._m

    def __iter__(self):
        return iter(self._m)

    def __len__(self):
        return len(self._m)

    def __eq__(self, other):
        if isinstance(other, MemberTable):
            return self._m == other._m
        return NotImplemented

    def __hash__(self):
        if self._hash is None:
            self._hash = hash(tuple(self._m.values()))
        return self._hash

    def __repr__(self):
        return f"MemberTable({list(self._m.values())!r})"

    def members(self):
        """Entries sorted by node id."""
        return tuple(self._m.values())


def _roster_entry(e):
    return (e.node, e.status, e.ring_epoch, e.host, e.peer_port, e.client_host, e.client_port,
            e.zone)


def _same_place(x, y):
    """x and y differ at most in (generation, heartbeat): the same roster entry."""
    return (x.status == y.status and x.ring_epoch == y.ring_epoch and x.host == y.host
            and x.peer_port == y.peer_port and x.client_host == y.client_host
            and x.client_port == y.client_port and x.zone == y.zone)


def merge(a, b):
    """The join of two tables: the union of nodes, each present in both merged by merge_member."""
    if len(a) < len(b):
        a, b = b, a
    return _merged(a, b._m.values())


def _merged(a, received):
    """a merged with entries of distinct nodes (checked MemberStates); a itself if none is news.
    The result keeps a's roster object when only heartbeats moved."""
    am = a._m
    out = None
    added = False
    same_roster = True
    for e in received:
        mine = am.get(e.node)
        if mine is None:
            new = e
            added = True
        elif mine == e:
            continue
        else:
            new = merge_member(mine, e)
            if new is mine:
                continue
            if same_roster and not _same_place(new, mine):
                same_roster = False
        if out is None:
            out = dict(am)
        out[e.node] = new
    if out is None:
        return a
    if added:
        return MemberTable._of(dict(sorted(out.items())))
    return MemberTable._of(out, a.roster if same_roster else None)


def with_member(table, entry):
    """table merged with one entry (a seed, this node at start, a received entry)."""
    return merge(table, MemberTable((entry,)))


def apply(table, received):
    """table merged with received entries (an ack's or ack2's payload)."""
    received = list(received)
    if len({e.node for e in received}) != len(received):     # a node twice: join them first
        return merge(table, MemberTable(received))
    for e in received:
        if not isinstance(e, MemberState):
            raise TypeError(f"MemberTable holds MemberState values, got {type(e).__name__}")
    return _merged(table, received)


def beat(table, me):
    """My heartbeat + 1: called once per gossip round by the member itself."""
    if me not in table:
        raise ValueError(f"{me!r} is not in the member table")
    e = table[me]
    if e.heartbeat >= _MAX_U64:
        raise ValueError(f"heartbeat of {me!r} is at its maximum; restart for a new generation")
    out = dict(table._m)
    out[me] = e._replace(heartbeat=e.heartbeat + 1)
    return MemberTable._of(out, table.roster)


def set_status(table, node, status, ring_epoch):
    """A ring transition's status for node (the claimant's call). Refuses a move that merge would
    discard: a lower ring epoch, or a backward status within the same ring epoch."""
    if status not in _RANK:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    if node not in table:
        raise ValueError(f"{node!r} is not in the member table")
    e = table[node]
    new = (ring_epoch, _RANK[status])
    if new < e.membership:
        raise ValueError(f"{node!r}: {status} in ring epoch {ring_epoch} is behind "
                         f"{e.status} in ring epoch {e.ring_epoch}")
    return with_member(table, e._replace(status=status, ring_epoch=ring_epoch))


# ---- digests: the syn / ack / ack2 exchange ---------------------------------------------------
#
# A -> B syn:  digest(A)
# B -> A ack:  send, want = diff(B, syn)  -> (send: entries A lacks, want: nodes B lacks)
# A -> B ack2: A = apply(A, send); entries(A, want)
# B:           B = apply(B, ack2)
#
# The digest carries the membership part too (ring_epoch, status), not only (generation,
# heartbeat): a claimant's status change does not move the heartbeat, and with (node, generation,
# heartbeat) alone two sides with equal heartbeats would never exchange it.

class Digest(NamedTuple):
    node: str
    generation: int
    heartbeat: int
    ring_epoch: int
    status: str

    @property
    def version(self):
        return (self.generation, self.heartbeat)

    @property
    def membership(self):
        return (self.ring_epoch, _RANK[self.status])


def digest(table):
    """[Digest] sorted by node: what this side has, for a syn."""
    return [Digest(e.node, e.generation, e.heartbeat, e.ring_epoch, e.status)
            for e in table._m.values()]


def diff(table, their_digest):
    """-> (entries the other side needs from us, node ids we need from it), both sorted.

    An entry is sent when either of its parts is ahead of theirs (or they lack the node); a node
    is requested when either part of theirs is ahead of ours (or we lack it). Parts ahead on both
    sides go both ways; merge then joins them."""
    theirs = {}
    for d in their_digest:
        theirs[d.node] = d
    send, want = [], []
    for node, e in table._m.items():
        d = theirs.get(node)
        if d is None or e.version > d.version or e.membership > d.membership:
            send.append(e)
    for node, d in sorted(theirs.items()):
        e = table._m.get(node)
        if e is None or d.version > e.version or d.membership > e.membership:
            want.append(node)
    return send, want


def diff_beats(table, their_digest):
    """diff, with what only a heartbeat tells split off: -> (send, beats, want, want_beats).

    An entry the other side holds with the same generation, whose membership part is not ahead
    of theirs, differs from theirs only in its heartbeat (one process announces one set of
    addresses): it goes as a beat (node, generation, heartbeat) rather than whole, and merging
    it is replacing their heartbeat (apply_beats). Likewise a node whose newer version on
    their side has our generation and no membership part ahead of ours is in want_beats: only
    its heartbeat is needed. The rest is diff's send and want."""
    # (the fields compared one by one, not through the version and membership properties:
    # this runs for every member at every exchange)
    theirs = {}
    for d in their_digest:
        theirs[d[0]] = d
    rank = _RANK
    send, beats, want, want_beats = [], [], [], []
    m = table._m
    for node, e in m.items():
        d = theirs.get(node)
        if d is None:
            send.append(e)
            continue
        _, dg, dh, de, ds = d
        ee = e.ring_epoch
        if ee > de or (ee == de and e.status != ds and rank[e.status] > rank[ds]):
            send.append(e)                                  # membership part ahead
        elif e.generation == dg:
            if e.heartbeat > dh:
                beats.append((node, dg, e.heartbeat))
        elif e.generation > dg:
            send.append(e)
    for node in sorted(theirs):
        _, dg, dh, de, ds = theirs[node]
        e = m.get(node)
        if e is None:
            want.append(node)
            continue
        ee = e.ring_epoch
        if de > ee or (de == ee and ds != e.status and rank[ds] > rank[e.status]):
            want.append(node)
        elif dg == e.generation:
            if dh > e.heartbeat:
                want_beats.append(node)
        elif dg > e.generation:
            want.append(node)
    return send, beats, want, want_beats


def beats_of(table, nodes):
    """(node, generation, heartbeat) of our entries for the requested nodes (unknown skipped)."""
    m = table._m
    return [(n, m[n].generation, m[n].heartbeat) for n in nodes if n in m]


def apply_beats(table, beats):
    """-> (table with the beats that are news, [the entries they changed]). A beat is news when
    the table holds its node with its generation and a lower heartbeat; the others (unknown
    node, another generation, old news) are left out: they only delay news, which the next
    exchange brings whole. The roster stays the same object (only heartbeats move)."""
    m = table._m
    out = None
    changed = []
    make = tuple.__new__                # (MemberState(...) without its Python __new__)
    for node, gen, hb in beats:
        e = m.get(node)
        if e is None or e[5] != gen or hb <= e[6]:      # (generation, heartbeat)
            continue
        if out is None:
            out = dict(m)
        new = out[node] = make(MemberState, (e[0], e[1], e[2], e[3], e[4], gen, hb, e[7],
                                             e[8], e[9]))
        changed.append(new)
    if out is None:
        return table, changed
    return MemberTable._of(out, table.roster), changed


def encode_beats(beats):
    """[(node, generation, heartbeat)] -> one flat list [node, generation, heartbeat, ...]."""
    out = []
    for b in beats:
        out += b
    return out


def decode_beats(data, known=()):
    """A flat list from encode_beats -> [(node, generation, heartbeat)]; garbage -> ValueError.
    `known`: as decode_digest's."""
    if not isinstance(data, (list, tuple)) or len(data) % 3:
        raise ValueError("beats: expected a flat list of [node, generation, heartbeat, ...]")
    out = []
    known = _names(known)
    for i in range(0, len(data), 3):
        node, gen, hb = data[i], data[i + 1], data[i + 2]
        if type(node) is str and node in known and type(gen) is int and type(hb) is int \
                and 0 <= gen <= _MAX_U64 and 0 <= hb <= _MAX_U64:
            out.append((node, gen, hb))         # (the common case: no message built)
            continue
        _str(node, f"beats[{i // 3}]: node", _NAME)
        _int(gen, f"beats[{i // 3}] ({node}): generation")
        _int(hb, f"beats[{i // 3}] ({node}): heartbeat")
        out.append((node, gen, hb))
    return out


def entries(table, nodes):
    """Our entries for the requested nodes (unknown ones skipped): an ack2's payload."""
    return [table._m[n] for n in sorted(set(nodes)) if n in table._m]


# ---- plain data (msgpack-friendly) and back, validated -----------------------------------------

_FIELDS = MemberState._fields


def encode_member(m):
    """MemberState -> list of plain values in field order."""
    return list(m)


def _int(value, what, lo=0, hi=_MAX_U64):
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{what} must be an integer from {lo} to {hi}, got {value!r}")
    return value


def _str(value, what, pattern):
    if type(value) is not str or not pattern.match(value):
        raise ValueError(f"{what} is not a valid name, got {value!r}")
    return value


def decode_member(data, where="member", known=None):
    """A list from encode_member -> MemberState; garbage -> ValueError naming the problem.
    `known`: node id -> MemberState already checked (the receiver's table): an entry whose
    names and addresses are those of the known one needs only its numbers checked."""
    if type(data) is list and len(data) == 10 and known is not None:
        k = known.get(data[0]) if type(data[0]) is str else None
        if k is not None:
            node, host, pport, chost, cport, gen, hb, status, epoch, zone = data
            if host == k.host and pport == k.peer_port and chost == k.client_host \
                    and cport == k.client_port and zone == k.zone and type(zone) is type(k.zone) \
                    and type(gen) is int and type(hb) is int and type(epoch) is int \
                    and 0 <= gen <= _MAX_U64 and 0 <= hb <= _MAX_U64 \
                    and 0 <= epoch <= _MAX_U64 and type(status) is str and status in _RANK \
                    and type(host) is str and type(chost) is str \
                    and type(pport) is int and type(cport) is int:
                return MemberState(k.node, k.host, k.peer_port, k.client_host,
                                   k.client_port, gen, hb, status, epoch, k.zone)
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"{where}: expected a list of {len(_FIELDS)} fields, "
                         f"got {type(data).__name__}")
    if len(data) != len(_FIELDS):
        raise ValueError(f"{where}: expected {len(_FIELDS)} fields, got {len(data)}")
    node, host, pport, chost, cport, gen, hb, status, epoch, zone = data
    node = _str(node, f"{where}: node", _NAME)
    where = f"{where} ({node})"
    _str(host, f"{where}: host", _HOST)
    _int(pport, f"{where}: peer_port", 1, 65535)
    _str(chost, f"{where}: client_host", _HOST)
    _int(cport, f"{where}: client_port", 1, 65535)
    _int(gen, f"{where}: generation")
    _int(hb, f"{where}: heartbeat")
    if type(status) is not str or status not in _RANK:
        raise ValueError(f"{where}: status must be one of {', '.join(STATUSES)}, got {status!r}")
    _int(epoch, f"{where}: ring_epoch")
    if zone is not None:
        _str(zone, f"{where}: zone", _NAME)
    return MemberState(node, host, pport, chost, cport, gen, hb, status, epoch, zone)


def _names(known):
    """`known` for a membership test: a MemberTable's own dict (its `in` is a Python call)."""
    return known._m if type(known) is MemberTable else known


def encode_entries(members):
    return [encode_member(m) for m in members]


def decode_entries(data, what="entries", known=None):
    """A list of encoded members -> list of MemberState; a node twice -> ValueError.
    `known`: as decode_member's."""
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"{what}: expected a list, got {type(data).__name__}")
    out, seen = [], set()
    known = _names(known)
    for i, item in enumerate(data):
        m = decode_member(item, f"{what}[{i}]", known)
        if m.node in seen:
            raise ValueError(f"{what}[{i}]: node {m.node!r} appears twice")
        seen.add(m.node)
        out.append(m)
    return out


def encode_table(table):
    return encode_entries(table.members())


def decode_table(data):
    return MemberTable(decode_entries(data, "table"))


def encode_digest(dig):
    return [list(d) for d in dig]


def table_digest(table):
    """encode_digest(digest(table)), without the Digest tuples: a syn's payload."""
    return [[e.node, e.generation, e.heartbeat, e.ring_epoch, e.status]
            for e in table._m.values()]


def decode_digest(data, known=()):
    """A list of [node, generation, heartbeat, ring_epoch, status] -> [Digest]. `known`: node
    ids already checked (the receiver's member table), whose names need no second look."""
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"digest: expected a list, got {type(data).__name__}")
    out, seen = [], set()
    make = tuple.__new__
    known = _names(known)
    for i, item in enumerate(data):
        if type(item) is list and len(item) == 5:
            node, gen, hb, epoch, status = item
            if type(node) is str and node in known and type(gen) is int and type(hb) is int \
                    and type(epoch) is int and 0 <= gen <= _MAX_U64 and 0 <= hb <= _MAX_U64 \
                    and 0 <= epoch <= _MAX_U64 and type(status) is str and status in _RANK \
                    and node not in seen:
                seen.add(node)
                out.append(make(Digest, item))      # (Digest(*item) without its Python __new__)
                continue
        where = f"digest[{i}]"
        if not isinstance(item, (list, tuple)) or len(item) != 5:
            raise ValueError(f"{where}: expected [node, generation, heartbeat, ring_epoch, "
                             f"status], got {item!r}")
        node, gen, hb, epoch, status = item
        _str(node, f"{where}: node", _NAME)
        _int(gen, f"{where} ({node}): generation")
        _int(hb, f"{where} ({node}): heartbeat")
        _int(epoch, f"{where} ({node}): ring_epoch")
        if type(status) is not str or status not in _RANK:
            raise ValueError(f"{where} ({node}): status must be one of {', '.join(STATUSES)}, "
                             f"got {status!r}")
        if node in seen:
            raise ValueError(f"{where}: node {node!r} appears twice")
        seen.add(node)
        out.append(Digest(node, gen, hb, epoch, status))
    return out


# ---- the generation file (the one I/O of this package) -----------------------------------------

GENERATION_FILE = "generation"


def next_generation(data_dir, now):
    """Take this process's generation: max(previous + 1, int(now)), written to
    <data_dir>/generation (atomically, fsynced) before it is returned. `now` is wall-clock
    seconds (time.time()). A corrupt file -> ValueError naming it (no silent reset: a generation
    that went backwards would make this process's heartbeats look like history)."""
    path = os.path.join(data_dir, GENERATION_FILE)
    prev = -1
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        pass
    else:
        s = text.strip()
        if not s.isdigit() or len(s) > 20 or int(s) > _MAX_U64:
            raise ValueError(f"{path}: not a generation number: {text[:40]!r}")
        prev = int(s)
    gen = max(prev + 1, int(now))
    if gen > _MAX_U64:
        raise ValueError(f"{path}: generation overflow")
    os.makedirs(data_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"%d\n" % gen)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return gen
