"""ringkv's asyncio layer: node, RESP front door, peer protocol, coordinator, client.

Public entry points: the clients (docs/cluster.md).
"""
from kvnet.client import AsyncClient, Client, Object

__all__ = ["Client", "AsyncClient", "Object"]
