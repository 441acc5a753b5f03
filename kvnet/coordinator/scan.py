"""SCAN across the ring, as pure functions: which replica scans which partitions, a node's scan
of its partitions, and the coordinator's merge of the answers. FrontDoor.scan
(kvnet/frontdoor.py) does the I/O; the rules are docs/cluster.md's (SCAN).

The cursor is a 64-bit token whose top log2(Q) bits name a partition: the partition's keys are
walked in token order from it, then the next partitions' from their first token, and 0 ends the
walk. It holds no server state, and it means the same on every replica and in every ring of the
same Q (a ring change moves partitions between nodes, never keys between partitions).

One call visits the partitions from the cursor's to the ring's end at most, and asks each node
once: every partition goes to one reachable replica (`assign`), each node scans its list in
order until it has examined COUNT keys (`scan_partitions`), and the coordinator walks the
partitions in ring order (`merge`), stopping after the partition where its running total of
examined keys reaches COUNT.

Why the walk never passes a partition a node left unfinished, nor reaches one it did not scan:
a node stops early only once its own total reached COUNT, at some partition P. Every partition
it scanned before P comes before P in ring order, so when the walk reaches P its running total
includes all of that node's partitions up to P: it is at least the node's total, so at least
COUNT, and the walk stops at P (or earlier). It returns P's own next cursor when P was not
finished. A walk examines fewer than COUNT keys before its last partition, and that partition
at most COUNT (a node's budget) plus the keys sharing the last key's token: a call examines
at most about 2 x COUNT. `merge` also stops at any partition a node reports unfinished, and
after the last one of a node's answer shorter than its list (a node that stops for its reply's
size), so it is right whatever prefix of its list a node answers.
"""
from kvnet.errors import CommandError, Unavailable

__all__ = ["MAX_COUNT", "REPLY_BYTES", "MAX_MATCH", "partition_of", "first_token", "after", "assign",
           "scan_partitions", "check_answer", "merge"]

MAX_COUNT = 100_000          # COUNT above this is taken as this (the front door's cap too)
REPLY_BYTES = 16 << 20       # keys' bytes after which a node's answer stops (frames: 64 MiB)
MAX_MATCH = 64 << 10         # a longer MATCH pattern is applied by the coordinator, not sent


def partition_of(cursor, qbits):
    """The partition a cursor (token) names."""
    return cursor >> (64 - qbits) if qbits else 0


def first_token(p, qbits):
    return p << (64 - qbits) if qbits else 0


def after(p, q, qbits):
    """The cursor that follows partition p: the next partition's first token, 0 at the end."""
    return first_token(p + 1, qbits) if p + 1 < q else 0


def assign(partitions, choices):
    """({node: [partitions in ring order]}, [partitions with no replica to ask]).

    `choices(p)` lists the nodes that may scan p, best first (FrontDoor._scan_choices). A node
    that already has a partition is taken over a better one that has none, so that one call asks
    as few nodes as it can: each node asked scans up to COUNT keys."""
    plan, none = {}, []
    for p in partitions:
        nodes = choices(p)
        if not nodes:
            none.append(p)
            continue
        node = next((n for n in nodes if n in plan), nodes[0])
        plan.setdefault(node, []).append(p)
    return plan, none


def scan_partitions(partitions, cursor, count, scan_one, qbits, max_bytes=REPLY_BYTES):
    """A node's answer: [[p, live keys, examined, next cursor or 0 at p's end], ...] for its
    partitions in order, the first from `cursor`, the others from their first token; it stops
    after the partition where the keys examined reach `count`, or the keys' bytes `max_bytes`.

    `scan_one(p, cursor, budget, room)` -> (live keys, examined, next cursor or 0): p's keys
    from cursor, stopping once `budget` keys are examined or the live keys' bytes reach `room`
    (examined: every key read from the store, tombstones and keys MATCH drops included)."""
    out, total, size = [], 0, 0
    for i, p in enumerate(partitions):
        start = cursor if i == 0 else first_token(p, qbits)
        keys, examined, nxt = scan_one(p, start, count - total, max_bytes - size)
        out.append([p, keys, examined, nxt])
        total += examined
        size += sum(map(len, keys))
        if total >= count or size >= max_bytes:
            break
    return out


def check_answer(answer, partitions, cursor, qbits):
    """A node's answer to scanning `partitions` (the first from `cursor`) as a list of
    (p, keys, examined, next), or CommandError: a non-empty prefix of the list, each next
    cursor 0 or past its start within its partition."""
    if type(answer) is not list or not 1 <= len(answer) <= len(partitions):
        raise CommandError("malformed SCAN answer: not a list of 1 to "
                           f"{len(partitions)} partitions")
    out = []
    for i, entry in enumerate(answer):
        p = partitions[i]
        if type(entry) is not list or len(entry) != 4:
            raise CommandError(f"malformed SCAN answer for partition {p}")
        ep, keys, examined, nxt = entry
        start = cursor if i == 0 else first_token(p, qbits)
        if ep != p or type(keys) is not list or not all(type(k) is bytes for k in keys) \
                or type(examined) is not int or not len(keys) <= examined \
                or type(nxt) is not int or not (nxt == 0 or (start < nxt < 1 << 64
                                                             and partition_of(nxt, qbits) == p)):
            raise CommandError(f"malformed SCAN answer for partition {p}")
        out.append((p, keys, examined, nxt))
    return out


def merge(walk, plan, answers, count, q, qbits):
    """(next cursor, keys) of one call: the partitions of `walk` (from the cursor's partition
    on, in ring order) taken in order, each one's keys appended, stopping after the partition
    where the examined keys reach `count` (see the module docstring).

    `plan`: {node: its partitions}, from `assign`. `answers`: {node: its `check_answer` list,
    or the exception its request raised}. Reaching a partition of no node raises Unavailable;
    one of a node whose request failed raises that error."""
    owner = {p: node for node, ps in plan.items() for p in ps}
    got, stops = {}, set()
    for node, answer in answers.items():
        if isinstance(answer, BaseException):
            continue
        for entry in answer:
            got[entry[0]] = entry
        if len(answer) < len(plan[node]):
            stops.add(answer[-1][0])
    keys, total = [], 0
    for p in walk:
        entry = got.get(p)
        if entry is None:
            node = owner.get(p)
            if node is None:
                raise Unavailable(f"no replica of partition {p} is reachable for SCAN")
            err = answers.get(node)
            if isinstance(err, BaseException):
                raise err
            raise CommandError(f"SCAN: no answer for partition {p} from {node}")  # (a bug)
        keys.extend(entry[1])
        total += entry[2]
        if entry[3]:
            return entry[3], keys
        if total >= count or p in stops:
            return after(p, q, qbits), keys
    return 0, keys
