"""One anti-entropy exchange between two replicas of a partition, as pure message functions.

Root down over the tictac trees of kvcore.merkle, then key lists of the differing segments, then
the repair by `sync` of both clocks, many keys per message (docs/algorithms.md, sections 4 and 6,
docs/merkle.md). No I/O here: a node driver carries the messages over the peer protocol.

Roles: the initiator (A) drives, the responder (B) answers.

    A -> B  root_msg                 B -> A  root_msg            (equal roots: done)
    A -> B  branches_msg(level l)    B -> A  diff_reply          (per level, 0 .. depth-1)
    A -> B  keylists_msg(segments)   B -> A  clocks_reply        (batched)
    A: repairs_from_clocks -> keys to merge locally + repair_msgs (batched) -> B merges them

Every message is a dict of ints, bytes, lists and dicts: msgpack-friendly. `wire_size` is its
msgpack length, which the stats count per step and direction.
"""
import msgpack

from kvcore import merkle as M
from kvcore import versions as V

MAX_BATCH_KEYS = 1000
MAX_BATCH_BYTES = 1 << 20


def wire_size(msg):
    """Bytes of a message on the wire (msgpack payload; frame header not counted)."""
    return len(msgpack.packb(msg, use_bin_type=True))


# ---- steps 1-3: trees ------------------------------------------------------------------

def root_msg(tree):
    return {"t": "root", "root": tree.root()}


def branches_msg(tree, level, nodes):
    """The children hashes of `nodes` on `level` (level 0, node 0: the level-1 hashes)."""
    return {"t": "branches", "level": level, "nodes": list(nodes),
            "hashes": b"".join(tree.branch(level, j) for j in nodes)}


def diff_reply(tree, msg):
    """Responder: the indexes on level+1 whose hashes differ from the sender's."""
    level, nodes, hashes = msg["level"], msg["nodes"], msg["hashes"]
    step = 8 * tree.width
    if len(hashes) != step * len(nodes):
        raise ValueError(f"branches message of {len(hashes)} bytes for {len(nodes)} nodes")
    children = []
    for i, j in enumerate(nodes):
        children.extend(tree.diff_branch(level, j, hashes[i * step:(i + 1) * step]))
    return {"t": "diff", "level": level, "children": children}


# ---- step 4: key lists ------------------------------------------------------------------

def keys_in_segments(partition, segments):
    """{segment: [(key, entry hash)]} for the requested segments (Merkle leaves).

    The keys come from the store's in-memory index (LogStore.leaf_keys: a key's leaf is the
    low bits of its token, which the index holds); only their records are read, not the rest
    of the partition.
    """
    wanted = {s: [] for s in segments}
    if not wanted:
        return wanted
    store, tree = partition.store, partition.tree
    listed = store.leaf_keys(list(wanted), tree.leaves.bit_length() - 1)
    for s, keys in listed.items():
        lst = wanted[s]
        for key, raw in zip(keys, store.get_many(keys) if keys else ()):
            if raw is not None:
                lst.append((bytes(key), M.entry_hash(key, raw)))
    return wanted


def keys_in_segment(partition, segment):
    """[(key, entry hash)] of one segment (a full store walk: prefer keys_in_segments)."""
    return keys_in_segments(partition, [segment])[segment]


def keylists_msg(partition, segments):
    lists = keys_in_segments(partition, segments)
    return {"t": "keys", "segments": {s: [[k, h] for k, h in lst] for s, lst in lists.items()}}


def compare_keylists(mine, theirs):
    """Keys whose entry hashes differ or that one side lacks: (differ, only_mine, only_theirs).

    mine/theirs: {segment: [(key, hash)]}; all three results sorted.
    """
    a = {bytes(k): h for lst in mine.values() for k, h in lst}
    b = {bytes(k): h for lst in theirs.values() for k, h in lst}
    differ = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    return differ, sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())


def _batches(entries, t, extra, max_keys, max_bytes):
    """Split [[key, raw], ...] into messages of at most max_keys / ~max_bytes each."""
    msgs, cur, size = [], [], 0
    for e in entries:
        n = len(e[0]) + (len(e[1]) if e[1] is not None else 0) + 8
        if cur and (len(cur) >= max_keys or size + n > max_bytes):
            msgs.append({"t": t, "entries": cur})
            cur, size = [], 0
        cur.append(e)
        size += n
    if cur or (extra is not None and not msgs):
        msgs.append({"t": t, "entries": cur})
    if extra:
        msgs[-1].update(extra)
    return msgs


def clocks_reply(partition, msg, reap_pending=None, max_keys=MAX_BATCH_KEYS,
                 max_bytes=MAX_BATCH_BYTES):
    """Responder: compare the initiator's key lists with its own and answer, in batches,
    its clocks of the keys that differ or that the initiator lacks; the last message names
    the keys it lacks itself ("want") and the reap-pending keys it did not send ("reap").

    reap_pending(key, clock) -> bool: a reap-pending tombstone is never copied onto a replica
    that lacks the key (docs/algorithms.md, section 6): the caller finishes the reap instead.
    """
    theirs = {int(s): lst for s, lst in msg["segments"].items()}
    mine = keys_in_segments(partition, theirs)
    differ, only_mine, only_theirs = compare_keylists(mine, theirs)
    store = partition.store
    entries, reap = [], []
    for k in differ:
        raw = store.get(k)
        if raw is None:
            only_theirs.append(k)       # deleted here since the walk: ask for theirs
        else:
            entries.append([k, raw])
    for k in only_mine:
        raw = store.get(k)
        if raw is None:
            continue                    # gone since the walk (deleted, or dropped as corrupt)
        if reap_pending is not None and reap_pending(k, V.decode(raw)):
            reap.append(k)
        else:
            entries.append([k, raw])
    return _batches(entries, "clocks", {"want": only_theirs, "reap": reap}, max_keys, max_bytes)


# ---- step 5: repair ---------------------------------------------------------------------

def repairs_from_clocks(partition, replies, reap_pending=None, max_keys=MAX_BATCH_KEYS,
                        max_bytes=MAX_BATCH_BYTES):
    """Initiator: from the responder's clocks, the merged clock of each key.

    Returns (local, repair_msgs, reap): local = [(key, clock)] to merge here (only keys whose
    merged clock differs from ours), repair_msgs = batches of [key, encoded merged clock] for the
    responder (only keys whose merged clock differs from theirs), reap = reap-pending keys of
    either side that were not copied.
    """
    store = partition.store
    local, push, reap, want = [], [], [], []
    for msg in replies:
        want.extend(msg.get("want", ()))
        reap.extend(bytes(k) for k in msg.get("reap", ()))
        for k, theirs_raw in msg["entries"]:
            k = bytes(k)
            theirs = V.decode(theirs_raw)
            mine_raw = store.get(k)
            if mine_raw is None:
                if reap_pending is not None and reap_pending(k, theirs):
                    reap.append(k)      # cannot happen with a well-behaved responder
                    continue
                local.append((k, theirs))
                continue
            merged = V.sync(V.decode(mine_raw), theirs)
            merged_raw = V.encode(merged)
            # bytes, not V.equal: the trees converge only when the stored bytes do
            if merged_raw != mine_raw:
                local.append((k, merged))
            if merged_raw != bytes(theirs_raw):
                push.append([k, merged_raw])
    for k in want:
        k = bytes(k)
        raw = store.get(k)
        if raw is None:
            continue                    # deleted here since the key lists were made
        if reap_pending is not None and reap_pending(k, V.decode(raw)):
            reap.append(k)
        else:
            push.append([k, raw])
    return local, _batches(push, "repair", None, max_keys, max_bytes), sorted(reap)


def apply_repair(msg):
    """Responder: the [(key, clock)] of one repair message, to merge into its replica."""
    return [(bytes(k), V.decode(raw)) for k, raw in msg["entries"]]


# ---- in-process driver -------------------------------------------------------------------

class ExchangeStats:
    """What one exchange found and sent: bytes per step and direction, keys repaired each way."""

    def __init__(self):
        self.steps = {}             # step name -> [messages, bytes a->b, bytes b->a]
        self.segments = []
        self.repaired_a = 0         # keys whose clock changed on A
        self.repaired_b = 0
        self.reap = []

    def count(self, step, a_to_b=None, b_to_a=None):
        s = self.steps.setdefault(step, [0, 0, 0])
        for i, msg in ((1, a_to_b), (2, b_to_a)):
            if msg is not None:
                s[0] += 1
                s[i] += wire_size(msg)

    @property
    def a_to_b(self):
        return sum(s[1] for s in self.steps.values())

    @property
    def b_to_a(self):
        return sum(s[2] for s in self.steps.values())

    def __repr__(self):
        return (f"ExchangeStats(repaired_a={self.repaired_a}, repaired_b={self.repaired_b}, "
                f"a_to_b={self.a_to_b}, b_to_a={self.b_to_a}, steps={self.steps})")


def run_exchange(replica_a, replica_b, p, reap_pending_a=None, reap_pending_b=None,
                 max_keys=MAX_BATCH_KEYS, max_bytes=MAX_BATCH_BYTES):
    """Run a whole exchange of partition p between two LocalReplicas in-process (A initiates)
    and apply the repairs with replica.merge. Returns ExchangeStats."""
    pa, pb = replica_a.partition(p), replica_b.partition(p)
    ta, tb = pa.tree, pb.tree
    if (ta.width, ta.depth) != (tb.width, tb.depth):
        raise ValueError("trees of different shapes cannot be exchanged")
    stats = ExchangeStats()
    ra, rb = root_msg(ta), root_msg(tb)
    stats.count("root", ra, rb)
    if ra["root"] == rb["root"]:
        return stats
    frontier = [0]
    for level in range(ta.depth):
        req = branches_msg(ta, level, frontier)
        rep = diff_reply(tb, req)
        stats.count(f"level {level + 1}", req, rep)
        frontier = rep["children"]
        if not frontier:
            return stats            # equal roots in all but name: cannot happen with XOR trees
    stats.segments = frontier
    req = keylists_msg(pa, frontier)
    replies = clocks_reply(pb, req, reap_pending_b, max_keys, max_bytes)
    stats.count("keys", req, None)
    for m in replies:
        stats.count("clocks", None, m)
    local, repairs, reap = repairs_from_clocks(pa, replies, reap_pending_a, max_keys, max_bytes)
    stats.reap = reap
    for k, clock in local:
        replica_a.merge(p, k, clock)
    stats.repaired_a = len(local)
    for m in repairs:
        stats.count("repair", m, None)
        for k, clock in apply_repair(m):
            replica_b.merge(p, k, clock)
            stats.repaired_b += 1
    return stats
