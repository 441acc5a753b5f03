"""LocalReplica: actor epochs, minting rules, syncing, group commit (docs/algorithms.md,
section 1)."""
import asyncio
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kvcore import versions as V
from kvnet.errors import ObjectTooLarge, TooManySiblings
from kvnet.replica import EPOCH_BLOCK, Identity, LocalReplica


def vals(clock):
    return sorted(s.value for s in V.values(clock))


def S(v, ts=1):
    return V.sibling(v, ts)


def test_identity_persists_and_epochs_never_repeat(tmp_path):
    a = Identity(str(tmp_path), "n1")
    first = [a.new_epoch() for _ in range(3)]
    b = Identity(str(tmp_path), "n1")             # a restart: continues after the leased block
    assert b.incarnation == a.incarnation
    assert b.new_epoch() > max(first) and b.new_epoch() > EPOCH_BLOCK
    with pytest.raises(ValueError):
        Identity(str(tmp_path), "other")
    shutil.rmtree(tmp_path)
    c = Identity(str(tmp_path), "n1")             # a wiped node is a new incarnation
    assert c.incarnation != a.incarnation


def _join_lease(ident):
    """Wait for the lease-ahead thread, if one runs (it clears `_extending` as it ends, so
    read the attribute once)."""
    thread = ident._extending
    if thread is not None:
        thread.join()


def _lease_file(path):
    from kvnet.replica import _read_msgpack
    return _read_msgpack(str(path / "EPOCH"))


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(st.tuples(st.integers(1, 12), st.booleans()), min_size=1, max_size=30))
def test_the_lease_on_disk_covers_every_epoch_handed_out(tmp_path_factory, steps):
    """Whatever the timing of the thread that leases ahead: the file holds at least every
    epoch handed out, so a crash at any moment loses none; a restart continues above them."""
    import kvnet.replica as R
    path = tmp_path_factory.mktemp("lease")
    saved, R.EPOCH_BLOCK = R.EPOCH_BLOCK, 8
    try:
        ident = Identity(str(path), "n1")
        handed = []
        for count, wait in steps:
            for _ in range(count):
                handed.append(ident.new_epoch())
                assert _lease_file(path) >= handed[-1]
            if wait:
                _join_lease(ident)
        assert handed == sorted(set(handed))
        _join_lease(ident)
        assert Identity(str(path), "n1").new_epoch() > max(handed)
    finally:
        R.EPOCH_BLOCK = saved


def test_the_lease_is_extended_off_the_caller_thread(tmp_path, monkeypatch):
    """Half-way through a block a thread leases the next: a caller that does not outrun it
    never writes the file (an fsync on the event loop, once per block, before)."""
    import threading

    import kvnet.replica as R
    monkeypatch.setattr(R, "EPOCH_BLOCK", 100)
    writers = []
    real = R._write_msgpack
    monkeypatch.setattr(R, "_write_msgpack", lambda p, o: (
        p.endswith("EPOCH") and writers.append(threading.current_thread())) or real(p, o))
    ident = Identity(str(tmp_path), "n1")
    assert writers == [threading.current_thread()]       # the first lease, at start
    for _ in range(5):
        for _ in range(60):                                # past half of the block
            ident.new_epoch()
        _join_lease(ident)
        for _ in range(40):
            ident.new_epoch()                              # the rest of the block
    assert len(writers) == 6 and threading.current_thread() not in writers[1:]
    assert _lease_file(tmp_path) >= ident._next - 1


def test_a_failed_lease_ahead_falls_back_to_the_caller(tmp_path, monkeypatch, caplog):
    import kvnet.replica as R
    monkeypatch.setattr(R, "EPOCH_BLOCK", 10)
    ident = Identity(str(tmp_path), "n1")
    real = R._write_msgpack
    fail = [True]

    def flaky(p, o):
        if fail[0]:
            raise OSError(28, "No space left on device")
        return real(p, o)
    monkeypatch.setattr(R, "_write_msgpack", flaky)
    for _ in range(6):
        ident.new_epoch()
    _join_lease(ident)
    assert "leasing epochs ahead failed" in caplog.text
    with pytest.raises(OSError):                          # the block is used up: the caller
        for _ in range(10):                               # writes, and its error is raised
            ident.new_epoch()
    fail[0] = False
    e = ident.new_epoch()
    assert _lease_file(tmp_path) >= e


def test_blind_writes_are_siblings_and_overwrite_replaces(tmp_path):
    r = LocalReplica(str(tmp_path), "n1")
    c1 = r.mint(0, b"k", S(b"v1"))
    c2 = r.mint(0, b"k", S(b"v2"))
    assert vals(c2) == [b"v1", b"v2"]
    assert len(c2.entries) == 1                   # the same actor, reused: counter 2
    c3 = r.mint(0, b"k", S(b"v3"), context=V.join(c1))
    assert vals(c3) == [b"v2", b"v3"]             # v1 was seen by the context, v2 was not
    c4 = r.mint(0, b"k", S(b"v4"), overwrite=True)
    assert vals(c4) == [b"v4"]
    assert r.read(0, b"k") == c4 and r.read(0, b"other") is None
    asyncio.run(r.close())


def test_actor_reused_after_clean_restart_but_not_after_crash(tmp_path):
    r = LocalReplica(str(tmp_path), "n1")
    c1 = r.mint(3, b"k", S(b"v1"))
    asyncio.run(r.close())
    r = LocalReplica(str(tmp_path), "n1")
    c2 = r.mint(3, b"k", S(b"v2"), overwrite=True)
    assert [e[0] for e in c2.entries] == [e[0] for e in c1.entries]
    # a crash: the store is abandoned without its clean marker
    r.partition(3).store._abandon()
    r.partitions.clear()
    r = LocalReplica(str(tmp_path), "n1")
    c3 = r.mint(3, b"k", S(b"v3"), overwrite=True)
    actors = [e[0] for e in c3.entries]
    assert len(actors) == 2 and actors[1][2] > actors[0][2]   # a fresh epoch
    asyncio.run(r.close())


def test_lost_record_never_reuses_a_dot(tmp_path):
    """kv679: an acknowledged write must survive the coordinator losing its copy."""
    r = LocalReplica(str(tmp_path), "n1")
    acked = r.mint(1, b"k", S(b"acked"))          # replicated elsewhere as `acked`
    asyncio.run(r.close())
    shutil.rmtree(tmp_path / "partitions")        # the partition is lost (dropped, wiped)
    r = LocalReplica(str(tmp_path), "n1")
    newer = r.mint(1, b"k", S(b"newer"))
    merged = V.sync(acked, newer)
    assert vals(merged) == [b"acked", b"newer"]   # both kept: no dot was reused
    asyncio.run(r.close())


def test_context_ahead_of_local_clock_takes_a_new_epoch(tmp_path):
    r = LocalReplica(str(tmp_path), "n1")
    c1 = r.mint(0, b"k", S(b"v1"))
    c2 = r.mint(0, b"k", S(b"v2"), overwrite=True)
    # the local store goes back to c1 (e.g. restored), but a client saw c2's context
    r._store(0, b"k", c1, r.partition(0).store.get(b"k"))
    c3 = r.mint(0, b"k", S(b"v3"), context=V.join(c2))
    assert len(c3.entries) == 2
    assert vals(V.sync(c2, c3)) == [b"v3"]        # v3 supersedes what the context saw
    asyncio.run(r.close())


def test_merge_syncs_and_keeps_concurrent_values(tmp_path):
    a = LocalReplica(str(tmp_path / "a"), "a")
    b = LocalReplica(str(tmp_path / "b"), "b")
    ca = a.mint(0, b"k", S(b"from-a"))
    cb = b.mint(0, b"k", S(b"from-b"))
    m = a.merge(0, b"k", cb)
    assert vals(m) == [b"from-a", b"from-b"] and a.read(0, b"k") == m
    assert b.merge(0, b"k", ca) == m              # both replicas converge
    stale = ca
    assert a.merge(0, b"k", stale) == m           # an old clock changes nothing
    asyncio.run(a.close())
    asyncio.run(b.close())


def test_tombstone_reads_as_deleted(tmp_path):
    r = LocalReplica(str(tmp_path), "n1")
    r.mint(0, b"k", S(b"v"))
    c = r.mint(0, b"k", V.tombstone(2), overwrite=True)
    assert V.is_deleted(c) and V.is_deleted(r.read(0, b"k"))
    asyncio.run(r.close())


def test_sibling_limit_refuses_before_storing(tmp_path):
    r = LocalReplica(str(tmp_path), "n1", max_siblings=3)
    for i in range(3):
        r.mint(0, b"k", S(b"v%d" % i))
    before = r.read(0, b"k")
    with pytest.raises(TooManySiblings, match="resolve"):
        r.mint(0, b"k", S(b"v3"))
    assert r.read(0, b"k") == before
    r.mint(0, b"k", S(b"one"), overwrite=True)    # resolving is always allowed
    asyncio.run(r.close())


def test_object_limit_refuses_a_mint_before_storing_but_never_a_merge(tmp_path):
    """max_object_bytes bounds what a write minted here leaves (siblings and clock, encoded);
    a sync of two objects within it may be above it, and the replica takes that."""
    a = LocalReplica(str(tmp_path / "a"), "a", max_object_bytes=5000)
    b = LocalReplica(str(tmp_path / "b"), "b", max_object_bytes=5000)
    a.mint(0, b"k", S(b"x" * 3000))
    before = a.read_raw(0, b"k")
    with pytest.raises(ObjectTooLarge, match=r"object of \d+ bytes \(2 values and their clock\), "
                                             r"above max_object_bytes=5000"):
        a.mint(0, b"k", S(b"y" * 3000))             # a second sibling: 6,000 bytes and more
    assert a.read_raw(0, b"k") == before
    c = b.mint(0, b"k", S(b"z" * 3000))             # concurrent, each within the limit
    merged = a.merge(0, b"k", c)
    assert vals(merged) == [b"x" * 3000, b"z" * 3000]
    assert len(V.encode(merged)) > 5000 and a.read(0, b"k") == merged
    a.mint(0, b"k", S(b"one"), V.join(merged))      # resolving is always allowed
    assert vals(a.read(0, b"k")) == [b"one"]
    for r in (a, b):
        asyncio.run(r.close())


@pytest.mark.parametrize("method", ["fdatasync", "journal"])
def test_group_commit_syncs_every_dirty_partition(tmp_path, method):
    """Each store synced (fdatasync), or the journal holding every write on disk (journal)."""
    async def main():
        r = LocalReplica(str(tmp_path), "n1", fsync="always", sync_method=method)
        for p in range(4):
            r.mint(p, b"k%d" % p, S(b"v"))
        await asyncio.gather(*(r.after_write() for _ in range(10)))
        for p in range(4):
            st = r.partition(p).store.stats()
            assert (st["synced_offset"] == st["active_offset"]) == (method == "fdatasync")
        if method == "journal":
            assert len(r.journal.buffer) == 0 and r.journal.size > 4 * 40
            assert os.path.getsize(r.journal.file.path) == r.journal.size
        await r.close()

    asyncio.run(main())


def test_group_commit_waiters_never_spin_and_all_get_synced(tmp_path):
    async def main():
        r = LocalReplica(str(tmp_path), "n1", fsync="always", sync_method="fdatasync")

        async def writer(i):
            r.mint(i % 3, b"k%d" % i, S(b"v"))
            await r.after_write()
            return r.group.synced_gen

        gens = await asyncio.wait_for(asyncio.gather(*(writer(i) for i in range(200))), 30)
        assert min(gens) >= 1 and r.group.synced_gen == 200
        for p in range(3):
            st = r.partition(p).store.stats()
            assert st["synced_offset"] == st["active_offset"]
        await r.close()

    asyncio.run(main())


def test_group_commit_state_is_readable_without_private_attributes(tmp_path):
    async def main():
        r = LocalReplica(str(tmp_path), "n1", fsync="always", sync_method="fdatasync")
        assert (r.group.write_gen, r.group.synced_gen, r.group.dirty_partitions()) == (0, 0, [])
        r.mint(5, b"a", S(b"1"))
        r.mint(2, b"b", S(b"2"))
        r.mint(5, b"c", S(b"3"))
        assert r.group.write_gen == 3 and r.group.synced_gen == 0 and r.group.dirty_partitions() == [2, 5]
        await r.after_write()
        assert r.group.synced_gen == r.group.write_gen == 3 and r.group.dirty_partitions() == []
        assert r.group.syncing_rounds == 0 and not r.group.checkpointing and not r.group.journal_kept
        await r.close()

    asyncio.run(main())


def _fold(part):
    from kvcore import merkle

    return merkle.MerkleTree.from_items(part.store.items())


def test_merkle_tree_follows_every_write_and_survives_clean_restart_only(tmp_path):

    r = LocalReplica(str(tmp_path), "n1")
    for i in range(50):
        r.mint(7, b"k%d" % i, S(b"v%d" % i))
    r.mint(7, b"k1", S(b"again"), overwrite=True)
    r.mint(7, b"k2", V.tombstone(5), overwrite=True)
    other = LocalReplica(str(tmp_path / "other"), "n2")
    r.merge(7, b"k3", other.mint(7, b"k3", S(b"remote")))
    part = r.partition(7)
    assert part.tree == _fold(part) and part.tree.root() != _fold(r.partition(8)).root()
    root = part.tree.root()
    asyncio.run(r.close())
    tree_file = tmp_path / "partitions" / "00007" / "TREE"
    assert tree_file.exists()
    r = LocalReplica(str(tmp_path), "n1")
    assert r.partition(7).tree.root() == root
    assert not tree_file.exists()                 # used once: a crash now leaves no tree
    r.mint(7, b"k9", S(b"x"), overwrite=True)
    r.partition(7).store._abandon()               # crash
    r.partitions.clear()
    r = LocalReplica(str(tmp_path), "n1")
    part = r.partition(7)
    assert part.tree == _fold(part)               # rebuilt by a fold over the store
    r.empty_partition(7)
    assert len(part.store) == 0 and part.tree == _fold(part)
    asyncio.run(r.close())
    asyncio.run(other.close())


def test_after_a_crash_partitions_serve_at_once_and_fold_their_trees_in_the_background(
        tmp_path, monkeypatch):
    """A partition opened after a crash (no trusted tree) is open and serving before its tree
    is built: reads and writes go on at once, the tree is folded by a task of the loop in
    chunks (through the replica's RebuildGate), and it is then exactly the fold of the store
    with the writes made meanwhile; anti-entropy is told (on_tree_rebuilt)."""
    import kvnet.replica as R

    monkeypatch.setattr(R, "REBUILD_CHUNK", 16)
    r = LocalReplica(str(tmp_path), "n1", index_skip_bits=8)
    for p in range(6):
        for i in range(300):
            r.mint(p, b"k%d-%d" % (p, i), S(b"v%d" % i), overwrite=True)
    for part in r.partitions.values():
        part.store._abandon()                     # crash: no TREE, no CLEAN
    r.partitions.clear()

    async def main():
        rep = LocalReplica(str(tmp_path), "n1", index_skip_bits=8)
        rebuilt = []
        rep.on_tree_rebuilt = rebuilt.append
        rep.open_existing()                       # in threads, as a starting node opens them
        parts = [rep.opened(p) for p in range(6)]
        assert not any(part.tree_built for part in parts)
        assert rep.fault_stats()["trees_rebuilding"] == 6
        # requests never wait for a fold: served now, while no tree is built
        assert vals(rep.read(2, b"k2-7")) == [b"v7"]
        rep.mint(2, b"k2-7", S(b"during"), overwrite=True)
        rep.mint(3, b"new", S(b"n"), overwrite=True)
        while not all(part.tree_built for part in parts):
            rep.mint(4, b"k4-1", S(b"x%d" % len(rebuilt)), overwrite=True)   # meanwhile
            await asyncio.sleep(0)
        assert sorted(rebuilt) == list(range(6))
        assert rep.fault_stats()["trees_rebuilding"] == 0
        for part in parts:
            assert part.tree == _fold(part), part.p
        assert all(part._rebuild_task is None for part in parts)
        await rep.close()

    asyncio.run(main())
    r = LocalReplica(str(tmp_path), "n1", index_skip_bits=8)   # a clean close saved the trees
    assert all(r.partition(p).tree_built for p in range(6))
    assert vals(r.read(2, b"k2-7")) == [b"during"]
    asyncio.run(r.close())


def test_the_rebuild_gate_lets_few_folds_run_at_once(tmp_path):
    import kvnet.replica as R

    gate = R.RebuildGate(2)
    running, most = [0], [0]

    async def fold():
        async with gate.slot():
            running[0] += 1
            most[0] = max(most[0], running[0])
            for _ in range(5):
                await asyncio.sleep(0)
            running[0] -= 1

    async def main():
        await asyncio.gather(*(fold() for _ in range(10)))

    asyncio.run(main())
    assert most[0] == 2
    asyncio.run(main())                           # another loop: a semaphore of its own
    assert R.REBUILD_CONCURRENCY >= 1


def test_delete_if_compares_clock_bytes_and_updates_the_tree(tmp_path):
    from kvcore import merkle as M
    r = LocalReplica(str(tmp_path), "n1")
    r.mint(3, b"keep", S(b"v"))
    tomb = V.encode(r.mint(3, b"gone", V.tombstone(2)))
    part = r.partition(3)
    assert not r.delete_if(3, b"gone", tomb + b"x")        # other bytes: kept
    assert not r.delete_if(3, b"nothing", tomb)
    assert not r.delete_if(9, b"gone", tomb)               # a partition not open: never opened
    assert r.opened(9) is None and 9 not in r.partitions
    assert r.delete_if(3, b"gone", tomb)
    assert part.store.get(b"gone") is None and r.read(3, b"gone") is None
    want = M.MerkleTree()
    want.rebuild(part.store.items())
    assert part.tree.root() == want.root() and part.tree_built
    assert not r.delete_if(3, b"gone", tomb)               # twice: nothing left to delete
    newer = V.encode(r.mint(3, b"gone", S(b"back")))       # a write after: not the tombstone
    assert not r.delete_if(3, b"gone", tomb) and part.store.get(b"gone") == newer
    t2 = V.encode(r.mint(3, b"gone2", V.tombstone(3)))
    assert r.delete_if(3, b"gone2", t2)
    asyncio.run(r.close())
    r2 = LocalReplica(str(tmp_path), "n1")                 # the delete survives a reopen
    r2.open_existing()
    p2 = r2.opened(3)
    assert r2.read(3, b"gone2") is None and p2.store.get(b"gone") == newer
    want = M.MerkleTree()
    want.rebuild(p2.store.items())
    assert p2.tree.root() == want.root()
    asyncio.run(r2.close())


def test_repair_is_merge_reporting_a_change(tmp_path):
    r = LocalReplica(str(tmp_path / "a"), "a")
    o = LocalReplica(str(tmp_path / "b"), "b")
    c1 = o.mint(0, b"k", S(b"v1"))
    assert r.repair(0, b"k", c1) and V.equal(r.read(0, b"k"), c1)
    assert not r.repair(0, b"k", c1)                       # nothing new: not stored again
    mine = r.mint(0, b"k", S(b"mine"))                     # concurrent with o's next write
    c2 = o.mint(0, b"k", S(b"v2"), overwrite=True)
    assert r.repair(0, b"k", c2)
    assert V.equal(r.read(0, b"k"), V.sync(mine, c2))
    assert not r.repair(0, b"k", c1)                       # older: dominated, no change
    asyncio.run(r.close())
    asyncio.run(o.close())


# ---- the byte-level mint (kvcore/clockcodec.pyx) changes speed, never results -----------------

from hypothesis import given, settings, strategies as st  # noqa: E402

_ops = st.lists(st.tuples(
    st.sampled_from(["set", "del", "put", "put_ctx", "remote", "distrust"]),
    st.sampled_from([b"a", b"b"]), st.one_of(st.none(), st.binary(max_size=5))), max_size=25)


@settings(max_examples=60, deadline=None)
@given(_ops)
def test_byte_level_mint_stores_what_the_general_path_does(tmp_path_factory, ops):
    """Two replicas of one identity take the same operations, one with the byte-level mint and
    one without it: after every step they store the same bytes and return the same clocks."""
    base = tmp_path_factory.mktemp("mint")
    fast = LocalReplica(str(base / "fast"), "n1")
    slow = LocalReplica(str(base / "slow"), "n1")
    slow.identity.incarnation = fast.identity.incarnation
    slow.identity.prefix = fast.identity.prefix
    other = LocalReplica(str(base / "other"), "n2")
    real = (V.fresh_raw, V.bump_own_raw)
    try:
        for ts, (op, key, value) in enumerate(ops, 1):
            results = []
            remote = other.mint(0, key, S(value or b"r", ts)) if op == "remote" else None
            for r, byte_level in ((fast, True), (slow, False)):
                if not byte_level:
                    V.fresh_raw = V.bump_own_raw = lambda *a: None
                try:
                    if op == "distrust":
                        r.partition(0).distrust(100 + ts)
                        results.append(None)
                    elif op == "remote":
                        results.append(r.merge(0, key, remote))
                    elif op == "put_ctx":
                        local = r.read(0, key)
                        ctx = V.join(local) if local is not None else ()
                        results.append(r.mint(0, key, S(value or b"c", ts), context=ctx))
                    else:
                        sib = V.tombstone(ts) if op == "del" else S(value or b"", ts)
                        results.append(r.mint(0, key, sib, overwrite=op != "put"))
                finally:
                    V.fresh_raw, V.bump_own_raw = real
            assert results[0] == results[1]
            for key in (b"a", b"b"):
                assert fast.read_raw(0, key) == slow.read_raw(0, key)
            assert fast.partition(0).tree.root() == slow.partition(0).tree.root()
    finally:
        for r in (fast, slow, other):
            for part in r.partitions.values():
                part.close()


def test_a_set_over_own_clock_takes_the_byte_level_path(tmp_path, monkeypatch):
    from kvcore._native import NO_EXTENSIONS
    if NO_EXTENSIONS:
        pytest.skip("the pure-Python twin has no byte-level path")
    r = LocalReplica(str(tmp_path), "n1")
    r.mint(0, b"k", S(b"v1"), overwrite=True)

    def no_decode(data):
        raise AssertionError("the general path ran")
    monkeypatch.setattr(V, "decode", no_decode)
    for i in range(3):
        raw = r.mint_raw(0, b"k", S(b"v%d" % i, 10 + i), overwrite=True)
        assert r.read_raw(0, b"k") == raw
        assert V.lww_value_raw(raw) == b"v%d" % i         # and a GET reads it without decode
    monkeypatch.undo()
    (actor, counter, values), = r.read(0, b"k").entries
    assert counter == 4 and values == (S(b"v2", 12),) and actor[:2] == ("n1", r.identity.incarnation)


def test_merge_stores_the_incoming_bytes_only_when_they_encode_the_result(tmp_path):
    """5 == 5.0 in an actor: a merge result equal (==) to the incoming clock may still encode
    differently, and replicas must hold encode(result) for their Merkle trees to agree."""
    r = LocalReplica(str(tmp_path), "n1")
    v, w = S(b"v"), S(b"w")
    local = V.Clock(((("a", 1, 5), 1, (v,)),), ())
    r.merge(0, b"k", local)
    incoming = V.Clock(((("a", 1, 5.0), 1, (v,)), (("z", 1, 1), 1, (w,))), ())
    raw = V.encode(incoming)
    merged = r.merge(0, b"k", V.decode(raw), raw)
    assert merged == incoming
    assert r.read_raw(0, b"k") == V.encode(merged)
    fresh = r.merge(0, b"new", V.decode(raw), raw)         # nothing local: the bytes as they came
    assert r.read_raw(0, b"new") == raw and fresh == incoming


def test_open_all_opens_partitions_in_threads_and_unclean_ones_get_distinct_epochs(tmp_path):
    r = LocalReplica(str(tmp_path), "n1", fsync="never")
    r.open_all(range(40), workers=8)
    assert sorted(r.partitions) == list(range(40))
    for p in range(40):
        r.merge(p, b"k%d" % p, V.new(S(b"v")))
    asyncio.run(r.group.commit())
    r2_dir = tmp_path / "copy"                   # a crash: the files of stores still open (no
    shutil.copytree(tmp_path, r2_dir, ignore=shutil.ignore_patterns("copy"))   # clean marker)
    r2 = LocalReplica(str(r2_dir), "n1", fsync="never")
    r2.open_existing()
    assert sorted(r2.partitions) == list(range(40))
    epochs = [r2.partitions[p].trusted_from for p in range(40)]
    assert len(set(epochs)) == 40 and min(epochs) > 0       # each distrusted with its own epoch
    assert all(r2.read(p, b"k%d" % p) is not None for p in range(40))
    asyncio.run(r2.close())
    asyncio.run(r.close())


def test_empty_partition_streams_over_more_keys_than_one_chunk(tmp_path):
    from kvnet import replica as RP

    r = LocalReplica(str(tmp_path), "n1", fsync="never")
    n = 3 * RP.EMPTY_CHUNK + 17
    part = r.partition(2)
    for i in range(n):
        part.store.put(b"key%06d" % i, V.encode(V.new(S(b"v"))))
    trusted = part.trusted_from
    r.empty_partition(2)
    assert len(part.store) == 0 and part.trusted_from > trusted
    asyncio.run(r.close())
