"""Talking to a node from a test: a redis-py client that never retries (`redis_client`),
RESP replies as str (`_plain`), PING (`ping`, from kvnet/probe.py)."""
from kvnet.probe import ping  # noqa: F401  (re-exported for tests)


def redis_client(port, timeout=5.0, tls=None):
    """A redis-py client that never retries (a retried KV.PUT would be a second write).
    tls: to a TLS port, the Client keywords of a kvnet.testing.tls.DevPKI (`.client()`)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    opts = {}
    if tls:
        from kvnet.client import _tls_options

        opts = _tls_options(tls.get("cacert"), tls.get("cert"), tls.get("key"), True)
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), **opts)


def _plain(x):
    """RESP replies with bytes keys/values as str (recursively)."""
    if isinstance(x, bytes):
        try:
            return x.decode()
        except UnicodeDecodeError:
            return x
    if isinstance(x, dict):
        return {_plain(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
