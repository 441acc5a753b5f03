"""KV.TRACE: what one coordinated request did, replica by replica (docs/observability.md,
"KV.TRACE").

The driver (kvnet/coordinator/driver.py) takes an optional `Trace` (None: no tracing; the cost
is a None check) and reports to a `Step` of it: the targets asked, each reply as it comes
with its latency and whether it counted toward R or W, the answer, the read repairs sent and
the hints written. A command may be several steps (DEL reads, then writes; a forwarded write
is the forward, then the coordinator's own step). `Trace.reply()` is the plain data the RESP
reply carries.
"""
import asyncio
import time

from kvcore import versions as V
from kvnet.coordinator import driver
from kvnet.coordinator.quorum import Failed, Found, NotFound, Ok

__all__ = ["Trace", "Step", "summary", "run", "OPS"]

# the commands KV.TRACE runs: plain GET/SET/DEL (one key) and the versioned KV.* ones
OPS = ("get", "set", "del", "kv.get", "kv.put", "kv.del")


def _now_ms(start_ns):
    return round((time.monotonic_ns() - start_ns) / 1e6, 3)


def _actor(a):
    """An actor id as text: (node, incarnation, epoch) -> node.iiii.epoch, iiii the
    incarnation's last four digits (a random 64-bit number: enough to tell two apart)."""
    if isinstance(a, (tuple, list)) and len(a) == 3:
        return f"{a[0]}.{str(a[1])[-4:]}.{a[2]}"
    if isinstance(a, (tuple, list)):
        return ".".join(str(x) for x in a)
    return a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)


def summary(clock):
    """A clock in a line: its entries (actor:counter) and its siblings' count."""
    if clock is None:
        return {"clock": "-", "siblings": 0, "deleted": False}
    entries = " ".join(f"{_actor(e[0])}:{e[1]}" for e in clock.entries)
    if clock.anonymous:
        entries += f" +{len(clock.anonymous)} undotted"
    return {"clock": entries.strip() or "(empty)", "siblings": V.sibling_count(clock),
            "deleted": bool(V.sibling_count(clock)) and V.is_deleted(clock)}


class Step:
    """One coordinated read or write, as the driver reports it."""

    def __init__(self, trace, op, p, quorum=None, pl=None):
        self.trace = trace
        self.op = op                   # "get", "put" or "forward"
        self.p = p
        self.coordinator = trace.node
        self.started = time.monotonic_ns()
        self.needed = None if quorum is None else quorum.needed
        self.n = None if quorum is None else quorum.n
        self.strict = False if quorum is None else quorum.strict
        self.targets = [] if pl is None else list(pl.targets)
        self.down = [] if pl is None else list(getattr(pl, "down", ()))
        self.asked = []
        self.replies = {}              # node -> row (dict), in arrival order
        self.decided_ms = None         # when R or W was met (or missed for good)
        self.outcome = None
        self.version = None            # a write's new clock, a read's answer
        self.merged = None             # a read: the sync of every reply
        self.stale = None
        self.repairs = []
        self.remote = None             # a forward: the coordinator's steps
        self.final_pending = op == "get"   # a read's final look (repair, staleness) to come
        self.settled = asyncio.Event()
        self.repair_task = None

    # ---- what the driver reports --------------------------------------------------------

    def ask(self, nodes):
        self.asked.extend(nodes)

    def reply(self, node, result, quorum):
        """A target's reply, once fed to `quorum`."""
        row = self.replies.get(node)
        if row is not None:            # a reply after its timeout was recorded: kept aside
            row["late"] = _describe(result)[0]
            self._check()
            return
        was_decided = self.decided_ms is not None
        counts = quorum.counts(node, result)
        outcome, version = _describe(result)
        target = quorum.target(node)
        row = {"node": node, "role": "primary" if target is None or target.hint_for is None
               else f"fallback for {target.hint_for}",
               "outcome": outcome, "ms": _now_ms(self.started),
               "counted": ("no" if not counts else "after" if was_decided else "yes")}
        if version is not None:
            row.update(version)
        self.replies[node] = row
        if not was_decided and quorum.enough():
            self.decided_ms = row["ms"]
        self._check()

    def answered(self, result, answer=None):
        """The step's outcome: its answer (a read's clock, a write's new clock) or error."""
        if isinstance(result, BaseException):
            self.outcome = _error_text(result)
            self.final_pending = False
        else:
            self.outcome = "ok"
            if answer is not None:
                self.version = summary(answer)
        if self.decided_ms is None:
            self.decided_ms = _now_ms(self.started)
        self._check()

    def final(self, repair, stale):
        """A read's last look, every target in: the merged clock, whether the answer was
        stale, the replicas sent a repair (none when `repair` is None)."""
        if repair is not None:
            self.merged = summary(repair.clock)
            if repair.clock is not None and repair.stale:
                for t in repair.stale:
                    self.repairs.append({"node": t.node, "for": t.hint_for or "-",
                                         "outcome": "sent"})
        self.stale = stale
        self.final_pending = False
        self._check()

    def repaired(self, target, error=None):
        for row in self.repairs:
            if row["node"] == target.node:
                row["outcome"] = "ok" if error is None else f"failed: {error}"

    def _check(self):
        if not self.final_pending and all(n in self.replies for n in self.asked):
            self.settled.set()

    # ---- the reply ----------------------------------------------------------------------

    def hints(self):
        """Hints written by this write: a fallback that stored it for a down primary."""
        if self.op != "put":
            return []
        out = []
        for t in self.targets:
            row = self.replies.get(t.node)
            if t.hint_for is not None and row is not None and row["outcome"] == "ok":
                out.append({"node": t.node, "for": t.hint_for})
        return out

    def data(self):
        if self.op == "forward":
            return {"op": "forward", "partition": self.p, "from": self.coordinator,
                    "to": self.forwarded_to, "outcome": self.outcome,
                    "ms": self.decided_ms, "steps": self.remote or []}
        letter = "r" if self.op == "get" else "w"
        rows = list(self.replies.values())
        out = {"op": self.op, "partition": self.p, "coordinator": self.coordinator,
               "n": self.n, letter: self.needed, "strict": self.strict,
               "preflist": [{"node": t.node,
                             "role": "primary" if t.hint_for is None
                             else f"fallback for {t.hint_for}"} for t in self.targets],
               "down": self.down, "asked": list(self.asked), "replies": rows,
               "decided_ms": self.decided_ms, "outcome": self.outcome,
               "version": self.version or summary(None)}
        if self.op == "get":
            out["merged"] = self.merged or summary(None)
            out["stale"] = "-" if self.stale is None else ("yes" if self.stale else "no")
            out["repairs"] = self.repairs
        else:
            out["hints"] = self.hints()
        return out


def _error_text(exc):
    """An error as its RESP line (QUORUM ..., UNAVAILABLE ...), else its type and message."""
    resp = getattr(exc, "resp", None)
    return resp() if callable(resp) else f"{type(exc).__name__}: {exc}"


def _describe(result):
    """(outcome, version summary or None) of a reply."""
    if isinstance(result, Found):
        return "found", summary(result.clock)
    if isinstance(result, NotFound):
        return "not found", None
    if isinstance(result, Ok):
        return "ok", None
    if isinstance(result, Failed):
        return ("timeout" if result.reason == "timeout" else f"failed: {result.reason}"), None
    return str(result), None


class Trace:
    """The steps of one traced command on node `node`."""

    def __init__(self, node, command=""):
        self.node = node
        self.command = command
        self.started = time.monotonic_ns()
        self.steps = []

    def step(self, op, p, quorum=None, pl=None):
        s = Step(self, op, p, quorum, pl)
        self.steps.append(s)
        return s

    def forward(self, p, to):
        s = self.step("forward", p)
        s.forwarded_to = to
        s.final_pending = False
        return s

    def failed(self, exc):
        """The command ended with `exc`: steps it left unanswered end with it too."""
        for s in self.steps:
            if s.outcome is None:
                s.answered(exc)

    async def settle(self, timeout):
        """Wait (at most `timeout` seconds) for each step's stragglers and repairs, so the
        reply shows every target: a read answers at R, its trace once all replied."""
        deadline = time.monotonic() + timeout
        for s in self.steps:
            if s.outcome is None and not s.asked:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(s.settled.wait(), left)
                if s.repair_task is not None:
                    await asyncio.wait_for(asyncio.shield(s.repair_task),
                                           max(0.0, deadline - time.monotonic()))
            except (asyncio.TimeoutError, Exception):
                pass

    def reply(self, result=None, error=None):
        """The RESP reply's data: a map (RESP2: a flat array of key, value, ...)."""
        return {"node": self.node, "command": self.command, "ms": _now_ms(self.started),
                "result": result, "error": error, "steps": [s.data() for s in self.steps]}


async def run(front, op, key, value=None, context=None, quorum=None, strict=False, command=""):
    """KV.TRACE of one command `op` (OPS) on the node of `front` (kvnet/frontdoor.py's
    FrontDoor): run through the coordinator's general path (never the direct lane or the
    compiled door, which keep no trace) with a Trace, wait for its stragglers and repairs,
    and return the reply's data. An error before any replica was asked (a bad key, value or
    context) is raised, as the command itself would; a later one is the trace's "error"."""
    from kvnet.resp.commands import kv_values      # (commands.py imports this module's user)
    trace = Trace(front.name, command)
    host = front.host
    result = error = None
    try:
        p = front._partition(key)
        if op in ("get", "kv.get", "del"):
            front.stats["gets"] += 1
            res = await driver.get(host, p, key, min(front._r(quorum if op == "kv.get"
                                                               else None), front._n()),
                                   strict, trace)
            if op == "kv.get":
                result = [V.encode_context(V.join(res.clock)), kv_values(V.values(res.clock))]
            elif op == "get":
                result = None if res.not_found else V.lww_value(res.clock)
            elif res.not_found:
                result = 0
        if op in ("set", "kv.put") or (op == "del" and result is None) or op == "kv.del":
            if op in ("set", "kv.put"):
                front._check_value(value)
                sibling = V.sibling(bytes(value))
            else:
                sibling = V.tombstone()
            ctx = front._context(context) if op.startswith("kv.") else None
            overwrite = op in ("set", "del") or (op == "kv.del" and ctx is None)
            front.stats["deletes" if op.endswith("del") else "puts"] += 1
            raw = await driver.put_raw(host, p, key, sibling, ctx, overwrite,
                                       min(front._w(quorum if op != "del" else None),
                                           front._n()), strict, trace=trace)
            result = ("OK" if op == "set" else 1 if op == "del"
                      else V.encode_context(V.join(V.decode(raw))))
    except Exception as exc:
        if not trace.steps:
            raise
        trace.failed(exc)
        error = _error_text(exc)
    await trace.settle(front.timeout)
    return trace.reply(result, error)
