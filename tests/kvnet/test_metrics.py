"""A node's /metrics (kvnet/metrics.py) scraped over HTTP and parsed with prometheus_client's
own parser: request counts and latency histograms of every SET path, the coordinator's
outcomes, divergent reads and read repairs, and INFO's latencystats."""
import asyncio
import urllib.request

import pytest
import redis.asyncio as aredis
from prometheus_client.parser import text_string_to_metric_families

from kvcore import versions as V
from kvnet.config import load
from kvnet.frontdoor import _LocalDoor
from kvnet.metrics import latency_percentiles, percentile_us
from kvnet.node import Node
from kvnet.reqstats_py import ReqStats as PyReqStats
from kvnet.testing import free_ports

SETS = 1000


async def _cluster(tmp_path, nodes=1, n=1, w=1, r=1, **kw):
    ports = free_ports(3 * nodes)
    members = [f"n{i}@127.0.0.1:{ports[nodes + i]}" for i in range(nodes)]
    out = []
    try:
        for i in range(nodes):
            cfg = load(name=f"n{i}", port=ports[i], peer_port=ports[nodes + i],
                       metrics_port=ports[2 * nodes + i], n=n, r=r, w=w, fsync="never",
                       request_timeout_ms=10000, ring_size=16, ae_enabled=False,
                       data_dir=str(tmp_path / f"n{i}"), members=members, **kw)
            out.append(await Node(cfg).start())
    except BaseException:
        for node in out:
            await node.stop()
        raise
    return out


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def scrape(node):
    """{(sample name, frozenset of labels): value} of the node's /metrics."""
    url = f"http://127.0.0.1:{node.metrics.port}/metrics"

    def get():
        with urllib.request.urlopen(url, timeout=10) as f:
            assert f.status == 200
            return f.read().decode()

    text = await asyncio.to_thread(get)
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def total(samples, name, **labels):
    """The sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def _sets(port, prefix, pipelined):
    c = aredis.Redis(port=port)
    try:
        if pipelined:       # 10 commands per write: the door's receive() takes them together
            for i in range(0, SETS, 10):
                pipe = c.pipeline(transaction=False)
                for j in range(i, i + 10):
                    pipe.set(f"{prefix}{j}", b"v%d" % j)
                assert all(await pipe.execute())
        else:
            for i in range(SETS):
                assert await c.set(f"{prefix}{i}", b"v%d" % i)
    finally:
        await c.aclose()


def _check_sets(before, after, quorum=None):
    labels = {"command": "set"} if quorum is None else {"command": "set", "quorum": quorum}
    assert total(after, "ringkv_requests_total", **labels) \
        - total(before, "ringkv_requests_total", **labels) == SETS
    assert total(after, "ringkv_request_duration_seconds_count", **labels) \
        - total(before, "ringkv_request_duration_seconds_count", **labels) == SETS
    # the +Inf bucket is the count; the sum is some time
    assert total(after, "ringkv_request_duration_seconds_bucket", le="+Inf", **labels) \
        == total(after, "ringkv_request_duration_seconds_count", **labels)
    assert total(after, "ringkv_request_duration_seconds_sum", **labels) \
        > total(before, "ringkv_request_duration_seconds_sum", **labels)


# door: the compiled door (LocalDoor.receive / take); now: the door off, the front door's
# set_overwrite_now; general: that off too, the coordinator's coroutine
MODES = [m for m in ("door", "now", "general") if m != "door" or _LocalDoor is not None]


@pytest.mark.parametrize("pipelined", [False, True], ids=["one-by-one", "pipelined"])
@pytest.mark.parametrize("mode", MODES)
def test_1000_sets_raise_the_set_count_and_histogram_by_exactly_1000(tmp_path, mode, pipelined):
    async def main():
        [node] = await _cluster(tmp_path)
        try:
            if mode != "door":
                node.resp.door = None
            if mode == "general":
                node.front.fast_lanes = False
            before = await scrape(node)
            await _sets(node.cfg.port, "k", pipelined)
            after = await scrape(node)
            _check_sets(before, after, quorum="w=1")
            if mode == "general":       # the coordinator coordinated every one
                assert total(after, "ringkv_coordinator_requests_total", op="put",
                             quorum="w=1", outcome="ok") == SETS
        finally:
            await node.stop()

    run(main())


# The 3-node test of SETs on the direct lane and forwarded is in tests/kvnet/test_status_page.py:
# it shares that module's cluster of processes with the status page's browser test.


@pytest.mark.slow
def test_a_stale_replica_counts_a_divergent_read_and_its_read_repair(tmp_path):
    async def main():
        nodes = await _cluster(tmp_path, nodes=3, n=3, w=3, r=3)
        c = aredis.Redis(port=nodes[1].cfg.port)
        try:
            await c.execute_command("KV.PUT", "k", "v1")
            p = nodes[0].front._partition(b"k")
            # a newer version on n0 alone: n1 and n2 are stale
            nodes[0].replica.mint_raw(p, b"k", V.sibling(b"v2"), None, True)
            before = await scrape(nodes[1])
            ctx, values = await c.execute_command("KV.GET", "k", "R", "3")
            assert values == [b"v2"]
            for _ in range(200):        # the repair is sent after the reply
                after = await scrape(nodes[1])
                if total(after, "ringkv_read_repairs_total") >= 2:
                    break
                await asyncio.sleep(0.05)
            assert total(after, "ringkv_divergent_reads_total") \
                - total(before, "ringkv_divergent_reads_total") == 1
            assert total(after, "ringkv_read_repairs_total") \
                - total(before, "ringkv_read_repairs_total") == 2
            assert total(after, "ringkv_coordinator_requests_total", op="get", quorum="r=3",
                         outcome="ok") == 1
            assert total(after, "ringkv_requests_total", command="kv.get", quorum="r=3") == 1
            assert total(after, "ringkv_read_siblings_count") == 1
            assert total(after, "ringkv_read_siblings_bucket", le="1.0") == 1
        finally:
            await c.aclose()
            for node in nodes:
                await node.stop()

    run(main())


def test_the_other_families_are_there_and_info_has_latency_percentiles(tmp_path):
    async def main():
        [node] = await _cluster(tmp_path)
        c = aredis.Redis(port=node.cfg.port)
        try:
            for i in range(50):
                await c.set(f"k{i}", b"x" * 100)
                await c.set(f"k{i}", b"y" * 100)        # dead bytes
            await c.get("k1")
            s = await scrape(node)
            for name in ("ringkv_storage_live_bytes", "ringkv_storage_dead_bytes",
                         "ringkv_merges_total", "ringkv_merge_reclaimed_bytes_total",
                         "ringkv_corrupt_records", "ringkv_hints_replayed_total",
                         "ringkv_transfer_sent_keys_total", "ringkv_antientropy_exchanges_total",
                         "ringkv_antientropy_repairs_total", "ringkv_connected_clients",
                         "ringkv_peer_frame_mac_failures_total",
                         "ringkv_divergent_reads_total", "ringkv_read_repairs_total",
                         "process_open_fds"):
                assert any(n == name for n, _ in s), name
            assert total(s, "ringkv_storage_live_bytes") > 0
            assert total(s, "ringkv_storage_dead_bytes") > 0
            assert total(s, "process_open_fds") > 0
            assert total(s, "ringkv_connected_clients") == 1
            assert total(s, "ringkv_requests_total", command="get", quorum="r=1") == 1
            info = await c.info("latencystats")     # (redis-py parses Redis 7's format)
            parts = info["latency_percentiles_usec_set"]
            assert list(parts) == ["p50", "p99", "p99.9"]
            assert 0 < float(parts["p50"]) <= float(parts["p99"]) <= float(parts["p99.9"])
            assert "latency_percentiles_usec_get" in info
            # as Redis 7: not a default section, but in all
            assert "latency_percentiles_usec_set" not in await c.info()
            assert "latency_percentiles_usec_set" in await c.info("all")
        finally:
            await c.aclose()
            await node.stop()

    run(main())


def test_a_busy_metrics_port_stops_the_node_with_a_clear_error(tmp_path):
    async def main():
        [node] = await _cluster(tmp_path)
        try:
            cfg = load(name="m", port=free_ports(1)[0], metrics_port=node.metrics.port,
                       n=1, r=1, w=1, data_dir=str(tmp_path / "m"), ring_size=16)
            with pytest.raises(OSError, match="metrics_port"):
                await Node(cfg).start()
        finally:
            await node.stop()

    run(main())


def test_latency_percentiles_are_the_bounds_of_their_buckets():
    rs = PyReqStats()
    s = rs.slot("set", "w=1")
    for _ in range(98):
        rs.add_ns(s, 10_000)       # 10 us
    rs.add_ns(s, 1_000_000)        # 1 ms
    rs.add_ns(s, 1_000_000_000)    # 1 s
    [(name, text)] = latency_percentiles(rs)
    assert name == "latency_percentiles_usec_set"
    got = {k: float(v) for k, v in (kv.split("=") for kv in text.split(","))}
    # each within a quarter of its power of two above the true value
    assert 10 <= got["p50"] <= 12.5
    assert 1000 <= got["p99"] <= 1250
    assert 1e6 <= got["p99.9"] <= 1.25e6
    assert percentile_us([0] * 94, 50) is None
