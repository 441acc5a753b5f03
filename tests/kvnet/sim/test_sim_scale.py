"""The simulator's scale measurements (kvnet/sim/measure.py) and benchmarks/sim_scale.py, on
small clusters (docs/simulation.md, "Scale")."""
import asyncio
import json
import os
import subprocess
import sys


from kvnet.sim import measure as M

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_a_joining_member_becomes_known_everywhere():
    r = M.join_rounds(8, seed=2, costs=True)
    assert r["nodes"] == 8 and r["q"] == 64
    assert r["rounds"] is not None and 1 <= r["rounds"] <= 10
    assert r["messages"] > 0 and r["bytes"] > r["messages"]
    assert r["cpu_per_node_s"] > 0 and r["wall_s"] >= r["start_wall_s"] >= 0
    assert 0 < r["conns_per_node"] <= 2 * 8
    plain = M.join_rounds(8, seed=2)            # (without what varies from run to run)
    assert "cpu_s" not in plain and "start_wall_s" not in plain
    assert plain["rounds"] == r["rounds"] and plain["bytes"] == r["bytes"]


def test_false_positives_are_counted_and_none_without_faults():
    quiet = M.false_positives(5, seed=1, duration=20.0, loss=0.0)
    assert quiet["down_marks"] == 0 and quiet["per_node_hour"] == 0.0
    assert quiet["node_hours"] == round(5 * 20.0 / 3600, 3)
    # a node cut off is marked DOWN by the others: the count sees DOWN marks
    cut = M.false_positives(5, seed=1, duration=20.0, loss=0.0, cut="n3")
    assert cut["down_marks"] >= 4
    assert all(peer == "n3" or node == "n3" for node, peer in cut["first_marks"])


def test_claim_balance_and_moves():
    r = M.claim_moves(10, seed=3)
    q = r["q"]
    assert r["balance"] == (q // 10, -(-q // 10))
    assert r["join_balance"][1] - r["join_balance"][0] <= 1
    assert r["leave_balance"][1] - r["leave_balance"][0] <= 1
    assert r["join_ideal"] <= r["join_moved"] <= 2 * r["join_ideal"]
    assert r["leave_moved"] >= r["leave_ideal"] > 0


def test_hints_are_handed_back_after_the_heal():
    r = M.repair_after_heal(5, seed=1, cut_s=4.0)
    assert r["acked"] > 0 and r["repair_s"] is not None
    assert r["series"][0] == [0.0, r["hints_at_heal"]] and r["series"][-1][1] == 0


def test_the_benchmark_prints_tables_and_writes_json_and_plots(tmp_path):
    out = tmp_path / "scale.json"
    r = subprocess.run([sys.executable, "benchmarks/sim_scale.py", "--only", "join,claim,repair",
                        "--sizes", "5,8", "--claim-sizes", "10", "--repair-sizes", "4",
                        "--cut", "2", "--json", str(out), "--plots", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "| N | Q | rounds until all know the new member" in r.stdout
    got = json.loads(out.read_text())
    assert [row["nodes"] for row in got["join"]] == [5, 8] and got["claim"][0]["nodes"] == 10
    assert (tmp_path / "sim-convergence.png").stat().st_size > 0
    assert (tmp_path / "sim-repair.png").stat().st_size > 0


def test_the_benchmark_refuses_an_unknown_part():
    r = subprocess.run([sys.executable, "benchmarks/sim_scale.py", "--only", "speed"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "speed" in r.stderr


def test_connections_follow_whom_a_node_talks_to_not_the_cluster_size(tmp_path):
    """40 nodes (Q 512): a node greets at start only the members it shares a preference list
    with, and with no traffic at all (no gossip round within the test, no anti-entropy, no
    clients) every connection is closed once idle for peer_idle_timeout_s."""
    from kvnet.sim.cluster import SimCluster
    from kvnet.sim.loop import determinism, inline_pools, quiet
    c = SimCluster(str(tmp_path), size=40, seed=3, gossip_interval_ms=600_000, ae_enabled=False,
                   peer_idle_timeout_s=2)

    def conns():
        return {nm: {peer for peer, p in n.pool.status().items() if p["connections"]}
                for nm, n in c.nodes.items()}

    async def main():
        await c.start()
        try:
            started = conns()
            ring = c.nodes["n0"].ring
            near = {x for p in range(ring.q) for x in ring.preference_list(p)
                    if "n0" in ring.preference_list(p)} - {"n0"}
            await asyncio.sleep(4)
            return started, near, conns()
        finally:
            await c.stop()

    with determinism(3, c.loop.time), quiet(), inline_pools():
        started, near, idle = c.run(main())
    assert started["n0"] == near and len(near) < 39
    assert set(map(len, idle.values())) == {0}


def test_a_run_on_memory_storage_makes_no_real_syncs(tmp_path):
    from kvnet.sim.cluster import SimCluster
    real = os.fsync
    c = SimCluster(str(tmp_path / "m"), size=1)
    with c.stores():
        assert os.fsync is not real and os.fdatasync is not real
        with open(tmp_path / "f", "wb") as f:
            os.fsync(f.fileno())
            os.fdatasync(f.fileno())
        try:
            os.fsync(10_000)
        except OSError:
            pass
        else:
            raise AssertionError("a bad descriptor must still be an error")
    assert os.fsync is real
    with SimCluster(str(tmp_path / "d"), size=1, storage="disk").stores():
        assert os.fsync is real


def test_a_run_collects_garbage_less_often_and_restores_the_collector(tmp_path):
    import gc

    from kvnet.sim.cluster import SimCluster
    from kvnet.sim.loop import GC_THRESHOLDS
    before = gc.get_threshold()
    c = SimCluster(str(tmp_path), size=1)

    async def seen():
        return gc.get_threshold()
    assert c.run(seen()) == GC_THRESHOLDS != before
    assert gc.get_threshold() == before
