"""Zones in placement with real node processes (issue 19, part G; docs/cluster.md, "Zones"):
6 nodes in 3 zones, N=3. The first ring (names only) takes the zones the nodes announce; then
every preference list spans the 3 zones, and with a whole zone's two nodes stopped every key
written before is readable with R=2 and writable with W=2 in STRICT mode (primaries only)."""
import pytest

from kvnet.testing import LocalCluster, _plain, wait_until

pytestmark = pytest.mark.slow

Q = 64
KEYS = 200
FAST = ["--gossip-interval-ms", "100", "--phi-threshold", "4", "--no-ae",
        "--hint-replay-interval-ms", "200"]


def zone_of(i):
    return f"zone{i % 3}"


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(str(tmp_path), nodes=6, n=3, r=2, w=2, ring_size=Q, extra=FAST,
                     request_timeout_ms=2000,
                     node_extra={i: ["--zone", zone_of(i)] for i in range(6)})
    yield c
    c.stop()


def test_six_nodes_three_zones_survive_a_zone_in_strict_mode(cluster):
    cluster.start(timeout=60)
    zones = {cluster.names[i]: zone_of(i) for i in range(6)}
    # the claimant commits the zones (epoch 2, moving) and settles them (epoch 3)
    cluster.wait_settled(timeout=90, epoch=3)
    state = cluster.kept_ring(0)
    assert state is not None and dict(state.current.members) == zones
    ring = state.current
    for p in range(Q):
        assert {zones[x] for x in ring.preference_list(p)} == {"zone0", "zone1", "zone2"}, p

    c = cluster.client(1, timeout=5)      # a request that hangs fails the test in 5 s
    try:
        for k in range(KEYS):
            assert c.set(f"key{k}", f"v{k}")
        for k in range(0, KEYS, 10):                  # the nodes' own view agrees
            pl = [row["node"] for row in _preflist(c, f"key{k}")]
            assert {zones[x] for x in pl} == {"zone0", "zone1", "zone2"}, pl

        # stop zone0: node1 (the claimant) and node4
        for i in (0, 3):
            cluster.kill(i)
        wait_until(lambda: all(cluster.view(j)[cluster.names[i]]["state"] == "down"
                               for j in (1, 2, 4, 5) for i in (0, 3)),
                   30, what="the survivors see zone0 down")
        for k in range(KEYS):
            _, values = c.execute_command("KV.GET", f"key{k}", "R", "2", "STRICT")
            assert values == [f"v{k}".encode()], k
            c.execute_command("KV.PUT", f"key{k}", f"w{k}", "W", "2", "STRICT")
        for k in range(KEYS):
            _, values = c.execute_command("KV.GET", f"key{k}", "R", "2", "STRICT")
            assert f"w{k}".encode() in values, (k, values)
        # a third primary is what STRICT W=3 would need: refused, not a hang
        with pytest.raises(Exception, match="(?i)unavailable|primar"):
            c.execute_command("KV.PUT", "key0", "x", "W", "3", "STRICT")
    finally:
        c.close()


def _preflist(c, key):
    """KV.PREFLIST's rows as dicts (a map is a flat list in RESP2)."""
    rows = _plain(c.execute_command("KV.PREFLIST", key))
    return [r if isinstance(r, dict) else dict(zip(r[::2], r[1::2])) for r in rows]
