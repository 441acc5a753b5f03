"""MemoryBackend checks a client's context with the node's own function (kvnet/payload.py)."""
import asyncio

import pytest

from kvcore import versions as V
from kvnet import payload
from kvnet.errors import CommandError
from kvnet.resp.backend import MemoryBackend


def test_memory_backend_uses_the_nodes_context_check():
    from kvnet.frontdoor import FrontDoor
    assert MemoryBackend._context is payload.context
    assert FrontDoor._context(b"") is None and MemoryBackend._context(b"") is None


@pytest.mark.parametrize("ctx, error", [
    (b"x" * (payload.MAX_CONTEXT_BYTES + 1), f"above the limit of {payload.MAX_CONTEXT_BYTES}"),
    (V.encode_context(tuple((("n1", 1, e), 1) for e in range(payload.MAX_CONTEXT_ENTRIES + 1))),
     f"{payload.MAX_CONTEXT_ENTRIES + 1} actors, above the limit of "
     f"{payload.MAX_CONTEXT_ENTRIES}"),
    (V.encode_context(((("no such node!", 1, 1), 1),)), "is not an actor"),
    (b"\x93garbage", "invalid context"),
])
def test_memory_backend_refuses_contexts_the_node_refuses(ctx, error):
    """Above 1 MiB or 10,000 actors, or an actor the store never makes: refused as the node
    refuses it, for writes and deletes, and nothing is written."""
    async def main():
        b = MemoryBackend()
        with pytest.raises(CommandError, match="invalid context") as info:
            await b.put(b"k", b"v", context=ctx)
        assert error in str(info.value)
        with pytest.raises(CommandError, match="invalid context"):
            await b.delete(b"k", context=ctx)
        assert (await b.get(b"k")).siblings == []
        # a context the backend handed out is taken back
        ctx2 = await b.put(b"k", b"v1")
        await b.put(b"k", b"v2", context=ctx2)
        assert [s.value for s in (await b.get(b"k")).siblings] == [b"v2"]

    asyncio.run(main())
