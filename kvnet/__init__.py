"""ringkv's asyncio layer: node, RESP front door, peer protocol, coordinator, client.

Public entry points: the clients (docs/cluster.md).
"""
import os as _os

from kvnet import compiled as _compiled

_compiled.check(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))

from kvnet.client import AsyncClient, Client, Object

__all__ = ["Client", "AsyncClient", "Object"]
