"""kvnet/tlsconfig.py and the tls_* settings: contexts from files, clear errors for bad ones,
reload (new connections get the new certificate, a failed reload changes nothing), and the
openssl commands of docs/security.md."""
import asyncio
import os
import re
import shutil
import ssl
import subprocess

import pytest

from kvnet.config import load
from kvnet.errors import ConfigError
from kvnet.testing.tls import DevPKI, make_ca, make_cert
from kvnet.tlsconfig import NodeTLS, client_context, server_context

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def pki(tmp_path):
    return DevPKI(tmp_path / "tls")


def tls_cfg(pki, **kw):
    crt, key = pki.cert("node1")
    opts = dict(tls_port=7443, tls_cert_file=crt, tls_key_file=key, tls_ca_cert_file=pki.ca_cert)
    opts.update(kw)
    return load(**opts)


# ---- settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, word", [
    (dict(port=0), "port: 0"),
    (dict(tls_port=7443), "tls_cert_file: needed with tls_port"),
    (dict(tls_cluster=True), "tls_cert_file: needed with tls_cluster"),
    (dict(tls_port=7443, tls_cert_file="c", tls_key_file="k"),
     "tls_ca_cert_file: needed with tls_auth_clients yes"),
    (dict(tls_cluster=True, tls_cert_file="c", tls_key_file="k", tls_auth_clients="no"),
     "tls_ca_cert_file: needed with tls_cluster"),
    (dict(tls_auth_clients="maybe"), "tls_auth_clients"),
    (dict(tls_port=7379), "tls_port: 7379 is port too"),
    (dict(tls_port=70000), "tls_port"),
    (dict(tls_cert_file=""), "tls_cert_file"),
])
def test_inconsistent_tls_settings_are_refused_naming_the_setting(kw, word):
    with pytest.raises(ConfigError, match=re.escape(word)):
        load(**kw)


def test_tls_only_node_announces_its_tls_port_and_takes_its_peer_port_from_it():
    cfg = load(port=0, tls_port=7443, tls_cert_file="c", tls_key_file="k", tls_auth_clients="no")
    assert cfg.client_port == 7443 and cfg.peer_address[1] == 17443
    both = load(tls_port=7443, tls_cert_file="c", tls_key_file="k", tls_auth_clients="no")
    assert both.client_port == 7379 and both.peer_address[1] == 17379


def test_a_missing_or_mismatched_file_is_a_config_error_naming_it(pki, tmp_path):
    with pytest.raises(ConfigError, match="tls_cert_file: no such file"):
        NodeTLS(tls_cfg(pki, tls_cert_file=str(tmp_path / "nope.crt")))
    with pytest.raises(ConfigError, match="tls_ca_cert_file: no such file"):
        NodeTLS(tls_cfg(pki, tls_ca_cert_file=str(tmp_path / "nope.crt")))
    _, other_key = pki.cert("node2")
    with pytest.raises(ConfigError, match="cannot load the certificate and its key"):
        NodeTLS(tls_cfg(pki, tls_key_file=other_key))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="tls_ca_cert_file"):
        NodeTLS(tls_cfg(pki, tls_ca_cert_file=str(junk)))


def test_which_contexts_a_node_builds(pki):
    t = NodeTLS(tls_cfg(pki))
    assert t.clients.verify_mode == ssl.CERT_REQUIRED and t.peers is None
    assert t.peer_client() is None
    t = NodeTLS(tls_cfg(pki, tls_auth_clients="optional", tls_cluster=True))
    assert t.clients.verify_mode == ssl.CERT_OPTIONAL
    assert t.peers.verify_mode == ssl.CERT_REQUIRED
    dial = t.peer_client()
    assert dial.verify_mode == ssl.CERT_REQUIRED and not dial.check_hostname
    t = NodeTLS(tls_cfg(pki, tls_port=0, tls_cluster=True))
    assert t.clients is None and t.peers is not None
    assert NodeTLS(tls_cfg(pki, tls_auth_clients="no")).clients.verify_mode == ssl.CERT_NONE


# ---- handshakes, in this process -----------------------------------------------------------

def _serial(der):
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def _file_serial(path):
    from cryptography import x509

    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).serial_number


async def _handshake(port, ctx):
    """The serial of the certificate the server at port presented, after a full handshake and
    one round trip (a refused client certificate fails the read under TLS 1.3)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(4), 10) == b"pong"
        return _serial(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
    finally:
        writer.close()


async def _pong(reader, writer):
    try:
        if await reader.read(4) == b"ping":
            writer.write(b"pong")
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def test_reload_gives_new_connections_the_new_certificate_and_a_bad_reload_changes_nothing(pki):
    cfg = tls_cfg(pki)
    tls = NodeTLS(cfg)
    client = pki.context()

    async def main():
        server = await asyncio.start_server(_pong, "127.0.0.1", 0, ssl=tls.clients)
        port = server.sockets[0].getsockname()[1]
        try:
            first = await _handshake(port, client)
            assert first == _file_serial(cfg.tls_cert_file)
            # a new certificate (and key) in the same files, then the reload
            make_cert(pki.dir, "node1", pki.ca_cert, pki.ca_key)
            assert await _handshake(port, client) == first      # not before the reload
            tls.reload()
            second = await _handshake(port, client)
            assert second != first and second == _file_serial(cfg.tls_cert_file)
            # a broken key file: the reload fails, the certificate in use stays
            with open(cfg.tls_key_file, "w") as f:
                f.write("garbage\n")
            with pytest.raises(ConfigError):
                tls.reload()
            assert await _handshake(port, client) == second
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_reload_of_a_new_ca_changes_which_client_certificates_are_accepted(tmp_path):
    old, new = DevPKI(tmp_path / "old"), DevPKI(tmp_path / "new")
    crt, key = old.cert("node1")
    cfg = load(tls_port=7443, tls_cert_file=crt, tls_key_file=key, tls_ca_cert_file=old.ca_cert)
    tls = NodeTLS(cfg)
    # the client trusts the old CA for the server, and presents a certificate of the new CA
    new_client = client_context(old.ca_cert, *new.cert("client"))

    async def main():
        server = await asyncio.start_server(_pong, "127.0.0.1", 0, ssl=tls.clients)
        port = server.sockets[0].getsockname()[1]
        try:
            await _handshake(port, old.context())
            with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
                await _handshake(port, new_client)
            shutil.copy(new.ca_cert, old.ca_cert)
            tls.reload()
            await _handshake(port, new_client)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_server_context_refuses_client_auth_without_a_ca(pki):
    crt, key = pki.cert("node1")
    with pytest.raises(ConfigError, match="tls_ca_cert_file"):
        server_context(crt, key, None, "yes")
    assert server_context(crt, key, None, "no").verify_mode == ssl.CERT_NONE


def test_make_ca_and_make_cert_write_private_keys_0600(tmp_path):
    ca, ca_key = make_ca(str(tmp_path))
    crt, key = make_cert(str(tmp_path), "n", ca, ca_key)
    assert os.stat(key).st_mode & 0o777 == 0o600 and os.stat(ca_key).st_mode & 0o777 == 0o600
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(crt, key)


# ---- docs/security.md's openssl commands ---------------------------------------------------

@pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("bash") is None,
                    reason="no openssl or bash")
def test_the_openssl_commands_of_docs_security_md_make_working_certificates(tmp_path):
    with open(os.path.join(ROOT, "docs", "security.md"), encoding="utf-8") as f:
        doc = f.read()
    section = doc[doc.index("### Making a CA and certificates with openssl"):]
    script = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    d = str(tmp_path)
    cfg = load(tls_port=7443, tls_cert_file=f"{d}/node1.crt", tls_key_file=f"{d}/node1.key",
               tls_ca_cert_file=f"{d}/ca.crt", tls_cluster=True)
    tls = NodeTLS(cfg)
    client = client_context(f"{d}/ca.crt", f"{d}/client.crt", f"{d}/client.key")

    async def main():
        server = await asyncio.start_server(_pong, "127.0.0.1", 0, ssl=tls.clients)
        peers = await asyncio.start_server(_pong, "127.0.0.1", 0, ssl=tls.peers)
        try:
            await _handshake(server.sockets[0].getsockname()[1], client)
            # a node dialing a node: its own certificate as the client certificate
            await _handshake(peers.sockets[0].getsockname()[1], tls.peer_client())
        finally:
            for s in (server, peers):
                s.close()
                await s.wait_closed()

    asyncio.run(main())
