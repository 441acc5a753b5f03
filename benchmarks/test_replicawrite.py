"""A replica's SET on a stored key: kvcore.replicawrite.overwrite (one keydir probe) against
the same work through LogStore.get, clockcodec and LogStore.put (two probes), which is what
its twin does and what the node did before. 200,000 keys, taken in a shuffled order, so the
keydir, the mapped records and the Merkle leaves are not all in cache, as on a busy node.

    python -m pytest benchmarks/test_replicawrite.py --benchmark-only \
        --benchmark-columns=min,median,rounds

Each round writes every key once (a new record per key); the figure is per round.
"""
import itertools
import random

import pytest

from kvcore import merkle as M
from kvcore import versions as V
from kvcore.storage import LogStore

rw = pytest.importorskip("kvcore.replicawrite")
from kvcore import replicawrite_py as twin  # noqa: E402

N = 200_000
OWN = V.actor_prefix("node-0", 0x5EED)
VALUE = b"x" * 100


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    store = LogStore(tmp_path_factory.mktemp("rw") / "s", fsync="never")
    tree = M.MerkleTree()
    keys = [b"key:%012d" % i for i in range(N)]
    epochs = itertools.count(1).__next__
    for k in keys:
        rw.overwrite(store, tree, k, VALUE, OWN, 0, 1, epochs)
    random.Random(7).shuffle(keys)
    yield store, tree, keys, epochs
    store.close()


@pytest.mark.parametrize("impl", [pytest.param(rw, id="one-probe"),
                                  pytest.param(twin, id="get-then-put")])
def test_overwrite_every_key(benchmark, impl, loaded):
    store, tree, keys, epochs = loaded
    ts = itertools.count(2).__next__
    ow = impl.overwrite

    def round_():
        t = ts()
        for k in keys:
            ow(store, tree, k, VALUE, OWN, 0, t, epochs)

    benchmark.pedantic(round_, rounds=4, iterations=1)
    assert V.lww_value_raw(store.get(keys[0])) == VALUE
