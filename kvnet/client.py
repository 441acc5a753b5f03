"""The Python client: versioned get/put/delete with contexts and siblings, routed by partition.

It speaks the node's RESP front door (through redis-py) and its KV.* commands.
With `route=True` (the default) it fetches the ring once (KV.RING) and sends each
request to a node of the key's preference list, saving the forwarding hop.

    from kvnet.client import Client
    c = Client("127.0.0.1", 7379)
    c.put(b"k", b"v")
    obj = c.get(b"k")          # obj.values, obj.context, obj.value (newest)
    c.put(b"k", b"v2", context=obj.context)
"""
from dataclasses import dataclass

import redis

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
    def has_siblings(self):
        return len([v for v in self.values if v is not None]) > 1


def _quorum_args(name, value):
    if value is None:
        return []
    if isinstance(value, str):
        value = value.upper()
    return [name, value]


class Client:
    """A connection pool per node; requests go to a replica of the key when routing is on."""

    def __init__(self, host="127.0.0.1", port=7379, *, password=None, route=True,
                 socket_timeout=10.0):
        self._opts = dict(password=password, socket_timeout=socket_timeout)
        self._seed = (host, port)
        self._conns = {}
        self._route = route
        self._ring = None

    def _conn(self, addr):
        c = self._conns.get(addr)
        if c is None:
            c = self._conns[addr] = redis.Redis(host=addr[0], port=addr[1], **self._opts)
        return c

    def _load_ring(self):
        info = self._conn(self._seed).execute_command("KV.RING")
        info = _decode(info)
        nodes = {n["name"]: (n["host"], n["port"]) for n in info["nodes"] if n.get("port")}
        self._ring = (info["q"], info["n"], info["owners"], [n["name"] for n in info["nodes"]], nodes)

    def _addr_for(self, key):
        if not self._route:
            return self._seed
        if self._ring is None:
            try:
                self._load_ring()
            except redis.RedisError:
                self._route = False
                return self._seed
        q, _, owners, _, addrs = self._ring
        owner = owners[_partition(key, q)]
        return addrs.get(owner, self._seed)

    def _call(self, key, *args):
        addr = self._addr_for(key)
        try:
            return self._conn(addr).execute_command(*args)
        except redis.ConnectionError:
            if addr == self._seed:
                raise
            self._ring = None                 # the routed node is gone: go through the seed
            return self._conn(self._seed).execute_command(*args)

    # ---- versioned operations ----------------------------------------------------------

    def get(self, key, r=None, strict=False):
        """Object with the context and all siblings (empty values when not found)."""
        key = _bytes(key)
        args = ["KV.GET", key, *_quorum_args("R", r)] + (["STRICT"] if strict else [])
        context, values = self._call(key, *args)
        return Object(key, context, list(values))

    def put(self, key, value, context=None, w=None, strict=False):
        """Write value superseding what context saw (a new sibling without one); new context."""
        key = _bytes(key)
        args = ["KV.PUT", key, _bytes(value)]
        if context:
            args += ["CONTEXT", context]
        args += _quorum_args("W", w) + (["STRICT"] if strict else [])
        return self._call(key, *args)

    def delete(self, key, context=None, w=None, strict=False):
        """Delete what context saw (without one: what the coordinating replica has seen)."""
        key = _bytes(key)
        args = ["KV.DEL", key]
        if context:
            args += ["CONTEXT", context]
        args += _quorum_args("W", w) + (["STRICT"] if strict else [])
        return self._call(key, *args)

    # ---- introspection -----------------------------------------------------------------

    def ring(self):
        return _decode(self._conn(self._seed).execute_command("KV.RING"))

    def preflist(self, key):
        return _decode(self._conn(self._seed).execute_command("KV.PREFLIST", _bytes(key)))

    def status(self):
        return _decode(self._conn(self._seed).execute_command("KV.STATUS"))

    def close(self):
        for c in self._conns.values():
            c.close()
        self._conns = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
