"""The keydir: forced hash collisions, SCAN across growth and writes, RAM per key."""
import os
import random
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st


@pytest.mark.parametrize("mask", [0, 0xFF00000000000000, 0x8000000000000001])
def test_forced_collisions_every_operation(open_store, mask):
    # mask 0: every key has the same hash; the store must tell them apart by the key on disk
    n = 300 if mask == 0 else 3000
    s = open_store(max_segment_bytes=1 << 14, _hash_mask=mask)
    model = {}
    rnd = random.Random(mask)
    for i in range(n):
        k = b"key-%d" % i
        model[k] = rnd.randbytes(rnd.randrange(30))
        s.put(k, model[k])
    for i in range(0, n, 3):
        assert s.delete(b"key-%d" % i)
        del model[b"key-%d" % i]
    s.put_many([(b"key-1", b"again"), (b"key-2", b"twice"), (b"key-1", b"last")])
    model.update({b"key-1": b"last", b"key-2": b"twice"})
    for k in [b"key-%d" % i for i in range(n)]:
        assert s.get(k) == model.get(k)
    assert len(s) == len(model) and sorted(s.keys()) == sorted(model)
    s.merge()
    s.close()
    s = open_store(max_segment_bytes=1 << 14, _hash_mask=mask)
    assert dict(s.items()) == model


def test_scan_returns_every_key_across_growth_and_writes(open_store):
    s = open_store()
    base = [b"base-%d" % i for i in range(3000)]
    for k in base:
        s.put(k, b"v")
    seen = []
    cursor, rounds = 0, 0
    rnd = random.Random(3)
    while True:
        cursor, keys = s.scan(cursor, 50)
        seen.extend(keys)
        rounds += 1
        # between calls: the index grows (several resizes) and other keys come and go
        for _ in range(200):
            k = b"new-%d" % rnd.randrange(10 ** 9)
            s.put(k, b"x")
            if rnd.random() < 0.3:
                s.delete(k)
        if cursor == 0:
            break
    assert rounds > 10
    assert set(base) <= set(seen)
    cap = s.stats()["index_capacity"]
    assert cap == 0 or cap > 1024 * 8     # the C index grew during the scan (the twin has none)


def test_scan_count_and_cursor_validation(open_store):
    s = open_store()
    assert s.scan(0, 10) == (0, [])
    for i in range(25):
        s.put(b"k%d" % i, b"")
    cursor, keys = s.scan(0, 10)
    assert cursor != 0 and len(keys) == 10
    everything = list(keys)
    while cursor:
        cursor, keys = s.scan(cursor, 10)
        everything.extend(keys)
    assert sorted(everything) == sorted(b"k%d" % i for i in range(25))
    for bad in (-1, 1 << 64, "0", 1.5):
        with pytest.raises(ValueError):
            s.scan(bad, 10)
    with pytest.raises(ValueError):
        s.scan(0, 0)


@given(st.lists(st.binary(min_size=1, max_size=8), max_size=60), st.integers(1, 7),
       st.sampled_from([0, 8]))
@settings(max_examples=40)
def test_scan_same_sequence_as_twin(tmp_path_factory, keys, count, skip):
    from kvcore.storage import store, store_py

    out = []
    for mod in (store, store_py):
        d = tmp_path_factory.mktemp("scan")
        s = mod.LogStore(d, fsync="never", index_skip_bits=skip)
        for k in keys:
            s.put(k, b"")
        batches, cursor = [], 0
        while True:
            cursor, ks = s.scan(cursor, count)
            batches.append((cursor, sorted(ks)))
            if cursor == 0:
                break
        s.close()
        out.append(batches)
    assert out[0] == out[1]


def test_index_bytes_per_key_bounded_and_independent_of_key_length(tmp_path):
    from kvcore.storage import store

    for klen in (16, 200):
        s = store.LogStore(tmp_path / ("k%d" % klen), fsync="never")
        rnd = random.Random(klen)
        n = 0
        for target in (100_000, 150_000, 230_000):
            batch = [(rnd.randbytes(klen), b"v") for _ in range(target - n)]
            s.put_many(batch)
            n = target
            st_ = s.stats()
            assert st_["index_bytes"] / st_["keys"] <= 32, (klen, st_)
        s.close()


def test_fsync_always_is_synced_on_return(open_store):
    s = open_store(fsync="always")
    s.put(b"a", b"1")
    st_ = s.stats()
    assert st_["synced_offset"] == st_["active_offset"]
    s.put_many([(b"b", b"2"), (b"c", b"3")])
    s.delete(b"a")
    st_ = s.stats()
    assert st_["synced_offset"] == st_["active_offset"]


def test_fsync_interval_syncs_idle_store(open_store):
    s = open_store(fsync="interval", sync_interval_ms=50)
    s.put(b"a", b"1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st_ = s.stats()
        if st_["synced_offset"] == st_["active_offset"]:
            break
        time.sleep(0.02)
    st_ = s.stats()
    assert st_["synced_offset"] == st_["active_offset"]


def test_sync_from_worker_thread_while_writing(open_store):
    s = open_store(max_segment_bytes=1 << 14)
    stop = threading.Event()
    errors = []

    def syncer():
        try:
            while not stop.is_set():
                s.sync()
        except Exception as e:   # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=syncer)
    t.start()
    for i in range(3000):
        s.put(b"k%d" % i, b"v" * 20)
    stop.set()
    t.join(30)
    assert not errors and len(s) == 3000


def _partition_keys(count, q=256, p=7):
    from kvcore.ring import Ring

    ring, out, i = Ring.create(["a"], q=q, n=1), [], 0
    while len(out) < count:
        k = b"key-%d" % i
        if ring.partition_of(k) == p:
            out.append(k)
        i += 1
    return out


def test_keys_of_one_partition_with_index_skip_bits(open_store):
    """Every key shares the token's top 8 bits (one partition of Q=256): with
    index_skip_bits=8 the index spreads them; every operation, SCAN and reopen still hold."""
    keys = _partition_keys(5000)
    s = open_store(index_skip_bits=8, max_segment_bytes=1 << 16)
    for k in keys:
        s.put(k, k[::-1])
    for k in keys[::3]:
        assert s.delete(k)
    live = {k: k[::-1] for i, k in enumerate(keys) if i % 3}
    assert all(s.get(k) == live.get(k) for k in keys)
    got, cursor = [], 0
    while True:
        cursor, ks = s.scan(cursor, 97)
        got.extend(ks)
        if cursor == 0:
            break
    assert sorted(got) == sorted(live)
    s.merge()
    s.close()
    s = open_store(index_skip_bits=8, max_segment_bytes=1 << 16)
    assert dict(s.items()) == live
    with pytest.raises(ValueError, match="index_skip_bits"):
        open_store(index_skip_bits=33)


# ---- keys by Merkle leaf (anti-entropy's key lists) ---------------------------------------------

@pytest.mark.parametrize("skip_bits", [0, 8])
@pytest.mark.parametrize("mask", [0xFFFFFFFFFFFFFFFF, 0xFF00000000000000])
def test_leaf_keys_lists_exactly_the_keys_of_the_leaves_asked(open_store, skip_bits, mask):
    """leaf_keys(leaves) is {leaf: [key]} with the keys whose Merkle leaf (token & 16,383, as
    kvcore.merkle maps them) is asked, every asked leaf present; deleted keys are gone, a
    rewritten key listed once; with the index rotated (index_skip_bits) and with the tests'
    narrowed hashes (tokens then come from the keys) alike."""
    from kvcore import merkle as M
    s = open_store(max_segment_bytes=1 << 14, index_skip_bits=skip_bits, _hash_mask=mask)
    tree = M.MerkleTree()
    keys = [b"key-%d" % i for i in range(5000)]
    s.put_many([(k, b"v") for k in keys])
    for k in keys[::7]:
        s.delete(k)
    s.put(keys[1], b"again")
    live = set(keys) - set(keys[::7])
    leaf = {k: tree.segment_of(k) for k in keys}
    asked = sorted({leaf[k] for k in keys[:40]}) + [16383]
    got = s.leaf_keys(asked)
    assert sorted(got) == sorted(set(asked))
    for lf in asked:
        assert sorted(got[lf]) == sorted(k for k in live if leaf[k] == lf)
    assert s.leaf_keys([]) == {}
    assert sum(len(v) for v in s.leaf_keys(range(16384)).values()) == len(live)
    wide = s.leaf_keys([leaf[keys[2]] & 255], leaf_bits=8)    # other shapes: fewer bits
    assert sorted(wide[leaf[keys[2]] & 255]) == sorted(k for k in live if leaf[k] & 255
                                                        == leaf[keys[2]] & 255)


def test_leaf_keys_refuses_bad_leaves_with_a_clear_error(open_store):
    s = open_store()
    s.put(b"k", b"v")
    for bad in ([16384], [-1], ["3"], [1.5]):
        with pytest.raises(ValueError, match="leaf must be an integer from 0 to 16383"):
            s.leaf_keys(bad)
    with pytest.raises(ValueError, match="leaf_bits"):
        s.leaf_keys([1], leaf_bits=0)


def test_leaf_keys_reads_only_the_records_of_the_keys_listed(impl, tmp_path):
    """The compiled store finds the keys of a leaf in its in-memory index: records of other
    keys are not read (here: bytes of every other record overwritten on disk, under the
    store's maps, and the listing still answers, from the index alone)."""
    if impl.__name__.endswith("_py"):
        pytest.skip("the twin's keydir holds the keys: it reads no record at all")
    from kvcore import merkle as M
    from kvnet.testing import records_of
    s = impl.LogStore(tmp_path / "s", fsync="never")
    try:
        tree = M.MerkleTree()
        keys = [b"key-%d" % i for i in range(3000)]
        s.put_many([(k, b"v" * 50) for k in keys])
        target = keys[17]
        lf = tree.segment_of(target)
        mine = sorted(k for k in keys if tree.segment_of(k) == lf)
        s.sync()
        seg = [os.path.join(tmp_path / "s", n) for n in os.listdir(tmp_path / "s")
               if n.endswith(".data")][0]
        with open(seg, "r+b") as f:                 # every other record's key bytes zeroed
            for off, _, key, _, _ in records_of(seg):
                if key not in mine:
                    f.seek(off)
                    f.write(b"\0" * 4)              # (its magic: _key_at would refuse it)
        assert sorted(s.leaf_keys([lf])[lf]) == mine
        assert s.scan(0, 10_000)[1] != keys         # the scan does see the damage
    finally:
        s._abandon()


@pytest.mark.parametrize("crash", [False, True])
def test_an_open_leaves_the_index_between_60_and_90_percent_full(open_store, impl, crash):
    """An open indexes its segments growing the table in larger steps (fewer resizes), then
    fits it: whether it came from hint files or a scan after a crash, the table is back in the
    60-90 % band a running store keeps."""
    if impl.__name__.endswith("_py"):
        pytest.skip("the twin's keydir is a dict")
    for n in (500, 5000, 70_000):
        s = open_store(max_segment_bytes=1 << 20)
        s.put_many([(b"k%d-%d" % (n, i), b"v") for i in range(n)])
        s._abandon() if crash else s.close()
        s = open_store(max_segment_bytes=1 << 20)
        st = s.stats()
        assert st["keys"] == len(s) and st["keys"] >= n
        if st["index_capacity"] > 1024:
            assert 0.6 <= st["keys"] / st["index_capacity"] <= 0.9, st
        s.close()
