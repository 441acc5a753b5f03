"""`kvnode dev --tls`: a CA and certificates made in the data directory on first start, nodes
serving clients on TLS only and talking over mutual TLS, the redis-cli line it prints; and
`kvnode add --tls` joining a node to it; SIGHUP stops the dev cluster."""
import os
import signal
import subprocess
import sys
import time

import pytest

from kvnet.client import Client
from kvnet.testing import OutputReader, dev_base_port, ping
from kvnet.testing.tls import DevPKI

pytestmark = pytest.mark.slow


def _stop(*procs):
    for p in procs:
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        if p is None:
            continue
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_dev_tls_then_add_tls(tmp_path):
    base = dev_base_port(3)
    data = str(tmp_path / "data")
    kvnode = [sys.executable, "-m", "kvnet.cli.kvnode"]
    common = ["--base-port", str(base), "--data-dir", data, "--fsync", "never", "--tls",
              "--ring-size", "16", "--gossip-interval-ms", "200"]
    dev = subprocess.Popen(kvnode + ["dev", "--nodes", "2", "--n", "2"] + common,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    add = None
    try:
        out = "".join(OutputReader(dev).until("Try: kill"))
        tls_dir = os.path.join(data, "tls")
        for f in ("ca.crt", "ca.key", "node1.crt", "node2.key", "client.crt", "client.key"):
            assert os.path.exists(os.path.join(tls_dir, f)), f
        assert f"redis-cli -p {base} --tls --cacert {tls_dir}/ca.crt" in out
        assert not ping(base)                                 # no plaintext client port
        pki = DevPKI(tls_dir)
        assert ping(base, ssl=pki.context()) and ping(base + 1, ssl=pki.context())
        with Client("127.0.0.1", base, route=True, **pki.client()) as c:
            for i in range(50):
                c.put(f"k{i}", f"v{i}", w=2)                  # both replicas: peers over TLS
            add = subprocess.Popen(kvnode + ["add"] + common, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
            joined = "".join(OutputReader(add).until("joining"))
            assert f"node3: joining on 127.0.0.1:{base + 2}" in joined and "--tls" in joined
            deadline = time.monotonic() + 60
            while c.cluster("transfers")["moving"]:
                assert time.monotonic() < deadline, "transfers did not finish"
                time.sleep(0.2)
            assert sorted(n["name"] for n in c.ring()["nodes"]) == ["node1", "node2", "node3"]
            epoch = c.ring()["epoch"]
        with Client("127.0.0.1", base + 2, **pki.client()) as c3:
            # the newest ring reaches node3 by gossip: until it has it, node3 coordinates by
            # the ring before, and a replica that moved on refuses it (docs/cluster.md)
            while c3.ring()["epoch"] < epoch:
                assert time.monotonic() < deadline + 30, "node3 never learned the ring"
                time.sleep(0.2)
            assert all(c3.get(f"k{i}", r=2).value == f"v{i}".encode() for i in range(50))
        # the CA is kept: a second start uses the same one
        before = open(os.path.join(tls_dir, "ca.crt")).read()
        _stop(add)
        # SIGHUP (a closed terminal) stops the dev cluster: its nodes, which take SIGHUP as a
        # certificate reload, do not outlive it
        dev.send_signal(signal.SIGHUP)
        assert dev.wait(60) == 0
        assert DevPKI(tls_dir) and open(os.path.join(tls_dir, "ca.crt")).read() == before
    finally:
        _stop(add, dev)
    assert not any(ping(base + i, ssl=DevPKI(os.path.join(data, "tls")).context())
                   for i in range(3))
