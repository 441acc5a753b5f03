"""The status page's JSON and files (kvnet/status, served by kvnet/metrics.py) from one node
in this process, over HTTP: fields, throughput and latency buckets, ring and members; the
browser test is tests/kvnet/test_status_page.py."""
import asyncio
import json
import urllib.error
import urllib.request

import redis.asyncio as aredis

from kvnet.config import load
from kvnet.node import Node
from kvnet.status import StatusSampler
from kvnet.testing import free_ports


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def _node(tmp_path, **kw):
    port, peer, metrics = free_ports(3)
    cfg = load(name="n0", port=port, peer_port=peer, metrics_port=metrics, n=1, r=1, w=1,
               fsync="never", ring_size=16, ae_enabled=False, zone="z1",
               data_dir=str(tmp_path / "n0"), members=[f"n0@127.0.0.1:{peer}"], **kw)
    return await Node(cfg).start()


async def fetch(node, path):
    """(status, content type, body bytes) of GET path on the node's metrics port."""
    url = f"http://127.0.0.1:{node.metrics.port}{path}"

    def get():
        try:
            with urllib.request.urlopen(url, timeout=10) as f:
                return f.status, f.headers["Content-Type"], f.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read()

    return await asyncio.to_thread(get)


def test_status_json_has_members_ring_transfers_and_a_throughput_bucket(tmp_path):
    async def main():
        node = await _node(tmp_path)
        c = aredis.Redis(port=node.cfg.port)
        try:
            sampler = node.metrics.status
            sampler.sample()                 # the baseline: counts before the SETs
            for i in range(200):
                await c.set(f"k{i}", b"v")
            sampler.sample()                 # (the node's own task samples too; any is fine)
            code, ctype, body = await fetch(node, "/status.json")
            assert code == 200 and ctype == "application/json"
            s = json.loads(body)
            assert s["node"] == "n0" and s["interval_s"] == 1.0 and s["time"] > 0
            [me] = s["members"]
            assert me["name"] == "n0" and me["self"] and me["state"] == "up"
            assert me["zone"] == "z1" and me["routable"] and me["partitions"] == 16
            ring = s["ring"]
            assert ring["q"] == 16 and ring["n"] == 1 and ring["nodes"] == ["n0"]
            assert ring["owners"] == [0] * 16 and ring["preflists"] == [[0]] * 16
            assert ring["epoch"] == s["ring_epoch"]
            x = s["transfers"]
            assert x == {"moving": False, "epoch": x["epoch"], "pending": [], "sending": [],
                         "hints_pending": {}, "hints_total": 0}
            t = s["throughput"]
            assert set(t) == {"t", "rps", "p50_us", "p99_us"}
            assert len(t["t"]) == len(t["rps"]) == len(t["p50_us"]) == len(t["p99_us"]) >= 1
            # the 200 SETs are in the buckets since the baseline, whichever sample took them
            assert max(t["rps"]) > 0
            busy = [i for i, r in enumerate(t["rps"]) if r > 0]
            assert all(0 < t["p50_us"][i] <= t["p99_us"][i] for i in busy)
            assert t["t"] == sorted(t["t"])
        finally:
            await c.aclose()
            await node.stop()

    run(main())


def test_the_page_its_files_and_metrics_share_the_port_and_others_are_404(tmp_path):
    async def main():
        node = await _node(tmp_path)
        try:
            for path in ("/", "/status"):
                code, ctype, body = await fetch(node, path)
                assert code == 200 and ctype.startswith("text/html")
                assert b'src="status.js"' in body and b"http" not in body.replace(
                    b"http-equiv", b"")     # nothing fetched from elsewhere
            code, ctype, body = await fetch(node, "/status.js")
            assert code == 200 and "javascript" in ctype and b"status.json" in body
            code, ctype, _ = await fetch(node, "/status.css")
            assert code == 200 and ctype.startswith("text/css")
            code, _, body = await fetch(node, "/metrics")
            assert code == 200 and b"ringkv_ring_epoch" in body
            code, _, body = await fetch(node, "/nothing-here")
            assert code == 404 and b"/status.json" in body
        finally:
            await node.stop()

    run(main())


def _fake_node(stats=None, state=None, view=None, table=None, progress=None, sending=None,
               pending=None, up=lambda n: True):
    """What StatusSampler reads of a Node, as plain values."""
    from types import SimpleNamespace

    return SimpleNamespace(
        name="a", ring=None if state is None else state.current, ring_state=state,
        resp=SimpleNamespace(commands=SimpleNamespace(reqstats=stats or _FakeStats())),
        gossip=SimpleNamespace(view=lambda: dict(view or {}), table=table or {}),
        cfg=SimpleNamespace(zone=None), is_up=up,
        changes=SimpleNamespace(progress=progress or {}, sending=sending or {}),
        handoff=SimpleNamespace(pending=lambda: dict(pending or {})))


def test_members_show_liveness_zones_and_a_moving_ring_its_transfers():
    from types import SimpleNamespace

    from kvcore.ring import Ring
    from kvnet.membership.ringstate import RingState, transfers

    current = Ring.create([("a", "z1"), ("b", "z2"), ("c", "z1")], q=8, n=2)
    nxt = Ring.create([("a", "z1"), ("b", "z2"), ("c", "z1"), ("d", "z2")], q=8, n=2, epoch=2)
    state = RingState(current, nxt, epoch=2, claimant="a")
    moves = transfers(current, nxt)
    assert moves
    first = moves[0]
    view = {"b": {"state": "up", "phi": 0.5, "heartbeat_age_s": 0.1, "suspected_by": []},
            "c": {"state": "up", "phi": 9.0, "heartbeat_age_s": 4.0, "suspected_by": ["a"]},
            "d": {"state": "down", "phi": 20.0, "heartbeat_age_s": 9.0,
                  "suspected_by": ["a", "b"]},
            "e": {"state": "unknown", "phi": float("inf"), "heartbeat_age_s": None,
                  "suspected_by": []}}
    table = {"d": SimpleNamespace(zone="z2", status="joining"),
             "b": SimpleNamespace(zone=None, status="valid")}
    node = _fake_node(
        state=state, view=view, table=table, up=lambda n: n not in ("d", "e"),
        progress={(2, first.partition, first.to): {"state": "running", "source": "b",
                                                   "keys": 10, "bytes": 999}},
        sending={(first.partition, first.to): {"epoch": 2, "keys": 3, "bytes": 30}},
        pending={"d": 7, "c": 0})
    body = json.loads(StatusSampler(node).body)
    members = {m["name"]: m for m in body["members"]}
    assert {n: m["state"] for n, m in members.items()} == {
        "a": "up", "b": "up", "c": "suspect", "d": "down", "e": "unknown"}
    assert {n: m["zone"] for n, m in members.items()} == {
        "a": "z1", "b": "z2", "c": "z1", "d": "z2", "e": None}     # gossip's, else the ring's
    assert [n for n, m in members.items() if m["in_ring"]] == ["a", "b", "c"]
    assert members["d"]["status"] == "joining" and not members["d"]["routable"]
    assert sum(m["partitions"] for m in members.values()) == 8
    assert members["c"]["suspected_by"] == ["a"] and members["d"]["phi"] == 20.0
    assert members["e"]["phi"] is None          # (JSON has no infinity)
    ring = body["ring"]
    assert ring["nodes"] == ["a", "b", "c"] and ring["epoch"] == current.epoch
    assert [[ring["nodes"][i] for i in pl] for pl in ring["preflists"]] \
        == [list(current.preference_list(p)) for p in range(8)]
    x = body["transfers"]
    assert x["moving"] and x["epoch"] == 2 and len(x["pending"]) == len(moves)
    assert x["pending"][0] == {"partition": first.partition, "to": first.to,
                               "state": "running", "source": "b", "keys": 10, "bytes": 999}
    assert all(r["state"] == "waiting" for r in x["pending"][1:])
    assert x["sending"] == [{"partition": first.partition, "to": first.to, "keys": 3,
                             "bytes": 30}]
    assert x["hints_pending"] == {"d": 7} and x["hints_total"] == 7


class _FakeStats:
    def __init__(self):
        self.buckets = [0] * 94

    def snapshot(self):
        return [("set", "w=1", list(self.buckets), 0)] if any(self.buckets) else []


def test_each_sample_keeps_the_rate_and_percentiles_of_its_second_only():
    """A fake node and clock: the second bucket holds only the commands counted since the
    first, whatever the totals; the ring buffer keeps the last `history` samples."""
    from kvnet.reqstats_py import BOUNDS_NS

    stats = _FakeStats()
    now = [100.0]
    node = _fake_node(stats)
    fast = BOUNDS_NS.index(16384)       # a 16.384 us bucket
    slow = BOUNDS_NS.index(1 << 20)     # a 1.048576 ms bucket
    stats.buckets[slow] = 1000          # all before the sampler's first look: in no bucket
    s = StatusSampler(node, history=3, clock=lambda: now[0], wall=lambda: now[0])
    assert not s.series
    now[0] += 2.0
    stats.buckets[fast] += 90
    stats.buckets[slow] += 10
    s.sample()                          # the first bucket: 100 commands in 2 s
    assert list(s.series) == [(102.0, 50.0, 16.384, 1048.576)]
    now[0] += 1.0
    s.sample()                          # nothing since: a bucket of 0, no latency
    assert s.series[-1] == (103.0, 0.0, None, None)
    for _ in range(3):
        now[0] += 1.0
        s.sample()
    assert len(s.series) == 3 and s.series[0][0] == 104.0
    body = json.loads(s.body)
    assert body["throughput"]["t"] == [104.0, 105.0, 106.0]
    assert body["members"] == [{"name": "a", "self": True, "state": "up", "phi": 0.0,
                                "heartbeat_age_s": 0.0, "suspected_by": [], "routable": True,
                                "zone": None, "status": None, "in_ring": False,
                                "partitions": 0}]
    assert body["ring"] is None and body["ring_epoch"] is None


def test_status_json_and_metrics_answer_while_the_loop_is_blocked(tmp_path):
    """The HTTP thread sends the last snapshot without the loop: fetched while the loop is
    blocked waiting for that very fetch (it would never finish if serving needed the loop)."""
    import threading

    async def main():
        node = await _node(tmp_path)
        try:
            got = {}
            done = threading.Event()

            def fetch_all():
                for path in ("/status.json", "/metrics", "/"):
                    url = f"http://127.0.0.1:{node.metrics.port}{path}"
                    with urllib.request.urlopen(url, timeout=10) as f:
                        got[path] = f.read()
                done.set()

            t = threading.Thread(target=fetch_all, daemon=True)
            t.start()
            assert done.wait(30)             # the loop blocked here, in this very call
            t.join(10)
            assert json.loads(got["/status.json"])["node"] == "n0"
            assert b"ringkv_ring_epoch" in got["/metrics"] and b"<html" in got["/"]
        finally:
            await node.stop()

    run(main())


def test_an_install_without_the_page_files_serves_metrics_and_says_what_is_missing(
        monkeypatch, tmp_path):
    from kvnet import metrics

    monkeypatch.setitem(metrics.STATUS_FILES, "/status.js", ("gone.js", "text/javascript"))

    async def main():
        node = await _node(tmp_path)
        try:
            code, ctype, body = await fetch(node, "/status.js")
            assert code == 500 and ctype.startswith("text/plain")
            assert b"gone.js is missing from this install" in body
            code, _, body = await fetch(node, "/metrics")
            assert code == 200 and b"ringkv_ring_epoch" in body
            code, _, body = await fetch(node, "/")
            assert code == 200 and b"status.js" in body
        finally:
            await node.stop()

    run(main())
