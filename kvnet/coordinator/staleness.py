"""Read staleness: was a read's answer as new as everything its replicas said?

A read answers at R replies; the other replicas' replies keep coming until every target has
answered or its request timed out (the driver waits for them anyway, for read repair). Once
they are all in, the answer is compared with the sync of every clock received: a read was
stale when its answer neither equals nor dominates that sync (docs/observability.md,
"Staleness"). Counted per R, in the coordinator's stats (`driver.new_coord_stats()`).
"""
from kvcore import versions as V

__all__ = ["is_stale", "new_counts", "fractions"]


def is_stale(answer, merged):
    """True when `answer` (the clock a read returned; versions.EMPTY for not found) neither
    equals nor dominates `merged` (the sync of every clock its replicas replied with)."""
    return not (V.equal(answer, merged) or V.less(merged, answer))


def new_counts():
    """{r: [reads checked, stale reads]}: one list per R value seen."""
    return {}


def fractions(counts):
    """{r: {"checked", "stale", "fraction"}} of `counts`, by R (fraction None before any)."""
    out = {}
    for r in sorted(counts):
        checked, stale = counts[r]
        out[r] = {"checked": checked, "stale": stale,
                  "fraction": (stale / checked) if checked else None}
    return out
