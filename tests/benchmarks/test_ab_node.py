"""benchmarks/ab_node.py's parts that need no redis-server: the medians it ends with, its
checks of the command line, and the default configuration's fresh `kvnode dev` (slow)."""
import importlib.util
import os

import pytest

from kvnet.testing import ping

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def ab():
    spec = importlib.util.spec_from_file_location(
        "ab_node", os.path.join(ROOT, "benchmarks", "ab_node.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _runs(rps_list, cpu):
    # (rps, p50, p99, cpu us, sleeps, x redis) per round
    return [(r, 0.5, 1.0, cpu, 0.1, r / 20_000) for r in rps_list]


def test_medians_are_per_checkout_and_configuration_over_the_first_checkout(ab, capsys):
    results = {
        ("default", "before"): {1: {"SET": _runs([10_000, 30_000, 20_000], 20.0),
                                    "GET": _runs([40_000, 40_000, 10_000], 10.0)}},
        ("default", "after"): {1: {"SET": _runs([25_000, 5_000, 22_000], 18.0),
                                   "GET": _runs([20_000, 30_000, 60_000], 12.0)}},
    }
    ab.medians(results, ["before", "after"], ["default"], [1], 3)
    lines = capsys.readouterr().out.strip().splitlines()
    assert "medians over 3 round(s)" in lines[0] and "(before)" in lines[0]
    before, after = lines[1], lines[2]
    assert before.startswith("default before") and after.startswith("default after")
    assert "SET   20,000 (1.000x) cpu  20.0us (1.000x) 1.00x redis" in before
    # median 22,000 over 20,000; CPU 18 over 20; GET median 30,000 over 40,000
    assert "SET   22,000 (1.100x) cpu  18.0us (0.900x) 1.10x redis" in after
    assert "GET   30,000 (0.750x) cpu  12.0us (1.200x) 1.50x redis" in after


@pytest.mark.parametrize("argv, says", [
    (["--config", "fast", "."], "invalid choice"),
    (["--pipelines", "1,x", "."], "--pipelines"),
    (["--rounds", "0", "."], "at least 1"),
    (["/nonexistent-checkout"], "not a ringkv checkout"),
])
def test_bad_arguments_are_refused_before_anything_starts(ab, capsys, argv, says):
    with pytest.raises(SystemExit) as exc:
        ab.main(argv)
    assert exc.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [1, 3])
def test_the_default_configuration_is_a_fresh_dev_cluster_it_stops_whole(ab, tmp_path, nodes):
    class Args:
        pass

    args = Args()
    args.nodes = nodes
    cfg = ab.Default(args)
    assert "fsync interval" in cfg.describe() and "no warm-up" in cfg.describe()
    port, pids = cfg.start(ROOT, str(tmp_path))
    try:
        assert len(pids) == nodes and ping(port)
        for pid in pids:                  # the nodes, not the supervisor
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            assert b"start" in cmd and b"interval" in cmd
            assert cmd[cmd.index(b"--n") + 1] == str(min(nodes, 3)).encode()
        assert sorted(os.listdir(tmp_path / "data")) == sorted(
            ["cluster-secret"] + [f"node{i + 1}" for i in range(nodes)])
    finally:
        cfg.stop()
    assert cfg.proc.poll() is not None
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
