"""What the RESP front door needs from a node: the abstract `Backend`, and `MemoryBackend`.

The node (coordinator + stores) implements `Backend`; `MemoryBackend` is a one-process dict
with real DVV-set contexts and siblings (kvcore.versions), for tests and as a dev backend.
The contract, method by method, is in docs/resp.md ("The backend interface"). In short:

- Every method is a coroutine. Keys and values are bytes. Failures are KVNetError subclasses
  (CommandError for bad arguments such as an invalid context or R/W, QuorumError, Unavailable,
  TooManySiblings); the front door turns them into RESP errors.
- R and W (`Quorum`) are None (the node's default), an int >= 1, or "one" / "quorum" / "all".
- `strict=True` asks for primaries only (no sloppy-quorum fallbacks).
- Contexts are opaque bytes (kvcore.versions.encode_context); b"" and None mean "no context".
- SCAN cursors are unsigned 64-bit integers, 0 to start and 0 when done (redis-py and
  redis-cli parse the cursor as a number); what they encode is the backend's business.
- ring_info / preflist / status / info_section return plain data (dict, list, str, bytes,
  int, float, None) that the front door encodes as RESP maps and arrays unchanged.
"""
import abc
import bisect
import os
import socket
import time
from typing import NamedTuple

from kvcore import token
from kvcore import versions as dvv
from kvnet.errors import CommandError, TooManySiblings, Unavailable
from kvnet.payload import context as client_context
from kvnet.resp.glob import compile_glob
from kvnet.stepping import LATER

__all__ = ["Backend", "MemoryBackend", "Reply", "Sibling", "Quorum", "parse_quorum", "LATER"]

Sibling = dvv.Sibling
Quorum = int | str | None


SIBLINGS_WARN = 25
SIBLINGS_MAX = 100


class Reply(NamedTuple):
    """A read: the context to write back with, and every sibling (None value = tombstone)."""

    context: bytes
    siblings: list

    @property
    def found(self) -> bool:
        return any(s.value is not None for s in self.siblings)

    @property
    def value(self) -> bytes | None:
        """The newest sibling by timestamp, None if it is a tombstone or there is none."""
        if not self.siblings:
            return None
        return max(self.siblings, key=_lww_key).value


def _lww_key(s):
    # As kvcore.versions.lww: newest first, a tombstone wins a tie, then the larger bytes.
    return (s.timestamp, s.value is None, s.value or b"")


def parse_quorum(value: Quorum, n: int, what: str = "R") -> int | None:
    """An R/W argument as a count of replicas out of `n` (None stays None: the default)."""
    if value is None:
        return None
    if isinstance(value, str):
        name = value.lower()
        if name == "one":
            return 1
        if name == "quorum":
            return n // 2 + 1
        if name == "all":
            return n
        raise CommandError(f"{what} must be a number or ONE, QUORUM or ALL, got {value!r}")
    if type(value) is not int or value < 1:
        raise CommandError(f"{what} must be at least 1, got {value!r}")
    if value > n:
        raise CommandError(f"{what}={value} is more than the {n} replicas of a key (N={n})")
    return value


class Backend(abc.ABC):
    """The operations the RESP front door calls; see the module docstring and docs/resp.md."""

    # ---- versioned API (KV.*, the Python client) ----------------------------------------------

    @abc.abstractmethod
    async def get(self, key: bytes, r: Quorum = None, strict: bool = False) -> Reply:
        """Context and all siblings (tombstones included) merged from R replicas."""

    @abc.abstractmethod
    async def put(self, key: bytes, value: bytes, context: bytes | None = None,
                  w: Quorum = None, strict: bool = False, durable: Quorum = None) -> bytes:
        """Write `value` superseding what `context` saw (a new sibling without one); new context.
        `durable` (DURABLE k): acknowledged only once k distinct nodes have fsynced it."""

    @abc.abstractmethod
    async def delete(self, key: bytes, context: bytes | None = None,
                     w: Quorum = None, strict: bool = False, durable: Quorum = None) -> bytes:
        """Write a tombstone superseding what `context` saw (without one: what the coordinating
        replica has seen); the new context."""

    # ---- Redis-compatible API ----------------------------------------------------------------

    @abc.abstractmethod
    async def get_lww(self, key: bytes) -> bytes | None:
        """Plain GET: the newest sibling by timestamp; None if absent or a tombstone."""

    def get_lww_now(self, key: bytes):
        """get_lww's answer when it is known without waiting (a local read); an asyncio
        Future of it when the read is under way and settles from callbacks; else LATER.
        Raises as get_lww would. The front door tries it first: no coroutine per GET."""
        return LATER

    def local_door(self, commands):
        """None, or an object whose `take(session, queue, out, budget)` runs the leading
        commands of a connection's queue that it answers exactly as the general path would,
        appending their replies to `out`, and returns (the bytes appended, None); when it
        leaves one in flight instead, it returns (the bytes appended, (the future, the key))
        with `session.pending` the command, as Commands.dispatch leaves them
        (kvnet/localdoor.pyx; `commands` is the front door's Commands). Its `one(session, argv)` takes one command that may run
        beside others of its connection still in flight: the encoded reply (bytes), the
        future (`session.pending` the command), or None, having done nothing. Its
        `receive(session, data, out, budget, limits)` takes complete commands from a
        connection's bytes (docs/resp.md)."""
        return None

    def set_overwrite_now(self, key: bytes, value: bytes):
        """Do set_overwrite at once and return None when nothing needs waiting for; or start
        it and return an asyncio Future that ends when it is done (its result unused) or
        with its error; else LATER, having done nothing. Raises as set_overwrite would."""
        return LATER

    @abc.abstractmethod
    async def set_overwrite(self, key: bytes, value: bytes) -> None:
        """Plain SET: replace whatever the coordinating replica has seen."""

    @abc.abstractmethod
    async def delete_overwrite(self, key: bytes) -> bool:
        """Plain DEL of one key: True if a live value was deleted."""

    async def mget(self, keys: list) -> list:
        """Plain MGET: get_lww of each key, in order."""
        return [await self.get_lww(k) for k in keys]

    async def mset(self, pairs: list) -> None:
        """Plain MSET: set_overwrite of each (key, value) (not atomic across keys)."""
        for k, v in pairs:
            await self.set_overwrite(k, v)

    async def exists(self, keys: list) -> int:
        """How many of `keys` hold a live value (a key named twice counts twice, as in Redis)."""
        n = 0
        for k in keys:
            if await self.get_lww(k) is not None:
                n += 1
        return n

    @abc.abstractmethod
    async def dbsize_estimate(self) -> int:
        """Number of live keys, estimated (exact for MemoryBackend)."""

    @abc.abstractmethod
    async def scan(self, cursor: int, match: bytes | None = None, count: int = 10) -> tuple:
        """(next cursor, keys), as Redis: a call examines at least `count` keys (tombstones
        and keys `match` drops included) unless the keyspace ends there (cursor 0), and not
        many more; only live keys matching the Redis glob `match` are returned. Every key live
        for the whole scan is returned at least once."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Delete every key (cluster-wide, docs/algorithms.md, section 1); raises if refused."""

    # ---- ringkv introspection ----------------------------------------------------------------

    @abc.abstractmethod
    async def ring_info(self) -> dict:
        """The ring as clients route with it (KV.RING)."""

    @abc.abstractmethod
    async def preflist(self, key: bytes) -> list:
        """The key's preference list: one dict per replica (KV.PREFLIST)."""

    @abc.abstractmethod
    async def status(self) -> dict:
        """Members, their state and partition counts (KV.STATUS)."""

    async def cluster_admin(self, op: str, node: str | None = None) -> dict:
        """KV.CLUSTER: stage membership changes, plan, commit, transfers (docs/operations.md)."""
        raise CommandError("KV.CLUSTER needs a ringkv cluster node")

    async def compact(self, partition: int | None = None) -> dict:
        """KV.COMPACT: merge this node's partitions (or one) now (docs/storage.md)."""
        raise CommandError("KV.COMPACT needs a ringkv cluster node")

    async def info_section(self) -> dict:
        """ringkv's own INFO fields ("# Ringkv"): name -> str or int."""
        return {}

    async def close(self) -> None:
        """Release resources; the front door calls it only if it owns the backend."""


class MemoryBackend(Backend):
    """A dict of key -> DVV-set clock: one node, one replica (N=1), nothing on disk."""

    def __init__(self, name: str = "mem", host: str = "127.0.0.1", port: int = 0,
                 max_key_bytes: int = 8 << 10, max_value_bytes: int = 512 << 20,
                 siblings_max: int = SIBLINGS_MAX):
        self.name = name
        self.host = host
        self.port = port
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes
        self.siblings_max = siblings_max
        self.actor = (name, int.from_bytes(os.urandom(8), "little"), 1)
        self._data = {}          # key -> Clock
        self._live = 0           # keys whose clock holds a live value
        self._order = None       # sorted [(token, key)] snapshot for SCAN, None when stale
        self._tokens = None
        self.stats = {"gets": 0, "puts": 0, "deletes": 0}
        self.started = time.time()

    # ---- helpers -----------------------------------------------------------------------------

    def _check_key(self, key):
        if len(key) > self.max_key_bytes:
            raise CommandError(f"key is {len(key)} bytes, above the limit of {self.max_key_bytes}")

    def _check_value(self, value):
        if len(value) > self.max_value_bytes:
            raise CommandError(f"value is {len(value)} bytes, above the limit of {self.max_value_bytes}")

    # The node's own check (kvnet/payload.py): bounded in bytes and actors, actors checked;
    # None for an empty context (callers pass a context only when there is one).
    _context = staticmethod(client_context)

    def _store(self, key, clock):
        old = self._data.get(key)
        if old is None:
            self._order = None
        elif not dvv.is_deleted(old):
            self._live -= 1
        self._data[key] = clock
        if not dvv.is_deleted(clock):
            self._live += 1

    def _write(self, key, sib, context):
        """Mint a dot for `sib` over `context` (a decoded context, or None for a blind write)."""
        self._check_key(key)
        local = self._data.get(key)
        client = dvv.new(sib) if context is None else dvv.new(context, sib)
        clock = dvv.update(client, local, self.actor)
        if dvv.sibling_count(clock) > self.siblings_max:
            raise TooManySiblings(
                f"the write would leave {dvv.sibling_count(clock)} siblings (limit "
                f"{self.siblings_max}): read the key with KV.GET and write the merged value "
                "with its context")
        self._store(key, clock)
        return clock

    def _quorum(self, value, what):
        parse_quorum(value, 1, what)

    # ---- versioned API -----------------------------------------------------------------------

    async def get(self, key, r=None, strict=False):
        self._quorum(r, "R")
        self.stats["gets"] += 1
        clock = self._data.get(key)
        if clock is None:
            return Reply(dvv.encode_context(()), [])
        return Reply(dvv.encode_context(dvv.join(clock)), dvv.values(clock))

    def _durable(self, durable):
        """DURABLE k: refused, this backend keeping nothing on disk (nothing is written)."""
        if durable is not None and parse_quorum(durable, 1, "DURABLE"):
            raise Unavailable("DURABLE cannot be met: MemoryBackend keeps nothing on disk; "
                              "nothing was written")

    async def put(self, key, value, context=None, w=None, strict=False, durable=None):
        self._quorum(w, "W")
        self._durable(durable)
        self._check_value(value)
        ctx = self._context(context) if context else None
        self.stats["puts"] += 1
        clock = self._write(key, dvv.sibling(bytes(value)), ctx)
        return dvv.encode_context(dvv.join(clock))

    async def delete(self, key, context=None, w=None, strict=False, durable=None):
        self._quorum(w, "W")
        self._durable(durable)
        if context:
            ctx = self._context(context)
        else:
            local = self._data.get(key)
            ctx = () if local is None else dvv.join(local)
        self.stats["deletes"] += 1
        clock = self._write(key, dvv.tombstone(), ctx)
        return dvv.encode_context(dvv.join(clock))

    # ---- Redis-compatible API ----------------------------------------------------------------

    async def get_lww(self, key):
        self.stats["gets"] += 1
        clock = self._data.get(key)
        return None if clock is None else dvv.lww_value(clock)

    async def mget(self, keys):
        self.stats["gets"] += len(keys)
        data = self._data
        out = []
        for k in keys:
            clock = data.get(k)
            out.append(None if clock is None else dvv.lww_value(clock))
        return out

    async def set_overwrite(self, key, value):
        self._check_value(value)
        self.stats["puts"] += 1
        local = self._data.get(key)
        self._write(key, dvv.sibling(bytes(value)), () if local is None else dvv.join(local))

    async def delete_overwrite(self, key):
        local = self._data.get(key)
        if local is None:
            return False
        existed = not dvv.is_deleted(local)
        if existed:
            self.stats["deletes"] += 1
            self._write(key, dvv.tombstone(), dvv.join(local))
        return existed

    async def exists(self, keys):
        data = self._data
        n = 0
        for k in keys:
            clock = data.get(k)
            if clock is not None and not dvv.is_deleted(clock):
                n += 1
        return n

    async def dbsize_estimate(self):
        return self._live

    async def scan(self, cursor, match=None, count=10):
        # Keys in token order; the cursor is the token to resume from, so keys added or
        # removed meanwhile do not make the walk skip or repeat the others. A call examines
        # `count` stored keys (deleted ones too: their tombstones stay), more only for keys
        # sharing the last one's token, and ends at 0 with the keyspace.
        if self._order is None:
            self._order = sorted((token(k), k) for k in self._data)
            self._tokens = [t for t, _ in self._order]
        order, tokens = self._order, self._tokens
        i = bisect.bisect_left(tokens, cursor)
        end = min(i + max(1, count), len(order))
        while end < len(order) and end > i and tokens[end] == tokens[end - 1]:
            end += 1  # keys sharing a token go out in the same batch
        matcher = compile_glob(match) if match is not None else None
        keys = []
        for t, k in order[i:end]:
            clock = self._data.get(k)
            if clock is None or dvv.is_deleted(clock):
                continue
            if matcher is None or matcher(k):
                keys.append(k)
        if end >= len(order) or tokens[end - 1] >= (1 << 64) - 1:
            return 0, keys
        return tokens[end - 1] + 1, keys

    async def flush(self):
        self._data.clear()
        self._live = 0
        self._order = None

    # ---- introspection -----------------------------------------------------------------------

    def _member(self):
        return {"name": self.name, "host": self.host, "port": self.port, "status": "up"}

    async def ring_info(self):
        return {"epoch": 0, "partitions": 1, "n": 1, "members": [self._member()],
                "owners": [self.name]}

    async def preflist(self, key):
        return [dict(self._member(), partition=0, primary=True)]

    async def status(self):
        return {"node": self.name, "backend": "memory", "n": 1, "partitions": 1,
                "members": [dict(self._member(), partitions=1)], "keys": self._live}

    async def info_section(self):
        return {"ringkv_backend": "memory", "ringkv_node": self.name,
                "ringkv_hostname": socket.gethostname(), "ringkv_n": 1, "ringkv_partitions": 1,
                "ringkv_members": 1, "ringkv_keys": self._live,
                "ringkv_objects": len(self._data)}
