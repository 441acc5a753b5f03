"""The keydir: forced hash collisions, SCAN across growth and writes, RAM per key."""
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
