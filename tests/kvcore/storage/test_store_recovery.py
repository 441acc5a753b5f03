"""Crash safety: torn tails, bit flips in segments and hint files, a real SIGKILL."""
import os

import pytest

from kvcore.storage import layout as L


def _fill(s, n, prefix=b"k"):
    for i in range(n):
        s.put(prefix + b"%04d" % i, b"value-%04d" % i * 3)


def _value(i):
    return b"value-%04d" % i * 3


def _segments(path):
    return [os.path.join(path, L.segment_name(i)) for i in L.segment_ids(path)]


def test_torn_tail_truncated_and_store_usable(open_store, tmp_path):
    s = open_store()
    _fill(s, 50)
    st = s.stats()
    s._abandon()
    with open(st["active_segment"], "r+b") as f:
        f.truncate(st["active_offset"] - 7)        # the last record loses its end
    s = open_store()
    assert s.recovery["torn_tail_bytes"] > 0 and s.recovery["corrupt_records"] == 0
    assert not s.recovery["clean"]
    assert s.get(b"k0049") is None
    for i in range(49):
        assert s.get(b"k%04d" % i) == _value(i)
    s.put(b"after", b"crash")
    s.close()
    s = open_store()
    assert s.recovery["clean"] and s.get(b"after") == b"crash" and len(s) == 50


def test_bit_flip_in_unsealed_segment_is_skipped(open_store, tmp_path):
    s = open_store()
    _fill(s, 30)
    st = s.stats()
    s._abandon()
    path = st["active_segment"]
    data = bytearray(open(path, "rb").read())
    rec = 32 + 10 * (24 + 5 + 30) + 30            # inside record 10's value
    data[rec] ^= 0x40
    open(path, "wb").write(data)
    s = open_store()
    assert s.recovery["corrupt_records"] == 1 and s.stats()["corrupt_records"] == 1
    assert s.get(b"k0010") is None
    for i in range(30):
        if i != 10:
            assert s.get(b"k%04d" % i) == _value(i)


def test_bit_flip_in_header_of_record_resyncs(open_store):
    s = open_store()
    _fill(s, 30)
    st = s.stats()
    s._abandon()
    path = st["active_segment"]
    data = bytearray(open(path, "rb").read())
    data[32 + 5 * (24 + 5 + 30) + 20] ^= 0xFF       # record 5's value length: garbage size
    open(path, "wb").write(data)
    s = open_store()
    assert s.recovery["corrupt_records"] == 1 and len(s) == 29
    assert s.get(b"k0029") == _value(29)


def test_bit_flip_in_sealed_segment_is_dropped_on_read_and_merge_skips(open_store, tmp_path):
    s = open_store()
    _fill(s, 30)
    s.close()
    seg = _segments(str(tmp_path / "store"))[0]
    data = bytearray(open(seg, "rb").read())
    data[32 + 3 * (24 + 5 + 30) + 40] ^= 0x01
    data[32 + 7 * (24 + 5 + 30) + 40] ^= 0x01
    open(seg, "wb").write(data)
    s = open_store()                                # opened from hints: the flips are not seen yet
    seen = []
    s.on_corrupt = lambda seg_id, off: seen.append((seg_id, off))
    assert len(s) == 30
    assert s.get(b"k0003") is None                  # corruption is missing data: dropped...
    assert seen == [(L.segment_ids(str(tmp_path / "store"))[0], 32 + 3 * (24 + 5 + 30))]
    assert len(s) == 29 and b"k0003" not in s and s.stats()["corrupt_records"] == 1
    assert s.get(b"k0003") is None and len(seen) == 1     # ...once: reported once
    assert s.get(b"k0004") == _value(4)
    s.merge()                                       # the merge finds k0007's record bad
    assert s.stats()["corrupt_records"] >= 2 and len(seen) == 2
    assert s.get(b"k0007") is None and s.get(b"k0029") == _value(29) and len(s) == 28
    s.put(b"k0003", b"healed")                      # a repair writes it again
    assert s.get(b"k0003") == b"healed"


def test_hint_file_bit_flip_falls_back_to_scan(open_store, tmp_path):
    s = open_store()
    _fill(s, 40)
    s.delete(b"k0001")
    s.close()
    hint = os.path.join(str(tmp_path / "store"), L.hint_name(L.segment_ids(str(tmp_path / "store"))[0]))
    data = bytearray(open(hint, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(hint, "wb").write(data)
    s = open_store()
    assert s.recovery["scanned_segments"] == 1 and s.recovery["corrupt_records"] == 0
    assert len(s) == 39 and s.get(b"k0001") is None and s.get(b"k0039") == _value(39)
    s.close()
    s = open_store()                                # the rescan rewrote a good hint file
    assert s.recovery["scanned_segments"] == 0 and len(s) == 39


@pytest.mark.parametrize("impl_name", ["cython", "python"])
def test_files_are_shared_between_twins(tmp_path, impl_name):
    from kvcore.storage import store, store_py

    a, b = (store, store_py) if impl_name == "cython" else (store_py, store)
    s = a.LogStore(tmp_path / "s", fsync="never", max_segment_bytes=4096, compress_min_bytes=64)
    _fill(s, 200)
    s.put(b"big", b"xyz" * 1000)
    s.delete(b"k0005")
    s.close()
    s = b.LogStore(tmp_path / "s", fsync="never", max_segment_bytes=4096, compress_min_bytes=64)
    assert s.recovery["scanned_segments"] == 0
    assert len(s) == 200 and s.get(b"big") == b"xyz" * 1000 and s.get(b"k0005") is None
    s.close()


@pytest.mark.slow
@pytest.mark.parametrize("twin", [False, True], ids=["cython", "python"])
def test_sigkill_mid_stream_loses_no_acknowledged_put(tmp_path, twin, killed_writer):
    from kvcore.storage import store, store_py

    acked = killed_writer(tmp_path / "s", 400, twin, fsync="always", max_segment_bytes=1 << 16)
    mod = store_py if twin else store
    s = mod.LogStore(tmp_path / "s", fsync="never")
    try:
        assert not s.recovery["clean"]
        for i in range(acked + 1):
            key = b"key-%06d" % i
            assert s.get(key) == key * 7, i
        assert s.recovery["corrupt_records"] == 0
    finally:
        s.close()
