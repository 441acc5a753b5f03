"""DVV set update, sync and encoding on small (3-actor) clocks, beside a plain version-vector floor.

    python -m pytest benchmarks/test_versions.py --benchmark-only -q \
        --benchmark-columns=min,median,mean,ops,rounds

docs/versions.md records the figures. Every operation is pure, so each round repeats the same call.
"""

from kvcore import versions as dvv

NODES = [("node-%d" % i, 0x5EED0000 + i, 1) for i in range(3)]
VALUE = b"x" * 100


def _replica_clocks():
    """Three replicas' clocks of one key after a few writes: one sibling per actor, concurrent."""
    base = dvv.EMPTY
    for i, node in enumerate(NODES):
        base = dvv.update(dvv.new(dvv.join(base), dvv.sibling(VALUE, 1000 + i)), base, node)
    replicas = []
    for i, node in enumerate(NODES):  # each replica then takes one blind write of its own
        replicas.append(dvv.update(dvv.new(dvv.sibling(VALUE, 2000 + i)), base, node))
    return base, replicas


BASE, REPLICAS = _replica_clocks()
MERGED = dvv.sync_all(REPLICAS)


def test_state_is_as_described():
    assert len(BASE.entries) == 3 and dvv.sibling_count(BASE) == 1
    assert len(MERGED.entries) == 3 and dvv.sibling_count(MERGED) == 4


def test_update_with_context(benchmark):
    """Redis SET on the coordinator: context = join(local clock), one sibling stays."""
    client = dvv.new(dvv.join(MERGED), dvv.sibling(VALUE, 3000))
    out = benchmark(dvv.update, client, MERGED, NODES[1])
    assert dvv.sibling_count(out) == 1


def test_update_blind(benchmark):
    """KV.PUT without a context: the new value becomes a fifth sibling."""
    client = dvv.new(dvv.sibling(VALUE, 3000))
    out = benchmark(dvv.update, client, MERGED, NODES[1])
    assert dvv.sibling_count(out) == 5


def test_update_new_key(benchmark):
    client = dvv.new(dvv.sibling(VALUE, 3000))
    benchmark(dvv.update, client, None, NODES[0])


def test_sync_concurrent(benchmark):
    """Two replicas that each took a write the other has not seen."""
    out = benchmark(dvv.sync, REPLICAS[0], REPLICAS[1])
    assert dvv.sibling_count(out) == 3


def test_sync_dominated(benchmark):
    """A stale replica against the merged clock (read repair, hint replay)."""
    out = benchmark(dvv.sync, BASE, MERGED)
    assert out == MERGED


def test_sync_equal_copies(benchmark):
    """Equal clocks that are distinct objects (decoded from two replies): the common read case."""
    copy = dvv.decode(dvv.encode(MERGED))
    assert copy is not MERGED
    benchmark(dvv.sync, MERGED, copy)


def test_sync_all_three_replies(benchmark):
    """A GET with R = 3 merging its replies."""
    out = benchmark(dvv.sync_all, REPLICAS)
    assert out == MERGED


def test_less(benchmark):
    assert benchmark(dvv.less, BASE, MERGED)


def test_encode(benchmark):
    benchmark(dvv.encode, MERGED)


def test_decode(benchmark):
    data = dvv.encode(MERGED)
    assert benchmark(dvv.decode, data) == MERGED


def test_context_round_trip(benchmark):
    benchmark(lambda: dvv.decode_context(dvv.encode_context(dvv.join(MERGED))))


def test_baseline_version_vector_merge(benchmark):
    """The floor: merging two plain {actor: counter} dicts, no values at all."""
    x = {e[0]: e[1] for e in REPLICAS[0].entries}
    y = {e[0]: e[1] for e in REPLICAS[1].entries}
    benchmark(lambda: {k: max(x.get(k, 0), y.get(k, 0)) for k in x.keys() | y.keys()})


# The reaper's tombstone test over one scan chunk of stored clocks (kvnet/antientropy/reaper.py):
# one-value clocks as a plain SET/DEL leaves them, every third one a tombstone.
_OWN = dvv.actor_prefix("node-0", 0x5EED0000)
SCANNED = [dvv.fresh_raw(_OWN, i + 1, None if i % 3 == 0 else VALUE, 5) for i in range(1000)]


def test_is_deleted_decoded_1000(benchmark):
    assert benchmark(lambda: sum(dvv.is_deleted(dvv.decode(r)) for r in SCANNED)) == 334


def test_is_deleted_raw_1000(benchmark):
    assert benchmark(lambda: sum(dvv.is_deleted_raw(r) for r in SCANNED)) == 334
