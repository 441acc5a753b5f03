"""kvnet.resp: the Redis-protocol front door (docs/resp.md).

`serve(backend, host, port, password=...)` starts it; `Backend` is what a node implements,
`MemoryBackend` a one-process one for tests and development.
"""
from kvnet.resp.backend import Backend, MemoryBackend, Reply, parse_quorum
from kvnet.resp.server import RespServer, serve

__all__ = ["Backend", "MemoryBackend", "Reply", "RespServer", "parse_quorum", "serve"]
