"""Whole simulated runs (python -m kvnet.sim; docs/simulation.md): the same seed prints the
same bytes in two processes with different hash seeds, a seeded sweep of every scenario
finds no violation, and a bug put in on purpose is reported with its seed."""
import json
import os
import subprocess
import sys

import pytest

from kvnet.sim.scenarios import SCENARIOS, run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _cli(*args, hashseed="1"):
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    return subprocess.run([sys.executable, "-m", "kvnet.sim", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("scenario,seed", [("partition", 3), ("loss", 2), ("churn", 7),
                                           ("steady", 1), ("lag", 2)])
def test_the_same_seed_prints_the_same_bytes_whatever_the_hash_seed(scenario, seed):
    """churn: its crashes reset connections in the order they were made, and its stores seal
    on the loop (seed 7 once gave 4 outputs in 6 runs)."""
    args = ("--nodes", "5", "--seed", str(seed), "--scenario", scenario, "--duration", "10",
            "--json")
    a, b = _cli(*args, hashseed="1"), _cli(*args, hashseed="2")
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout, scenario
    summary = json.loads(a.stdout)
    assert summary["acked"] > 100 and summary["violations"] == []
    if scenario in ("partition", "churn", "lag"):
        assert summary["events"]
    other = _cli(*args[:3], str(seed + 1), *args[4:])
    assert other.stdout != a.stdout                 # (another seed, another run)


def test_a_trace_names_every_delivery_and_event(tmp_path):
    path = tmp_path / "trace.txt"
    out = _cli("--nodes", "3", "--seed", "1", "--scenario", "lag", "--duration", "6",
               "--trace", str(path))
    assert out.returncode == 0, out.stderr
    lines = path.read_text().splitlines()
    assert any(" EVENT crash " in ln for ln in lines) and any(" EVENT slow " in ln for ln in lines)
    assert any(" RST" in ln for ln in lines)
    assert sum(1 for ln in lines if ln.split()[1].count(">") == 1) > 100
    times = [float(ln.split()[0]) for ln in lines]
    assert times == sorted(times)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_seeded_sweep_finds_no_violation(scenario):
    for seed in range(1, 4):
        summary = run(scenario, nodes=5, seed=seed, duration=8)
        assert summary["violations"] == [], (scenario, seed, summary["violations"])
        assert summary["acked"] > 50 and summary["converged_after_s"] is not None


def test_turning_hint_replay_off_is_reported_with_the_seed():
    """The checker's own test: the same partition run with hints never handed back must be
    reported (hints stay pending past the convergence bound), and the CLI names the seed."""
    good = run("partition", nodes=5, seed=2, duration=8)
    assert good["violations"] == [] and good["hints_pending_at_heal"] > 0
    bad = _cli("--nodes", "5", "--seed", "2", "--scenario", "partition", "--duration", "8",
               "--mutate", "no-hint-replay")
    assert bad.returncode == 1
    assert "VIOLATION" in bad.stdout and "hints still pending" in bad.stdout
    assert "seed 2 failed: replay it with python -m kvnet.sim --seed 2" in bad.stderr


def test_acknowledging_after_w_minus_one_copies_is_reported_with_the_seed():
    """The checker's own test: in the lag scenario the victim's writes cannot reach a
    second replica before it crashes, so the correct code acknowledges none of them (and
    loses none it acknowledged); a coordinator content with W-1 copies acknowledges some
    and the crash takes them: the checker must report a lost write."""
    good = run("lag", nodes=5, seed=1, duration=10)
    assert good["violations"] == [] and good["lost_in_crash"] > 0
    bad = _cli("--nodes", "5", "--seed", "1", "--scenario", "lag", "--duration", "10",
               "--mutate", "w-minus-one")
    assert bad.returncode == 1
    assert "VIOLATION: lost:" in bad.stdout and "a crash took it from" in bad.stdout
    assert "seed 1 failed: replay it with python -m kvnet.sim --seed 1" in bad.stderr


def test_churn_crashes_pauses_fails_disks_and_reaps_tombstones():
    """Seed 9: crashes, pauses, a join, disk errors and a failed sync (partitions
    read-only until the node restarts); no violation, and tombstones are reaped (a grace
    of 1 s)."""
    summary = run("churn", nodes=5, seed=9, duration=30)
    kinds = {what.split()[0] for _, what in summary["events"]}
    assert {"crash", "restart", "pause", "resume", "disk", "join"} <= kinds, summary["events"]
    assert any("partitions read-only" in what for _, what in summary["events"])
    assert summary["violations"] == [] and summary["reaped"] > 0
    assert summary["acked"] > 500


@pytest.mark.parametrize("seed,change", [(4, "join j5"), (3, "leave n0")])
def test_churn_joins_or_leaves_through_the_claimant_and_keeps_every_write(seed, change):
    """A ring change in a churn run (seed 4: a new node joins; seed 3: n0, the claimant,
    leaves): staged and committed as kvctl does, settled on every node, no violation."""
    summary = run("churn", nodes=5, seed=seed, duration=20)
    events = [what for _, what in summary["events"]]
    assert change in events and "ring settled at epoch 3" in events, events
    who = change.split()[1]
    assert (who in summary["ring_members"]) == (change.startswith("join"))
    assert summary["left"] == ([] if change.startswith("join") else [who])
    assert summary["violations"] == [] and summary["acked"] > 500


def test_bad_arguments_are_refused_clearly():
    out = _cli("--scenario", "nope")
    assert out.returncode == 2 and "unknown scenario 'nope'" in out.stderr


@pytest.mark.slow
def test_a_sweep_of_twenty_seeds_of_twenty_nodes():
    """Four seeds of each scenario, 15 simulated seconds each (about a minute of wall time
    on the 2-core test machine; docs/simulation.md, "CI")."""
    for seed in range(1, 21):
        summary = run(sorted(SCENARIOS)[seed % len(SCENARIOS)], nodes=20, seed=seed,
                      duration=15)
        assert summary["violations"] == [], (seed, summary["violations"])


def test_a_joining_member_is_known_everywhere_and_the_count_repeats():
    from kvnet.sim.measure import join_rounds
    a = join_rounds(6, seed=3)
    b = join_rounds(6, seed=3)
    assert a["known_after_s"] is not None and a["rounds"] >= 1 and a["messages"] > 0
    assert {k: v for k, v in a.items() if k != "wall_s"} == \
        {k: v for k, v in b.items() if k != "wall_s"}
