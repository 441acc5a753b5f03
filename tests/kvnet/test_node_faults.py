"""Disk faults seen by clients (docs/storage.md, "Faults"): a write refused by a node's disk is
an IOERR reply naming the node, the partition and the cause; reads and the other partitions go
on; a replica's refusal reaches the coordinator's QUORUM error with its cause."""
import asyncio
import errno
import os

import pytest
import redis.asyncio as aredis

from kvnet.config import load
from kvnet.node import Node
from kvnet.testing import free_ports


async def _cluster(tmp_path, nodes=1, n=1, root=None, **kw):
    kw.setdefault("request_timeout_ms", 5000)
    kw.setdefault("fsync", "never")
    kw.setdefault("ring_size", 16)
    ports = free_ports(2 * nodes)
    members = [f"n{i}@127.0.0.1:{ports[nodes + i]}" for i in range(nodes)]
    out = []
    for i in range(nodes):
        cfg = load(name=f"n{i}", port=ports[i], peer_port=ports[nodes + i], n=n, r=min(2, n),
                   w=min(2, n), data_dir=os.path.join(str(root or tmp_path), f"n{i}"),
                   members=members,
                   ae_enabled=False, **kw)
        out.append(await Node(cfg).start())
    return out, ports[:nodes]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def _other_partition_key(node, p):
    return next(f"o{i}" for i in range(10_000) if node.ring.partition_of(f"o{i}".encode()) != p)


@pytest.mark.parametrize("fsync", ["never", "always"])
def test_a_refused_write_is_an_ioerr_naming_node_partition_and_cause(tmp_path, fsync):
    async def main():
        (node,), (port,) = await _cluster(tmp_path, fsync=fsync)
        c = aredis.Redis(port=port)
        try:
            assert await c.set("k", "v1")
            p = node.ring.partition_of(b"k")
            store = node.replica.partition(p).store
            store._fail_next("write", errno.ENOSPC, times=4)   # (the compiled door tries first)
            with pytest.raises(aredis.ResponseError) as info:
                await c.set("k", "v2")
            msg = str(info.value)
            assert msg.startswith(f"IOERR node n0: partition {p}: write refused") and "ENOSPC" in msg
            with pytest.raises(aredis.ResponseError, match="IOERR|write refused"):
                await c.execute_command("KV.PUT", "k", "v3")
            store._fail_next(None)
            other = _other_partition_key(node, p)
            assert await c.set(other, "x") and await c.get("k") == b"v1"
            assert await c.set("k", "v4") and await c.get("k") == b"v4"   # writes resume
        finally:
            await c.aclose()
            await node.stop()

    run(main())


def test_a_read_only_partition_refuses_writes_and_serves_reads(tmp_path):
    async def main():
        (node,), (port,) = await _cluster(tmp_path, fsync="interval", sync_interval_ms=50)
        c = aredis.Redis(port=port)
        try:
            assert await c.set("k", "v1")
            p = node.replica_partition = node.ring.partition_of(b"k")
            part = node.replica.partition(p)
            assert await c.set("k", "v2")
            part.store._fail_next("fdatasync", errno.EIO)
            for _ in range(100):                    # the interval commit finds it
                if part.read_only is not None:
                    break
                await asyncio.sleep(0.02)
            assert part.read_only is not None
            with pytest.raises(aredis.ResponseError) as info:
                await c.set("k", "v3")
            msg = str(info.value)
            assert f"node n0: partition {p} is read-only" in msg and "EIO" in msg
            assert await c.get("k") == b"v2"
            assert await c.set(_other_partition_key(node, p), "x")
            raw = await c.execute_command("INFO")
            assert raw["read_only_partitions"] == 1 and raw["corrupt_records"] == 0
        finally:
            await c.aclose()
            await node.stop()

    run(main())


def test_a_replica_refusing_writes_costs_its_ack_and_names_its_cause(tmp_path):
    async def main():
        nodes, ports = await _cluster(tmp_path, nodes=3, n=3)
        c = aredis.Redis(port=ports[0])
        try:
            p = nodes[0].ring.partition_of(b"k")
            bad = nodes[2].replica.partition(p)
            bad.store._fail_next("write", errno.EIO, times=1000)
            assert await c.set("k", "v1")            # W=2: nodes 1 and 2 acknowledge
            with pytest.raises(aredis.ResponseError) as info:
                await c.execute_command("KV.PUT", "k", "v2", "W", "3")
            msg = str(info.value)
            assert "n2" in msg and f"partition {p}: write refused" in msg and "EIO" in msg
            bad.store._fail_next(None)
        finally:
            await c.aclose()
            for node in nodes:
                await node.stop()

    run(main())


def _fill_up(path):
    """Write a ballast file until the file system is full; its path."""
    ballast = os.path.join(path, "ballast")
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 65536)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"x" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)
    return ballast


def test_a_full_disk_is_an_ioerr_reads_go_on_and_writes_resume(sized_fs, tmp_path):
    """A real ENOSPC (a tmpfs the test mounts as root; skipped, saying why, where it may not):
    every SET it refuses is an IOERR naming the node, a partition and ENOSPC, never a crash;
    GETs go on; once space is freed every SET works again."""
    root = sized_fs("8m")

    async def main():
        (node,), (port,) = await _cluster(tmp_path, root=root, min_free_percent=0,
                                          max_segment_bytes=65536)
        c = aredis.Redis(port=port)
        try:
            for i in range(50):
                assert await c.set(f"before{i}", "v" * 500)
            ballast = _fill_up(root)
            errors = []
            for i in range(2000):               # (space reserved ahead takes some first)
                try:
                    await c.set(f"k{i}", os.urandom(2000))
                except aredis.ResponseError as exc:
                    errors.append(str(exc))
            assert len(errors) > 1000, len(errors)
            assert all(e.startswith("IOERR node n0: partition ") and "ENOSPC" in e
                       for e in errors), errors[:3]
            assert all([await c.get(f"before{i}") == b"v" * 500 for i in range(50)])
            os.unlink(ballast)
            for i in range(1000):
                assert await c.set(f"k{i}", b"w" * 2000)
            assert await c.get("k999") == b"w" * 2000
            assert node.replica.fault_stats()["read_only_partitions"] == 0
        finally:
            await c.aclose()
            await node.stop()

    run(main())


def test_the_free_space_watermark_refuses_writes_before_the_disk_is_full(sized_fs, tmp_path):
    root = sized_fs("8m")

    async def main():
        (node,), (port,) = await _cluster(tmp_path, root=root, min_free_percent=40)
        c = aredis.Redis(port=port)
        try:
            refused = None
            for i in range(3000):
                try:
                    await c.set(f"k{i}", os.urandom(2000))
                except aredis.ResponseError as exc:
                    refused = str(exc)
                    break
            assert refused is not None and "below min_free_percent=40" in refused, refused
            assert refused.startswith("IOERR node n0: partition ")
            st = os.statvfs(root)
            assert st.f_bavail * 100 > 30 * st.f_blocks     # refused with space to spare
        finally:
            await c.aclose()
            await node.stop()

    run(main())
