"""kvnode's port check: a port is in use only while something listens on it. A port whose
connections of a stopped cluster linger in TIME_WAIT is free: the nodes' servers bind it
with SO_REUSEADDR, as asyncio's do, so `kvnode dev` must not refuse to start again."""
import re
import socket
import time

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
    time_wait = re.compile(rf"0100007f:{port:04x} 0100007f:[0-9a-f]{{4}} 06 ")   # st 06
    for _ in range(100):                 # the last ACK crosses loopback in a moment
        with open("/proc/net/tcp") as f:
            if time_wait.search(f.read().lower()):
                break
        time.sleep(0.01)
    else:
        raise AssertionError(f"no connection of port {port} in TIME_WAIT")
    assert _port_free(port)
