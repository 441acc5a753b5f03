"""Node processes over TLS (LocalCluster(tls=True)): clients on the TLS port through redis-py,
redis-cli, kvctl and kvnet.Client; peers over mutual TLS (a W=all write needs every node);
the peer port refuses plaintext; SIGHUP reloads the certificate for new connections."""
import asyncio
import io
import os
import shutil
import signal
import socket
import ssl
import subprocess

import pytest

from kvnet.cli import kvctl
from kvnet.client import Client
from kvnet.testing import LocalCluster, wait_until
from kvnet.testing.tls import make_cert

pytestmark = pytest.mark.slow

REDIS_CLI = shutil.which("redis-cli")


def _cert_serial(pem_path):
    from cryptography import x509

    with open(pem_path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).serial_number


def _served_serial(port, ctx):
    """The serial of the certificate a new TLS connection to port is served (after a PING)."""
    from cryptography import x509

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            assert s.recv(64).startswith(b"+PONG")
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def _closed_unserved(port, data):
    """Send plaintext to port; True when the node closes the connection without a RESP reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        got = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
    return not got.startswith((b"+", b"-", b"$", b"*", b":"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(str(tmp_path_factory.mktemp("tlscluster")), nodes=3, tls=True, ring_size=16)
    with c:
        yield c


def test_clients_over_tls_and_writes_through_mutual_tls_peers(cluster):
    r = cluster.tls_client(0)
    try:
        assert r.set("a", "1") and r.get("a") == b"1"
        # W=all: every replica (the other nodes, over the peers' mutual TLS) acknowledged it
        ctx = r.execute_command("KV.PUT", "b", "2", "W", "ALL")
        assert ctx
        got = cluster.tls_client(1).execute_command("KV.GET", "b", "R", "ALL")
        assert got[1] == [b"2"]
    finally:
        r.close()
    assert cluster.client(2).get("a") == b"1"       # the plaintext port serves as well
    with Client("127.0.0.1", cluster.tls_ports[1], **cluster.pki.client()) as c:
        c.put("c", "3", w=3)
        assert c.get("c", r=3).values == [b"3"]
    out = io.StringIO()
    c = cluster.pki.client()
    assert kvctl.main(["--port", str(cluster.tls_ports[2]), "--cacert", c["cacert"], "--cert",
                       c["cert"], "--key", c["key"], "--json", "ring"], out=out) == 0
    assert "node3" in out.getvalue()


def test_kvctl_takes_tls_from_the_environment(cluster, monkeypatch):
    c = cluster.pki.client()
    monkeypatch.setenv("RINGKV_TLS", "1")
    monkeypatch.setenv("RINGKV_TLS_CACERT", c["cacert"])
    monkeypatch.setenv("RINGKV_TLS_CERT", c["cert"])
    monkeypatch.setenv("RINGKV_TLS_KEY", c["key"])
    out, err = io.StringIO(), io.StringIO()
    assert kvctl.main(["--port", str(cluster.tls_ports[0]), "--json", "status"],
                      out=out, err=err) == 0, err.getvalue()
    assert "node1" in out.getvalue()
    monkeypatch.delenv("RINGKV_TLS_CERT")            # tls_auth_clients yes: refused without
    monkeypatch.delenv("RINGKV_TLS_KEY")
    err = io.StringIO()
    assert kvctl.main(["--port", str(cluster.tls_ports[0]), "--timeout", "5", "status"],
                      out=io.StringIO(), err=err) == 1
    assert err.getvalue().startswith("kvctl: ")


def test_plaintext_is_refused_on_the_tls_port_and_the_peer_port(cluster):
    assert _closed_unserved(cluster.tls_ports[0], b"*1\r\n$4\r\nPING\r\n")
    # a plaintext peer's HELLO (any bytes that are not a TLS ClientHello) is not answered
    assert _closed_unserved(cluster.peer_ports[1], b"\x00" * 64)

    async def plain_peer():
        from kvnet.cli.devcluster import dev_secret
        from kvnet.peer.pool import PeerPool

        secret = dev_secret(cluster.data_dir, create=False).encode()
        async with PeerPool("intruder", secret, backoff_base=5, backoff_max=5) as pool:
            with pytest.raises(Exception):
                await pool.request("node2", ("127.0.0.1", cluster.peer_ports[1]), "ping", {},
                                   timeout=5)
    asyncio.run(asyncio.wait_for(plain_peer(), 30))


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed (apt-get install redis-tools)")
def test_redis_cli_tls(cluster):
    c = cluster.pki.client()
    cli = [REDIS_CLI, "-p", str(cluster.tls_ports[0]), "--tls", "--cacert", c["cacert"],
           "--cert", c["cert"], "--key", c["key"]]
    assert subprocess.run(cli + ["set", "cli", "yes"], capture_output=True, text=True,
                          timeout=60).stdout == "OK\n"
    assert subprocess.run(cli + ["get", "cli"], capture_output=True, text=True,
                          timeout=60).stdout == "yes\n"


def test_sighup_reloads_the_certificate_for_new_connections(cluster):
    pki = cluster.pki
    ctx = pki.context()
    crt = os.path.join(pki.dir, "node1.crt")
    before = _served_serial(cluster.tls_ports[0], ctx)
    assert before == _cert_serial(crt)
    held = ctx.wrap_socket(socket.create_connection(("127.0.0.1", cluster.tls_ports[0]), 5),
                           server_hostname="127.0.0.1")
    try:
        make_cert(pki.dir, "node1", pki.ca_cert, pki.ca_key)      # new key and certificate
        new = _cert_serial(crt)
        assert new != before
        assert _served_serial(cluster.tls_ports[0], ctx) == before   # until the signal
        cluster.procs[0].send_signal(signal.SIGHUP)
        wait_until(lambda: _served_serial(cluster.tls_ports[0], ctx) == new, 20,
                   what="the new certificate served")
        # the connection open before the reload still works
        held.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert held.recv(64).startswith(b"+PONG")
    finally:
        held.close()
    # peers after the reload: node1 dials with its new certificate as well
    assert cluster.running(0)
    with Client("127.0.0.1", cluster.tls_ports[0], **pki.client()) as c:
        c.put("after-reload", "1", w=3)
    # a reload whose files are broken keeps the node and its certificate
    with open(os.path.join(pki.dir, "node1.key"), "w") as f:
        f.write("garbage\n")
    cluster.procs[0].send_signal(signal.SIGHUP)
    wait_until(lambda: "TLS reload failed" in open(cluster.log_of(0)).read(), 20,
               what="the failed reload logged")
    assert cluster.running(0) and _served_serial(cluster.tls_ports[0], ctx) == new
    assert isinstance(ctx, ssl.SSLContext)
