"""kvnet.Client's TLS options (the TLS round trips are in tests/kvnet/test_node_tls.py)."""
import pytest

from kvnet.client import AsyncClient, Client
from kvnet.testing.tls import DevPKI


def test_tls_options_reach_redis_py_and_routing_is_off_by_default(tmp_path):
    pki = DevPKI(tmp_path)
    c = Client("127.0.0.1", 7443, **pki.client())
    opts = c._conn(("127.0.0.1", 7443)).connection_pool.connection_kwargs
    assert opts["ssl_ca_certs"] == pki.ca_cert and opts["ssl_certfile"].endswith("client.crt")
    assert opts["ssl_cert_reqs"] == "required" and opts["ssl_check_hostname"] is True
    assert c._route is False                     # a node announces its plaintext port
    assert Client("127.0.0.1", 7443, tls=True, cacert=pki.ca_cert, route=True)._route is True
    assert Client("127.0.0.1", 7379)._route is True
    a = AsyncClient("127.0.0.1", 7443, tls=True, cacert=pki.ca_cert)
    assert a._opts["ssl"] is True and a._opts["ssl_certfile"] is None
    c.close()


def test_bad_tls_options_are_refused_at_once(tmp_path):
    pki = DevPKI(tmp_path)
    with pytest.raises(ValueError, match="tls=True"):
        Client("127.0.0.1", 7443, cacert=pki.ca_cert)
    with pytest.raises(FileNotFoundError, match="cacert: no such file"):
        Client("127.0.0.1", 7443, tls=True, cacert=str(tmp_path / "nope.crt"))
    with pytest.raises(ValueError, match="key needs cert"):
        Client("127.0.0.1", 7443, tls=True, key=pki.client()["key"])
