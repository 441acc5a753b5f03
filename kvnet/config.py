"""Node settings: one dataclass with a default and a bound for each, loaded once.

A TOML file and/or keyword overrides (the CLI's flags) make a NodeConfig; a bad
value is refused at start with a ConfigError naming the setting (docs/config.md).
"""
import dataclasses
import ipaddress
import os
import re
import tomllib
import types
from dataclasses import dataclass, field

from kvnet.errors import ConfigError
from kvnet.peer.framing import DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE
from kvnet.acl import parse_users

FSYNC = ("always", "interval", "never")
# A one-value clock's bytes beside its value, at most (an actor of a 64-byte node id, its
# counter, the timestamp; about 150): with max_object_bytes >= max_value_bytes + this, a write
# leaving one value always fits, so the byte-level SET paths need no size check of their own.
OBJECT_OVERHEAD = 1024
# A peer message's bytes beside the one object it carries, at most: the envelope, a key of up to
# 64 KiB and the payload's other fields. max_peer_message_bytes >= max_object_bytes + this, so
# any object a node lets a client write travels alone in one message (docs/peer.md, "Limits").
PEER_MESSAGE_OVERHEAD = 1 << 20
# A client command's bytes beside its largest value, at most: a key (< 64 KiB), a context
# (kvnet/payload.py: 1 MiB) and the framing. max_client_input_bytes >= max_value_bytes + this.
INPUT_ROOM = 2 << 20
SYNC_METHODS = ("auto", "journal", "syncfs", "fdatasync")
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


def _s(default, help, **kw):
    """A setting: its default and the one line of help that `kvnode start --help` and
    docs/config.md show (the flag and RINGKV_* variable are derived from its name)."""
    return field(default=default, metadata={"help": help}, **kw)


DEV_SECRET = "ringkv-dev-secret"     # the built-in cluster secret: kvnode start refuses it alone
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
TLS_AUTH_CLIENTS = ("yes", "optional", "no")


@dataclass(frozen=True)
class NodeConfig:
    name: str = _s("node1", "node id on the ring: 1-64 letters, digits, '_', '.' or '-'")
    host: str = _s("127.0.0.1", "client (RESP) address")
    port: int = _s(7379, "client (RESP) port, plaintext (0: none; then tls_port serves clients)")
    peer_host: str = _s("127.0.0.1", "node-to-node address")
    peer_port: int = _s(0, "node-to-node port (0: port + 10000, or tls_port + 10000 when port "
                           "is 0)")
    data_dir: str = _s("./ringkv-data/node1", "data directory (IDENTITY, EPOCH, partitions/)")
    members: tuple = _s((), "every member as name@host:peer_port, comma-separated (the same "
                            "list on every node); empty: a cluster of this node alone")
    zone: str | None = _s(None, "zone label")
    ring_size: int = _s(256, "partitions Q, a power of two, fixed for the cluster's life")
    n: int = _s(3, "replicas per key")
    r: int = _s(2, "default read quorum (<= n)")
    w: int = _s(2, "default write quorum (<= n)")
    fsync: str = _s("interval", "always (group commit before each ack) | interval | never")
    sync_interval_ms: int = _s(1000, "period of fsync=interval")
    sync_method: str = _s("auto", "how a group commit syncs: journal (one fdatasync of the "
                                  "node's journal per round) | syncfs (one flush of the data "
                                  "directory's whole file system per round, Linux 5.8+) | "
                                  "fdatasync (one per partition written) | auto (the journal "
                                  "with fsync=always, else syncfs where the kernel allows it)")
    min_free_percent: float = _s(5.0, "refuse writes that would leave less free disk space "
                                      "than this (percent of the data directory's file system)")
    max_segment_bytes: int = _s(64 << 20, "a partition store starts a new segment file past "
                                          "this size")
    request_timeout_ms: int = _s(2000, "how long a coordinator waits for replicas")
    max_connections: int = _s(10_000, "client connections at most")
    idle_timeout_s: int = _s(0, "close clients idle this long (0: never)")
    auth_timeout_s: int = _s(10, "close a connection that has not authenticated this long "
                                 "after connecting, when AUTH is needed (0: never)")
    max_client_input_bytes: int = _s(256 << 20, "client input buffers (commands partly "
                                                "received) of all connections together at "
                                                "most this; a connection that would pass it "
                                                "is closed with an error")
    max_key_bytes: int = _s(8 << 10, "bigger keys get an error")
    max_value_bytes: int = _s(32 << 20, "bigger values get an error")
    max_object_bytes: int = _s(64 << 20, "refuse a write whose key's object (its siblings and "
                                         "clock, encoded) would be bigger; at least "
                                         "max_value_bytes + 1024")
    max_peer_message_bytes: int = _s(DEFAULT_MAX_MESSAGE_SIZE,
                                     "a node-to-node message (sent in 1 MiB chunks) is at "
                                     "most this big, the same on every node; at least "
                                     "max_object_bytes + 1 MiB")
    peer_idle_timeout_s: int = _s(60, "close a connection to a peer idle this long either way "
                                      "(0: never); the next request dials again")
    warn_siblings: int = _s(25, "log a warning for a write leaving more siblings")
    max_siblings: int = _s(100, "refuse a write that would leave more siblings")
    requirepass: str | None = _s(None, "the default user's password: clients must AUTH "
                                       "with it (clear text or #<sha256 hex>)", repr=False)
    password: str | None = _s(None, "older name of requirepass", repr=False)
    users: tuple = _s((), "named users, each name:role:password (role read, write or admin; "
                          "password clear text or #<sha256 hex>), comma-separated; in TOML a "
                          "[users.NAME] table of role and password", repr=False)
    cluster_secret: str = _s(DEV_SECRET, "shared secret nodes prove to each other (HMAC "
                                         "challenge-response); the built-in one needs "
                                         "--insecure-dev-secret", repr=False)
    # TLS (docs/security.md), named after Redis's tls-* settings
    tls_port: int = _s(0, "client (RESP) port speaking TLS (0: none); a plaintext connection "
                          "to it is closed")
    tls_cert_file: str | None = _s(None, "this node's certificate (PEM, with its chain): served "
                                         "on tls_port and, with tls_cluster, to peers")
    tls_key_file: str | None = _s(None, "the private key of tls_cert_file (PEM, unencrypted)")
    tls_ca_cert_file: str | None = _s(None, "CA certificates (PEM) that client certificates "
                                            "and, with tls_cluster, peers' are verified against")
    tls_auth_clients: str = _s("yes", "yes (clients on tls_port must present a certificate "
                                      "signed by tls_ca_cert_file) | optional (verified when "
                                      "presented) | no")
    tls_cluster: bool = _s(False, "mutual TLS between nodes (each verifies the other's "
                                  "certificate against tls_ca_cert_file); plaintext peers are "
                                  "refused")
    peer_frame_mac: bool = _s(True, "a MAC on every node-to-node frame after the handshake "
                                    "(keyed by the cluster secret; none inside tls_cluster); "
                                    "nodes without it (protocol version 3 or older) are refused")
    allow_flush: bool = _s(True, "accept FLUSHDB/FLUSHALL (--no-flush refuses them)")
    join: bool = _s(False, "start as a joining member: take the ring from the seeds in members")
    # Failure handling (issue 6): every interval is configurable so tests run at 50-100 ms.
    gossip_interval_ms: int = _s(1000, "one gossip round (heartbeat + 1) per interval")
    gossip_fanout: int = _s(2, "peers gossiped to per round")
    phi_threshold: float = _s(8.0, "a peer is suspected at this phi")
    hint_replay_interval_ms: int = _s(1000, "how often pending hints are offered to their targets")
    hint_replay_rate: int = _s(5000, "hints replayed per second at most, per node")
    ae_enabled: bool = _s(True, "run Merkle anti-entropy exchanges (--no-ae turns them off)")
    ae_interval_ms: int = _s(10_000, "pause between two anti-entropy exchanges of a node")
    tombstone_grace_s: int = _s(3600, "confirmed tombstones are reaped after this")
    # Compaction (docs/storage.md, "Merge policy"): a partition is merged once its dead bytes
    # are at least this fraction of its data and at least merge_min_dead_bytes.
    merge_dead_fraction: float = _s(0.4, "merge a partition once this fraction of its bytes "
                                         "is dead (overwritten or deleted)")
    merge_min_dead_bytes: int = _s(128 << 10, "... and at least this many bytes are dead")
    merge_concurrency: int = _s(1, "merges running at once, in worker threads (0: none run "
                                   "by themselves; kvctl compact still does)")
    merge_max_mb_s: int = _s(64, "a merge copies at most this many MB a second")
    insecure_dev_secret: bool = _s(False, "allow the built-in cluster secret (a dev cluster on "
                                          "one machine only)")
    log_level: str = _s("info", "debug | info | warning | error")
    log_format: str = _s("text", "text | json (JSON lines: time, level, node, logger, message, "
                                 "fields)")
    # Metrics (docs/observability.md)
    metrics_port: int = _s(0, "serve Prometheus metrics on http://metrics_host:port/metrics "
                              "(0: off)")
    metrics_host: str = _s("127.0.0.1", "address of the metrics port")
    canary_interval_ms: int = _s(0, "write this node's canary key once per interval and time "
                                    "until every replica holds it (0: off)")

    @property
    def client_port(self):
        """The client port a node announces (gossip, KV.RING): the plaintext one, else the TLS
        one."""
        return self.port or self.tls_port

    @property
    def peer_address(self):
        return self.peer_host, self.peer_port or self.client_port + 10000

    def member(self):
        return Member(self.name, self.peer_host, self.peer_address[1])

    def all_members(self):
        """This node and the configured members, by name, without duplicates."""
        out = {m.name: m for m in self.members}
        out.setdefault(self.name, self.member())
        return tuple(sorted(out.values(), key=lambda m: m.name))

    @property
    def default_password(self):
        """The default user's password: requirepass, or its older name password."""
        return self.requirepass if self.requirepass is not None else self.password


_INT_BOUNDS = {
    "port": (0, 65535),
    "tls_port": (0, 65535),
    "peer_port": (0, 65535),
    "ring_size": (1, 1 << 16),
    "n": (1, 16),
    "r": (1, 16),
    "w": (1, 16),
    "sync_interval_ms": (1, 3_600_000),
    "max_segment_bytes": (4096, 1 << 40),
    "request_timeout_ms": (10, 600_000),
    "max_connections": (1, 1_000_000),
    "idle_timeout_s": (0, 86_400 * 7),
    "auth_timeout_s": (0, 86_400),
    "max_client_input_bytes": (1 << 20, 1 << 40),
    "max_key_bytes": (1, 65535),
    "max_value_bytes": (1, (1 << 31) - 1),
    "max_object_bytes": (4096, (1 << 31) - 1),     # the store's record limit
    "max_peer_message_bytes": (DEFAULT_MAX_FRAME_SIZE, (1 << 32) - 1),   # kvnet/peer/core.py
    "peer_idle_timeout_s": (0, 86_400),
    "warn_siblings": (1, 10_000),
    "max_siblings": (1, 10_000),
    "gossip_interval_ms": (10, 600_000),
    "gossip_fanout": (1, 64),
    "hint_replay_interval_ms": (10, 3_600_000),
    "hint_replay_rate": (1, 10_000_000),
    "ae_interval_ms": (10, 86_400_000),
    "tombstone_grace_s": (0, 86_400 * 365),
    "merge_min_dead_bytes": (0, 1 << 40),
    "merge_concurrency": (0, 64),
    "merge_max_mb_s": (1, 100_000),
    "metrics_port": (0, 65535),
    "canary_interval_ms": (0, 86_400_000),
}

_FLOAT_BOUNDS = {
    "phi_threshold": (0.5, 100.0),
    "merge_dead_fraction": (0.05, 0.95),
    "min_free_percent": (0.0, 50.0),
}


def is_node_name(name):
    """Is `name` a valid node id (1-64 letters, digits, '_', '.' or '-')?"""
    return isinstance(name, str) and _NAME.match(name) is not None


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
    _check_host(cfg.metrics_host, "metrics_host")
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
    if cfg.max_object_bytes < cfg.max_value_bytes + OBJECT_OVERHEAD:
        raise ConfigError(f"max_object_bytes: {cfg.max_object_bytes} must be at least "
                          f"max_value_bytes + {OBJECT_OVERHEAD} ({cfg.max_value_bytes} + "
                          f"{OBJECT_OVERHEAD}): a key holding one value always fits")
    if cfg.max_peer_message_bytes < cfg.max_object_bytes + PEER_MESSAGE_OVERHEAD:
        raise ConfigError(f"max_peer_message_bytes: {cfg.max_peer_message_bytes} must be at "
                          f"least max_object_bytes + {PEER_MESSAGE_OVERHEAD} "
                          f"({cfg.max_object_bytes} + {PEER_MESSAGE_OVERHEAD}): a peer message "
                          "must carry the largest object a node accepts, with its key")
    if cfg.warn_siblings > cfg.max_siblings:
        raise ConfigError("warn_siblings must not exceed max_siblings")
    if cfg.fsync not in FSYNC:
        raise ConfigError(f"fsync: {cfg.fsync!r} must be one of {', '.join(FSYNC)}")
    if cfg.sync_method not in SYNC_METHODS:
        raise ConfigError(f"sync_method: {cfg.sync_method!r} must be one of "
                          f"{', '.join(SYNC_METHODS)}")
    if not isinstance(cfg.data_dir, str) or not cfg.data_dir:
        raise ConfigError("data_dir: must be a directory path")
    if cfg.zone is not None and (not isinstance(cfg.zone, str) or not cfg.zone):
        raise ConfigError("zone: must be a non-empty string when set")
    for name in ("requirepass", "password"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, str) or not v):
            raise ConfigError(f"{name}: must be a non-empty string when set")
    if cfg.password is not None and cfg.requirepass is not None \
            and cfg.password != cfg.requirepass:
        raise ConfigError("requirepass and password (its older name) are both set, to "
                          "different values")
    if not isinstance(cfg.users, tuple):
        raise ConfigError("users: must be a table of users")
    if cfg.max_client_input_bytes < cfg.max_value_bytes + INPUT_ROOM:
        raise ConfigError(f"max_client_input_bytes: {cfg.max_client_input_bytes} must be at "
                          f"least max_value_bytes + {INPUT_ROOM} ({cfg.max_value_bytes} + "
                          f"{INPUT_ROOM}): a write of the largest value, its key and context "
                          "must fit")
    if not isinstance(cfg.cluster_secret, str) or len(cfg.cluster_secret) < 8:
        raise ConfigError("cluster_secret: must be a string of at least 8 characters")
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: {cfg.log_level!r} must be one of {', '.join(LOG_LEVELS)}")
    if cfg.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format: {cfg.log_format!r} must be one of {', '.join(LOG_FORMATS)}")
    _check_tls(cfg)
    for name in ("allow_flush", "ae_enabled", "join", "insecure_dev_secret", "tls_cluster",
                 "peer_frame_mac"):
        if not isinstance(getattr(cfg, name), bool):
            raise ConfigError(f"{name}: must be true or false")
    names = [m.name for m in cfg.members]
    if len(set(names)) != len(names):
        raise ConfigError("members: a name appears twice")
    return cfg


def _check_tls(cfg):
    """The tls_* settings are consistent (the files are read at start: kvnet/tlsconfig.py)."""
    if not cfg.port and not cfg.tls_port:
        raise ConfigError("port: 0 (no plaintext client port) needs tls_port")
    if cfg.port and cfg.port == cfg.tls_port:
        raise ConfigError(f"tls_port: {cfg.tls_port} is port too")
    for name in ("tls_cert_file", "tls_key_file", "tls_ca_cert_file"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, str) or not v):
            raise ConfigError(f"{name}: must be a file path when set")
    if cfg.tls_auth_clients not in TLS_AUTH_CLIENTS:
        raise ConfigError(f"tls_auth_clients: {cfg.tls_auth_clients!r} must be one of "
                          f"{', '.join(TLS_AUTH_CLIENTS)}")
    if not isinstance(cfg.tls_cluster, bool):
        raise ConfigError("tls_cluster: must be true or false")
    uses = [w for w, on in (("tls_port", cfg.tls_port), ("tls_cluster", cfg.tls_cluster)) if on]
    if not uses:
        return
    for name in ("tls_cert_file", "tls_key_file"):
        if getattr(cfg, name) is None:
            raise ConfigError(f"{name}: needed with {' and '.join(uses)}")
    if cfg.tls_ca_cert_file is None:
        if cfg.tls_cluster:
            raise ConfigError("tls_ca_cert_file: needed with tls_cluster (peers' certificates "
                              "are verified against it)")
        if cfg.tls_auth_clients != "no":
            raise ConfigError(f"tls_ca_cert_file: needed with tls_auth_clients "
                              f"{cfg.tls_auth_clients} (or set tls_auth_clients no)")


SETTINGS = dataclasses.fields(NodeConfig)
_FIELDS = {f.name for f in SETTINGS}
ENV_PREFIX = "RINGKV_"


def env_name(setting):
    return ENV_PREFIX + setting.upper()


def flag_name(setting):
    return "--" + setting.replace("_", "-")


def setting_type(f):
    """The type a setting's text (a flag or an environment variable) converts to."""
    if f.name in ("members", "users"):
        return str                            # comma-separated name@host:port, or users
    t = f.type
    if isinstance(t, types.UnionType):        # str | None
        t = next(a for a in t.__args__ if a is not type(None))
    return t


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(text, where):
    v = text.strip().lower()
    if v in _TRUE or v in _FALSE:
        return v in _TRUE
    raise ConfigError(f"{where}: {text!r} must be true or false")


def from_environ(environ):
    """The settings given as RINGKV_<SETTING> variables (others with the prefix, such as
    RINGKV_NO_EXTENSIONS, are not settings and are left alone)."""
    out = {}
    for f in SETTINGS:
        text = environ.get(env_name(f.name))
        if text is None:
            continue
        typ, where = setting_type(f), env_name(f.name)
        try:
            out[f.name] = (parse_bool(text, where) if typ is bool else typ(text))
        except ValueError:
            raise ConfigError(f"{where}: {text!r} is not a{'n' if typ is int else ''} "
                              f"{typ.__name__}") from None
    return out


def load(path=None, environ=None, **overrides):
    """NodeConfig from defaults, then a TOML file (optional), then RINGKV_* variables of
    `environ` (optional), then overrides (the CLI's flags; None = not given)."""
    values = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    if environ is not None:
        values.update(from_environ(environ))
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
    if "users" in values:
        values["users"] = parse_users(values["users"])
    for name in ("data_dir", "tls_cert_file", "tls_key_file", "tls_ca_cert_file"):
        if isinstance(values.get(name), os.PathLike):
            values[name] = os.fspath(values[name])
    return validate(NodeConfig(**values))
