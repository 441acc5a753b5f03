"""Compaction in a running node: the merge policy, merges beside writes, KV.COMPACT, INFO."""
import asyncio
import os

import pytest
import redis

from kvnet.compaction import Compactor, due
from kvnet.config import load
from kvnet.executor import InlineExecutor
from kvnet.node import Node
from kvnet.testing import free_ports


@pytest.mark.parametrize("data, live, want", [
    (1000, 1000, False),                 # nothing dead
    (10_000, 6_100, False),              # 39 % dead
    (10_000, 5_900, True),               # 41 % dead and over the floor
    (1000, 10, False),                   # 99 % dead but under the floor
    (0, 0, False),
])
def test_the_policy_needs_both_the_fraction_and_the_floor(data, live, want):
    assert due(data, live, 0.4, 2000) is want


async def _node(tmp_path, **kw):
    port, peer = free_ports(2)
    kw.setdefault("merge_min_dead_bytes", 4096)
    cfg = load(name="c1", port=port, peer_port=peer, data_dir=str(tmp_path / "c1"), n=1, r=1,
               w=1, ring_size=8, fsync="never", **kw)
    node = Node(cfg)
    return await node.start(), port


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_hot_overwrites_are_merged_by_the_policy_while_writes_go_on(tmp_path):
    async def main():
        node, port = await _node(tmp_path)
        node.compactor.period = 0.05
        try:
            r = redis.asyncio.Redis(port=port)
            for rnd in range(40):                      # 50 hot keys overwritten 40 times
                for i in range(50):
                    await r.set(f"hot{i}", f"{rnd}-" + "x" * 100)
                await asyncio.sleep(0.01)
            for _ in range(200):
                if node.compactor.stats["merges"] > 0 and not node.compactor._running:
                    break
                await asyncio.sleep(0.05)
            st = node.compactor.stats
            assert st["merges"] > 0 and st["bytes_reclaimed"] > 0 and st["merge_failures"] == 0
            vals = await r.mget([f"hot{i}" for i in range(50)])
            assert vals == [b"39-" + b"x" * 100] * 50
            info = await r.info("ringkv")
            assert info["merges"] == st["merges"]
            assert info["storage_dead_bytes"] < info["storage_data_bytes"]
            assert info["merge_bytes_reclaimed"] == st["bytes_reclaimed"]
            await r.aclose()
        finally:
            await node.stop()

    _run(main())


def test_kv_compact_merges_now_and_reports_what_it_reclaimed(tmp_path):
    async def main():
        node, port = await _node(tmp_path, merge_concurrency=0)   # no merge by itself
        try:
            r = redis.asyncio.Redis(port=port, decode_responses=True)
            for rnd in range(20):
                for i in range(100):
                    await r.set(f"k{i}", f"v{rnd}" * 20)
            before = (await r.info("ringkv"))["storage_data_bytes"]
            assert node.compactor.stats["merges"] == 0
            got = await r.execute_command("KV.COMPACT")
            got = dict(zip(got[::2], got[1::2])) if isinstance(got, list) else got
            assert got["node"] == "c1" and int(got["partitions"]) == len(node.replica.partitions)
            assert 0 < int(got["bytes_reclaimed"]) < before
            after = (await r.info("ringkv"))["storage_data_bytes"]
            assert after == before - int(got["bytes_reclaimed"])
            p = sorted(node.replica.partitions)[0]
            one = await r.execute_command("KV.COMPACT", str(p))
            one = dict(zip(one[::2], one[1::2])) if isinstance(one, list) else one
            assert int(one["partitions"]) == 1
            with pytest.raises(redis.ResponseError, match="holds no partition"):
                await r.execute_command("KV.COMPACT", "100000")
            with pytest.raises(redis.ResponseError):
                await r.execute_command("KV.COMPACT", "-1")
            assert await r.mget([f"k{i}" for i in range(100)]) == ["v19" * 20] * 100
            await r.aclose()
        finally:
            await node.stop()

    _run(main())


def test_release_cancels_a_slow_merge_and_loses_nothing(tmp_path):
    async def main():
        node, port = await _node(tmp_path, merge_concurrency=0, merge_max_mb_s=1)
        try:
            p = sorted(node.replica.partitions)[0]
            part = node.replica.partitions[p]
            for i in range(4000):                         # ~4 MB live: 4 s at 1 MB/s
                part.store.put(b"k%05d" % i, os.urandom(1000))
            task = asyncio.ensure_future(node.compactor.merge(p))
            node.compactor._running[p] = task
            await asyncio.sleep(0.3)
            t0 = asyncio.get_running_loop().time()
            await node.compactor.release(p)
            assert asyncio.get_running_loop().time() - t0 < 2.0
            assert task.done() and task.result() is None
            assert len(part.store) == 4000 and part.store.get(b"k00042") is not None
            assert node.compactor.stats["merges"] == 0 and node.compactor.stats["merge_failures"] == 0
            node.compactor.max_bytes_per_s = 0                # a later merge runs (unthrottled)
            assert await node.compactor.merge(p) == 0 and node.compactor.stats["merges"] == 1
        finally:
            await node.stop()

    _run(main())


def test_an_inline_executor_runs_the_same_merge_deterministically(tmp_path):
    async def main():
        node, port = await _node(tmp_path, merge_concurrency=0)
        comp = Compactor(node, executor=InlineExecutor())
        try:
            p = sorted(node.replica.partitions)[0]
            store = node.replica.partitions[p].store
            for rnd in range(10):
                for i in range(100):
                    store.put(b"k%d" % i, b"%d" % rnd * 50)
            data, live = store.sizes()
            reclaimed = await comp.merge(p)
            assert reclaimed == data - store.sizes()[0] and reclaimed > 0
            assert store.get(b"k7") == b"9" * 50
        finally:
            await node.stop()

    _run(main())
