"""A replica's answer to a write asking for durability (DURABLE k, "d" in a put or hput
payload; docs/peer.md, "Durable writes"): given only once the write is fsynced there, with
fsync=never too; a payload without "d" is answered as before."""
import asyncio
import threading

import pytest

from kvcore import versions as V
from kvcore.storage import syncfs as SF
from kvnet.errors import CommandError
from kvnet.groupcommit import COMMIT_ROUNDS
from kvnet.payload import DURABLE_ACK
from kvnet.resp.backend import LATER
from tests.kvnet.test_handlers import _replica_side
from tests.kvnet.test_replica_durable import Calls


@pytest.fixture
def held_syncfs(monkeypatch):
    """syncfs trusted (whatever the kernel) and replaced by a Calls held until `gate` is set."""
    calls = Calls(threading.Event())
    monkeypatch.setattr(SF, "unsupported", lambda *a: None)
    monkeypatch.setattr(SF, "syncfs", calls)
    yield calls
    calls.gate.set()


def _key(rings):
    ring = rings.ring
    p = next(p for p in range(16) if "a" in ring.preference_list(p))
    return p, next(b"k%d" % i for i in range(1000) if ring.partition_of(b"k%d" % i) == p)


def test_with_fsync_never_a_durable_put_is_answered_only_after_its_fsync(tmp_path, held_syncfs):
    rings, replica, table = _replica_side(tmp_path)         # fsync="never"
    p, k = _key(rings)
    raw = V.encode(V.new(V.sibling(b"v", 1)))

    async def main():
        assert replica.sync_method == "syncfs"
        assert table.now("put", {"p": p, "k": k, "c": raw}) is True     # as before: no sync
        assert held_syncfs.count == 0 and replica.group.commits == 0
        m = {"p": p, "k": k, "c": V.encode(V.new(V.sibling(b"w", 2))), "d": True}
        assert table.now("put", m) is LATER                 # the answer waits
        answer = asyncio.ensure_future(table("put", m))
        while not held_syncfs.started.is_set():
            await asyncio.sleep(0.01)
        assert held_syncfs.count == 1 and not answer.done()     # syncing: no answer yet
        assert V.lww_value(replica.read(p, k)) == b"w"           # (stored before the sync)
        held_syncfs.gate.set()
        assert await answer == DURABLE_ACK
        assert replica.group.commits == 1 and replica.group.durable_writes == 1
        assert replica.group.stats()["durable_write_waits"] == 1

    try:
        asyncio.run(main())
    finally:
        held_syncfs.gate.set()
        asyncio.run(replica.close())


def test_durable_writes_waiting_at_once_share_a_sync(tmp_path, held_syncfs):
    rings, replica, table = _replica_side(tmp_path)
    p, k = _key(rings)

    async def main():
        held_syncfs.gate.set()
        ms = [{"p": p, "k": k, "c": V.encode(V.new(V.sibling(b"v%d" % i, i))), "d": True}
              for i in range(10)]
        answers = await asyncio.gather(*(table("put", m) for m in ms))
        assert answers == [DURABLE_ACK] * 10
        assert replica.group.durable_writes == 10
        # the first write's round, the second's beside it (COMMIT_ROUNDS = 2 at once), and one
        # for the eight that came while both synced: 3 syncs for 10 durable writes
        assert held_syncfs.count <= COMMIT_ROUNDS + 1

    try:
        asyncio.run(main())
    finally:
        asyncio.run(replica.close())


def test_a_malformed_durable_flag_is_refused_before_anything_is_stored(tmp_path):
    rings, replica, table = _replica_side(tmp_path)
    p, k = _key(rings)
    raw = V.encode(V.new(V.sibling(b"v", 1)))
    try:
        for bad in ("yes", 1, None, [True]):
            with pytest.raises(CommandError, match="'d' \\(durable\\) must be true or false"):
                asyncio.run(table("put", {"p": p, "k": k, "c": raw, "d": bad}))
        assert replica.read(p, k) is None
        assert asyncio.run(table("put", {"p": p, "k": k, "c": raw, "d": False})) is True
    finally:
        asyncio.run(replica.close())


def test_a_durable_hint_is_answered_once_the_hint_log_synced(tmp_path):
    rings, replica, table = _replica_side(tmp_path)
    ring = rings.ring
    p = next(p for p in range(16) if "a" in ring.preference_list(p))
    k = next(b"k%d" % i for i in range(1000) if ring.partition_of(b"k%d" % i) == p)
    other = next(x for x in ring.preference_list(p) if x != "a")
    raw = V.encode(V.new(V.sibling(b"v", 1)))
    host = table.get("hput").__self__.host
    added, synced = [], []

    class Hints:
        def add(self, h, p, k, raw):
            added.append((h, p, k, raw))

    async def after_hint(durable=False):
        synced.append(durable)

    host.hints, host.after_hint = Hints(), after_hint
    try:
        assert asyncio.run(table("hput", {"p": p, "k": k, "c": raw, "h": other})) is True
        assert asyncio.run(table("hput", {"p": p, "k": k, "c": raw, "h": other, "d": True})) \
            == DURABLE_ACK
        assert synced == [False, True] and len(added) == 2
        with pytest.raises(CommandError, match="durable"):
            asyncio.run(table("hput", {"p": p, "k": k, "c": raw, "h": other, "d": 2}))
        assert len(added) == 2
    finally:
        asyncio.run(replica.close())


def test_a_failed_fsync_is_never_confirmed(tmp_path, held_syncfs):
    import errno

    from kvnet.errors import DiskError

    rings, replica, table = _replica_side(tmp_path)
    p, k = _key(rings)
    held_syncfs.gate.set()
    held_syncfs.fail = errno.EIO

    async def main():
        m = {"p": p, "k": k, "c": V.encode(V.new(V.sibling(b"v", 1))), "d": True}
        with pytest.raises(DiskError, match="read-only"):
            await table("put", m)           # stored, but its sync failed: no DURABLE_ACK

    try:
        asyncio.run(main())
    finally:
        asyncio.run(replica.close())
