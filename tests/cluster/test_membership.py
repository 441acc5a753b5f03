"""Membership changes with real node processes under recording writers (issue 6, section 5):
"Join a 4th node under write load, then make one leave: ownership ends balanced; nothing lost;
no partition is left with fewer than N replicas." docs/testing.md.

3 nodes, N=3, R=W=2, Q=64, gossip every 100 ms, anti-entropy off (`--no-ae`: what the new
replicas hold was brought by the transfers and the writes sent to them during the move, not
repaired behind their back). node4 joins with `kvnode start --join`; then one node leaves: node4
itself, or node1 (an original member, the claimant: it drives its own hand-off, and the claimant
role passes to node2 when it exits).
"""
import time

import pytest

from kvcore import versions as V
from kvnet.testing import (ContextWriter, LocalCluster, SetWriter, keep_data, missing_replicas,
                           read_back_and_compare, replica_clocks, wait_until)
from kvnet.testing import run_writers as run

pytestmark = pytest.mark.slow

Q = 64
SHARED = [f"shared{i}" for i in range(4)]
FAST = ["--gossip-interval-ms", "100", "--phi-threshold", "4", "--no-ae",
        "--hint-replay-interval-ms", "200"]


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(str(tmp_path), nodes=3, ring_size=Q, extra=FAST)
    yield c
    c.stop()


def balanced(ring_info):
    """Every member owns floor(Q/S) or ceil(Q/S) partitions."""
    q, nodes = ring_info["q"], [n["name"] for n in ring_info["nodes"]]
    owned = {n: ring_info["owners"].count(n) for n in nodes}
    lo, hi = q // len(nodes), -(-q // len(nodes))
    return all(lo <= c <= hi for c in owned.values()) and sum(owned.values()) == q, owned


@pytest.mark.parametrize("leaver", ["node4", "node1"])
def test_join_a_4th_node_then_one_leaves_under_writers(cluster, leaver):
    cluster.start()
    # Every node sees every other up before the writers start: a node still starting is routed
    # around (no fallback with 3 nodes) and misses writes, which is not what this test is about.
    wait_until(lambda: all(m["state"] == "up" for i in range(3) for m in cluster.view(i).values()),
               15, what="every node sees the others up")
    writers = [SetWriter(cluster.ports, prefix="set", name="set", seed=1),
                ContextWriter(cluster.ports, SHARED, name="ctxA", seed=2),
                ContextWriter(cluster.ports, SHARED, name="ctxB", seed=3)]
    log = {}

    def changes():
        time.sleep(1.0)
        t0 = time.monotonic()
        new = cluster.add_node(join=True)             # node4, seed node1
        assert cluster.names[new] == "node4"
        for w in writers:
            w.set_ports(cluster.ports)                # writes through node4 too
        cluster.stage(1, "join", "node4")             # through node2: forwarded to the claimant
        plan = cluster.cluster_admin(1, "plan")
        assert plan["owned_after"] == {"node1": 16, "node2": 16, "node3": 16, "node4": 16}, plan
        commit = cluster.cluster_admin(1, "commit")
        assert commit["transfers"] == len(plan["transfers"]) > 0, (plan, commit)
        cluster.wait_settled(timeout=30, epoch=commit["epoch"] + 1)
        log["join_s"] = time.monotonic() - t0
        ok, owned = balanced(cluster.ring(0))
        assert ok and set(owned) == {"node1", "node2", "node3", "node4"}, owned
        time.sleep(1.0)                               # writes on the 4-node ring

        t1 = time.monotonic()
        gone = cluster.names.index(leaver)
        via = 2                                       # node3: neither the leaver nor the claimant
        cluster.stage(via, "leave", leaver)
        commit = cluster.cluster_admin(via, "commit")
        assert commit["transfers"] > 0, commit
        cluster.wait_settled(timeout=30, epoch=commit["epoch"] + 1, via=via)
        log["exit_code"] = cluster.wait_exit(gone, timeout=20)
        log["leave_s"] = time.monotonic() - t1
        for w in writers:
            w.set_ports(cluster.live_ports())
        time.sleep(1.0)                               # writes on the 3-node ring after the leave

    run(writers, changes)
    gone = cluster.names.index(leaver)
    stayers = cluster.running_nodes()
    assert log["exit_code"] == 3, f"{leaver} exited with {log['exit_code']}: see {cluster.log_of(gone)}"
    assert gone not in stayers and len(stayers) == 3

    sets, unacked = writers[0].acked, writers[0].unacked
    puts = [rec for w in writers[1:] for rec in w.records]
    summary = {w.name: (w.ops, w.error_count, dict(w.errors)) for w in writers}
    assert len(sets) > 50, summary
    assert sum(1 for p in puts if p.acked) > 25, summary

    # Ownership ends balanced, every surviving node has the same ring, the leaver is out of it.
    rings = [cluster.ring(i) for i in stayers]
    assert all(r["owners"] == rings[0]["owners"] for r in rings), "nodes disagree on the ring"
    ok, owned = balanced(rings[0])
    assert ok and leaver not in owned and len(owned) == 3, owned

    # No partition is left with fewer than N replicas: with the writers stopped and nothing read
    # back yet (no read repair, no anti-entropy), every acknowledged SET key and every shared key
    # must be on all N primaries of the final ring, as the transfers and the writes sent to the
    # new replicas during each move left them. The final ring is the one the nodes keep in
    # <data_dir>/RING (ringstate.load), which must be what they served.
    time.sleep(0.5)                                   # writes sent to the third replica land
    cluster.stop()
    final = cluster.final_ring()
    assert list(final.owners) == rings[0]["owners"]
    held = replica_clocks(cluster)
    missing = missing_replicas(cluster, list(sets) + [k.encode() for k in SHARED],
                               held=held, ring=final)
    if missing:
        pytest.fail(f"{len(missing)} acknowledged keys on fewer than N primaries of the final ring "
                    f"before any read (data kept in {keep_data(cluster)}):\n" + "\n".join(
                        f"{k!r} partition {final.partition_of(k)}: lacking on {nodes}; held by "
                        + (", ".join(f"{n}: {V.decode(h[k][1])}" for n, h in held.items() if k in h)
                           or "no node")
                        for k, nodes in list(missing.items())[:20]) + f"\nwriters: {summary}")

    # Nothing acknowledged was lost: R=ALL reads through the nodes that stay (restarted on the
    # kept ring). These reads also read-repair, and they are needed for the clock comparison
    # after them: the N copies the check above found may still differ in version, and an
    # unacknowledged write (one the client saw fail, say through the leaver as it exited) may
    # sit on some replicas only; with anti-entropy off only a read brings those replicas
    # together, so every key attempted is read.
    for i in stayers:
        if "--join" in cluster.cmds[i]:
            # node4 joined with node1 as its only seed. The addresses of the other members came
            # from gossip and are not kept across a restart, so once node1 has left, node4
            # restarted as it was started finds nobody (and node2, node3 have no address for
            # it: reads fail "no address known for node 'node4'"). Seed it with the stayers.
            cluster.set_seeds(i, [j for j in stayers if j != i])
        cluster.start(i)
    read_back_and_compare(cluster, cluster.live_ports(), sets, puts, unacked, summary, ring=final)
    print(log, summary)
