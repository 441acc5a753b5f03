"""kvnet/testing/corruption.py on a real store's segment files."""
import os
import random

import pytest

from kvcore.hashing_py import crc32c
from kvcore.storage import layout as L
from kvcore.storage.store import LogStore
from kvnet.testing import corrupt_records, records_of, rewrite_segment_version


@pytest.fixture
def store_dir(tmp_path):
    path = str(tmp_path / "s")
    s = LogStore(path, fsync="never", max_segment_bytes=4096)
    for i in range(60):
        s.put(b"k%03d" % i, b"v%03d" % i * 20)
    s.close()
    return path


def _segments(path):
    return [os.path.join(path, L.segment_name(i)) for i in L.segment_ids(path)]


def test_records_of_lists_every_record_of_a_segment_in_file_order(store_dir):
    segs = _segments(store_dir)
    assert len(segs) > 1
    keys = [rec[2] for seg in segs for rec in records_of(seg)]
    assert keys == [b"k%03d" % i for i in range(60)]
    for seg in segs:
        with open(seg, "rb") as f:
            data = f.read()
        for off, size, key, voff, vlen in records_of(seg):
            assert off + size <= len(data) and voff + vlen == off + size
            assert key in data[off:voff]


def test_corrupt_records_flips_one_bit_of_a_value_per_record_hit(store_dir):
    segs = _segments(store_dir)
    before = {seg: open(seg, "rb").read() for seg in segs}
    recs = {seg: records_of(seg) for seg in segs}
    hit = corrupt_records(store_dir, per_segment=2, rng=random.Random(3))
    assert len(hit) == 2 * len(segs)
    for seg in segs:
        old, new = before[seg], open(seg, "rb").read()
        diff = [i for i in range(len(old)) if old[i] != new[i]]
        assert len(diff) == 2 and all(bin(old[i] ^ new[i]).count("1") == 1 for i in diff)
        for i in diff:                       # inside the value of a record it reports
            off, _, key, voff, vlen = next(r for r in recs[seg] if r[3] <= i < r[3] + r[4])
            assert hit[key] == (seg, off)


def test_rewrite_segment_version_keeps_the_header_crc_valid(store_dir):
    seg = _segments(store_dir)[0]
    rewrite_segment_version(seg, 7)
    with open(seg, "rb") as f:
        head = f.read(32)
    assert int.from_bytes(head[8:10], "little") == 7
    assert int.from_bytes(head[28:32], "little") == crc32c(head[:28])
