"""ringkv's asyncio layer: server, coordinator, membership, client (later issues)."""
