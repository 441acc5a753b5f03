"""ringkv's mechanisms: hashing, storage (and, later, ring, merkle, versions).

No I/O but files; no asyncio. See ../docs for the design of each piece.
"""
from kvcore._native import NO_EXTENSIONS, select

hashing = select("kvcore.hashing", "kvcore.hashing_py")
token = hashing.token
partition = hashing.partition

__all__ = ["NO_EXTENSIONS", "hashing", "token", "partition"]
