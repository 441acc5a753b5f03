"""DURABLE k with real node processes (docs/storage.md, "A durable write"): three nodes with
fsync=never, `KV.PUT k v DURABLE 3`, every node killed (SIGKILL) at once after the reply; after
the restart the value is there. A SIGKILL keeps the page cache, so the restart alone would not
tell an fsync from none: each node's INFO shows the group commit the durable write ran (with
fsync=never a node runs none otherwise)."""
import pytest
import redis

from kvnet.testing import LocalCluster, wait_until

pytestmark = pytest.mark.slow


def _all_up(cluster):
    def up():
        try:
            return all(all(m["up"] for m in cluster.view(i).values()) for i in range(3))
        except (redis.RedisError, OSError):
            return False
    wait_until(up, 30, what="every node up in every view")


def test_a_durable_write_survives_every_node_killed_at_once(tmp_path):
    cluster = LocalCluster(str(tmp_path), nodes=3, n=3, r=2, w=2, fsync="never",
                           ring_size=16, request_timeout_ms=3000).start()
    try:
        _all_up(cluster)
        r = cluster.client(0, timeout=10)
        before = [cluster.info(i) for i in range(3)]
        assert all(x["group_commits"] == 0 and x["durable_write_waits"] == 0 for x in before)
        assert r.execute_command("KV.PUT", "k", "kept", "DURABLE", "3")
        for i in range(3):
            info = cluster.info(i)
            assert info["durable_write_waits"] == 1 and info["group_commits"] >= 1
        with pytest.raises(redis.ResponseError, match="DURABLE must be from 1 to N=3, got 4"):
            r.execute_command("KV.PUT", "k2", "v", "DURABLE", "4")
        assert r.execute_command("KV.PUT", "k3", "v", "W", "1", "DURABLE", "1")
        ctx = r.execute_command("KV.PUT", "k", "kept2", "CONTEXT",
                                r.execute_command("KV.GET", "k")[0], "DURABLE", "3")
        r.close()
        for i in range(3):
            cluster.kill(i)                             # SIGKILL, right after the reply
        cluster.start()
        _all_up(cluster)
        for i in range(3):                              # every replica holds it on its own
            c = cluster.client(i, timeout=10)
            got = c.execute_command("KV.GET", "k", "R", "1")
            assert got[1] == [b"kept2"] and got[0] == ctx
            assert c.execute_command("KV.GET", "k2", "R", "all")[1] == []   # refused: unwritten
            c.close()
    finally:
        cluster.stop()
