"""Ports and CPUs for tests and benchmarks: free ports on 127.0.0.1 (`free_ports`, from
kvnet/faultproxy.py), a base port for `kvnode dev` (`dev_base_port`), one CPU for a process
(`pin_cpu`)."""
import socket
import subprocess

from kvnet.faultproxy import (  # noqa: F401  (they live there; the toolkit's names stay)
    _PORT_FLOOR, _ephemeral_low, free_ports)


def pin_cpu(pid, cpu):
    """Every thread of process `pid` onto one CPU (taskset): benchmarks' --pin."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], capture_output=True,
                   check=True)


def _bindable(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def dev_base_port(nodes):
    """A base port for `kvnode dev --nodes nodes`: its client ports base..base+nodes-1 and
    peer ports base+10000.. all free now."""
    for _ in range(50):
        p = free_ports(1)[0]
        ports = [p + i for i in range(nodes)] + [p + 10000 + i for i in range(nodes)]
        if p + 10000 + nodes < 65535 and all(_bindable(q) for q in ports):
            return p
    raise AssertionError("no block of free ports")
