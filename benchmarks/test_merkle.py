"""Merkle tree update, diff and serialization, Cython vs the pure twin vs a plain baseline.

    python -m pytest benchmarks/test_merkle.py --benchmark-columns=min,median,mean,rounds

Each case prints its per-item rate (the pytest-benchmark table is per round of N items);
docs/merkle.md records the figures.
"""
import importlib
import random

import pytest

IMPLS = [pytest.param("kvcore.merkle", id="cython"), pytest.param("kvcore.merkle_py", id="python")]
N = {"kvcore.merkle": 200_000, "kvcore.merkle_py": 5_000}
VERSION = b"\x01" + bytes(15)  # a small canonical clock


@pytest.fixture(params=IMPLS)
def impl(request):
    return importlib.import_module(request.param)


def _keys(n, seed=1):
    blob = random.Random(seed).randbytes(16 * n)
    return [blob[i:i + 16] for i in range(0, 16 * n, 16)]


def _report(benchmark, capsys, what, n):
    """Print items/s from the median and the best round (the machine is shared: both matter)."""
    st = benchmark.stats.stats
    benchmark.extra_info[what] = n / st.median
    with capsys.disabled():
        if n == 1:
            print(f"\n  {benchmark.name}: median {st.median * 1e6:.1f} us, best {st.min * 1e6:.1f} us per op")
        else:
            print(f"\n  {benchmark.name}: median {n / st.median / 1e6:.2f} M {what}, "
                  f"best round {n / st.min / 1e6:.2f} M {what} ({n:,} per round)")


def test_update_loop(benchmark, capsys, impl):
    """One Python call per update (a write path would do this); toggles the same keys in and out."""
    n = N[impl.__name__]
    keys = _keys(n)
    tree = impl.MerkleTree()
    update = tree.update

    def run():
        for k in keys:
            update(k, None, VERSION)

    benchmark(run)
    _report(benchmark, capsys, "updates/s", n)


def test_update_loop_overwrite(benchmark, capsys, impl):
    """The common write: old version out, new version in (two entry hashes per call)."""
    n = N[impl.__name__]
    keys = _keys(n)
    tree = impl.MerkleTree()
    update = tree.update
    v2 = b"\x02" + bytes(15)

    def run():
        for k in keys:
            update(k, VERSION, v2)

    benchmark(run)
    _report(benchmark, capsys, "updates/s", n)


def test_update_many(benchmark, capsys, impl):
    n = N[impl.__name__]
    keys = _keys(n)
    news = [VERSION] * n
    tree = impl.MerkleTree()
    benchmark(tree.update_many, keys, None, news)
    _report(benchmark, capsys, "updates/s", n)


def test_baseline_dict_set_loop(benchmark, capsys):
    """The floor of any per-key Python call: d[k] = v in a loop over the same keys."""
    n = N["kvcore.merkle"]
    keys = _keys(n)
    d = {}

    def run():
        for k in keys:
            d[k] = VERSION

    benchmark(run)
    _report(benchmark, capsys, "sets/s", n)


def test_segments_of(benchmark, capsys, impl):
    n = N[impl.__name__]
    keys = _keys(n)
    tree = impl.MerkleTree()
    benchmark(tree.segments_of, keys)
    _report(benchmark, capsys, "keys/s", n)


def _pair(impl, n, differ):
    keys = _keys(n, seed=2)
    a = impl.MerkleTree()
    a.update_many(keys, None, [VERSION] * n)
    b = a.copy()
    for k in random.Random(3).sample(keys, differ):
        b.update(k, VERSION, b"\x09")
    return a, b


@pytest.mark.parametrize("differ", [10, 1000])
def test_diff_over_bytes(benchmark, capsys, impl, differ):
    """The exchange's compare work on one side: level 1 bytes, then each differing branch."""
    a, b = _pair(impl, 20_000, differ)
    theirs1 = b.level(1)
    branches = {j: b.branch(1, j) for j in range(a.width)}

    def run():
        segments = []
        for j in a.diff_level(1, theirs1):
            segments += a.diff_branch(1, j, branches[j])
        return segments

    segments = benchmark(run)
    assert segments == a.diff(b)
    _report(benchmark, capsys, "diffs/s", 1)


def test_diff_trees(benchmark, capsys, impl):
    a, b = _pair(impl, 20_000, 10)
    benchmark(a.diff, b)
    _report(benchmark, capsys, "diffs/s", 1)


def test_serialize_roundtrip(benchmark, capsys, impl):
    a, _ = _pair(impl, 20_000, 0)
    cls = type(a)

    def run():
        return cls.from_bytes(a.to_bytes())

    assert benchmark(run) == a
    _report(benchmark, capsys, "roundtrips/s", 1)
