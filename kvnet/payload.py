"""Peer payload checks shared by the node's handlers and its services: a buggy or hostile peer
gets an error naming what is wrong, never a crash (docs/peer.md)."""
from kvcore import versions as V
from kvnet.errors import CommandError

MAX_ENTRIES = 200_000            # keys, clocks or hashes in one message, at most


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


def entries(node, es, p, error=CommandError):
    """[[key, clock bytes], ...] -> [(key, raw, clock)], every entry checked before any is used."""
    out = []
    for e in seq(es, "entries", error=error):
        if type(e) is not list or len(e) != 2:
            raise error("an entry must be [key, clock bytes]")
        k, raw = e
        out.append((key(node, k, p, error), raw, clock(raw, error)))
    return out


def on_ring(node, m):
    """The partition named by a payload, refused unless it is on the ring."""
    (p,) = fields(m, "p")
    return integer(p, 0, node.ring.q - 1, f"partition (Q={node.ring.q})")


def primary_of(node, m):
    """The partition of a payload, refused unless this node is one of its primaries: a peer must
    never make a node open or write a partition it does not hold (as node._checked)."""
    p = on_ring(node, m)
    if node.name not in node.ring.preference_list(p):
        raise CommandError(f"{node.name} is not a primary of partition {p}")
    return p
