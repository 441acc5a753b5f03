"""The Python client: versioned get/put/delete with contexts and siblings, routed by partition.

It speaks the node's RESP front door (through redis-py) and its KV.* commands.
With `route=True` (the default) it fetches the ring once (KV.RING) and sends each
request to a node of the key's preference list, saving the forwarding hop.

    from kvnet.client import Client
    c = Client("127.0.0.1", 7379)
    c.put(b"k", b"v")
    obj = c.get(b"k")          # obj.values, obj.context, obj.value (newest)
    c.put(b"k", b"v2", context=obj.context)

Over TLS (a node's tls_port, docs/security.md): `Client(host, tls_port, tls=True,
cacert="ca.crt", cert="client.crt", key="client.key")`. Routing is then off unless
`route=True` (the nodes announce their plaintext port when they have one; give route=True
when they serve clients on TLS only, port 0).
"""
import asyncio
import os
import time
from dataclasses import dataclass

import redis
import redis.asyncio as aredis
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff

from kvcore.hashing import partition as _partition


@dataclass(frozen=True)
class Object:
    """A read: the context to write back with, and every sibling value (newest first)."""

    key: bytes
    context: bytes
    values: list

    @property
    def found(self):
        return any(v is not None for v in self.values)

    @property
    def value(self):
        """The newest live value, or None."""
        return next((v for v in self.values if v is not None), None)

    @property
    def siblings(self):
        """The live sibling values (tombstones left out), newest first."""
        return [v for v in self.values if v is not None]

    @property
    def has_siblings(self):
        return len([v for v in self.values if v is not None]) > 1


def _quorum_args(name, value):
    if value is None:
        return []
    if isinstance(value, str):
        value = value.upper()
    return [name, value]


class _Routing:
    """The ring as a client routes with it: refreshed when a routed node fails, and every
    `ring_ttl` seconds (membership changes move partitions; a stale ring costs only a
    forwarding hop, since any node accepts any request)."""

    def __init__(self, host="127.0.0.1", port=7379, *, password=None, username=None,
                 route=None, socket_timeout=10.0, ring_ttl=5.0, retries=None, tls=False,
                 cacert=None, cert=None, key=None, check_hostname=True):
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a host name or address (str), not {host!r}")
        if type(port) is not int or not 0 < port < 65536:
            raise ValueError(f"port must be an int from 1 to 65535, not {port!r}")
        if retries is not None and (type(retries) is not int or retries < 0):
            raise ValueError(f"retries must be an int >= 0 or None, not {retries!r}")
        if username is not None and (not isinstance(username, str) or not username):
            raise ValueError(f"username must be a non-empty str or None, not {username!r}")
        # username: a named user of the nodes (AUTH username password, docs/security.md)
        self._opts = dict(password=password, username=username, socket_timeout=socket_timeout)
        if tls:
            self._opts.update(_tls_options(cacert, cert, key, check_hostname))
        elif cacert is not None or cert is not None or key is not None:
            raise ValueError("cacert, cert and key are for tls=True")
        if route is None:   # a node announces its plaintext port when it has one (KV.RING)
            route = not tls
        self._retries = retries      # None: redis-py's own retry policy (a few, with backoff)
        self._seed = (host, port)
        self._conns = {}
        self._route = route
        self._ring = None
        self._ring_ttl = ring_ttl
        self._ring_at = 0.0

    def _stale(self):
        return self._ring is None or time.monotonic() - self._ring_at > self._ring_ttl

    def _set_ring(self, info):
        info = _decode(info)
        addrs = {n["name"]: (n["host"], n["port"]) for n in info["nodes"] if n.get("port")}
        self._ring = (info["q"], info["owners"], addrs)
        self._ring_at = time.monotonic()

    def _routed_addr(self, key):
        if self._ring is None:
            return self._seed
        q, owners, addrs = self._ring
        return addrs.get(owners[_partition(key, q)], self._seed)

    @staticmethod
    def _get_args(key, r, strict):
        return ["KV.GET", _bytes(key), *_quorum_args("R", r)] + (["STRICT"] if strict else [])

    @staticmethod
    def _put_args(key, value, context, w, strict, durable=None):
        args = ["KV.PUT", _bytes(key), _bytes(value)]
        if context:
            args += ["CONTEXT", context]
        return (args + _quorum_args("W", w) + (["STRICT"] if strict else [])
                + _quorum_args("DURABLE", durable))

    @staticmethod
    def _del_args(key, context, w, strict, durable=None):
        args = ["KV.DEL", _bytes(key)]
        if context:
            args += ["CONTEXT", context]
        return (args + _quorum_args("W", w) + (["STRICT"] if strict else [])
                + _quorum_args("DURABLE", durable))


class Client(_Routing):
    """A connection pool per node; requests go to a replica of the key when routing is on."""

    def _conn(self, addr):
        c = self._conns.get(addr)
        if c is None:
            opts = dict(self._opts)
            if self._retries is not None:
                opts["retry"] = redis.retry.Retry(NoBackoff(), self._retries)
            c = self._conns[addr] = redis.Redis(host=addr[0], port=addr[1], **opts)
        return c

    def _addr_for(self, key):
        if self._route and self._stale():
            try:
                self._set_ring(self._conn(self._seed).execute_command("KV.RING"))
            except (redis.ConnectionError, redis.TimeoutError):
                raise                     # the seed is unreachable: no point asking it again
            except redis.RedisError:
                self._route = False
        return self._routed_addr(key) if self._route else self._seed

    def _call(self, key, *args):
        addr = self._addr_for(key)
        try:
            return self._conn(addr).execute_command(*args)
        except (redis.ConnectionError, redis.TimeoutError):
            if addr == self._seed:
                raise
            self._ring = None                 # the routed node failed: refresh the ring later
            return self._conn(self._seed).execute_command(*args)

    # ---- versioned operations ----------------------------------------------------------

    def get(self, key, r=None, strict=False):
        """Object with the context and all siblings (empty values when not found)."""
        context, values = self._call(_bytes(key), *self._get_args(key, r, strict))
        return Object(_bytes(key), context, list(values))

    def put(self, key, value, context=None, w=None, strict=False, durable=None):
        """Write value superseding what context saw (a new sibling without one); new context.
        durable=k: acknowledged only once k distinct nodes have fsynced it (DURABLE k)."""
        return self._call(_bytes(key), *self._put_args(key, value, context, w, strict, durable))

    def delete(self, key, context=None, w=None, strict=False, durable=None):
        """Delete what context saw (without one: what the coordinating replica has seen)."""
        return self._call(_bytes(key), *self._del_args(key, context, w, strict, durable))

    def mget(self, keys, r=None):
        """[get(k) for k in keys]."""
        return [self.get(k, r=r) for k in keys]

    def mput(self, items, w=None):
        """put every (key, value) of a dict or pairs, without contexts; the new contexts."""
        pairs = items.items() if isinstance(items, dict) else items
        return [self.put(k, v, w=w) for k, v in pairs]

    # ---- introspection -----------------------------------------------------------------

    def ring(self):
        return _decode(self._conn(self._seed).execute_command("KV.RING"))

    def preflist(self, key):
        return _decode(self._conn(self._seed).execute_command("KV.PREFLIST", _bytes(key)))

    def status(self):
        return _decode(self._conn(self._seed).execute_command("KV.STATUS"))

    def cluster(self, op, node=None):
        """KV.CLUSTER op [node]: stage join/leave/remove/clear, plan, commit, transfers."""
        args = ["KV.CLUSTER", op] + ([node] if node is not None else [])
        return _decode(self._conn(self._seed).execute_command(*args))

    def compact(self, partition=None):
        """KV.COMPACT [partition] on the seed node: merge its partitions now."""
        args = ["KV.COMPACT"] + ([str(partition)] if partition is not None else [])
        return _decode(self._conn(self._seed).execute_command(*args))

    def trace(self, *command):
        """KV.TRACE of one command, sent where the command would go (a replica of its key):
        `c.trace("GET", "k")`, `c.trace("KV.PUT", "k", "v", "W", 3)`. What the coordinator
        did, replica by replica, as a dict (docs/observability.md, "KV.TRACE")."""
        args = _trace_args(command)
        return _decode(self._call(args[1], "KV.TRACE", *args))

    def stats(self):
        """KV.STATS of the seed node: its read staleness per R, canary convergence per W."""
        return _decode(self._conn(self._seed).execute_command("KV.STATS"))

    def close(self):
        for c in self._conns.values():
            c.close()
        self._conns = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(_Routing):
    """The asyncio twin of Client: the same methods, each a coroutine."""

    def _conn(self, addr):
        c = self._conns.get(addr)
        if c is None:
            opts = dict(self._opts)
            if self._retries is not None:
                opts["retry"] = redis.asyncio.retry.Retry(NoBackoff(), self._retries)
            c = self._conns[addr] = aredis.Redis(host=addr[0], port=addr[1], **opts)
        return c

    async def _call(self, key, *args):
        if self._route and self._stale():
            try:
                self._set_ring(await self._conn(self._seed).execute_command("KV.RING"))
            except (redis.ConnectionError, redis.TimeoutError):
                raise                     # the seed is unreachable: no point asking it again
            except redis.RedisError:
                self._route = False
        addr = self._routed_addr(key) if self._route else self._seed
        try:
            return await self._conn(addr).execute_command(*args)
        except (redis.ConnectionError, redis.TimeoutError):
            if addr == self._seed:
                raise
            self._ring = None
            return await self._conn(self._seed).execute_command(*args)

    async def get(self, key, r=None, strict=False):
        context, values = await self._call(_bytes(key), *self._get_args(key, r, strict))
        return Object(_bytes(key), context, list(values))

    async def put(self, key, value, context=None, w=None, strict=False, durable=None):
        return await self._call(_bytes(key), *self._put_args(key, value, context, w, strict,
                                                             durable))

    async def delete(self, key, context=None, w=None, strict=False, durable=None):
        return await self._call(_bytes(key), *self._del_args(key, context, w, strict,
                                                             durable))

    async def mget(self, keys, r=None):
        return list(await asyncio.gather(*(self.get(k, r=r) for k in keys)))

    async def mput(self, items, w=None):
        pairs = items.items() if isinstance(items, dict) else items
        return list(await asyncio.gather(*(self.put(k, v, w=w) for k, v in pairs)))

    async def ring(self):
        return _decode(await self._conn(self._seed).execute_command("KV.RING"))

    async def status(self):
        return _decode(await self._conn(self._seed).execute_command("KV.STATUS"))

    async def cluster(self, op, node=None):
        args = ["KV.CLUSTER", op] + ([node] if node is not None else [])
        return _decode(await self._conn(self._seed).execute_command(*args))

    async def trace(self, *command):
        args = _trace_args(command)
        return _decode(await self._call(args[1], "KV.TRACE", *args))

    async def stats(self):
        return _decode(await self._conn(self._seed).execute_command("KV.STATS"))

    async def close(self):
        for c in self._conns.values():
            await c.aclose()
        self._conns = {}

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


def _tls_options(cacert, cert, key, check_hostname):
    """redis-py's options for a TLS port: the server verified against `cacert` (None: the
    system's CAs), `cert`/`key` presented when given (tls_auth_clients yes)."""
    for name, path in (("cacert", cacert), ("cert", cert), ("key", key)):
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"{name}: no such file: {path}")
    if key is not None and cert is None:
        raise ValueError("key needs cert (the client certificate it belongs to)")
    return dict(ssl=True, ssl_ca_certs=cacert, ssl_certfile=cert, ssl_keyfile=key,
                ssl_cert_reqs="required", ssl_check_hostname=check_hostname)


def _trace_args(command):
    """KV.TRACE's arguments: a command name and its key at least; ints as their digits."""
    if len(command) < 2:
        raise TypeError("trace() takes a command and its arguments: trace(\"GET\", key)")
    return [str(a).encode() if type(a) is int else _bytes(a) for a in command]


def _bytes(x):
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    raise TypeError(f"keys and values are bytes or str, not {type(x).__name__}")


def _decode(x):
    """RESP2 maps come as flat lists; turn the front door's replies into Python values."""
    if isinstance(x, bytes):
        try:
            s = x.decode()
        except UnicodeDecodeError:
            return x
        return s
    if isinstance(x, dict):
        return {_decode(k): _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    return x
