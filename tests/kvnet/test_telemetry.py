"""Staleness telemetry, the canary writer and KV.TRACE on three in-process nodes (one cluster
for the module, its loop in a thread; N=3, R=1 by default, a canary every 100 ms on the node
started last, when its peers are up): a stale
replica raises the stale-read counter for its R, the canary fills its histogram per W, and
KV.TRACE answers through redis-py and kvctl (docs/observability.md)."""
import asyncio
import io
import json
import re
import threading
import time
import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from kvcore import versions as V
from kvnet.cli import kvctl
from kvnet.client import Client, _decode
from kvnet.config import load
from kvnet.node import Node
from kvnet.testing import free_ports

pytestmark = pytest.mark.slow


class _Cluster:
    def __init__(self, tmp):
        ports = free_ports(9)
        self.ports, peers, metrics = ports[:3], ports[3:6], ports[6:9]
        members = [f"t{i}@127.0.0.1:{peers[i]}" for i in range(3)]
        self.cfgs = [load(name=f"t{i}", port=self.ports[i], peer_port=peers[i],
                          metrics_port=metrics[i], n=3, r=1, w=2, ring_size=16,
                          data_dir=str(tmp / f"t{i}"), members=members, fsync="never",
                          ae_enabled=False, gossip_interval_ms=50, request_timeout_ms=2000,
                          canary_interval_ms=100 if i == 2 else 0) for i in range(3)]
        self.nodes = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self):
        async def start():
            for cfg in self.cfgs:
                self.nodes.append(await Node(cfg).start())
        self.loop.run_until_complete(start())
        self.thread.start()

    def call(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def on_loop(self, fn):
        """fn() run on the nodes' loop (their stores are not thread-safe)."""
        async def call():
            return fn()
        return self.call(call())

    def stop(self):
        async def stop():
            for n in reversed(self.nodes):
                await n.stop()
        try:
            if self.thread.is_alive():
                self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = _Cluster(tmp_path_factory.mktemp("telemetry"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def scrape(node):
    """{(sample name, frozenset of labels): value} of a node's /metrics."""
    url = f"http://127.0.0.1:{node.metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as f:
        text = f.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _wait(pred, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _newer_on_the_others(cluster, key):
    """key written to all three, then a newer version on t1 and t2 only: t0 is stale."""
    r = redis.Redis(port=cluster.ports[0])
    try:
        r.execute_command("KV.PUT", key, b"old", "W", "3")
    finally:
        r.close()
    t0, t1, t2 = cluster.nodes
    p = t0.ring.partition_of(key)

    def newer():
        raw = t1.replica.mint_raw(p, key, V.sibling(b"new"), None, True)
        t2.replica.merge(p, key, V.decode(raw))
    cluster.on_loop(newer)
    return p


def test_reads_answered_by_a_stale_replica_count_stale_for_their_r(cluster):
    t0 = cluster.nodes[0]
    before = scrape(t0)
    r = redis.Redis(port=cluster.ports[0])
    try:
        _newer_on_the_others(cluster, b"stale-1")
        # KV.GET R 1 on t0: its own copy answers at once, the newer ones come after
        ctx, values = r.execute_command("KV.GET", "stale-1", "R", "1")
        assert values == [b"old"]
        _newer_on_the_others(cluster, b"stale-2")
        assert r.get("stale-2") == b"old"      # a plain GET at R=1 (the door, or the lane)
        _wait(lambda: total(scrape(t0), "ringkv_stale_reads_total", r="1")
              - total(before, "ringkv_stale_reads_total", r="1") >= 2, what="stale reads")
        # R=3 waits for every replica: its answer is the merge, never stale
        _newer_on_the_others(cluster, b"stale-3")
        assert r.execute_command("KV.GET", "stale-3", "R", "3")[1] == [b"new"]
        _wait(lambda: total(scrape(t0), "ringkv_reads_checked_total", r="3")
              > total(before, "ringkv_reads_checked_total", r="3"), what="a checked R=3 read")
        after = scrape(t0)
        assert total(after, "ringkv_stale_reads_total", r="3") \
            == total(before, "ringkv_stale_reads_total", r="3")
        assert total(after, "ringkv_reads_checked_total", r="1") \
            >= total(after, "ringkv_stale_reads_total", r="1")
    finally:
        r.close()


def test_the_canary_fills_the_convergence_histogram_of_every_w(cluster):
    t2 = cluster.nodes[2]
    _wait(lambda: all(total(scrape(t2), "ringkv_convergence_seconds_count", w=str(w)) >= 1
                      for w in (1, 2, 3)), what="a canary round of each W")
    s = scrape(t2)
    for w in ("1", "2", "3"):
        assert total(s, "ringkv_convergence_seconds_bucket", w=w, le="+Inf") \
            == total(s, "ringkv_convergence_seconds_count", w=w)
        assert total(s, "ringkv_canary_unconverged_total", w=w) == 0
    assert total(s, "ringkv_canary_failures_total") == 0
    # the other nodes run no canary (canary_interval_ms=0): their histogram is empty
    assert total(scrape(cluster.nodes[0]), "ringkv_convergence_seconds_count") == 0


def test_kv_trace_of_a_get_through_redis_py_shows_three_replicas_asked(cluster):
    for proto in (3, 2):
        r = redis.Redis(port=cluster.ports[0], protocol=proto)
        try:
            r.set("traced", "v")
            t = _decode(r.execute_command("KV.TRACE", "GET", "traced"))
            if proto == 2:                  # RESP2: a map is a flat array of key, value, ...
                t = dict(zip(t[::2], t[1::2]))
                assert t["result"] == "v" and t["error"] is None
                continue
            assert t["result"] == "v" and t["error"] is None and t["node"] == "t0"
            [step] = t["steps"]
            assert step["op"] == "get" and step["r"] == 1 and step["n"] == 3
            assert sorted(step["asked"]) == ["t0", "t1", "t2"]
            assert [x["counted"] for x in step["replies"]].count("yes") == 1    # R=1
            assert {x["outcome"] for x in step["replies"]} == {"found"}
            assert step["stale"] == "no" and step["repairs"] == []
            t = _decode(r.execute_command("KV.TRACE", "KV.PUT", "traced", "v2", "W", "3"))
            [step] = t["steps"]
            assert step["op"] == "put" and step["w"] == 3 and step["outcome"] == "ok"
            assert [x["counted"] for x in step["replies"]] == ["yes"] * 3
            assert step["hints"] == []
            with pytest.raises(redis.ResponseError, match="KV.TRACE runs GET"):
                r.execute_command("KV.TRACE", "FLUSHALL", "x")
            with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
                r.execute_command("KV.TRACE", "SET", "x")
        finally:
            r.close()


def test_a_trace_of_a_stale_read_names_the_repair(cluster):
    p = _newer_on_the_others(cluster, b"stale-traced")
    c = Client("127.0.0.1", cluster.ports[0], route=False)
    try:
        t = c.trace("KV.GET", "stale-traced", "R", 1)
    finally:
        c.close()
    [step] = t["steps"]
    assert step["partition"] == p and step["stale"] == "yes"
    assert [x["node"] for x in step["repairs"]] == ["t0"]
    assert step["repairs"][0]["outcome"] == "ok"
    assert t["result"][1] == ["old"]


def _kvctl(cluster, *argv):
    out, err = io.StringIO(), io.StringIO()
    rc = kvctl.main(["--port", str(cluster.ports[0]), *argv], out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_kvctl_trace_prints_a_table_per_step(cluster):
    rc, out, err = _kvctl(cluster, "trace", "put", "kvctl-traced", "hello", "--w", "3")
    assert rc == 0, err
    assert re.search(r"^KV.PUT kvctl-traced <5 bytes> W 3 on t\d: ok in [\d.]+ ms$", out, re.M)
    assert re.search(r"^result: 0x[0-9a-f]+$", out, re.M)          # the new context
    assert "W=3 of N=3" in out and "counted to W" in out and "hints written: none" in out
    rc, out, err = _kvctl(cluster, "trace", "get", "kvctl-traced")
    assert rc == 0, err
    lines = out.splitlines()
    assert any(line.split()[:3] == ["t1", "primary", "found"] for line in lines)
    assert "stale answer: no" in out and "read repairs: none" in out
    rc, out, err = _kvctl(cluster, "--json", "trace", "get", "kvctl-traced", "--r", "3")
    assert rc == 0, err
    assert json.loads(out)["steps"][0]["r"] == 3
    assert _kvctl(cluster, "trace", "put", "k")[0] == kvctl.USAGE


def test_kvctl_stats_shows_stale_shares_and_convergence(cluster):
    _newer_on_the_others(cluster, b"stats-stale")
    r = redis.Redis(port=cluster.ports[0])
    try:
        r.execute_command("KV.GET", "stats-stale", "R", "1")
    finally:
        r.close()
    _wait(lambda: cluster.nodes[2].canary.by_w, what="a canary round")
    rc, out, err = _kvctl(cluster, "stats")
    assert rc == 0, err
    assert "stale share" in out and "canary writes" in out and "p99 ms" in out
    rows = [line.split() for line in out.splitlines()]
    assert any(row[:2] == ["t0", "1"] and row[-1].endswith("%") for row in rows)
    got = json.loads(_kvctl(cluster, "--json", "stats", "--here")[1])
    assert [x["node"] for x in got] == ["t0"]
    [r1] = [x for x in got[0]["reads"] if x["r"] == 1]
    assert r1["stale"] >= 1 and r1["checked"] >= r1["stale"]


def test_a_coordinator_asked_for_its_trace_sends_it_with_the_clock(cluster):
    """The peer side of a traced forward (kvnet/replicahandlers.py coord_put with "tr")."""
    t1 = cluster.nodes[1]
    p = t1.ring.partition_of(b"forwarded")
    m = {"p": p, "k": b"forwarded", "v": b"v", "ts": 1, "ctx": None, "ow": True, "w": 3,
         "st": False}
    got = cluster.call(t1.handlers("coord_put", dict(m, tr=True)))
    assert V.lww_value(V.decode(got["c"])) == b"v"
    [step] = got["t"]
    assert step["op"] == "put" and step["coordinator"] == "t1" and step["w"] == 3
    assert sorted(x["node"] for x in step["replies"]) == ["t0", "t1", "t2"]
    assert type(cluster.call(t1.handlers("coord_put", m))) is bytes      # untraced: the clock
