"""pytest-benchmark suites for LogStore: put, get, put_many, reopen, merge.

Each runs on the compiled store and its pure-Python twin side by side, with a
dict as the floor of any per-key Python call (docs/design.md, habit 14).

    python -m pytest benchmarks/test_storage.py --benchmark-only
"""
import itertools
import random
import shutil

import pytest

from kvcore.storage import store, store_py

N = 20_000
IMPLS = [pytest.param(store, id="cython"), pytest.param(store_py, id="python")]


@pytest.fixture(scope="module")
def data():
    rnd = random.Random(5)
    keys = [rnd.randbytes(16) for _ in range(N)]
    return keys, [rnd.randbytes(100) for _ in range(N)]


@pytest.mark.parametrize("impl", IMPLS)
def test_put(benchmark, impl, tmp_path, data):
    keys, values = data
    s = impl.LogStore(tmp_path / "s", fsync="never")
    it = itertools.cycle(zip(keys, values))
    benchmark(lambda: s.put(*next(it)))
    s.close()


def test_put_dict_floor(benchmark, data):
    keys, values = data
    d = {}
    it = itertools.cycle(zip(keys, values))
    benchmark(lambda: d.__setitem__(*next(it)))


@pytest.mark.parametrize("impl", IMPLS)
def test_get(benchmark, impl, tmp_path, data):
    keys, values = data
    s = impl.LogStore(tmp_path / "s", fsync="never")
    s.put_many(zip(keys, values))
    order = keys[:]
    random.Random(1).shuffle(order)
    it = itertools.cycle(order)
    benchmark(lambda: s.get(next(it)))
    s.close()


def test_get_dict_floor(benchmark, data):
    keys, values = data
    d = dict(zip(keys, values))
    it = itertools.cycle(keys)
    benchmark(lambda: d.get(next(it)))


@pytest.mark.parametrize("impl", IMPLS)
def test_put_many_1000(benchmark, impl, tmp_path, data):
    keys, values = data
    s = impl.LogStore(tmp_path / "s", fsync="never")
    batches = itertools.cycle([list(zip(keys[i:i + 1000], values[i:i + 1000])) for i in range(0, N, 1000)])
    benchmark(lambda: s.put_many(next(batches)))
    s.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_reopen(benchmark, impl, tmp_path, data):
    keys, values = data
    path = tmp_path / "s"
    s = impl.LogStore(path, fsync="never")
    s.put_many(zip(keys, values))
    s.close()

    def reopen():
        impl.LogStore(path, fsync="never").close()

    benchmark(reopen)


@pytest.mark.parametrize("impl", IMPLS)
def test_merge(benchmark, impl, tmp_path, data):
    keys, values = data
    counter = itertools.count()

    def setup():
        path = tmp_path / ("m%d" % next(counter))
        s = impl.LogStore(path, fsync="never", max_segment_bytes=1 << 20)
        for _ in range(3):
            s.put_many(zip(keys, values))
        return (s,), {}

    def merge(s):
        s.merge()
        s.close()
        shutil.rmtree(s.path)

    benchmark.pedantic(merge, setup=setup, rounds=3)
