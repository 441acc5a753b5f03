"""kvnode's port check: a port is in use only while something listens on it. A port whose
connections of a stopped cluster linger in TIME_WAIT is free: the nodes' servers bind it
with SO_REUSEADDR, as asyncio's do, so `kvnode dev` must not refuse to start again."""
import socket

from kvnet.cli.kvnode import _port_free


def test_a_listening_port_is_in_use_and_a_time_wait_one_is_free():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        assert not _port_free(port)
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()                 # the server side closes first: its end waits in
        client.recv(1)                   # TIME_WAIT on `port` once the client closes too
        client.close()
    finally:
        listener.close()
    states = open("/proc/net/tcp").read().lower()
    assert f"0100007f:{port:04x} 0100007f:" in states      # a connection of `port` lingers
    assert _port_free(port)
