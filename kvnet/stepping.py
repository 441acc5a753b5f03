"""Run a coroutine's first step inline, and only make a Task when it suspends.

Most requests a node serves complete without waiting (a local read or write), and a Task per
request (creation, a loop round, a done callback) costs more than the request. The front door
and the peer protocol call `coro.send(None)` themselves; a coroutine that yields is handed to
`finish(coro, yielded)`, which a Task then drives from where it stopped.

The first step runs outside any Task, in the caller's context: a handler must not use
`asyncio.timeout()` or a TaskGroup before its first suspension (they need a current task),
nor set a ContextVar other than by a token the caller resets (kvnet/peer/serving.py does so
for `current_peer`).
"""
import asyncio
import collections.abc
import types

__all__ = ["finish", "LATER", "ReplyFuture", "FUTURE_TYPES", "COROUTINE_TYPES", "resolve",
           "reject"]


class _Later:
    """What a synchronous fast path returns when the answer needs the coroutine instead: a
    backend's *_now method (a quorum), a peer handler's `now` (a wait for a sync)."""

    def __repr__(self):
        return "LATER"


LATER = _Later()


class ReplyFuture(asyncio.Future):
    """A backend's future (a *_now method's answer that replicas settle) that also calls
    `on_settled(self)` at once when `resolve` or `reject` settles it, if one is set. asyncio
    runs done callbacks one loop round later, and under load a round is the whole next batch
    of requests: the front door sets `on_settled` so a reply joins this round's writes."""

    on_settled = None       # a class default: no Python __init__ (a third of the cost)


# What a backend's *_now may return besides a value or LATER (tested with `type(x) in`: exact
# types, as fast as one `is` on the hot path).
FUTURE_TYPES = (asyncio.Future, ReplyFuture)


async def _probe():
    pass


def _coroutine_types():
    probe = _probe()
    probe.close()
    return tuple({types.CoroutineType, type(probe)})


# A coroutine object's exact type: the interpreter's, or Cython's for a module the build
# compiles (kvnet/compiled.py; this one among them), tested with `type(x) in` like FUTURE_TYPES.
COROUTINE_TYPES = _coroutine_types()


def resolve(fut, value):
    fut.set_result(value)
    if type(fut) is ReplyFuture and fut.on_settled is not None:
        fut.on_settled(fut)


def reject(fut, exc):
    fut.set_exception(exc)
    if type(fut) is ReplyFuture and fut.on_settled is not None:
        fut.on_settled(fut)

_FIRST = object()


class _Rest:
    """The rest of a coroutine as a coroutine object for create_task(): its first send gives
    the Task what the coroutine yielded at its first step; every send, throw and close after
    goes to the coroutine. A Task cancelled before its first step throws CancelledError into
    the coroutine where it waits, as if the Task had run it from the start."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro, yielded):
        self._coro = coro
        self._yielded = yielded

    def send(self, value):
        yielded = self._yielded
        if yielded is not _FIRST:
            self._yielded = _FIRST
            return yielded
        return self._coro.send(value)

    def throw(self, exc, *args):
        pending, self._yielded = self._yielded, _FIRST
        if pending is not _FIRST and _is_cancel(exc) and hasattr(pending, "cancel"):
            # Cancelled before the Task took over: cancel what the first step waits on (a
            # child task, a gather), as a Task cancels the future it waits on.
            pending.cancel()
        return self._coro.throw(exc, *args)

    def close(self):
        self._yielded = _FIRST
        return self._coro.close()

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return self.send(None)

    def __repr__(self):
        return f"<rest of {self._coro!r}>"


collections.abc.Coroutine.register(_Rest)


def _is_cancel(exc):
    return isinstance(exc, asyncio.CancelledError) or (
        isinstance(exc, type) and issubclass(exc, asyncio.CancelledError))


def finish(coro, yielded):
    """The rest of `coro`, which yielded `yielded` at its first step, for create_task()."""
    return _Rest(coro, yielded)
