"""kvnet/testing/ports.py."""
import socket

from kvnet import testing


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    ports = testing.free_ports(40)
    assert len(set(ports)) == 40
    low = testing._ephemeral_low()
    if low - testing._PORT_FLOOR > 1000:
        # an outgoing connection never takes one of these as its local port
        assert all(testing._PORT_FLOOR <= p < low for p in ports)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
