"""Data directories of an earlier release open; one of another storage format version is
refused, naming the version, and left as it was (docs/storage.md, "Faults").

The fixture tests/fixtures/datadir-v1.tar.gz is a node's data directory written by ringkv's
first LocalReplica (commit c0322d0, storage format version 1, before Merkle trees, the mapped
writes and the index rotation), made by tests/fixtures/make_datadir_v1.py: partition 3 closed
cleanly (sealed segments, hint files), partition 7 crashed.
"""
import asyncio
import os
import subprocess
import sys
import tarfile

import pytest

from kvcore import merkle as M
from kvcore import versions as V
from kvcore.errors import StoreFormatError
from kvcore.storage import layout as L
from kvnet.replica import LocalReplica
from kvnet.testing import rewrite_segment_version

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures",
                       "datadir-v1.tar.gz")


@pytest.fixture
def datadir(tmp_path):
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    return str(tmp_path / "node1")


def _value(i):
    return b"v1-%04d" % i * 8


def test_a_data_directory_of_the_first_release_opens_with_every_key(datadir):
    rep = LocalReplica(datadir, "node1", fsync="never", index_skip_bits=8)
    try:
        rep.open_existing()
        assert sorted(rep.partitions) == [3, 7]
        p3, p7 = rep.partitions[3], rep.partitions[7]
        assert p3.store.recovery["clean"] and p3.store.recovery["scanned_segments"] == 0
        assert not p7.store.recovery["clean"] and p7.trusted_from > 0     # the crash: distrusted
        for i in range(120):
            clock = rep.read(3, b"k%04d" % i)
            if i % 10 == 0:
                assert V.is_deleted(clock)
            else:
                assert [s.value for s in V.values(clock)] == [_value(i)]
        for i in range(15):
            assert [s.value for s in V.values(rep.read(7, b"c%04d" % i))] == [_value(i)]
        for part in (p3, p7):                       # no TREE then: folded at this open
            assert part.tree_built and part.tree == M.MerkleTree().rebuild(part.store.items())
            assert part.corrupt_records == 0
        rep.mint(3, b"new", V.sibling(b"x"), overwrite=True)              # and writable
    finally:
        asyncio.run(rep.close())
    rep = LocalReplica(datadir, "node1", fsync="never", index_skip_bits=8)
    rep.open_existing()
    assert rep.partitions[3].store.recovery["clean"] and rep.read(3, b"new") is not None
    asyncio.run(rep.close())


@pytest.mark.parametrize("twin", ["kvcore.storage.store", "kvcore.storage.store_py"])
def test_both_twins_open_it(datadir, twin):
    import importlib

    mod = importlib.import_module(twin)
    for p, n in ((3, 120), (7, 15)):
        s = mod.LogStore(os.path.join(datadir, "partitions", f"{p:05d}"), fsync="never")
        try:
            assert len(s) == n and s.recovery["corrupt_records"] == 0
        finally:
            s._abandon()                            # (leave the fixture copy as it was)


def test_a_segment_of_another_format_version_is_refused_naming_it(datadir):
    pdir = os.path.join(datadir, "partitions", "00003")
    seg = os.path.join(pdir, L.segment_name(L.segment_ids(pdir)[1]))
    rewrite_segment_version(seg, 2)
    before = sorted(os.listdir(pdir))
    rep = LocalReplica(datadir, "node1", fsync="never")
    with pytest.raises(StoreFormatError) as info:
        rep.open_existing()
    msg = str(info.value)
    assert "storage format version 2" in msg and "format version 1" in msg and seg in msg
    assert sorted(os.listdir(pdir)) == before       # CLEAN kept: nothing was changed


def test_kvnode_refuses_to_start_on_it_with_the_reason(datadir, tmp_path):
    pdir = os.path.join(datadir, "partitions", "00007")
    rewrite_segment_version(os.path.join(pdir, L.segment_name(L.segment_ids(pdir)[0])), 3)
    from kvnet.testing import free_ports

    port, peer = free_ports(2)
    env = dict(os.environ, RINGKV_CLUSTER_SECRET="fixture-secret-1")
    out = subprocess.run([sys.executable, "-m", "kvnet.cli.kvnode", "start", "--name", "node1",
                          "--data-dir", datadir, "--port", str(port), "--peer-port", str(peer)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1, out
    assert "cannot start" in out.stderr and "storage format version 3" in out.stderr
