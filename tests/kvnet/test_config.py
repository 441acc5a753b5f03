import pytest

from kvnet.config import Member, NodeConfig, load
from kvnet.errors import ConfigError


def test_defaults_are_valid_and_bound_to_localhost():
    cfg = load()
    assert cfg.host == "127.0.0.1" and cfg.peer_address == ("127.0.0.1", 17379)
    assert cfg.n == 3 and cfg.r == 2 and cfg.w == 2 and cfg.fsync == "interval"
    assert [m.name for m in cfg.all_members()] == ["node1"]


def test_toml_and_overrides(tmp_path):
    p = tmp_path / "node.toml"
    p.write_text('name = "a"\nport = 7400\nmembers = ["a@127.0.0.1:17400", "b@127.0.0.1:17401"]\n'
                 'n = 2\nr = 1\nw = 2\nfsync = "always"\n')
    cfg = load(p, port=7500, zone=None)
    assert cfg.name == "a" and cfg.port == 7500 and cfg.fsync == "always"
    assert cfg.members == (Member("a", "127.0.0.1", 17400), Member("b", "127.0.0.1", 17401))
    assert [str(m) for m in cfg.all_members()] == ["a@127.0.0.1:17400", "b@127.0.0.1:17401"]


@pytest.mark.parametrize("bad, word", [
    (dict(port=0), "port"), (dict(port=70000), "port"), (dict(n=0), "n"),
    (dict(r=4), "r and w"), (dict(ring_size=100), "ring_size"), (dict(fsync="sometimes"), "fsync"),
    (dict(name="bad name"), "name"), (dict(members="x@host"), "members"),
    (dict(members=["a@h:1", "a@h:2"]), "members"), (dict(cluster_secret="short"), "cluster_secret"),
    (dict(max_value_bytes=-1), "max_value_bytes"), (dict(bogus=1), "bogus"),
    (dict(host="not a host!"), "host"), (dict(port=True), "port"), (dict(password=""), "password"),
])
def test_bad_settings_name_the_setting(bad, word):
    with pytest.raises(ConfigError) as e:
        load(**bad)
    assert word in str(e.value)


def test_bad_toml_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("port = = 3")
    with pytest.raises(ConfigError, match="bad.toml"):
        load(p)
    with pytest.raises(ConfigError, match="missing"):
        load(tmp_path / "missing.toml")


def test_secret_not_in_repr():
    assert "ringkv-dev-secret" not in repr(NodeConfig())


def test_kvnode_start_refuses_bad_config_naming_the_setting(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "kvnet.cli.kvnode", "start", "--port", "70000",
                          "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "port" in out.stderr and "bad configuration" in out.stderr
    toml = tmp_path / "n.toml"
    toml.write_text('fsync = "sometimes"\n')
    out = subprocess.run([sys.executable, "-m", "kvnet.cli.kvnode", "start", "--config", str(toml)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "fsync" in out.stderr
    assert not (tmp_path / "d").exists()          # nothing created for a refused config
