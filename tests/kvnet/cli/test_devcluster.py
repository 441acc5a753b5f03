"""kvnode dev's supervisor pieces and the cluster secret: the backoff, the secret kept per
data directory, and kvnode start's refusal of the built-in secret."""
import os
import signal
import stat
import subprocess
import sys
import time

import pytest


from kvnet.cli import kvnode
from kvnet.cli.devcluster import Backoff, describe_exit, dev_env, dev_metrics_port, dev_secret
from kvnet.config import DEV_SECRET
from kvnet.probe import ping
from kvnet.testing import free_ports


def test_backoff_doubles_to_30_s_and_resets_after_a_minute_up():
    b = Backoff()
    assert [b.after_exit(2.0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.after_exit(61.0) == 1          # it had run a minute: back to the first delay
    assert b.after_exit(0.5) == 2


def test_exit_statuses_are_described_by_signal_name():
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(1) == "status 1"


def test_the_dev_secret_is_random_per_data_dir_private_and_kept(tmp_path):
    a = dev_secret(str(tmp_path / "a"))
    assert a == dev_secret(str(tmp_path / "a"))              # kept across restarts
    assert a != dev_secret(str(tmp_path / "b")) and a != DEV_SECRET and len(a) >= 32
    mode = stat.S_IMODE(os.stat(tmp_path / "a" / "cluster-secret").st_mode)
    assert mode == 0o600
    assert dev_secret(str(tmp_path / "c"), create=False) is None
    assert not (tmp_path / "c").exists()
    assert dev_env(a, base={})["RINGKV_CLUSTER_SECRET"] == a


def _start_cmd(tmp_path, port, peer, *extra):
    return [sys.executable, "-m", "kvnet.cli.kvnode", "start", "--port", str(port),
            "--peer-port", str(peer), "--data-dir", str(tmp_path / "d"), *extra]


def test_kvnode_start_refuses_the_built_in_secret_unless_told_it_is_a_dev_cluster(tmp_path):
    port, peer = free_ports(2)
    env = {k: v for k, v in os.environ.items() if k != "RINGKV_CLUSTER_SECRET"}
    out = subprocess.run(_start_cmd(tmp_path, port, peer), capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 2 and "built-in cluster secret" in out.stderr
    assert "--insecure-dev-secret" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "d").exists()
    for extra, env2 in ((["--insecure-dev-secret"], env),
                        ([], dict(env, RINGKV_CLUSTER_SECRET="a-real-secret-of-ours"))):
        proc = subprocess.Popen(_start_cmd(tmp_path, port, peer, *extra), env=env2,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not ping(port):
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
        assert proc.returncode == 0


def test_kvnode_add_refuses_a_data_dir_without_a_dev_cluster(tmp_path, capsys):
    assert kvnode.main(["add", "--data-dir", str(tmp_path), "--base-port", str(free_ports(1)[0])]) == 1
    assert "no dev cluster secret" in capsys.readouterr().err


def test_dev_passes_password_and_ring_size_through_to_every_node(tmp_path):
    args = kvnode.parser().parse_args(["dev", "--password", "pw123456", "--ring-size", "16",
                                       "--ae-interval-ms", "50"])
    names, cmds = kvnode.dev_commands(3, 7379, str(tmp_path), 3, "interval", kvnode._passed_through(args))
    assert names == ["node1", "node2", "node3"]
    for cmd in cmds:
        start = kvnode.parser().parse_args(cmd[3:])
        assert (start.password, start.ring_size, start.ae_interval_ms) == ("pw123456", 16, 50)
        assert start.cluster_secret is None          # the secret travels in the environment


def test_dev_gives_every_node_a_metrics_port_next_to_its_client_port(tmp_path):
    names, cmds = kvnode.dev_commands(3, 7379, str(tmp_path), 3, "interval")
    ports = [kvnode.parser().parse_args(cmd[3:]).metrics_port for cmd in cmds]
    assert ports == [9379, 9380, 9381] == [dev_metrics_port(7379 + i) for i in range(3)]


def test_dev_zones_round_robin_by_name_or_count(tmp_path, capsys):
    assert kvnode.dev_zones(None, 3) is None
    assert kvnode.dev_zones("a,b,c", 5) == ["a", "b", "c", "a", "b"]
    assert kvnode.dev_zones("2", 3) == ["z1", "z2", "z1"]
    for bad in ("a,,b", "a,a", "0", "65"):
        with pytest.raises(ValueError):
            kvnode.dev_zones(bad, 3)
    args = kvnode.parser().parse_args(["dev", "--nodes", "6", "--zones", "east,west,north"])
    assert args.zones == "east,west,north"
    names, cmds = kvnode.dev_commands(6, 7379, str(tmp_path), 3, "interval",
                                      zones=kvnode.dev_zones(args.zones, 6))
    got = [kvnode.parser().parse_args(cmd[3:]).zone for cmd in cmds]
    assert got == ["east", "west", "north"] * 2
    names, cmds = kvnode.dev_commands(3, 7379, str(tmp_path), 3, "interval")
    assert all(kvnode.parser().parse_args(cmd[3:]).zone is None for cmd in cmds)
    # a bad --zones is a usage error before anything starts
    assert kvnode.main(["dev", "--zones", "a,,b", "--data-dir", str(tmp_path / "d")]) == 2
    assert "--zones" in capsys.readouterr().err
    assert kvnode.parser().parse_args(["add", "--zone", "west"]).zone == "west"
