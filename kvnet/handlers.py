"""A node's peer requests: one table from message type to handler (docs/peer.md).

The peer layer (kvnet/peer) calls the table as its handler: `await table(mtype, payload)` for
any request, and `table.now(mtype, payload)` first, for the few answered without waiting (the
replica's reads and writes: a value, or LATER when the request needs the coroutine). Every
part of a node adds its handlers here (the replica's, kvnet/replicahandlers.py, and each
service's `handlers()`); a type is taken once. Each handler checks its own payload with
kvnet/payload.py.
"""
from kvnet.errors import CommandError
from kvnet.resp.backend import LATER


class HandlerTable:
    """Message type (str) -> async handler(payload), and for some types a handler answering
    without a coroutine (`now`)."""

    __slots__ = ("_handlers", "_now")

    def __init__(self):
        self._handlers = {}
        self._now = {}

    def add(self, mtype, handler, now=None):
        """Serve `mtype` with `handler` (an async function of the payload); `now`, if given, is
        asked first and returns the answer, or LATER for `handler` to give it."""
        if type(mtype) is not str or not mtype:
            raise ValueError(f"a peer message type is a non-empty str, not {mtype!r}")
        if mtype in self._handlers:
            raise ValueError(f"peer message type {mtype!r} is taken")
        self._handlers[mtype] = handler
        if now is not None:
            self._now[mtype] = now

    def add_all(self, handlers):
        """add() each of {message type: async handler}, none if one of the types is taken."""
        taken = [t for t in handlers if t in self._handlers]
        if taken:
            raise ValueError(f"peer message type {taken[0]!r} is taken")
        for mtype, handler in handlers.items():
            self.add(mtype, handler)

    def remove(self, mtypes):
        for mtype in mtypes:
            self._handlers.pop(mtype, None)
            self._now.pop(mtype, None)

    def types(self):
        return sorted(self._handlers)

    def get(self, mtype):
        """The handler of `mtype`, or None."""
        return self._handlers.get(mtype) if type(mtype) is str else None

    def replace(self, mtype, handler, now=None):
        """Serve a taken type with another handler (a test's fault); the old (handler, now)."""
        old = self._handlers[mtype], self._now.get(mtype)
        self.remove([mtype])
        self.add(mtype, handler, now)
        return old

    async def __call__(self, mtype, payload):
        handler = self._handlers.get(mtype) if type(mtype) is str else None
        if handler is None:
            raise CommandError(f"unknown peer request {mtype!r}")
        return await handler(payload)

    def now(self, mtype, payload):
        """The answer without a coroutine, or LATER (PeerConnection asks here first). Raises
        as the handler does."""
        now = self._now.get(mtype) if type(mtype) is str else None
        return LATER if now is None else now(payload)
