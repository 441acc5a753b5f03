"""Ring lookups, Cython vs the pure twin vs a plain baseline (dict.get, mmh3).

    python -m pytest benchmarks/test_ring.py --benchmark-columns=min,median,mean,rounds

Each case prints its per-key rate (the pytest-benchmark table is per round of N keys);
docs/ring.md records the figures.
"""
import importlib
import random

import pytest

IMPLS = [pytest.param("kvcore.ring", id="cython"), pytest.param("kvcore.ring_py", id="python")]
N = {"kvcore.ring": 200_000, "kvcore.ring_py": 2_000, "baseline": 200_000}
NODES = [f"node{i:02d}" for i in range(16)]


@pytest.fixture(params=IMPLS)
def impl(request):
    return importlib.import_module(request.param)


def _keys(n, seed=1, size=16):
    blob = random.Random(seed).randbytes(size * n)
    return [blob[i:i + size] for i in range(0, size * n, size)]


def _report(benchmark, capsys, what, n):
    """Print keys/s from the median and the best round (the machine is shared: both matter)."""
    st = benchmark.stats.stats
    benchmark.extra_info[what] = n / st.median
    with capsys.disabled():
        print(f"\n  {benchmark.name}: median {n / st.median / 1e6:.2f} M {what}, "
              f"best round {n / st.min / 1e6:.2f} M {what} ({n:,} per round)")


def test_token(benchmark, capsys):
    """kvcore.hashing.token: one murmur3 call per key (the floor under every lookup)."""
    hashing = importlib.import_module("kvcore.hashing")
    keys = _keys(N["kvcore.ring"])
    token = hashing.token

    def run():
        for k in keys:
            token(k)

    benchmark(run)
    _report(benchmark, capsys, "tokens/s", len(keys))


def test_token_mmh3(benchmark, capsys):
    """Baseline: the mmh3 package's hash64 on the same keys."""
    mmh3 = pytest.importorskip("mmh3")
    keys = _keys(N["baseline"])
    hash64 = mmh3.hash64

    def run():
        for k in keys:
            hash64(k, signed=False)

    benchmark(run)
    _report(benchmark, capsys, "hashes/s", len(keys))


def test_preference_list(benchmark, capsys, impl):
    """A Python loop of single preference_list(key) calls."""
    ring = impl.Ring.create(NODES)
    keys = _keys(N[impl.__name__])
    pl = ring.preference_list

    def run():
        for k in keys:
            pl(k)

    benchmark(run)
    _report(benchmark, capsys, "lookups/s", len(keys))


def test_preference_list_by_partition(benchmark, capsys, impl):
    """preference_list(p) for an int partition (the coordinator's second lookup)."""
    ring = impl.Ring.create(NODES)
    parts = [k[0] for k in _keys(N[impl.__name__])]
    pl = ring.preference_list

    def run():
        for p in parts:
            pl(p)

    benchmark(run)
    _report(benchmark, capsys, "lookups/s", len(parts))


def test_dict_get_baseline(benchmark, capsys):
    """Baseline: a Python loop calling dict.get on the same keys (the floor of a per-key call)."""
    keys = _keys(N["baseline"])
    table = {k: NODES[:3] for k in keys}
    get = table.get

    def run():
        for k in keys:
            get(k)

    benchmark(run)
    _report(benchmark, capsys, "lookups/s", len(keys))


def test_lookup_many(benchmark, capsys, impl):
    """One call for a list of bytes keys -> numpy array of partitions."""
    ring = impl.Ring.create(NODES)
    keys = _keys(10 * N[impl.__name__])
    benchmark(ring.lookup_many, keys)
    _report(benchmark, capsys, "keys/s", len(keys))
