"""Quorum bookkeeping as values: what the replies so far decide (riak_kv_put_core / get_core).

No I/O and no clocks of its own: the driver (kvnet/coordinator/driver.py) sends, waits, times
out and feeds every reply to `add_result`. Rules: docs/algorithms.md, section 2; examples:
docs/quorum.md.
"""
from typing import NamedTuple

from kvcore import versions
from kvnet.coordinator.preflist import Preflist, Target
from kvnet.errors import CommandError, QuorumError, Unavailable

__all__ = [
    "OK", "DURABLE", "NOT_FOUND", "TIMEOUT", "Found", "Failed", "Ok", "Durable", "NotFound",
    "resolve_quorum", "PutQuorum", "GetQuorum", "PutResult", "GetResult", "ReadRepair",
]

_NAMED = {"one": lambda n: 1, "quorum": lambda n: n // 2 + 1, "all": lambda n: n}


def resolve_quorum(value, n, name="R", error=CommandError) -> int:
    """R or W as a number: an int, its decimal digits (str or bytes, as RESP sends them), or
    "one" / "quorum" (N // 2 + 1) / "all", any case. Raises `error` unless 1 <= value <= n."""
    if type(n) is not int or n < 1:
        raise ValueError(f"N must be an int >= 1, got {n!r}")
    raw = value
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise error(f"{name} must be a number, ONE, QUORUM or ALL, got {raw!r}") from None
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _NAMED:
            return _NAMED[word](n)
        if not word.isdigit() or not word.isascii():
            raise error(f"{name} must be a number, ONE, QUORUM or ALL, got {raw!r}")
        value = int(word)
    if type(value) is not int:
        raise error(f"{name} must be a number, ONE, QUORUM or ALL, got {raw!r}")
    if not 1 <= value <= n:
        raise error(f"{name} must be from 1 to N={n}, got {value}")
    return value


# ---- replies ----------------------------------------------------------------------------------

class Ok(NamedTuple):
    """A replica stored the write."""


class Durable(NamedTuple):
    """A replica stored the write and fsynced it (its answer to a write asking for DURABLE k):
    an acknowledgement that also counts toward k. (Its field keeps it unequal to OK: two
    empty NamedTuples compare equal.)"""

    fsynced: bool = True


class NotFound(NamedTuple):
    """A replica holds no clock for the key."""


class Found(NamedTuple):
    """A replica's clock for the key (tombstones included: it is merged and repaired like any)."""

    clock: versions.Clock


class Failed(NamedTuple):
    """An error reply, a timeout or a broken connection: the replica's state is unknown."""

    reason: str


OK = Ok()
DURABLE = Durable()
NOT_FOUND = NotFound()
TIMEOUT = Failed("timeout")


def _reply(result, allowed):
    if isinstance(result, BaseException):
        result = Failed(str(result) or type(result).__name__)
    if not isinstance(result, allowed):
        names = " / ".join(t.__name__ for t in allowed)
        raise TypeError(f"a reply is {names} or an exception, got {result!r}")
    return result


def _targets(targets):
    """Targets from a Preflist, Targets, or plain node ids (primaries)."""
    if type(targets) is Preflist:     # the driver's case: Targets of distinct nodes already
        return targets.targets, targets.down, len(targets.primaries)
    down = tuple(getattr(targets, "down", ()))
    primaries = len(targets.primaries) if hasattr(targets, "primaries") else None
    if hasattr(targets, "targets"):
        targets = targets.targets
    out = []
    for t in targets:
        if isinstance(t, str):
            t = Target(t)
        elif not isinstance(t, Target):
            t = Target(*t)
        out.append(t)
    nodes = [t.node for t in out]
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"targets must be distinct nodes, got {nodes}")
    return tuple(out), down, primaries


def _names(items):
    return ", ".join(items)


class _Quorum:
    """What PutQuorum and GetQuorum share: targets, the replies so far, the counts."""

    kind = ""      # "read" / "write"
    letter = ""    # "R" / "W"
    allowed = ()

    def __init__(self, n, needed, targets, strict=None):
        if type(n) is not int or n < 1:
            raise ValueError(f"N must be an int >= 1, got {n!r}")
        self.n = n
        self.needed = resolve_quorum(needed, n, self.letter)
        self.targets, self._down, primaries = _targets(targets)
        self._primaries = n if primaries is None else primaries
        if len(self.targets) > n:
            raise ValueError(f"{len(self.targets)} targets for N={n}")
        # A Preflist passes on its own strict flag unless the caller says otherwise.
        self.strict = bool(getattr(targets, "strict", False) if strict is None else strict)
        self._by_node = {t.node: t for t in self.targets}
        self._replies = {}          # node -> reply, in arrival order
        self.counted = 0            # replies that count toward R/W
        self.failed = 0             # Failed replies
        self._pending_qualifying = sum(1 for t in self.targets if self._qualifies(t))
        self.unavailable = self._pending_qualifying < self.needed

    def _qualifies(self, target):
        return target.hint_for is None or not self.strict

    def add_result(self, node, result) -> bool:
        """Record one target's reply; False (and no change) when it already replied: the first
        reply wins, so a late answer after a timeout never changes a decided outcome."""
        target = self._by_node.get(node)
        if target is None:
            raise ValueError(f"{node!r} is not a target of this {self.kind}")
        result = _reply(result, self.allowed)
        if node in self._replies:
            return False
        self._replies[node] = result
        if self._qualifies(target):
            self._pending_qualifying -= 1
        if isinstance(result, Failed):
            self.failed += 1
        elif self._counts(target, result):
            self.counted += 1
        return True

    def target(self, node):
        """The Target of `node`, or None when it is not one of this quorum's."""
        return self._by_node.get(node)

    def counts(self, node, result) -> bool:
        """Does this reply of `node` count toward R/W (KV.TRACE)? Failures never do; a
        not-found only from a primary; in strict mode only primaries."""
        target = self._by_node.get(node)
        return target is not None and not isinstance(result, (Failed, BaseException)) \
            and self._counts(target, result)

    @property
    def pending(self) -> tuple:
        """Targets that have not replied yet."""
        return tuple(t.node for t in self.targets if t.node not in self._replies)

    @property
    def done(self) -> bool:
        """Every target has replied (answers, errors and timeouts alike)."""
        return len(self._replies) == len(self.targets)

    def enough(self) -> bool:
        """The outcome is decided: no further reply can change success into failure or back."""
        return self._outcome() is not None

    def response(self):
        """The success payload, or the QuorumError / Unavailable to raise; RuntimeError while
        enough() is False. Called again after more replies, a success reflects them too."""
        outcome = self._outcome()
        if outcome is None:
            raise RuntimeError(f"{self.kind} quorum not decided yet: call enough() first")
        if self.unavailable:
            return self._unavailable()
        if outcome:
            return self._success()
        return self._failure()

    def _outcome(self):
        """True (success), False (failure) or None (not decided yet)."""
        if self.unavailable:
            return False
        if self.counted >= self.needed:
            return True
        if self.counted + self._pending_qualifying < self.needed:
            return False
        return None

    def _who(self, target):
        if target.hint_for is not None:
            return f"{target.node} (for {target.hint_for})"
        return target.node

    def _unavailable(self):
        what = "primaries" if self.strict else "replicas"
        have = sum(1 for t in self.targets if self._qualifies(t))
        msg = (f"{self.kind} needs {self.letter}={self.needed} {what} but only {have} "
               f"{'is' if have == 1 else 'are'} reachable (N={self.n}")
        if self.strict:
            msg += ", strict: primaries only"
        if self._down:
            msg += f"; down: {_names(self._down)}"
        return Unavailable(msg + ")")

    def _failure(self):
        msg = (f"{self.kind} quorum not met: {self.counted} of {self.needed} needed "
               f"{self._unit()} ({self.letter}={self.needed}, N={self.n}, {len(self.targets)} targets"
               f"{', strict: primaries only' if self.strict else ''})")
        return QuorumError(msg + self._details())

    def _details(self):
        """The failed, uncounted and silent targets, for a failure's message."""
        msg = ""
        # One line: the message becomes a RESP error line, and reasons come from peers.
        failed = [f"{self._who(self._by_node[x])}: {' '.join(str(r.reason).split())}"
                  for x, r in self._replies.items() if isinstance(r, Failed)]
        if failed:
            msg += f"; failed: {'; '.join(failed)}"
        ignored = [self._who(self._by_node[x]) for x, r in self._replies.items()
                   if not isinstance(r, Failed) and not self._counts(self._by_node[x], r)]
        if ignored:
            msg += f"; not counted: {_names(ignored)}"
        if self.pending:
            msg += f"; no reply yet: {_names(self.pending)}"
        return msg

    def replies(self) -> dict:
        """{node: reply} in arrival order."""
        return dict(self._replies)

    def __repr__(self):
        return (f"<{type(self).__name__} {self.letter}={self.needed} N={self.n} "
                f"counted={self.counted} failed={self.failed} pending={len(self.pending)}>")


# ---- writes -----------------------------------------------------------------------------------

class PutResult(NamedTuple):
    """A write that reached its quorum: the acknowledging targets, in arrival order (and of
    them, those that confirmed an fsync, for a write asking for DURABLE k)."""

    acked: tuple
    needed: int
    durable: tuple = ()

    @property
    def count(self) -> int:
        return len(self.acked)


class PutQuorum(_Quorum):
    """W acknowledgements out of the targets, the coordinator's own store included (it is a target
    and adds its own OK). Strict mode counts primaries only. A failure is definite as soon as the
    targets still to reply cannot bring the count up to W.

    `durable` (k, DURABLE k; 0: none) asks besides for k fsync confirmations (DURABLE replies)
    from distinct targets: a fallback's fsynced hint counts as a primary's fsync does, unless
    strict (Riak's DW; docs/quorum.md, "Durable writes"). A Durable reply is an acknowledgement
    too, so such a write waits for max(W, k) replies."""

    kind = "write"
    letter = "W"
    allowed = (Ok, Durable, Failed)

    def __init__(self, n, w, targets, strict=None, durable=0):
        super().__init__(n, w, targets, strict)
        self.durable_needed = 0 if not durable else resolve_quorum(durable, n, "DURABLE")
        self.durable = 0            # Durable replies that count toward k
        if self._pending_qualifying < self.durable_needed:
            self.unavailable = True

    def add_result(self, node, result) -> bool:
        if not super().add_result(node, result):
            return False
        if type(self._replies[node]) is Durable and self._qualifies(self._by_node[node]):
            self.durable += 1
        return True

    def _outcome(self):
        k = self.durable_needed
        if not k or self.unavailable:
            return super()._outcome()
        if self.counted >= self.needed and self.durable >= k:
            return True
        if self.counted + self._pending_qualifying < self.needed \
                or self.durable + self._pending_qualifying < k:
            return False
        return None

    def _counts(self, target, result):
        return self._qualifies(target)

    def _unit(self):
        return "acknowledgements"

    def _unavailable(self):
        have = sum(1 for t in self.targets if self._qualifies(t))
        if have >= self.needed:         # W could be met: k cannot
            what = "primaries" if self.strict else "nodes"
            msg = (f"write needs DURABLE={self.durable_needed} {what} to fsync it but only "
                   f"{have} {'is' if have == 1 else 'are'} reachable (N={self.n}")
            if self.strict:
                msg += ", strict: primaries only"
            if self._down:
                msg += f"; down: {_names(self._down)}"
            return Unavailable(msg + "); nothing was written")
        return super()._unavailable()

    def _failure(self):
        if not self.durable_needed:
            return super()._failure()
        msg = (f"write not acknowledged: {self.counted} of {self.needed} needed "
               f"acknowledgements and {self.durable} of {self.durable_needed} needed fsync "
               f"confirmations (W={self.needed}, DURABLE={self.durable_needed}, N={self.n}, "
               f"{len(self.targets)} targets{', strict: primaries only' if self.strict else ''})")
        unsynced = [self._who(self._by_node[x]) for x, r in self._replies.items()
                    if type(r) is Ok]
        if unsynced:
            msg += f"; stored without an fsync confirmation: {_names(unsynced)}"
        return QuorumError(msg + self._details() + "; the write may still be stored (and "
                           "fsynced) where it reached: not acknowledged is not the same as "
                           "not written")

    def _success(self):
        acked = tuple(x for x, r in self._replies.items()
                      if not isinstance(r, Failed) and self._qualifies(self._by_node[x]))
        durable = tuple(x for x in acked if type(self._replies[x]) is Durable)
        return PutResult(acked, self.needed, durable)


# ---- reads ------------------------------------------------------------------------------------

class GetResult(NamedTuple):
    """A read's answer: `clock` is sync_all of the found clocks so far (EMPTY when none);
    `found` says some replica held a clock (it may hold only tombstones); `counted` < `needed`
    only for an answer given because every target answered (fallbacks' not-founds do not count)."""

    clock: versions.Clock
    found: bool
    counted: int
    needed: int

    @property
    def not_found(self) -> bool:
        """What the client sees: no clock anywhere, or only tombstones."""
        return not self.found or versions.is_deleted(self.clock)

    @property
    def quorum_met(self) -> bool:
        return self.counted >= self.needed


class ReadRepair(NamedTuple):
    """After every target replied: `clock` merges every found clock; `stale` are the targets that
    answered with a clock not equal to it (not-found ones included) and should receive it;
    `failed` the ones whose state is unknown; `confirmed` says every primary (N, or the Preflist's)
    answered with a clock equal to `clock` (the first condition for reaping, docs/algorithms.md,
    section 6)."""

    clock: versions.Clock
    stale: tuple
    failed: tuple
    confirmed: bool


class GetQuorum(_Quorum):
    """R replies that count, out of the targets: a found reply counts from anyone, a not-found only
    from a primary (a fresh fallback knows nothing); strict mode counts primaries only. If every
    target answered (no errors or timeouts) and fewer than R counted, the read still answers with
    what was found (not in strict mode)."""

    kind = "read"
    letter = "R"
    allowed = (Found, NotFound, Failed)

    def __init__(self, n, r, targets, strict=None):
        super().__init__(n, r, targets, strict)

    def _counts(self, target, result):
        if not self._qualifies(target):
            return False
        return isinstance(result, Found) or target.hint_for is None

    def _unit(self):
        return "replies"

    def _outcome(self):
        if self.unavailable or self.counted >= self.needed:
            return super()._outcome()
        if self.counted + self._pending_qualifying < self.needed:
            # Out of reach of R; without strict mode and errors, every target answering still
            # gives an answer, so only then is it decided.
            if self.strict or self.failed:
                return False
            return True if self.done else None
        return None

    def _found(self):
        return [r.clock for r in self._replies.values() if isinstance(r, Found)]

    def _success(self):
        found = self._found()
        return GetResult(versions.sync_all(found), bool(found), self.counted, self.needed)

    def final(self):
        """The read repair to do once every target replied (driver: mark stragglers TIMEOUT);
        None before."""
        if not self.done:
            return None
        found = self._found()
        merged = versions.sync_all(found)
        stale, failed = [], []
        primaries_equal = 0
        for t in self.targets:
            r = self._replies[t.node]
            if isinstance(r, Failed):
                failed.append(t)
                continue
            same = isinstance(r, Found) and versions.equal(r.clock, merged)
            if same and t.hint_for is None:
                primaries_equal += 1
            if found and not same:
                stale.append(t)
        confirmed = bool(found) and primaries_equal == self._primaries
        return ReadRepair(merged, tuple(stale), tuple(failed), confirmed)
