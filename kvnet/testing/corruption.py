"""Damage on disk for the tests of "corruption is missing data" (docs/storage.md): the records of
a segment file (`records_of`), a flipped byte in some of them (`corrupt_records`), a segment
header of another format version (`rewrite_segment_version`)."""
import os
import random


def rewrite_segment_version(path, version):
    """Rewrite the format version in a segment file's header (and the header's CRC), as a
    data file of another ringkv version would have it (tests of the format check)."""
    from kvcore.hashing_py import crc32c

    with open(path, "r+b") as f:
        head = bytearray(f.read(32))
        head[8:10] = version.to_bytes(2, "little")
        head[28:32] = crc32c(bytes(head[:28])).to_bytes(4, "little")
        f.seek(0)
        f.write(head)


def records_of(segment_path):
    """[(offset, size, key, value offset, value length)] of the whole records of one segment
    file, in file order (stops at the first bad one or at zeros: a crashed store's tail)."""
    from kvcore.storage import layout as L
    from kvcore.storage import record_py as R

    with open(segment_path, "rb") as f:
        buf = f.read()
    out, off = [], L.SEG_HEADER_SIZE
    while off < len(buf):
        rec = R.decode_record(buf, off, len(buf))
        if rec is None:
            break
        _, _, key, stored, size = rec
        out.append((off, size, key, off + size - len(stored), len(stored)))
        off += size
    return out


def corrupt_records(store_dir, per_segment=2, rng=None, where="value"):
    """Flip one byte in `per_segment` records of every segment of a (closed or crashed) store
    directory: in the value (where="value") or in the key. Returns the keys hit, {key: (segment
    file, offset)}. A record already superseded by a later one of its key hits nothing."""
    from kvcore.storage import layout as L

    rng = rng or random.Random(7)
    hit = {}
    for seg_id in L.segment_ids(store_dir):
        path = os.path.join(store_dir, L.segment_name(seg_id))
        recs = [r for r in records_of(path) if r[2] not in hit]
        for off, size, key, voff, vlen in rng.sample(recs, min(per_segment, len(recs))):
            at = voff + rng.randrange(vlen) if where == "value" and vlen else off + 24 + rng.randrange(len(key))
            with open(path, "r+b") as f:
                f.seek(at)
                b = f.read(1)
                f.seek(at)
                f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))
            hit[key] = (path, off)
    return hit
