"""Peer payload checks shared by the node's handlers and its services: a buggy or hostile peer
gets an error naming what is wrong, never a crash (docs/peer.md)."""
from kvcore import versions as V
from kvnet.config import is_node_name
from kvnet.errors import CommandError

MAX_ENTRIES = 200_000            # keys, clocks or hashes in one message, at most
# A client's causal context (what KV.GET returned, sent back with a write): one [actor, counter]
# per actor of the key's clock, each at most about 100 bytes (docs/versions.md).
MAX_CONTEXT_ENTRIES = 10_000
MAX_CONTEXT_BYTES = 1 << 20
_U64 = (1 << 64) - 1
# A replica's answer to a put or hput that asked for durability ("d": true): the write is
# stored and fsynced there. A node from before DURABLE ignores "d" and answers true, which a
# coordinator counts toward W but never toward DURABLE k (docs/peer.md, "Durable writes").
DURABLE_ACK = "fsynced"


def fields(m, *names):
    """The named fields of a map payload, each present."""
    if type(m) is not dict:
        raise CommandError("peer payload must be a map")
    missing = [f for f in names if f not in m]
    if missing:
        raise CommandError(f"peer payload lacks {', '.join(missing)}")
    return [m[f] for f in names]


def integer(v, lo, hi, what, error=CommandError):
    if type(v) is not int or not lo <= v <= hi:
        raise error(f"{what} must be an integer from {lo} to {hi}, not {v!r}")
    return v


def seq(v, what, max_len=MAX_ENTRIES, error=CommandError):
    if type(v) is not list:
        raise error(f"{what} must be a list")
    if len(v) > max_len:
        raise error(f"{what} holds {len(v)} items, above the limit of {max_len}")
    return v


def key(node, k, p, error=CommandError):
    """A non-empty bytes key within the node's key limit, of partition p."""
    if type(k) is not bytes or not k or len(k) > node.cfg.max_key_bytes:
        raise error("keys must be non-empty bytes within the key limit")
    if node.ring.partition_of(k) != p:
        raise error(f"key {k[:40]!r} is in partition {node.ring.partition_of(k)}, not {p}")
    return k


def keys(node, ks, p, error=CommandError):
    for k in seq(ks, "keys", error=error):
        key(node, k, p, error)
    return ks


def clock(raw, error=CommandError):
    """The decoded clock of encoded clock bytes."""
    if type(raw) is not bytes:
        raise error("a clock must be encoded bytes")
    try:
        return V.decode(raw)
    except V.InvalidClock as exc:
        raise error(f"bad clock: {exc}") from None


def context(raw, error=CommandError):
    """The decoded causal context of a client's context bytes (None for empty ones), refused
    with `error` naming what is wrong when it is above MAX_CONTEXT_BYTES or
    MAX_CONTEXT_ENTRIES, not a context, or holds an actor that is not one this store makes:
    [node id, incarnation, epoch] (kvnet/replica.py) with a counter from 1 to 2**64-1."""
    if not raw:
        return None
    if type(raw) is not bytes and type(raw) is not bytearray and type(raw) is not memoryview:
        raise error("invalid context: must be the bytes a read returned")
    if len(raw) > MAX_CONTEXT_BYTES:
        raise error(f"invalid context: {len(raw)} bytes, above the limit of {MAX_CONTEXT_BYTES}")
    try:
        ctx = V.decode_context(bytes(raw))
    except V.InvalidContext as exc:
        raise error(f"invalid context: {exc}") from None
    if len(ctx) > MAX_CONTEXT_ENTRIES:
        raise error(f"invalid context: {len(ctx)} actors, above the limit of "
                    f"{MAX_CONTEXT_ENTRIES}")
    for actor, counter in ctx:
        if type(actor) is not tuple or len(actor) != 3 or not is_node_name(actor[0]) \
                or type(actor[1]) is not int or not 0 <= actor[1] <= _U64 \
                or type(actor[2]) is not int or not 0 <= actor[2] <= _U64:
            raise error(f"invalid context: {actor!r} is not an actor (node id, incarnation, "
                        "epoch)")
        if not counter <= _U64:
            raise error(f"invalid context: counter {counter} of {actor!r} is above 2**64-1")
    return ctx


def entries(node, es, p, error=CommandError):
    """[[key, clock bytes], ...] -> [(key, raw, clock)], every entry checked before any is used."""
    out = []
    for e in seq(es, "entries", error=error):
        if type(e) is not list or len(e) != 2:
            raise error("an entry must be [key, clock bytes]")
        k, raw = e
        out.append((key(node, k, p, error), raw, clock(raw, error)))
    return out


def durable(m, error=CommandError):
    """The durability request of a put or hput payload (a map): its "d", true when the write
    is to be answered only once fsynced; absent (a coordinator from before DURABLE) is
    false."""
    d = m.get("d", False)
    if type(d) is not bool:
        raise error(f"'d' (durable) must be true or false, not {d!r}")
    return d


def durable_count(m, n, error=CommandError):
    """The DURABLE k of a forwarded write (coord_put's "d"): 0 when absent, else 1 to n."""
    d = m.get("d", 0)
    if type(d) is not int or not 0 <= d <= n:
        raise error(f"'d' (DURABLE) must be an integer from 0 to N={n}, not {d!r}")
    return d


def ring_of(node):
    """The node's ring, refused while it has none (a joining node before gossip brings it)."""
    ring = node.ring
    if ring is None:
        raise CommandError(f"node {node.name} has no ring yet (joining)")
    return ring


def on_ring(node, m):
    """The partition named by a payload, refused unless it is on the ring."""
    if type(m) is not dict:            # (msgpack decodes a map to a plain dict)
        raise CommandError("peer payload must be a map")
    ring = ring_of(node)
    return partition(ring, m.get("p"))


def partition(ring, p):
    """p, refused unless it is a partition of `ring`."""
    if type(p) is not int or not 0 <= p < ring.q:
        raise CommandError(f"partition {p!r} is not on the ring (Q={ring.q})")
    return p


def partition_key(node, m):
    """(partition, key) of a replica request {"p": p, "k": key}, refused unless the partition is
    on the ring and is the key's: a peer must never make a node open or write outside its
    ring."""
    p = on_ring(node, m)
    return p, key(node, m.get("k"), p)


def primary_of(node, m):
    """The partition of a payload, refused unless this node is one of its primaries: a peer must
    never make a node open or write a partition it does not hold."""
    p = on_ring(node, m)
    if node.name not in node.ring.preference_list(p):
        raise CommandError(f"{node.name} is not a primary of partition {p}")
    return p
