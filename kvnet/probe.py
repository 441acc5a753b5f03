"""Is a RESP server answering? One PING on a fresh connection (dev supervisor, test harness)."""
import socket


def ping(port, host="127.0.0.1", timeout=0.5, ssl=None):
    """`ssl`: an SSLContext for a TLS port (kvnet.tlsconfig.client_context)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if ssl is None:
                return _ping(raw)
            with ssl.wrap_socket(raw, server_hostname=host) as s:
                return _ping(s)
    except OSError:     # (ssl.SSLError too)
        return False


def _ping(s):
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    # a node with a password answers NOAUTH before AUTH, as Redis does: it is up
    return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
