"""The simulator's storage twin (kvnet/sim/storage.py): LogStore's API in memory, a disk that
loses unsynced records in a crash, and SimCluster runs on it (docs/simulation.md, "Storage").
The storage model test (tests/kvcore/storage/test_store_model.py) runs the twin too."""
import asyncio
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from kvcore import merkle as M
from kvcore.errors import StoreClosed, StoreLocked, StoreReadOnly
from kvcore.storage import store_py
from kvnet.sim.cluster import SimCluster
from kvnet.sim.loop import SimLoop
from kvnet.sim.storage import MemoryDisk

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_crash_loses_what_the_last_sync_did_not_cover(tmp_path):
    disk = MemoryDisk()
    s = disk.store(tmp_path / "a", fsync="never")
    s.put(b"k1", b"v1")
    s.put(b"k2", b"v2")
    s.sync()
    s.put(b"k3", b"v3")
    s.delete(b"k1")
    lost = disk.crash(str(tmp_path))
    assert lost == (24 + 2 + 2) + (24 + 2) and disk.lost_bytes == lost
    with pytest.raises(StoreClosed):
        s.get(b"k1")                    # (abandoned by the crash)
    s = disk.store(tmp_path / "a", fsync="never")
    assert not s.recovery["clean"]
    assert dict(s.items()) == {b"k1": b"v1", b"k2": b"v2"}
    s.close()
    s = disk.store(tmp_path / "a", fsync="never")
    assert s.recovery["clean"] and len(s) == 2


def test_a_kill_loses_nothing_and_a_clean_close_nothing_either(tmp_path):
    disk = MemoryDisk()
    s = disk.store(tmp_path / "a", fsync="never")
    s.put(b"k", b"v")
    assert disk.crash(str(tmp_path), lose_unsynced=False) == 0
    s = disk.store(tmp_path / "a", fsync="never")
    assert s.get(b"k") == b"v"
    s.put(b"j", b"w")
    s.close()                           # (syncs)
    assert disk.crash(str(tmp_path)) == 0
    assert dict(disk.store(tmp_path / "a").items()) == {b"k": b"v", b"j": b"w"}


def test_only_stores_under_the_crashed_directory_lose(tmp_path):
    disk = MemoryDisk()
    a, b = disk.store(tmp_path / "n0" / "p"), disk.store(tmp_path / "n1" / "p")
    a.put(b"k", b"v")
    b.put(b"k", b"v")
    assert disk.crash(str(tmp_path / "n0")) > 0
    assert b.get(b"k") == b"v"
    assert disk.store(tmp_path / "n0" / "p").get(b"k") is None


def test_a_directory_renamed_away_opens_afresh_and_a_second_open_is_refused(tmp_path):
    disk = MemoryDisk()
    s = disk.store(tmp_path / "p")
    assert os.path.isdir(tmp_path / "p")        # (the replica keeps its files there)
    with pytest.raises(StoreLocked):
        disk.store(tmp_path / "p")
    s.put(b"k", b"v")
    s.close()
    os.rename(tmp_path / "p", tmp_path / "p.dropped")   # (LocalReplica.drop)
    assert len(disk.store(tmp_path / "p")) == 0


def test_a_failed_sync_makes_it_read_only(tmp_path):
    disk = MemoryDisk()
    s = disk.store(tmp_path / "p", fsync="never")
    s.put(b"k", b"v")
    s._fail_next("fdatasync", 5)
    with pytest.raises(StoreReadOnly):
        s.sync()
    with pytest.raises(StoreReadOnly):
        s.put(b"j", b"w")
    assert s.stats()["read_only"] and s.failed == 5


def test_interval_syncs_on_the_simulated_clock(tmp_path):
    disk = MemoryDisk()
    loop = SimLoop()

    async def main():
        s = disk.store(tmp_path / "p", fsync="interval", sync_interval_ms=500)
        s.put(b"k", b"v")
        await asyncio.sleep(0.4)
        before = s.stats()["synced_offset"]
        await asyncio.sleep(0.2)
        return before, s.stats()

    try:
        before, st_ = loop.run_until_complete(main())
    finally:
        loop.close()
    assert before == 32 and st_["synced_offset"] == st_["active_offset"] == 32 + 24 + 2


OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from([b"a", b"b", b"c" * 40, b"d"]),
              st.one_of(st.binary(max_size=40), st.just(b"z" * 900))),
    st.tuples(st.just("delete"), st.sampled_from([b"a", b"b", b"d"]), st.none()),
    st.tuples(st.just("sync"), st.none(), st.none()),
    st.tuples(st.just("merge"), st.none(), st.none())), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops=OPS, skip=st.integers(0, 8))
def test_reads_scans_and_folds_as_the_reference_twin(tmp_path_factory, ops, skip):
    """The same writes to the twin and to store_py (the reference LogStore in Python): the
    same reads, scan order, leaf keys, snapshot fold and sizes of live data."""
    d = tmp_path_factory.mktemp("diff")
    disk = MemoryDisk()
    opts = dict(fsync="never", max_segment_bytes=4096, index_skip_bits=skip)
    mem, ref = disk.store(d / "mem", **opts), store_py.LogStore(d / "ref", **opts)
    try:
        for op, k, v in ops:
            held = op == "delete" and k in ref
            for s in (mem, ref):
                if op == "put":
                    s.put(k, v)
                elif op == "delete":
                    assert s.delete(k) is held
                else:
                    getattr(s, op)()
            assert mem.stats()["live_bytes"] == ref.stats()["live_bytes"]
        assert len(mem) == len(ref)
        assert list(mem.keys()) == list(ref.keys())
        assert list(mem.items()) == list(ref.items())
        assert mem.scan(0, 2) == ref.scan(0, 2)
        assert mem.get_many([b"a", b"b", b"x"]) == ref.get_many([b"a", b"b", b"x"])
        assert mem.leaf_keys(range(64), 6) == ref.leaf_keys(range(64), 6)
        trees = []
        for s in (mem, ref):
            tree, snap = M.MerkleTree(), s.snapshot()
            assert s.fold_snapshot(snap, 0, len(snap), tree) == len(snap)
            trees.append(tree.to_bytes())
        assert trees[0] == trees[1]
    finally:
        mem.close()
        ref.close()


def test_a_simulated_cluster_on_memory_loses_unsynced_bytes_in_a_crash(tmp_path):
    """A node's machine fails: its stores lose what their last sync did not cover, the
    cluster's lost_bytes counts it, and the node restarts on what is left."""
    c = SimCluster(str(tmp_path), size=3, seed=1, storage="memory")

    async def main():
        await c.start()
        for i in range(30):
            await c.put("n0", b"key-%d" % i, b"value")
        await c.crash("n1")
        await c.start_node("n1")
        values = [await c.get("n1", b"key-%d" % i, r="all") for i in range(30)]
        await c.stop()
        return values

    from kvnet.sim.loop import determinism, inline_pools, quiet
    with determinism(1, c.loop.time), quiet(), inline_pools():
        values = c.run(main())
    assert c.lost_bytes > 0 and c.lost_bytes == c.disk.lost_bytes
    assert all(v.siblings and v.siblings[0].value == b"value" for v in values)
    assert not any(f.endswith(".data") for _, _, fs in os.walk(tmp_path) for f in fs)


def test_memory_runs_sync_each_store_not_the_file_system(tmp_path):
    assert SimCluster(str(tmp_path), size=3).cfgs[0].sync_method == "fdatasync"
    assert SimCluster(str(tmp_path), size=3, storage="disk").cfgs[0].sync_method == "auto"


def test_storage_is_checked():
    with pytest.raises(ValueError, match="storage"):
        SimCluster("/nonexistent", size=3, storage="tape")


def test_the_cli_runs_both_storages():
    out = {}
    for storage in ("memory", "disk"):
        r = subprocess.run([sys.executable, "-m", "kvnet.sim", "--nodes", "4", "--seed", "2",
                            "--scenario", "loss", "--duration", "4", "--storage", storage,
                            "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        out[storage] = r.stdout
    assert out["memory"] == out["disk"]     # (the stores are not what a run prints)
    r = subprocess.run([sys.executable, "-m", "kvnet.sim", "--storage", "tape"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "tape" in r.stderr
