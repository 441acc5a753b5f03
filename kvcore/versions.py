"""Dotted version vector sets: the causal history and live siblings of one key.

Follows Almeida et al., "Dotted Version Vectors" (arXiv 1011.5808), as Riak's `dvvset`;
semantics pinned in docs/algorithms.md, section 1, design and figures in docs/versions.md.
"""
import time
from typing import NamedTuple

import msgpack

from kvcore._native import select
from kvcore.errors import KVError

__all__ = [
    "Clock", "Sibling", "InvalidClock", "InvalidContext", "EMPTY",
    "new", "new_with_context", "update", "sync", "sync_all", "join", "values", "less", "equal",
    "sibling_count", "sibling", "tombstone", "is_deleted", "lww", "lww_value",
    "encode", "decode", "encode_context", "decode_context",
]

CLOCK_TAG = 1    # first element of an encoded clock: [1, entries, anonymous]
CONTEXT_TAG = 2  # first element of an encoded context: [2, [[actor, counter], ...]]

# One Packer for the module: msgpack.packb builds a new Packer on every call, which costs as
# much as the packing. Packer.pack holds the GIL throughout (no `default` hook is set) and
# resets itself on an error, so sharing it is safe.
_packb = msgpack.Packer().pack
_unpackb = msgpack.unpackb
_new_tuple = tuple.__new__


class InvalidClock(KVError, ValueError):
    """Bytes that are not a canonical encoded clock, or a clock an operation cannot take."""


class InvalidContext(KVError, ValueError):
    """A client context that is not one `encode_context` produced."""


class Sibling(NamedTuple):
    """One stored value: its bytes (None for a tombstone) and the writer's wall clock (us)."""

    value: bytes | None
    timestamp: int

    @property
    def is_tombstone(self) -> bool:
        return self.value is None


class Clock(NamedTuple):
    """entries: ((actor, counter, (newest value, ...)), ...) sorted by actor; anonymous: undotted values."""

    entries: tuple
    anonymous: tuple


EMPTY = Clock((), ())


def sibling(value: bytes, timestamp: int | None = None) -> Sibling:
    """A value stamped with `timestamp` (microseconds since the epoch; now if omitted)."""
    if type(value) is not bytes:
        raise TypeError(f"a sibling's value must be bytes, not {type(value).__name__}")
    return _new_tuple(Sibling, (value, _now_us() if timestamp is None else timestamp))


def tombstone(timestamp: int | None = None) -> Sibling:
    """The value a delete writes."""
    return _new_tuple(Sibling, (None, _now_us() if timestamp is None else timestamp))


def _now_us():
    return time.time_ns() // 1000


# ---- construction -----------------------------------------------------------------------------

def new(*args) -> Clock:
    """new(value) -> a clock with one anonymous value; new(context, value) -> the same over a context."""
    if len(args) == 1:
        return _new_tuple(Clock, ((), (args[0],)))
    if len(args) == 2:
        return new_with_context(args[0], args[1])
    raise TypeError(f"new() takes (value) or (context, value), got {len(args)} arguments")


def new_with_context(context, value) -> Clock:
    """A client clock: every (actor, counter) of `context` seen, `value` not yet dotted."""
    pairs = context.items() if isinstance(context, dict) else context
    entries = []
    for pair in pairs:
        actor, counter = pair
        if type(counter) is not int or counter < 0:
            raise InvalidContext(f"context counter for {actor!r} must be an int >= 0, got {counter!r}")
        if counter:  # (actor, 0) says nothing was seen
            entries.append((actor, counter, ()))
    if len(entries) > 1:
        entries.sort(key=_actor_of)
        for i in range(1, len(entries)):
            if entries[i - 1][0] == entries[i][0]:
                raise InvalidContext(f"actor {entries[i][0]!r} appears twice in the context")
    return _new_tuple(Clock, (tuple(entries), (value,)))


def _actor_of(entry):
    return entry[0]


# ---- the operations ---------------------------------------------------------------------------

def join(clock: Clock) -> tuple:
    """The context of a clock: ((actor, counter), ...), sorted by actor."""
    return tuple([(e[0], e[1]) for e in clock.entries])


def values(clock: Clock) -> list:
    """Anonymous values, then every entry's values (newest first)."""
    out = list(clock.anonymous)
    for e in clock.entries:
        out.extend(e[2])
    return out


def sibling_count(clock: Clock) -> int:
    n = len(clock.anonymous)
    for e in clock.entries:
        n += len(e[2])
    return n


def less(a: Clock, b: Clock) -> bool:
    """True when a's history is strictly contained in b's."""
    return _greater(b.entries, a.entries)


def _greater(e1, e2) -> bool:
    # e1 strictly dominates e2; both sorted by actor, counters >= 1 (so missing == 0).
    strict = False
    i = j = 0
    n1, n2 = len(e1), len(e2)
    while j < n2:
        if i == n1:
            return False
        a1 = e1[i][0]
        a2 = e2[j][0]
        if a1 == a2:
            c1 = e1[i][1]
            c2 = e2[j][1]
            if c1 < c2:
                return False
            if c1 > c2:
                strict = True
            i += 1
            j += 1
        elif a1 < a2:
            strict = True
            i += 1
        else:
            return False
    return strict or i < n1


def equal(a: Clock, b: Clock) -> bool:
    """Same causal history (actors, counters, number of live dots) and same anonymous values.

    As Riak's dvvset:equal/2 this does not compare dotted values: in a clock built by these
    operations a dot names one write, so equal dots mean equal values.
    """
    ea, eb = a.entries, b.entries
    if len(ea) != len(eb):
        return False
    for x, y in zip(ea, eb):
        if x[0] != y[0] or x[1] != y[1] or len(x[2]) != len(y[2]):
            return False
    if a.anonymous == b.anonymous:
        return True
    return set(a.anonymous) == set(b.anonymous)


def sync(a: Clock, b: Clock) -> Clock:
    """Merge two clocks of one key: keep every value that neither side has seen superseded."""
    if a is b or a == b:
        return a
    if not a.anonymous and not b.anonymous:
        anonymous = ()
    elif less(a, b):
        anonymous = b.anonymous
    elif less(b, a):
        anonymous = a.anonymous
    else:
        anonymous = _union(a.anonymous, b.anonymous)
    return _new_tuple(Clock, (_sync_entries(a.entries, b.entries), anonymous))


def sync_all(clocks) -> Clock:
    """Fold `sync` over an iterable of clocks (the empty clock for none)."""
    it = iter(clocks)
    acc = next(it, EMPTY)
    for c in it:
        acc = sync(acc, c)
    return acc


def _union(x, y):
    # Anonymous values are kept in canonical order (by their msgpack bytes), without duplicates.
    return tuple(sorted(set(x) | set(y), key=_packb))


def _sync_entries(e1, e2):
    if not e1:
        return e2
    if not e2:
        return e1
    out = []
    i = j = 0
    n1, n2 = len(e1), len(e2)
    while i < n1 and j < n2:
        x = e1[i]
        y = e2[j]
        if x[0] == y[0]:
            out.append(_merge(x, y))
            i += 1
            j += 1
        elif x[0] < y[0]:
            out.append(x)
            i += 1
        else:
            out.append(y)
            j += 1
    if i < n1:
        out.extend(e1[i:])
    elif j < n2:
        out.extend(e2[j:])
    return tuple(out)


def _merge(x, y):
    # One actor on both sides: the larger counter wins, and its values lose every dot the other
    # side has seen without holding it (n - len(l) is how far a side has seen values superseded).
    actor, n1, l1 = x
    _, n2, l2 = y
    if n1 >= n2:
        if n1 - len(l1) >= n2 - len(l2):
            return x
        return (actor, n1, l1[:n1 - n2 + len(l2)])
    if n2 - len(l2) >= n1 - len(l1):
        return y
    return (actor, n2, l2[:n2 - n1 + len(l1)])


def update(client_clock: Clock, local_clock: Clock | None, actor) -> Clock:
    """Mint a dot for `actor`: the client's value supersedes what its context saw, nothing else.

    `client_clock` comes from `new(value)` or `new(context, value)`; `local_clock` is the
    coordinator's stored clock (None when the key is absent).
    """
    if len(client_clock.anonymous) != 1:
        raise InvalidClock("update() takes a client clock from new(): exactly one anonymous value")
    value = client_clock.anonymous[0]
    if local_clock is None:
        entries, anonymous = client_clock.entries, ()
    else:
        merged = sync(_new_tuple(Clock, (client_clock.entries, ())), local_clock)
        entries, anonymous = merged
    return _new_tuple(Clock, (_event(entries, actor, value), anonymous))


def _event(entries, actor, value):
    for i, e in enumerate(entries):
        if e[0] == actor:
            return entries[:i] + ((actor, e[1] + 1, (value,) + e[2]),) + entries[i + 1:]
        if actor < e[0]:
            return entries[:i] + ((actor, 1, (value,)),) + entries[i:]
    return entries + ((actor, 1, (value,)),)


# ---- tombstones and last-write-wins -----------------------------------------------------------

def _lww_key(s):
    # Newest timestamp wins; at equal timestamps a tombstone wins (delete-wins), then the larger
    # bytes, so every replica picks the same sibling.
    return (s.timestamp, s.value is None, s.value or b"")


def is_deleted(clock: Clock) -> bool:
    """True when the clock has no values or only tombstones: the key reads as not found."""
    for v in clock.anonymous:
        if v.value is not None:
            return False
    for e in clock.entries:
        for v in e[2]:
            if v.value is not None:
                return False
    return True


def lww(clock: Clock) -> Sibling | None:
    """The newest sibling by timestamp (possibly a tombstone), None for a clock without values."""
    entries = clock.entries
    if not clock.anonymous and len(entries) == 1 and len(entries[0][2]) == 1:
        return entries[0][2][0]       # one value (the common case): no ordering to do
    vs = values(clock)
    return max(vs, key=_lww_key) if vs else None


def lww_value(clock: Clock) -> bytes | None:
    """What a Redis-compatible GET returns: the newest sibling's bytes, None if it is a delete."""
    s = lww(clock)
    return None if s is None else s.value


# ---- encodings --------------------------------------------------------------------------------

def _check_sibling(v):
    if type(v) is not Sibling:
        raise InvalidClock(f"only Sibling values can be encoded, got {type(v).__name__}")
    if (v[0] is not None and type(v[0]) is not bytes) or type(v[1]) is not int:
        raise InvalidClock(f"malformed sibling {v!r}: want (bytes or None, int)")


def encode(clock: Clock) -> bytes:
    """Canonical bytes: msgpack [1, [[actor, counter, [[value, ts], ...]], ...], [[value, ts], ...]].

    Only `Sibling` values can be encoded (InvalidClock otherwise); see docs/versions.md.
    """
    for e in clock.entries:
        for v in e[2]:
            if type(v) is not Sibling or type(v[1]) is not int \
                    or (v[0] is not None and type(v[0]) is not bytes):
                _check_sibling(v)     # raises with the message
    anonymous = clock.anonymous
    for v in anonymous:
        _check_sibling(v)
    if len(anonymous) > 1:
        anonymous = tuple(sorted(set(anonymous), key=_packb))
    return _packb((CLOCK_TAG, clock.entries, anonymous))


def decode(data: bytes) -> Clock:
    """The clock `encode` made these bytes from; InvalidClock (a ValueError) for anything else."""
    clock = _decode_common(data)      # canonical bytes of the common shapes, in C
    if clock is not None:
        return clock
    try:
        obj = _unpackb(data, use_list=False, raw=False, strict_map_key=True)
    except Exception as exc:
        raise InvalidClock(f"clock bytes are not valid msgpack: {exc}") from None
    if type(obj) is not tuple or len(obj) != 3 or obj[0] != CLOCK_TAG or type(obj[0]) is not int:
        raise InvalidClock("not an encoded clock (want [1, entries, anonymous])")
    raw_entries, raw_anon = obj[1], obj[2]
    if type(raw_entries) is not tuple or type(raw_anon) is not tuple:
        raise InvalidClock("clock entries and anonymous values must be arrays")
    entries = []
    prev = None
    for e in raw_entries:
        if type(e) is not tuple or len(e) != 3:
            raise InvalidClock(f"malformed clock entry {e!r}")
        actor, counter, vals = e
        _check_actor(actor, prev, InvalidClock, "clock")
        if type(counter) is not int or counter < 1:
            raise InvalidClock(f"counter of {actor!r} must be an int >= 1, got {counter!r}")
        if type(vals) is not tuple or len(vals) > counter:
            raise InvalidClock(f"values of {actor!r} must be an array of at most {counter} siblings")
        if len(vals) == 1:
            v = vals[0]
            if type(v) is not tuple or len(v) != 2 or type(v[1]) is not int \
                    or (v[0] is not None and type(v[0]) is not bytes):
                _decode_sibling(v)    # raises with the message
            entries.append((actor, counter, (_new_tuple(Sibling, v),)))
        else:
            entries.append((actor, counter, tuple([_decode_sibling(v) for v in vals])))
        prev = actor
    entries = tuple(entries)
    anonymous = tuple([_decode_sibling(v) for v in raw_anon])
    for i in range(1, len(anonymous)):
        if _packb(anonymous[i - 1]) >= _packb(anonymous[i]):
            raise InvalidClock("clock: anonymous values are not in canonical order")
    # Anything else that decodes (wider-than-needed ints, say) is refused, so accepted bytes are
    # exactly encode()'s and equal clocks never hash differently.
    if _packb((CLOCK_TAG, entries, anonymous)) != data:
        raise InvalidClock("clock bytes are not canonical (as encode() writes them)")
    return _new_tuple(Clock, (entries, anonymous))


_codec = select("kvcore.clockcodec", "kvcore.clockcodec_py")
_codec.bind(_unpackb, _packb, Sibling, Clock)
_decode_common = _codec.decode_common
_lww_common = _codec.lww_common
_MISS = _codec.MISS

# Byte-level forms of the commonest writes (kvcore/clockcodec.pyx): each returns the encoded
# clock the general operations would, or None for any other shape (then the caller takes the
# general path). `own` is actor_prefix(node, incarnation).
fresh_raw = _codec.fresh            # (own, epoch, value, ts): one value by a fresh actor
bump_own_raw = _codec.bump_own      # (data, own, trusted_from, value, ts): see the pyx
# (old bytes or None, new bytes): True when new is valid and sync(old, new) is new (the replica
# stores new's bytes without decoding either); False: decode and sync
supersedes_raw = _codec.supersedes


def actor_prefix(node, incarnation) -> bytes:
    """The encoded (node, incarnation) part of this node's actor ids, for the *_raw functions."""
    return _packb(node) + _packb(incarnation)


def lww_value_raw(data: bytes) -> bytes | None:
    """lww_value(decode(data)), without building the clock for a one-value clock."""
    v = _lww_common(data)
    if v is _MISS:
        return lww_value(decode(data))
    return v


def is_deleted_raw(data: bytes) -> bool:
    """is_deleted(decode(data)), without building the clock for a one-value clock."""
    v = _lww_common(data)
    if v is _MISS:
        return is_deleted(decode(data))
    return v is None


def _decode_sibling(v):
    if type(v) is not tuple or len(v) != 2 or type(v[1]) is not int \
            or (v[0] is not None and type(v[0]) is not bytes):
        raise InvalidClock(f"malformed sibling {v!r}: want [bytes or nil, int]")
    return _new_tuple(Sibling, v)


def _check_actor(actor, prev, error, what):
    try:
        hash(actor)
        ordered = prev is None or prev < actor
    except TypeError:
        raise error(f"{what}: actor {actor!r} is not hashable or not comparable with {prev!r}") from None
    if not ordered:
        raise error(f"{what}: actors not strictly increasing: {prev!r} then {actor!r}")


def encode_context(context) -> bytes:
    """Opaque bytes for a client: msgpack [2, [[actor, counter], ...]] of a `join` result."""
    return _packb((CONTEXT_TAG, tuple(context)))


def decode_context(data: bytes) -> tuple:
    """The context `encode_context` made these bytes from; InvalidContext for anything else."""
    try:
        obj = _unpackb(data, use_list=False, raw=False, strict_map_key=True)
    except Exception as exc:
        raise InvalidContext(f"context is not valid (not produced by this store?): {exc}") from None
    if type(obj) is not tuple or len(obj) != 2 or obj[0] != CONTEXT_TAG or type(obj[0]) is not int \
            or type(obj[1]) is not tuple:
        raise InvalidContext("context is not valid (not produced by this store?)")
    prev = None
    for pair in obj[1]:
        if type(pair) is not tuple or len(pair) != 2:
            raise InvalidContext(f"context: malformed entry {pair!r}")
        actor, counter = pair
        _check_actor(actor, prev, InvalidContext, "context")
        if type(counter) is not int or counter < 1:
            raise InvalidContext(f"context counter of {actor!r} must be an int >= 1, got {counter!r}")
        prev = actor
    return obj[1]
