"""PeerPool over mutual TLS (tls_cluster): requests flow both ways; a plaintext peer, a peer
without a certificate of the cluster's CA and a peer with the wrong cluster secret are all
refused; the handshake over TLS still carries the protocol version; a reload changes the
certificate the next dial presents."""
import asyncio
import ssl

import pytest

from kvnet.config import load
from kvnet.peer.core import PROTOCOL_VERSION
from kvnet.errors import PeerError
from kvnet.peer.errors import AuthenticationError
from kvnet.peer.pool import PeerPool
from kvnet.testing.tls import DevPKI
from kvnet.tlsconfig import NodeTLS

SECRET = b"pool-secret"
HOST = "127.0.0.1"


def run(coro, limit=30):
    async def bounded():
        async with asyncio.timeout(limit):
            return await coro

    return asyncio.run(bounded())


async def echo(type, payload):
    return payload


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return DevPKI(tmp_path_factory.mktemp("tls"))


def node_tls(pki, name, ca=None):
    crt, key = pki.cert(name)
    return NodeTLS(load(name=name, tls_cert_file=crt, tls_key_file=key,
                        tls_ca_cert_file=ca or pki.ca_cert, tls_cluster=True))


def test_mutual_tls_between_two_pools(pki):
    async def main():
        async with PeerPool("a", SECRET, echo, tls=node_tls(pki, "a")) as a, \
                PeerPool("b", SECRET, echo, tls=node_tls(pki, "b")) as b:
            server_a = await a.serve(HOST, 0)
            server_b = await b.serve(HOST, 0)
            assert await a.request("b", (HOST, server_b.port), "x", 1) == 1
            conn = a.get("b")
            tls = conn._transport.get_extra_info("ssl_object")
            assert tls is not None and tls.version() in ("TLSv1.2", "TLSv1.3")
            assert conn.peer_id == "b" and conn.version == PROTOCOL_VERSION   # agreed in the handshake
            # b's end saw a's certificate (mutual)
            (inbound,) = server_b.connections
            theirs = inbound._transport.get_extra_info("ssl_object").getpeercert()
            assert dict(x[0] for x in theirs["subject"])["commonName"] == "a"
            # inside mutual TLS the frames carry no MAC of ours (TLS authenticates them),
            # though the pools want MACs (frame_mac's default)
            assert conn.frame_mac is False and conn.mac is False and inbound.mac is False
            assert await b.request("a", (HOST, server_a.port), "x", 2) == 2
            big = b"y" * (3 << 20)                  # a chunked message over TLS
            assert await a.request("b", (HOST, server_b.port), "x", big, timeout=20) == big

    run(main())


def test_plaintext_and_foreign_peers_are_refused(pki, tmp_path):
    other = DevPKI(tmp_path / "other")          # a CA the cluster does not trust

    async def main():
        async with PeerPool("b", SECRET, echo, tls=node_tls(pki, "b")) as b:
            server = await b.serve(HOST, 0)
            addr = (HOST, server.port)
            async with PeerPool("p", SECRET, backoff_base=5, backoff_max=5) as plain:
                with pytest.raises((PeerError, ConnectionError, TimeoutError)):
                    await plain.request("b", addr, "x", 1, timeout=5)
            foreign = node_tls(other, "f", ca=pki.ca_cert)  # its own cert is of the other CA
            async with PeerPool("f", SECRET, tls=foreign, backoff_base=5, backoff_max=5) as f:
                with pytest.raises((PeerError, ConnectionError, TimeoutError)):
                    await f.request("b", addr, "x", 1, timeout=5)
            # a valid certificate and the wrong secret: the handshake still refuses it
            async with PeerPool("w", b"wrong-secret", tls=node_tls(pki, "w"),
                                backoff_base=5, backoff_max=5) as w:
                with pytest.raises(AuthenticationError):
                    await w.request("b", addr, "x", 1, timeout=5)
            assert not server.connections or all(not c.is_ready for c in server.connections)
        # and a TLS node dialing a plaintext one fails too
        async with PeerPool("q", SECRET, echo) as q, \
                PeerPool("a", SECRET, tls=node_tls(pki, "a"), backoff_base=5, backoff_max=5) as a:
            server_q = await q.serve(HOST, 0)
            with pytest.raises((PeerError, ConnectionError, TimeoutError)):
                await a.request("q", (HOST, server_q.port), "x", 1, timeout=5)

    run(main())


def test_a_reload_changes_the_certificate_the_next_dial_presents(pki, tmp_path):
    from kvnet.testing.tls import make_cert

    fresh = DevPKI(tmp_path / "a")
    # node a's files live in their own directory, signed by the cluster's CA
    crt, key = make_cert(fresh.dir, "a", pki.ca_cert, pki.ca_key)
    tls_a = NodeTLS(load(name="a", tls_cert_file=crt, tls_key_file=key,
                         tls_ca_cert_file=pki.ca_cert, tls_cluster=True))

    def serial_seen(server):
        (conn,) = [c for c in server.connections if c.is_ready]
        der = conn._transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return ssl.DER_cert_to_PEM_cert(der)

    async def main():
        async with PeerPool("b", SECRET, echo, tls=node_tls(pki, "b")) as b:
            server = await b.serve(HOST, 0)
            async with PeerPool("a", SECRET, tls=tls_a) as a:
                assert await a.request("b", (HOST, server.port), "x", 1) == 1
                first = serial_seen(server)
            await asyncio.sleep(0.1)
            make_cert(fresh.dir, "a", pki.ca_cert, pki.ca_key)
            tls_a.reload()
            async with PeerPool("a", SECRET, tls=tls_a) as a:
                assert await a.request("b", (HOST, server.port), "x", 2) == 2
                second = serial_seen(server)
            assert first != second

    run(main())
