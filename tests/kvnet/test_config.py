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
    (dict(sync_method="fsync"), "sync_method"),
    (dict(name="bad name"), "name"), (dict(members="x@host"), "members"),
    (dict(members=["a@h:1", "a@h:2"]), "members"), (dict(cluster_secret="short"), "cluster_secret"),
    (dict(max_value_bytes=-1), "max_value_bytes"), (dict(bogus=1), "bogus"),
    (dict(host="not a host!"), "host"), (dict(port=True), "port"), (dict(password=""), "password"),
    (dict(max_object_bytes=1 << 40), "max_object_bytes"),
    (dict(max_object_bytes=(32 << 20) + 1023), "max_value_bytes + 1024"),
    (dict(max_value_bytes=(64 << 20) - 1000), "a key holding one value always fits"),
    (dict(max_peer_message_bytes=1 << 32), "max_peer_message_bytes"),
    (dict(max_peer_message_bytes=(32 << 20)), "max_peer_message_bytes"),
    (dict(max_peer_message_bytes=(65 << 20) - 1), "max_object_bytes + 1048576"),
    (dict(max_object_bytes=1 << 30, max_peer_message_bytes=1 << 30),
     "must carry the largest object a node accepts"),
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


# ---- one source of truth: every setting is a TOML key, a flag and a RINGKV_* variable ----

import dataclasses  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402

from kvnet.cli import kvnode  # noqa: E402
from kvnet.acl import User, digest_of  # noqa: E402
from kvnet.config import SETTINGS, env_name, flag_name, from_environ  # noqa: E402

# a valid value other than the default for every setting, as its text (flag / variable) and
# as the value it must load as; a new setting without an entry fails the coverage test
SAMPLES = {
    "name": ("n7", "n7"), "host": ("127.0.0.2", "127.0.0.2"), "port": ("7400", 7400),
    "peer_host": ("127.0.0.3", "127.0.0.3"), "peer_port": ("17400", 17400),
    "data_dir": ("/srv/kv", "/srv/kv"),
    "members": ("a@h:1,b@h:2", (Member("a", "h", 1), Member("b", "h", 2))),
    "zone": ("z1", "z1"), "ring_size": ("64", 64), "n": ("5", 5), "r": ("3", 3), "w": ("1", 1),
    "fsync": ("always", "always"), "sync_interval_ms": ("50", 50),
    "sync_method": ("fdatasync", "fdatasync"),
    "min_free_percent": ("2.5", 2.5), "max_segment_bytes": ("4096", 4096),
    "request_timeout_ms": ("900", 900), "max_connections": ("77", 77),
    "idle_timeout_s": ("30", 30), "max_key_bytes": ("512", 512),
    "max_value_bytes": ("4096", 4096), "max_object_bytes": ("134217728", 128 << 20),
    "max_peer_message_bytes": ("134217728", 128 << 20),
    "peer_idle_timeout_s": ("5", 5),
    "warn_siblings": ("5", 5), "max_siblings": ("9", 9),
    "password": ("hunter22", "hunter22"), "requirepass": ("hunter23", "hunter23"),
    "users": ("ro:read:pw1,ops:admin:#" + "ab" * 32,
              (User("ro", "read", digest_of("pw1")), User("ops", "admin", "ab" * 32))),
    "auth_timeout_s": ("3", 3), "max_client_input_bytes": ("134217728", 128 << 20), "cluster_secret": ("s3cret-s3cret", "s3cret-s3cret"),
    "allow_flush": ("false", False), "join": ("true", True),
    "gossip_interval_ms": ("100", 100), "gossip_fanout": ("3", 3), "phi_threshold": ("4.5", 4.5),
    "hint_replay_interval_ms": ("200", 200), "hint_replay_rate": ("10", 10),
    "ae_enabled": ("no", False), "ae_interval_ms": ("50", 50), "tombstone_grace_s": ("5", 5),
    "merge_dead_fraction": ("0.6", 0.6), "merge_min_dead_bytes": ("1024", 1024),
    "merge_concurrency": ("2", 2), "merge_max_mb_s": ("10", 10),
    "insecure_dev_secret": ("yes", True), "log_level": ("debug", "debug"),
    "log_format": ("json", "json"),
    "tls_port": ("7443", 7443), "tls_cert_file": ("/etc/kv/n.crt", "/etc/kv/n.crt"),
    "tls_key_file": ("/etc/kv/n.key", "/etc/kv/n.key"),
    "tls_ca_cert_file": ("/etc/kv/ca.crt", "/etc/kv/ca.crt"),
    "tls_auth_clients": ("optional", "optional"), "tls_cluster": ("yes", True),
    "peer_frame_mac": ("no", False),
    "metrics_port": ("9121", 9121), "metrics_host": ("0.0.0.0", "0.0.0.0"),
    "canary_interval_ms": ("250", 250),
}
# what a TLS setting needs beside it (kvnet/config.py _check_tls; the files are read at start)
TLS_FILES = {"tls_cert_file": "c.crt", "tls_key_file": "c.key", "tls_ca_cert_file": "ca.crt"}


def test_the_samples_cover_every_setting_with_a_non_default_value():
    assert sorted(SAMPLES) == sorted(f.name for f in SETTINGS)
    defaults = NodeConfig()
    for f in SETTINGS:
        assert getattr(defaults, f.name) != SAMPLES[f.name][1], f.name


def test_every_setting_is_listed_in_docs_config_md():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "config.md"), encoding="utf-8") as f:
        doc = f.read()
    rows = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \|", doc, re.M)}
    missing = sorted({f.name for f in SETTINGS} - rows)
    assert not missing, f"settings missing from docs/config.md's table: {missing}"
    assert not rows - {f.name for f in SETTINGS}, "docs/config.md lists settings that do not exist"
    for f in SETTINGS:
        assert f"`{flag_name(f.name)}`" in doc and f"`{env_name(f.name)}`" in doc, f.name


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_setting_loads_from_its_flag_and_its_variable(name):
    text, want = SAMPLES[name]
    # r and w must not exceed n; max_siblings at least warn_siblings: give the others room
    base = {"n": 5} if name in ("r", "w") else {"warn_siblings": 1} if name == "max_siblings" \
        else TLS_FILES if name in ("tls_port", "tls_cluster") else {}
    assert getattr(load(environ={env_name(name): text}, **base), name) == want
    f = next(f for f in SETTINGS if f.name == name)
    argv = ["start", f"{flag_name(name)}={text}" if f.type is not bool else flag_name(name)
            if want else "--no-" + flag_name(name)[2:]]
    args = kvnode.parser().parse_args(argv)
    assert getattr(load(**{name: getattr(args, name)}, **base), name) == want


def test_flags_win_over_variables_and_variables_over_the_file(tmp_path):
    toml = tmp_path / "n.toml"
    toml.write_text("port = 7001\nn = 3\nring_size = 32\n")
    env = {"RINGKV_PORT": "7002", "RINGKV_RING_SIZE": "64", "RINGKV_NO_EXTENSIONS": "1"}
    cfg = load(toml, environ=env, port=7003)
    assert (cfg.port, cfg.ring_size, cfg.n) == (7003, 64, 3)
    assert from_environ({"RINGKV_DEBUG": "1", "RINGKV_CI": "1"}) == {}   # not settings


@pytest.mark.parametrize("env, word", [
    ({"RINGKV_PORT": "seven"}, "RINGKV_PORT"), ({"RINGKV_AE_ENABLED": "maybe"}, "RINGKV_AE_ENABLED"),
    ({"RINGKV_PHI_THRESHOLD": "x"}, "RINGKV_PHI_THRESHOLD"), ({"RINGKV_LOG_LEVEL": "loud"}, "log_level"),
])
def test_a_bad_variable_is_refused_naming_it(env, word):
    with pytest.raises(ConfigError, match=word):
        load(environ=env)


def test_no_setting_value_in_repr_that_must_stay_secret():
    text = repr(load(password="hunter22", cluster_secret="s3cret-s3cret"))
    assert "hunter22" not in text and "s3cret" not in text
    assert all(f.metadata.get("help") for f in dataclasses.fields(NodeConfig))


def test_a_one_value_object_fits_max_value_bytes_plus_the_overhead():
    """The rule max_object_bytes >= max_value_bytes + OBJECT_OVERHEAD lets the byte-level SET
    paths skip the object check: a one-value clock with the longest node id and the largest
    numbers stays within it, for a value of any size."""
    from kvcore import versions as V
    from kvnet.config import OBJECT_OVERHEAD
    big = (1 << 64) - 1
    for size in (0, 100, 70_000, 1 << 20):
        value = b"x" * size
        clock = V.Clock(((("n" * 64, big, big), big, (V.Sibling(value, (1 << 63) - 1),)),), ())
        assert len(V.encode(clock)) <= size + OBJECT_OVERHEAD
        tomb = V.Clock(((("n" * 64, big, big), big, (V.Sibling(None, (1 << 63) - 1),)),), ())
        assert len(V.encode(tomb)) <= OBJECT_OVERHEAD


def test_a_node_gives_its_peer_connections_max_peer_message_bytes(tmp_path):
    """The setting reaches the node's peer pool (every connection it dials or accepts); the
    default is the peer protocol's own, and the smallest accepted carries max_object_bytes."""
    from kvnet.node import Node
    from kvnet.peer.framing import DEFAULT_MAX_MESSAGE_SIZE
    assert NodeConfig().max_peer_message_bytes == DEFAULT_MAX_MESSAGE_SIZE
    cfg = load(data_dir=str(tmp_path / "a"), max_peer_message_bytes=(65 << 20))
    assert Node(cfg).pool.max_message_size == 65 << 20
    assert Node(load(data_dir=str(tmp_path / "b"))).pool.max_message_size \
        == DEFAULT_MAX_MESSAGE_SIZE
