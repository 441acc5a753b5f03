"""ringkv's mechanisms: hashing, ring and claim, storage, Merkle trees, versions.

No I/O but files; no asyncio. See ../docs for the design of each piece.
Compiled modules are imported here so a missing build fails loudly at once;
RINGKV_NO_EXTENSIONS=1 selects the pure-Python twins (test oracles).
"""
from kvcore._native import NO_EXTENSIONS, select

hashing = select("kvcore.hashing", "kvcore.hashing_py")
merkle = select("kvcore.merkle", "kvcore.merkle_py")
ring = select("kvcore.ring", "kvcore.ring_py")
token = hashing.token
partition = hashing.partition

__all__ = ["NO_EXTENSIONS", "hashing", "merkle", "ring", "token", "partition"]
