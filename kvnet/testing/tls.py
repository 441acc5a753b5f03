"""Certificates for tests and dev clusters: a CA, and node or client certificates it signs
(`kvnode dev --tls`, `LocalCluster(tls=True)`, tests/). Made with the `cryptography` package,
imported only when a certificate is made (the test extra and `ringkv[dev]` install it; the
base install does not need it). docs/security.md shows the same with the openssl command.

Keys are EC P-256, written with mode 0600; certificates are PEM. A node certificate names
127.0.0.1 and localhost (its subjectAltName) and serves as server and client certificate
both (mutual TLS between nodes, tls_cluster).
"""
import datetime
import ipaddress
import os

__all__ = ["DevPKI", "make_ca", "make_cert"]

CA_DAYS = 3650
CERT_DAYS = 825
HOSTS = ("127.0.0.1", "localhost", "::1")


def _crypto():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise RuntimeError("making certificates needs the cryptography package: pip install "
                           "'ringkv[dev]' (or make them with openssl: docs/security.md)") from None
    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _write(path, data, mode):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _save(key, cert, cert_path, key_path):
    _, _, serialization, _, _, _ = _crypto()
    _write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def make_ca(directory, name="ca", common_name="ringkv dev CA", days=CA_DAYS):
    """A self-signed CA: (<directory>/<name>.crt, <directory>/<name>.key)."""
    x509, hashes, _, ec, _, NameOID = _crypto()
    os.makedirs(directory, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    paths = os.path.join(directory, name + ".crt"), os.path.join(directory, name + ".key")
    _save(key, cert, *paths)
    return paths


def make_cert(directory, name, ca_cert, ca_key, hosts=HOSTS, common_name=None, days=CERT_DAYS):
    """A certificate signed by the CA (ca_cert, ca_key: its files), for server and client
    use, naming `hosts` (IP addresses and DNS names): (<directory>/<name>.crt, .key)."""
    x509, hashes, serialization, ec, EKU, NameOID = _crypto()
    with open(ca_cert, "rb") as f:
        issuer = x509.load_pem_x509_certificate(f.read())
    with open(ca_key, "rb") as f:
        issuer_key = serialization.load_pem_private_key(f.read(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    alt = []
    for h in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                           common_name or name)]))
               .issuer_name(issuer.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([EKU.SERVER_AUTH, EKU.CLIENT_AUTH]),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer_key.public_key()), critical=False))
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    os.makedirs(directory, exist_ok=True)
    paths = os.path.join(directory, name + ".crt"), os.path.join(directory, name + ".key")
    _save(key, cert, *paths)
    return paths


class DevPKI:
    """The certificates of a dev cluster or a test, in one directory: ca.crt/ca.key, made on
    first use and kept; <node>.crt/.key per node and client.crt/.key, made when missing."""

    def __init__(self, directory):
        self.dir = os.fspath(directory)
        self.ca_cert = os.path.join(self.dir, "ca.crt")
        self.ca_key = os.path.join(self.dir, "ca.key")
        if not (os.path.exists(self.ca_cert) and os.path.exists(self.ca_key)):
            make_ca(self.dir)

    def cert(self, name):
        """(cert, key) of `name` (a node or "client"), made when missing."""
        crt, key = os.path.join(self.dir, name + ".crt"), os.path.join(self.dir, name + ".key")
        if not (os.path.exists(crt) and os.path.exists(key)):
            make_cert(self.dir, name, self.ca_cert, self.ca_key)
        return crt, key

    def node_flags(self, name, cluster=True):
        """`kvnode start` flags of node `name`: its certificate, the CA and tls_cluster."""
        crt, key = self.cert(name)
        return ["--tls-cert-file", crt, "--tls-key-file", key, "--tls-ca-cert-file",
                self.ca_cert] + (["--tls-cluster"] if cluster else [])

    def client(self):
        """Client keywords (kvnet.Client, redis_client's): the CA and a client certificate."""
        crt, key = self.cert("client")
        return {"tls": True, "cacert": self.ca_cert, "cert": crt, "key": key}

    def context(self):
        """An ssl client context trusting the CA and presenting the client certificate."""
        from kvnet.tlsconfig import client_context

        crt, key = self.cert("client")
        return client_context(self.ca_cert, crt, key)

