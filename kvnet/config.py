"""Node settings: one dataclass with a default and a bound for each, loaded once.

A TOML file and/or keyword overrides (the CLI's flags) make a NodeConfig; a bad
value is refused at start with a ConfigError naming the setting (docs/config.md).
"""
import dataclasses
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field

from kvnet.errors import ConfigError

FSYNC = ("always", "interval", "never")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Member:
    """A cluster member as configured: its id and where its peer port listens."""

    name: str
    host: str
    peer_port: int

    @classmethod
    def parse(cls, text, setting="members"):
        """'name@host:port' -> Member."""
        m = re.match(r"^([^@\s]+)@(\[[^\]]+\]|[^:\s]+):(\d+)$", text)
        if not m:
            raise ConfigError(f"{setting}: {text!r} is not name@host:port")
        name, host, port = m.group(1), m.group(2).strip("[]"), int(m.group(3))
        _check_name(name, setting)
        _check_port(port, setting)
        return cls(name, host, port)

    def __str__(self):
        return f"{self.name}@{self.host}:{self.peer_port}"


@dataclass(frozen=True)
class NodeConfig:
    name: str = "node1"
    host: str = "127.0.0.1"                 # client (RESP) address
    port: int = 7379
    peer_host: str = "127.0.0.1"
    peer_port: int = 0                      # 0: port + 10000
    data_dir: str = "./ringkv-data/node1"
    members: tuple = ()                     # Member values; empty: a cluster of this node alone
    zone: str | None = None
    ring_size: int = 256                    # Q, fixed when the cluster is created
    n: int = 3
    r: int = 2
    w: int = 2
    fsync: str = "interval"                 # always: group commit before each ack
    sync_interval_ms: int = 1000
    request_timeout_ms: int = 2000
    max_connections: int = 10_000
    idle_timeout_s: int = 0                 # 0: never close idle clients
    max_key_bytes: int = 8 << 10
    max_value_bytes: int = 32 << 20
    warn_siblings: int = 25
    max_siblings: int = 100
    password: str | None = None             # clients must AUTH when set
    cluster_secret: str = field(default="ringkv-dev-secret", repr=False)
    allow_flush: bool = True
    join: bool = False                      # start as a joining member: take the ring from the seeds
    # Failure handling (issue 6): every interval is configurable so tests run at 50-100 ms.
    gossip_interval_ms: int = 1000          # one gossip round (heartbeat +1) per interval
    gossip_fanout: int = 2                  # peers gossiped to per round
    phi_threshold: float = 8.0              # suspect a peer at this phi
    hint_replay_interval_ms: int = 1000     # how often pending hints are offered to their targets
    hint_replay_rate: int = 5000            # hints replayed per second, at most, per node
    ae_enabled: bool = True                 # Merkle anti-entropy exchanges
    ae_interval_ms: int = 10_000            # pause between two partition exchanges of a node
    tombstone_grace_s: int = 3600           # confirmed tombstones are reaped after this

    @property
    def peer_address(self):
        return self.peer_host, self.peer_port or self.port + 10000

    def member(self):
        return Member(self.name, self.peer_host, self.peer_address[1])

    def all_members(self):
        """This node and the configured members, by name, without duplicates."""
        out = {m.name: m for m in self.members}
        out.setdefault(self.name, self.member())
        return tuple(sorted(out.values(), key=lambda m: m.name))


_INT_BOUNDS = {
    "port": (1, 65535),
    "peer_port": (0, 65535),
    "ring_size": (1, 1 << 16),
    "n": (1, 16),
    "r": (1, 16),
    "w": (1, 16),
    "sync_interval_ms": (1, 3_600_000),
    "request_timeout_ms": (10, 600_000),
    "max_connections": (1, 1_000_000),
    "idle_timeout_s": (0, 86_400 * 7),
    "max_key_bytes": (1, 65535),
    "max_value_bytes": (1, (1 << 31) - 1),
    "warn_siblings": (1, 10_000),
    "max_siblings": (1, 10_000),
    "gossip_interval_ms": (10, 600_000),
    "gossip_fanout": (1, 64),
    "hint_replay_interval_ms": (10, 3_600_000),
    "hint_replay_rate": (1, 10_000_000),
    "ae_interval_ms": (10, 86_400_000),
    "tombstone_grace_s": (0, 86_400 * 365),
}

_FLOAT_BOUNDS = {
    "phi_threshold": (0.5, 100.0),
}


def _check_name(name, setting):
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{setting}: {name!r} must be 1-64 letters, digits, '_', '.' or '-'")


def _check_port(port, setting):
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{setting}: {port!r} is not a port number (1-65535)")


def _check_host(host, setting):
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{setting}: must be a host name or address")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9.-]{1,253}$", host):
            raise ConfigError(f"{setting}: {host!r} is not a host name or address") from None


def validate(cfg):
    """Raise ConfigError naming the first bad setting of cfg; return cfg."""
    _check_name(cfg.name, "name")
    _check_host(cfg.host, "host")
    _check_host(cfg.peer_host, "peer_host")
    for name, (lo, hi) in _INT_BOUNDS.items():
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"{name}: {v!r} must be an integer from {lo} to {hi}")
    for name, (lo, hi) in _FLOAT_BOUNDS.items():
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise ConfigError(f"{name}: {v!r} must be a number from {lo} to {hi}")
    q = cfg.ring_size
    if q & (q - 1):
        raise ConfigError(f"ring_size: {q} must be a power of two")
    if cfg.r > cfg.n or cfg.w > cfg.n:
        raise ConfigError(f"r and w must not exceed n (r={cfg.r}, w={cfg.w}, n={cfg.n})")
    if cfg.warn_siblings > cfg.max_siblings:
        raise ConfigError("warn_siblings must not exceed max_siblings")
    if cfg.fsync not in FSYNC:
        raise ConfigError(f"fsync: {cfg.fsync!r} must be one of {', '.join(FSYNC)}")
    if not isinstance(cfg.data_dir, str) or not cfg.data_dir:
        raise ConfigError("data_dir: must be a directory path")
    if cfg.zone is not None and (not isinstance(cfg.zone, str) or not cfg.zone):
        raise ConfigError("zone: must be a non-empty string when set")
    if cfg.password is not None and (not isinstance(cfg.password, str) or not cfg.password):
        raise ConfigError("password: must be a non-empty string when set")
    if not isinstance(cfg.cluster_secret, str) or len(cfg.cluster_secret) < 8:
        raise ConfigError("cluster_secret: must be a string of at least 8 characters")
    for name in ("allow_flush", "ae_enabled", "join"):
        if not isinstance(getattr(cfg, name), bool):
            raise ConfigError(f"{name}: must be true or false")
    names = [m.name for m in cfg.members]
    if len(set(names)) != len(names):
        raise ConfigError("members: a name appears twice")
    return cfg


_FIELDS = {f.name for f in dataclasses.fields(NodeConfig)}


def load(path=None, **overrides):
    """NodeConfig from a TOML file (optional) with overrides on top (None = not given)."""
    values = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise ConfigError(f"unknown setting{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    if "members" in values:
        ms = values["members"]
        if isinstance(ms, str):
            ms = [m for m in ms.split(",") if m.strip()]
        if not isinstance(ms, (list, tuple)):
            raise ConfigError("members: must be a list of name@host:port")
        values["members"] = tuple(m if isinstance(m, Member) else Member.parse(str(m).strip()) for m in ms)
    if "data_dir" in values and isinstance(values["data_dir"], os.PathLike):
        values["data_dir"] = os.fspath(values["data_dir"])
    return validate(NodeConfig(**values))
