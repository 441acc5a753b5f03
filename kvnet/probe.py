"""Is a RESP server answering? One PING on a fresh connection (dev supervisor, test harness)."""
import socket


def ping(port, host="127.0.0.1", timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            # a node with a password answers NOAUTH before AUTH, as Redis does: it is up
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False
