"""In-process clusters of Nodes with the anti-entropy service, on 127.0.0.1 with free ports."""
import asyncio
import time

import pytest

from kvnet.antientropy.service import AntiEntropy
from kvnet.config import load
from kvnet.node import Node
from kvnet.testing import free_ports


class Cluster:
    """`nodes[i]` is node "n<i>"; `svc[i]` its AntiEntropy; `restart(i, wipe=True)`."""

    def __init__(self, tmp_path, size, svc_opts, prepare=None, **cfg):
        ports = free_ports(2 * size)
        members = [f"n{i}@127.0.0.1:{ports[size + i]}" for i in range(size)]
        self.cfgs = [load(name=f"n{i}", port=ports[i], peer_port=ports[size + i],
                          data_dir=str(tmp_path / f"n{i}"), members=members, fsync="never",
                          **cfg) for i in range(size)]
        self.svc_opts = svc_opts
        self.prepare = prepare           # fn(node) before each start (peer limits, ...)
        self.nodes = [None] * size
        self.svc = [None] * size

    async def start(self, i=None):
        for j in ([i] if i is not None else range(len(self.cfgs))):
            node = Node(self.cfgs[j])
            self.svc[j] = node.add_service(AntiEntropy(node, **self.svc_opts))
            if self.prepare is not None:
                self.prepare(node)
            self.nodes[j] = await node.start()
        return self

    async def stop(self, i=None):
        for j in ([i] if i is not None else range(len(self.cfgs))):
            if self.nodes[j] is not None:
                await self.nodes[j].stop()
                self.nodes[j] = None

    async def restart(self, i, wipe=False):
        import shutil
        await self.stop(i)
        if wipe:
            shutil.rmtree(self.cfgs[i].data_dir)
        await self.start(i)

    def raw(self, i, key):
        """The stored clock bytes of key on node i (None if absent or the partition is not open)."""
        node = self.nodes[i]
        part = node.replica.opened(node.ring.partition_of(key))
        return None if part is None else part.store.get(key)

    def up(self):
        return [n for n in self.nodes if n is not None]


async def wait_for(cond, timeout=15.0, step=0.02):
    """Poll cond() until true; False if it never was within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(step)
    return bool(cond())


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Helpers:
    """What the `ae` fixture gives a test: make(), wait_for(), run()."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.wait_for = wait_for
        self.run = run

    async def make(self, size=3, n=3, q=8, svc_opts=None, prepare=None, **cfg):
        """A started Cluster of `size` nodes, N=n, Q=q; the caller stops it. prepare(node)
        runs before each node starts."""
        cfg.setdefault("request_timeout_ms", 2000)
        c = Cluster(self.tmp_path, size, svc_opts or {}, prepare, n=n, ring_size=q, r=min(2, n),
                    w=min(2, n), **cfg)
        return await c.start()


@pytest.fixture
def ae(tmp_path):
    return Helpers(tmp_path)
