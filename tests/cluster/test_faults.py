"""Fault tests with real node processes (issue 6, section 5): faults under recording writers,
then every acknowledged write checked and replicas compared offline. docs/testing.md.

3 nodes, N=3, R=W=2: no fallbacks exist, so these need no sloppy quorum or hinted handoff.
"""
import time

import pytest

from kvnet.testing import (ContextWriter, LocalCluster, Reader, SetWriter, check,
                           divergent_keys)

pytestmark = pytest.mark.slow

SHARED = [f"shared{i}" for i in range(4)]
FAST = ["--gossip-interval-ms", "100", "--phi-threshold", "4", "--no-ae"]


@pytest.fixture
def clusters():
    """Make clusters with `clusters(...)`; every one is stopped (processes, proxies) at the end."""
    made = []

    def make(*args, **kw):
        c = LocalCluster(*args, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def workload(cluster, duration=None):
    ports = cluster.ports
    return [SetWriter(ports, prefix="set", name="set", seed=1, duration=duration),
            ContextWriter(ports, SHARED, name="ctxA", seed=2, duration=duration),
            ContextWriter(ports, SHARED, name="ctxB", seed=3, duration=duration)]


def run(writers, faults):
    for w in writers:
        w.start()
    try:
        faults()
    finally:
        for w in writers:
            w.stop()


def verify(cluster, writers, expect_converged=True):
    """Check every acknowledged write through the cluster (R=ALL reads, which also read-repair),
    stop the cluster, compare the primaries' clocks; return a summary for the failure message."""
    sets = writers[0].acked
    puts = [rec for w in writers[1:] for rec in w.records]
    summary = {w.name: (w.ops, w.error_count, dict(w.errors)) for w in writers}
    assert len(sets) > 100, summary
    assert sum(1 for p in puts if p.acked) > 50, summary
    reader = Reader(cluster.ports, r="ALL")
    try:
        violations = check(reader, sets=sets, puts=puts)
    finally:
        reader.close()
    assert not violations, (len(violations), violations[:10], summary)
    time.sleep(1.0)                      # read repair is sent after the R=ALL reply
    cluster.stop()
    if expect_converged:
        diverged = divergent_keys(cluster)
        assert not diverged, (len(diverged), list(diverged.items())[:3])
    print(summary)
    return summary


def test_kill_9_under_writers_then_restart_loses_nothing_and_converges(clusters, tmp_path):
    cluster = clusters(str(tmp_path), nodes=3, extra=FAST).start()
    writers = workload(cluster)

    def faults():
        time.sleep(1.5)
        cluster.kill(2)                  # SIGKILL mid-stream: W=2 of 3 still answers
        time.sleep(2.0)
        cluster.start(2)                 # restart on its data directory
        time.sleep(1.5)

    run(writers, faults)
    verify(cluster, writers)


def test_network_cut_between_two_nodes_loses_nothing(clusters, tmp_path):
    cluster = clusters(str(tmp_path), nodes=3, extra=FAST, proxied=True).start()
    writers = workload(cluster)

    def faults():
        time.sleep(1.5)
        cluster.cut(0, 1)                # blackhole both directions: timeouts, not refusals
        time.sleep(3.0)
        cluster.heal(0, 1)
        time.sleep(1.5)

    run(writers, faults)
    # One connection serves a pair both ways, dialled by whichever side needed it first.
    assert cluster.proxies[0, 1].bytes_up + cluster.proxies[1, 0].bytes_up > 0
    verify(cluster, writers)


def test_divergent_keys_sees_a_wiped_replica(clusters, tmp_path):
    """The offline comparison bites: with 3 nodes and N=3 every node is a primary of every key."""
    cluster = clusters(str(tmp_path), nodes=3, extra=FAST).start()
    r = cluster.client(0)
    keys = [f"w{i}".encode() for i in range(30)]
    for k in keys:
        assert r.set(k, b"v")
    r.close()
    time.sleep(0.5)                       # the third replica's copy lands after the W=2 reply
    cluster.stop()
    assert divergent_keys(cluster) == {}
    cluster.wipe(2)
    diverged = divergent_keys(cluster)
    assert sorted(diverged) == sorted(keys)
    assert all(d["node3"] is None and d["node1"] == d["node2"] for d in diverged.values())
