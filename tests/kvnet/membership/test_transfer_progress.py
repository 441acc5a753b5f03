"""Transfer progress while it runs: the node streaming a partition counts its keys and bytes
per batch, and the claimant's `transfers` answer adds the count of each copy in flight (asked
of its source) to the copies done, beside an estimate of the whole transfer."""
import asyncio

import pytest

from kvnet.config import load
from kvnet.errors import CommandError
from kvnet.membership import changes
from kvnet.node import Node
from kvnet.testing import eventually, free_ports

FAST = dict(gossip_interval_ms=50, hint_replay_interval_ms=100, ae_enabled=False, fsync="never",
            request_timeout_ms=2000)


def _configs(tmp_path, q=16):
    ports = free_ports(8)
    members = [f"c{i}@127.0.0.1:{ports[4 + i]}" for i in range(4)]
    return [load(name=f"c{i}", port=ports[i], peer_port=ports[4 + i], n=3, r=2, w=2, ring_size=q,
                 data_dir=str(tmp_path / f"c{i}"), join=i == 3,
                 members=[members[0], members[3]] if i == 3 else members[:3], **FAST)
            for i in range(4)]


def test_running_transfers_report_keys_and_bytes_before_they_end(tmp_path, monkeypatch):
    monkeypatch.setattr(changes, "XFER_BATCH_KEYS", 5)
    push = changes.ClusterChanges._push

    async def slow_push(self, *a, **kw):           # bounded: 10 ms a batch
        await asyncio.sleep(0.01)
        return await push(self, *a, **kw)
    monkeypatch.setattr(changes.ClusterChanges, "_push", slow_push)

    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs[:3]]
        try:
            for i in range(600):
                await nodes[0].front.put(f"k{i}".encode(), f"value {i}".encode())
            joiner = await Node(cfgs[3]).start()
            nodes.append(joiner)
            assert await eventually(lambda: all(n.is_up("c3") for n in nodes[:3]), 20)
            ch = nodes[2].changes                   # forwarded to the claimant, c0
            await ch.request("stage", {"op": "join", "node": "c3"})
            await ch.request("commit")
            seen = {}                               # (partition, source) -> [keys seen, ...]
            finals = {}
            for _ in range(3000):
                t = await ch.request("transfers")
                if not t["moving"]:
                    break
                for r in t["transfers"]:
                    k = (r["partition"], r["to"])
                    if r["state"] == "running" and r["source"]:
                        seen.setdefault((k, r["source"]), []).append((r["keys"], r["bytes"]))
                        assert r["est_keys"] and r["est_bytes"]
                    elif r["state"] == "done":
                        finals[k] = (r["keys"], r["bytes"], r["est_keys"])
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the ring did not settle")
            in_flight = {s: v for s, v in seen.items() if any(keys > 0 for keys, _ in v)}
            sources = {src for (_, src) in in_flight}
            assert "c0" in sources and sources - {"c0"}, seen   # the claimant's own and a peer's
            for (k, _), counts in in_flight.items():
                assert counts == sorted(counts)                  # running totals never go back
                if k in finals:
                    assert counts[-1][0] <= finals[k][0] and counts[-1][1] <= finals[k][1]
            # a running count below the final one: seen before the transfer ended
            assert any(v[0][0] < finals[k][0] for (k, _), v in in_flight.items() if k in finals
                       and v[0][0] > 0)
            for keys, sent, est in finals.values():
                assert keys > 0 and sent > 0 and est == keys     # nothing written meanwhile
            # every batch acknowledged is counted (a failed try's too, so at least the finals)
            sent = sum(n.changes.stats["sent_keys"] for n in nodes)
            assert sum(v[0] for v in finals.values()) <= sent <= joiner.changes.stats["received_keys"]
            assert all(not n.changes.sending for n in nodes)     # nothing left in flight
        finally:
            for n in reversed(nodes):
                await n.stop()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_progress_and_size_requests_are_validated(tmp_path):
    async def main():
        cfgs = _configs(tmp_path)
        nodes = [await Node(c).start() for c in cfgs[:3]]
        try:
            for bad in (None, [], {"p": "1", "to": "c1"}, {"p": 1}, {"p": 1, "to": "c1", "epoch": "2"}):
                with pytest.raises(Exception, match="xfer_progress needs"):
                    await nodes[0].call("c1", "xfer_progress", bad, 2.0)
            assert await nodes[0].call("c1", "xfer_progress", {"p": 1, "to": "c3", "epoch": 1},
                                       2.0) == {}
            with pytest.raises(Exception, match="'keys' is true or false"):
                await nodes[0].call("c1", "cl_sizes", {"partitions": [1], "keys": 1}, 2.0)
            await nodes[0].front.put(b"x", b"y")
            p = nodes[0].ring.partition_of(b"x")
            got = await nodes[0].call("c1", "cl_sizes", {"partitions": [p], "keys": True}, 2.0)
            got = got.get(p, got.get(str(p)))
            assert got["keys"] == 1 and got["bytes"] > 0
            est = await nodes[0].changes._estimate(p, ["c0", "c1", "c2"])
            assert est == {"keys": 3, "bytes": 3 * got["bytes"]}
            with pytest.raises(CommandError):
                await nodes[0].changes._on_xfer_progress({"p": True, "to": "c1"})
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
