"""The peer handler table (kvnet/handlers.py) and the replica's handlers in it
(kvnet/replicahandlers.py): one table, payloads checked through kvnet/payload.py."""
import asyncio

import pytest

from kvcore import versions as V
from kvcore.ring import Ring
from kvnet.config import load
from kvnet.errors import CommandError
from kvnet.handlers import HandlerTable
from kvnet.membership import ringstate as RS
from kvnet.replica import LocalReplica
from kvnet.replicahandlers import ReplicaHandlers, ReplicaHost
from kvnet.resp.backend import LATER
from kvnet.ringholder import RingHolder


def run(coro):
    return asyncio.run(coro)


def test_the_table_serves_each_type_once_and_refuses_unknown_ones():
    table = HandlerTable()

    async def echo(m):
        return ("echo", m)

    table.add("echo", echo, now=lambda m: LATER if m is None else ("now", m))
    with pytest.raises(ValueError, match="taken"):
        table.add("echo", echo)
    with pytest.raises(ValueError, match="taken"):
        table.add_all({"other": echo, "echo": echo})
    assert table.types() == ["echo"]                      # (nothing of a refused set added)
    with pytest.raises(ValueError):
        table.add("", echo)
    assert run(table("echo", 1)) == ("echo", 1)
    assert table.now("echo", 2) == ("now", 2) and table.now("echo", None) is LATER
    for unknown in ("nope", "_handle", "", None, 7, ["echo"]):
        with pytest.raises(CommandError, match="unknown peer request"):
            run(table(unknown, {}))
        assert table.now(unknown, {}) is LATER
    old = table.replace("echo", echo)
    assert old[0] is echo and table.now("echo", 2) is LATER
    table.remove(["echo"])
    with pytest.raises(CommandError):
        run(table("echo", 1))


class _Host(ReplicaHost):
    def __init__(self, cfg):
        self.cfg, self.hints, self.spawned = cfg, None, []

    def spawn(self, coro):
        coro.close()
        self.spawned.append(coro)


def _replica_side(tmp_path):
    """The replica's handlers of node a in a ring of a, b, c, d (N=3, Q=16), on a fake host."""
    cfg = load(name="a", n=3, ring_size=16, data_dir=str(tmp_path), fsync="never",
               max_key_bytes=32)
    rings = RingHolder("a", str(tmp_path))
    rings.install_ring(RS.RingState(Ring.create(list("abcd"), q=16, n=3)), save=False)
    replica = LocalReplica(str(tmp_path), "a", fsync="never", index_skip_bits=4,
                           max_key_bytes=32)
    replica.open_existing()
    side = ReplicaHandlers(_Host(cfg), rings, replica, cfg)
    table = HandlerTable()
    side.register(table)
    return rings, replica, table


def test_the_replicas_handlers_refuse_malformed_payloads_with_a_clear_error(tmp_path):
    rings, replica, table = _replica_side(tmp_path)
    ring = rings.ring
    p = next(p for p in range(16) if "a" in ring.preference_list(p))
    k = next(b"k%d" % i for i in range(1000) if ring.partition_of(b"k%d" % i) == p)
    raw = V.encode(V.new(V.sibling(b"v", 1)))
    try:
        bad = [(None, "must be a map"), ([], "must be a map"), ({}, "not on the ring"),
               ({"p": 16, "k": k}, "not on the ring"), ({"p": -1, "k": k}, "not on the ring"),
               ({"p": True, "k": k}, "not on the ring"), ({"p": p}, "keys must be"),
               ({"p": p, "k": b""}, "keys must be"), ({"p": p, "k": b"x" * 33}, "keys must be"),
               ({"p": (p + 1) % 16, "k": k}, "is in partition")]
        for mtype in ("get", "put"):
            for payload, message in bad:
                with pytest.raises(CommandError, match=message):
                    table.now(mtype, payload)
        with pytest.raises(CommandError, match="bad clock"):
            table.now("put", {"p": p, "k": k, "c": b"\xc1"})
        with pytest.raises(CommandError, match="a clock must be"):
            table.now("put", {"p": p, "k": k, "c": "text"})
        other = next(x for x in range(16) if "a" not in ring.preference_list(x))
        ko = next(b"k%d" % i for i in range(1000) if ring.partition_of(b"k%d" % i) == other)
        with pytest.raises(CommandError, match="not a replica of partition"):
            table.now("put", {"p": other, "k": ko, "c": raw})
        assert set(replica.partitions) <= {p}               # none opened outside its own
        assert table.now("put", {"p": p, "k": k, "c": raw}) is True
        assert table.now("get", {"p": p, "k": k}) == raw
        values, errors = table.now("mget", [{"p": p, "k": k}, {"p": 99, "k": k}, 3])
        assert values == [raw, None, None] and sorted(errors) == [1, 2]
        with pytest.raises(CommandError, match="flush needs"):
            run(table("flush", {"all": False}))
        with pytest.raises(CommandError, match="unknown peer request"):
            run(table("_peer_get", {"p": p, "k": k}))
    finally:
        run(replica.close())


def test_a_node_has_one_table_for_its_replica_and_its_services(tmp_path):
    from kvnet.node import Node
    node = Node(load(name="n0", data_dir=str(tmp_path), fsync="never"))
    table = node.handlers
    types = set(table.types())
    assert {"get", "put", "mget", "mput", "hput", "mscan", "flush"} <= types
    assert {"gsyn", "hreplay", "xfer", "ae_root"} <= types
    ae = node.antientropy
    node.remove_service(ae)
    assert node.antientropy is None and "ae_root" not in table.types()
    from kvnet.antientropy.service import AntiEntropy
    again = node.add_service(AntiEntropy(node))
    assert node.antientropy is again and "ae_root" in table.types()
    assert node.add_service(AntiEntropy(node)) is node.antientropy is not again   # replaced
    run(node.replica.close())
