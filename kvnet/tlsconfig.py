"""TLS contexts from the tls_* settings (docs/security.md), and their reload on SIGHUP.

A node builds three contexts from its certificate, key and CA: the client port's (tls_port;
client certificates required, optional or not asked for, by tls_auth_clients), and with
tls_cluster the peer port's (a peer's certificate required and verified against the CA) and
the one its dials present (its own certificate, the peer's verified against the CA; host
names are not checked, as Redis does not: the CA and the cluster secret vouch for a node).

A listener keeps the context it was created with; to reload without a new listener, that
context is a shell whose SNI callback (called for every handshake, SNI sent or not) switches
the connection to the newest context: `reload()` builds new ones from the files and swaps
them in, so connections accepted after it use the new certificate and CA, and those open
keep theirs. A reload that fails (a missing file, a key that does not match) changes nothing.
The plaintext port is another listener: nothing here runs per request.
"""
import logging
import ssl

from kvnet.errors import ConfigError

__all__ = ["NodeTLS", "client_context", "server_context"]

log = logging.getLogger("kvnet.tls")

_VERIFY = {"yes": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "no": ssl.CERT_NONE}


def _load_chain(ctx, cert_file, key_file, what="tls_cert_file"):
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"{what}: no such file: {exc.filename or cert_file}") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what} {cert_file} / key {key_file}: cannot load the certificate "
                          f"and its key: {exc}") from None


def _load_ca(ctx, ca_file, what="tls_ca_cert_file"):
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file: {ca_file}") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what} {ca_file}: cannot load CA certificates: {exc}") from None


def server_context(cert_file, key_file, ca_file=None, auth_clients="no"):
    """A listener's context: serves cert_file; auth_clients yes/optional/no as Redis's
    tls-auth-clients (client certificates verified against ca_file)."""
    if auth_clients not in _VERIFY:
        raise ConfigError(f"tls_auth_clients: {auth_clients!r} must be yes, optional or no")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, cert_file, key_file)
    if ca_file is not None:
        _load_ca(ctx, ca_file)
    elif auth_clients != "no":
        raise ConfigError(f"tls_ca_cert_file: needed with tls_auth_clients {auth_clients}")
    ctx.verify_mode = _VERIFY[auth_clients]
    return ctx


def client_context(ca_file=None, cert_file=None, key_file=None, check_hostname=True):
    """A dialing context: the server's certificate verified against ca_file (None: the
    system's CAs), cert_file/key_file presented when given (mutual TLS)."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    if ca_file is not None:
        _load_ca(ctx, ca_file)
    if cert_file is not None:
        _load_chain(ctx, cert_file, key_file or cert_file)
    return ctx


class NodeTLS:
    """A node's TLS contexts, built from its NodeConfig at start (a bad file: ConfigError).

    `clients`: the TLS client port's listener context (None without tls_port); `peers`: the
    peer port's (None without tls_cluster); `peer_client()`: the context a dial uses now.
    `reload()` re-reads the files (SIGHUP)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.reloads = 0
        self._current = self._build()
        self.clients = self._shell("clients") if cfg.tls_port else None
        self.peers = self._shell("peers") if cfg.tls_cluster else None

    @staticmethod
    def wanted(cfg):
        return bool(cfg.tls_port or cfg.tls_cluster)

    def _build(self):
        cfg = self.cfg
        out = {"clients": None, "peers": None, "dial": None}
        if cfg.tls_port:
            out["clients"] = server_context(cfg.tls_cert_file, cfg.tls_key_file,
                                            cfg.tls_ca_cert_file, cfg.tls_auth_clients)
        if cfg.tls_cluster:
            out["peers"] = server_context(cfg.tls_cert_file, cfg.tls_key_file,
                                          cfg.tls_ca_cert_file, "yes")
            out["dial"] = client_context(cfg.tls_ca_cert_file, cfg.tls_cert_file,
                                         cfg.tls_key_file, check_hostname=False)
        return out

    def _shell(self, which):
        """The context a listener is created with: like the current one, and its SNI
        callback hands each new connection the newest context of `which`."""
        cfg = self.cfg
        auth = cfg.tls_auth_clients if which == "clients" else "yes"
        shell = server_context(cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_ca_cert_file, auth)

        def newest(sslobj, server_name, ctx):
            sslobj.context = self._current[which]
            return None

        shell.sni_callback = newest
        return shell

    def peer_client(self):
        """The context a dial to a peer uses (None without tls_cluster)."""
        return self._current["dial"]

    def reload(self):
        """Re-read the certificate, key and CA files; new connections use them. Raises
        ConfigError (and keeps the contexts in use) when a file cannot be loaded."""
        self._current = self._build()
        self.reloads += 1
        log.info("TLS certificates reloaded from %s (reload %d)", self.cfg.tls_cert_file,
                 self.reloads)
