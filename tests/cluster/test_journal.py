"""The journal with real node processes (docs/storage.md, "The journal"): fsync=always uses
it by default; after kill -9 the node replays it, every acknowledged SET is there, and keys
removed by FLUSHDB before the kill stay absent."""
import redis
import pytest

from kvnet.testing import LocalCluster

pytestmark = pytest.mark.slow


def _info(port):
    r = redis.Redis(port=port, socket_timeout=10)
    try:
        return r.info()
    finally:
        r.close()


def test_a_killed_node_replays_its_journal_and_a_flushdb_stays(tmp_path):
    cluster = LocalCluster(str(tmp_path), nodes=1, n=1, r=1, w=1, fsync="always",
                           ring_size=16).start()
    try:
        r = redis.Redis(port=cluster.ports[0], socket_timeout=10)
        for i in range(300):
            assert r.set(f"gone{i}", "x" * 100)
        assert r.flushdb()
        kept = {f"kept{i}": f"v{i}" * 20 for i in range(300)}
        for k, v in kept.items():
            assert r.set(k, v)
        info = _info(cluster.ports[0])
        assert info["sync_method"] == "journal" and info["group_commits"] > 0
        assert info["group_commit_syncs"] == info["group_commits"]
        r.close()
        cluster.kill(0)                                     # SIGKILL: no clean close
        cluster.start(0)
        info = _info(cluster.ports[0])
        assert info["journal_replayed_records"] >= 300
        r = redis.Redis(port=cluster.ports[0], socket_timeout=10)
        assert {k: r.get(k) for k in kept} == {k: v.encode() for k, v in kept.items()}
        assert [r.get(f"gone{i}") for i in range(300)] == [None] * 300
        assert r.dbsize() == len(kept)
        r.close()
    finally:
        cluster.stop()
