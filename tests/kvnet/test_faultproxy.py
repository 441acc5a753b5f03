"""kvnet/faultproxy.py's FaultProxy (LocalCluster(proxied=True) and `kvnode dev --faults` use it)
against an echo server. Fast: no node processes."""
import socket
import threading

import pytest

from kvnet.faultproxy import FaultProxy


class EchoServer:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                c.sendall(data)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def echo():
    srv = EchoServer()
    yield srv
    srv.close()


@pytest.fixture
def proxy(echo):
    px = FaultProxy(echo.port)
    yield px
    px.close()


def _connect(port, timeout=2.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def _recv_exactly(s, n):
    buf = b""
    while len(buf) < n:
        data = s.recv(n - len(buf))
        if not data:
            break
        buf += data
    return buf


def test_proxy_forwards_both_ways_and_counts_bytes(proxy):
    with _connect(proxy.port) as s:
        s.sendall(b"hello" * 1000)
        assert _recv_exactly(s, 5000) == b"hello" * 1000
    st = proxy.stats()
    assert st["accepted"] == 1 and st["bytes_up"] == 5000 and st["bytes_down"] == 5000


def test_cut_blackholes_open_and_new_connections_and_heal_delivers(proxy):
    old = _connect(proxy.port)
    old.sendall(b"a")
    assert _recv_exactly(old, 1) == b"a"
    proxy.cut()
    old.settimeout(0.3)
    old.sendall(b"held")
    with pytest.raises(socket.timeout):
        old.recv(10)
    new = _connect(proxy.port)               # accepted (no refusal), but nothing passes
    new.settimeout(0.3)
    new.sendall(b"new")
    with pytest.raises(socket.timeout):
        new.recv(10)
    up = proxy.bytes_up
    assert up == 1
    proxy.heal()
    old.settimeout(2)
    new.settimeout(2)
    assert _recv_exactly(old, 4) == b"held"     # held, not lost: as TCP across a partition
    assert _recv_exactly(new, 3) == b"new"
    old.close()
    new.close()


def test_refuse_mode_refuses_and_resets_then_heal_listens_again(proxy):
    old = _connect(proxy.port)
    old.sendall(b"x")
    assert _recv_exactly(old, 1) == b"x"
    proxy.cut("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
    with pytest.raises(OSError):                 # reset (or closed) by the proxy
        old.sendall(b"y")
        if not old.recv(1):
            raise ConnectionResetError("closed")
    old.close()
    proxy.heal()
    with _connect(proxy.port) as s:
        s.sendall(b"back")
        assert _recv_exactly(s, 4) == b"back"


def test_close_is_idempotent_and_ends_connections(echo):
    px = FaultProxy(echo.port)
    s = _connect(px.port)
    px.close()
    px.close()
    s.settimeout(2)
    try:
        assert s.recv(1) == b""
    except ConnectionResetError:
        pass
    s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", px.port), timeout=1)


def test_slow_holds_chunks_in_order_and_heal_lets_them_go(proxy):
    """slow(ms): what is read waits ms before it goes on (a delay this long holds it within
    any receive timeout), bytes stay in order; heal() ends the delay and releases them."""
    assert proxy.stats()["delay_ms"] == 0
    with _connect(proxy.port) as s:
        s.sendall(b"warm")
        assert _recv_exactly(s, 4) == b"warm"
        proxy.slow(60_000)
        assert proxy.stats()["delay_ms"] == 60_000
        for i in range(50):
            s.sendall(b"%03d" % i)
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(10)
        proxy.heal()
        assert proxy.stats()["delay_ms"] == 0
        s.settimeout(5)
        assert _recv_exactly(s, 150) == b"".join(b"%03d" % i for i in range(50))


def test_a_small_delay_still_delivers_everything(proxy):
    proxy.slow(20)
    with _connect(proxy.port) as s:
        s.settimeout(10)
        s.sendall(b"y" * 300_000)
        assert _recv_exactly(s, 300_000) == b"y" * 300_000
    assert proxy.stats()["delay_ms"] == 20 and proxy.bytes_down == 300_000
    proxy.slow(0)
    assert proxy.stats()["delay_ms"] == 0


def test_a_cut_holds_what_a_slowed_link_has_on_its_line(proxy):
    with _connect(proxy.port) as s:
        proxy.slow(60_000)
        s.sendall(b"held")
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(10)
        proxy.cut()
        proxy.slow(0)                        # due now, but the link is cut
        with pytest.raises(socket.timeout):
            s.recv(10)
        proxy.heal()
        s.settimeout(5)
        assert _recv_exactly(s, 4) == b"held"


@pytest.mark.parametrize("bad", [-1, 60_001, float("nan"), "10", True])
def test_slow_refuses_a_bad_delay(proxy, bad):
    with pytest.raises(ValueError, match="a delay is 0 to 60000 ms"):
        proxy.slow(bad)
    assert proxy.stats()["delay_ms"] == 0
