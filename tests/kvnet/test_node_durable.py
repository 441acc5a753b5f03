"""fsync=always through a node (issue 17 G; docs/storage.md, "Durability"): a SET's reply
waits for the syncs of W replicas, its coordinator's own included, on the direct lane too."""
import asyncio
import threading

import pytest
import redis.asyncio as aredis

from kvcore.storage import syncfs as SF
from kvnet.executor import Executor
from kvnet.stepping import LATER
from tests.kvnet.test_node import _cluster, _lane_open, run


@pytest.fixture
def held_syncfs(monkeypatch):
    """Every node's syncfs (one process) held until the returned Event is set."""
    gate = threading.Event()
    calls = []

    def syncfs(fd):
        calls.append(fd)
        assert gate.wait(30)

    monkeypatch.setattr(SF, "unsupported", lambda *a: None)
    monkeypatch.setattr(SF, "syncfs", syncfs)
    yield gate, calls
    gate.set()


def test_a_slow_sync_holds_the_set_reply(tmp_path, held_syncfs):
    gate, calls = held_syncfs

    async def main():
        nodes, ports = await _cluster(tmp_path, fsync="always", sync_method="syncfs")
        client = aredis.Redis(port=ports[0])
        try:
            await asyncio.wait_for(_lane_open(nodes[0], b"k"), 10)
            gate.set()
            assert await client.set("warm", "1")      # (the cluster answers at all)
            gate.clear()
            reply = asyncio.ensure_future(client.set("k", "v"))
            for _ in range(200):
                if calls:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            assert calls and not reply.done()         # stored, syncing, not acknowledged
            gate.set()
            assert await asyncio.wait_for(reply, 10) is True
            assert await client.get("k") == b"v"
            info = await nodes[0].front.info_section()       # one syncfs per round, in INFO
            assert info["sync_method"] == "syncfs" and info["group_commits"] >= 2
            assert info["group_commit_syncs"] == info["group_commits"]
        finally:
            gate.set()
            await client.aclose()
            for n in nodes:
                await n.stop()

    run(main())


def test_the_direct_lane_waits_for_the_coordinators_own_sync(tmp_path):
    """With fsync=always a plain SET takes the direct lane (a future, no coroutine), and
    that future settles only once the coordinator's copy is synced too, even after the other
    replicas have acknowledged theirs."""
    gate = threading.Event()

    class Held(Executor):
        async def run(self, fn, *args):
            return await asyncio.to_thread(lambda: (gate.wait(30), fn(*args))[1])

    async def main():
        nodes, _ = await _cluster(tmp_path, fsync="always", sync_method="fdatasync")
        a, b, c = nodes
        try:
            p = await asyncio.wait_for(_lane_open(a, b"k"), 10)
            a.replica.group.executor = Held()
            fut = a.front.set_overwrite_now(b"k", b"v1")
            assert fut is not LATER and isinstance(fut, asyncio.Future)
            raw = a.replica.read_raw(p, b"k")
            for _ in range(500):                  # both replicas synced and stored it
                if b.replica.read_raw(p, b"k") == raw and c.replica.read_raw(p, b"k") == raw \
                        and b.replica.group.synced_gen == b.replica.group.write_gen \
                        and c.replica.group.synced_gen == c.replica.group.write_gen:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            assert not fut.done()
            gate.set()
            assert await asyncio.wait_for(fut, 10) == raw
        finally:
            gate.set()
            for n in nodes:
                await n.stop()

    run(main())


def test_a_slow_journal_fdatasync_holds_the_set_reply(tmp_path):
    """fsync=always with the default sync method (the journal): a SET's reply waits for the
    journal's fdatasync (held just before it is called, on every node)."""
    gate = threading.Event()
    calls = []

    def held():
        calls.append(1)
        assert gate.wait(30)

    async def main():
        nodes, ports = await _cluster(tmp_path, fsync="always")
        client = aredis.Redis(port=ports[0])
        try:
            assert all(n.replica.sync_method == "journal" for n in nodes)
            await asyncio.wait_for(_lane_open(nodes[0], b"k"), 10)
            assert await client.set("warm", "1")
            for n in nodes:
                n.replica.journal.before_sync = held
            reply = asyncio.ensure_future(client.set("k", "v"))
            for _ in range(200):
                if calls:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            assert calls and not reply.done()         # stored, syncing, not acknowledged
            gate.set()
            assert await asyncio.wait_for(reply, 10) is True
            assert await client.get("k") == b"v"
            info = await nodes[0].front.info_section()
            assert info["sync_method"] == "journal"
            assert info["group_commit_syncs"] == info["group_commits"] >= 2
        finally:
            gate.set()
            await client.aclose()
            for n in nodes:
                await n.stop()

    run(main())
