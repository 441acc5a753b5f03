"""Ring preference list + member health -> the nodes a request goes to (riak_core_apl).

Pure values, no I/O: primaries that are up, fallbacks standing in for the ones that are down
(sloppy quorum, docs/algorithms.md, section 2), and who coordinates a write. See docs/quorum.md.
"""
from dataclasses import dataclass
from typing import Callable, NamedTuple

__all__ = ["Target", "Preflist", "WriteRoute", "preflist_for", "write_route", "partition_arg"]


class Target(NamedTuple):
    """One node a request is sent to; a fallback names the primary it stands in for (its hint)."""

    node: str
    hint_for: str | None = None

    @property
    def is_primary(self) -> bool:
        return self.hint_for is None

    @property
    def is_fallback(self) -> bool:
        return self.hint_for is not None


@dataclass(frozen=True)
class Preflist:
    """The targets of one key: `targets` in preference order, a fallback in the slot of the
    primary it replaces. `primaries` is the whole preference list (up or down), `down` the down
    primaries, `uncovered` the down ones no fallback stands in for (all of them in strict mode)."""

    partition: int
    n: int
    strict: bool
    primaries: tuple
    targets: tuple
    down: tuple
    uncovered: tuple

    @property
    def nodes(self) -> tuple:
        return tuple(t.node for t in self.targets)

    @property
    def up_primaries(self) -> tuple:
        return tuple(t.node for t in self.targets if t.hint_for is None)

    @property
    def fallbacks(self) -> tuple:
        return tuple(t for t in self.targets if t.hint_for is not None)

    def target(self, node):
        """The Target for `node`, or None when the node is not a target."""
        for t in self.targets:
            if t.node == node:
                return t
        return None


@dataclass(frozen=True)
class WriteRoute:
    """Who coordinates (mints the dot for) a write arriving at `local` (docs/algorithms.md,
    section 1).

    `first_reachable` is the first up node of the extended preference list (a primary whenever
    one is up); `coordinator` is `local` when it is a primary, else `first_reachable`; None when no
    node can coordinate (nothing up, or, in strict mode, no primary up)."""

    partition: int
    local: str
    local_is_primary: bool
    first_reachable: str | None
    coordinator: str | None

    @property
    def coordinate_locally(self) -> bool:
        return self.coordinator is not None and self.coordinator == self.local

    @property
    def forward_to(self) -> str | None:
        """The node to forward the write to; None when coordinating locally or nobody can."""
        return None if self.coordinate_locally else self.coordinator


def partition_arg(ring, key_or_partition) -> int:
    """The partition of a bytes key, or an int partition checked against the ring."""
    if isinstance(key_or_partition, int):
        if not 0 <= key_or_partition < ring.q:
            raise IndexError(f"partition {key_or_partition} out of range(0, {ring.q})")
        return key_or_partition
    return ring.partition_of(key_or_partition)


def _lists(ring, p, n):
    if n is None:
        n = ring.n
    if type(n) is not int or not 1 <= n <= ring.n:
        raise ValueError(f"n must be an int from 1 to the ring's n ({ring.n}), got {n!r}")
    extended = tuple(ring.extended_preference_list(p))
    prefs = tuple(ring.preference_list(p))[:n]
    # The extended list starts with the ring's own preference list; with n < ring.n the nodes
    # past the first n become fallbacks, as a smaller per-request n_val does in Riak.
    return n, prefs, extended[len(prefs):]


def preflist_for(ring, key_or_partition, is_up: Callable[[str], bool], *, n=None,
                 strict=False) -> Preflist:
    """The targets of a key: each up primary, and for each down primary (in preference order) the
    next up node of the extended list not already chosen, carrying the primary as its hint.
    Strict mode (Riak's PR/PW) uses up primaries only. With S <= N the extended list holds no
    further node, so there are no fallbacks."""
    p = partition_arg(ring, key_or_partition)
    n, prefs, rest = _lists(ring, p, n)
    spare = iter(()) if strict else (x for x in rest if is_up(x))
    targets, down, uncovered = [], [], []
    for x in prefs:
        if is_up(x):
            targets.append(Target(x))
            continue
        down.append(x)
        sub = next(spare, None)
        if sub is None:
            uncovered.append(x)
        else:
            targets.append(Target(sub, x))
    return Preflist(p, n, bool(strict), prefs, tuple(targets), tuple(down), tuple(uncovered))


def write_route(ring, key_or_partition, is_up: Callable[[str], bool], local: str, *, n=None,
                strict=False) -> WriteRoute:
    """Where a write arriving at `local` is coordinated. `local` counts as up (a node reaches
    itself). A primary coordinates its own writes; any other node forwards to the first reachable
    node of the extended list, which is a fallback only when every primary is down (never in
    strict mode)."""
    p = partition_arg(ring, key_or_partition)
    n, prefs, rest = _lists(ring, p, n)

    def up(x):
        return x == local or is_up(x)

    first = next((x for x in prefs + rest if up(x)), None)
    local_is_primary = local in prefs
    if local_is_primary:
        coordinator = local
    elif strict:
        coordinator = next((x for x in prefs if up(x)), None)
    else:
        coordinator = first
    return WriteRoute(p, local, local_is_primary, first, coordinator)
