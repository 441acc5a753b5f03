"""What the pure-Python store (kvcore/storage/store_py.py) and the simulator's memory store
(kvnet/sim/storage.py) share: the checks of a key and a value, a journal replay's records, a
scan's page, anti-entropy's leaf table and a snapshot's fold. The compiled store (store.pyx
and its parts) does each in C."""
from kvcore.errors import KeyTooLarge, ValueTooLarge
from kvcore.storage import record_py as R

MASK64 = (1 << 64) - 1


def check_key(key, opts):
    """A key as a store takes it (bytes, not empty, within opts.max_key_bytes), or raise."""
    if type(key) is not bytes:
        raise TypeError(f"keys must be bytes, not {type(key).__name__}")
    if not key:
        raise KeyTooLarge("keys must not be empty")
    if len(key) > opts.max_key_bytes:
        raise KeyTooLarge(f"key of {len(key)} bytes is over the limit of {opts.max_key_bytes}")


def check_value(value, opts):
    """A value as a store takes it (bytes within opts.max_value_bytes), or raise."""
    if type(value) is not bytes:
        raise TypeError(f"values must be bytes, not {type(value).__name__}")
    if len(value) > opts.max_value_bytes:
        raise ValueTooLarge(
            f"value of {len(value)} bytes is over the limit of {opts.max_value_bytes}")


def replay_records(payloads):
    """(records, bad) of a journal replay's payloads: each record as (flags, key, stored
    value, the record's bytes), in order; `bad` counts payloads cut short by a record that
    fails its check (the rest of that payload is not read)."""
    records, bad = [], 0
    for payload in payloads:
        data, pos = bytes(payload), 0
        while pos < len(data):
            rec = R.decode_record(data, pos, len(data))
            if rec is None:
                bad += 1
                break
            _, flags, key, stored, size = rec
            records.append((flags, key, stored, data[pos:pos + size]))
            pos += size
    return records, bad


def check_scan(cursor, count):
    if not isinstance(cursor, int) or not 0 <= cursor < (1 << 64):
        raise ValueError(f"cursor must be an integer in [0, 2**64), got {cursor!r}")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")


def scan_page(ordered, count):
    """(next cursor, keys) of a scan, from `ordered`: [(position, key)] sorted, from the
    cursor on. A page ends after a whole position (keys sharing it come together); the
    cursor is 0 when nothing is left (docs/storage.md, "SCAN")."""
    out = [k for _, k in ordered[:count]]
    if len(ordered) < count:
        return 0, out
    last = ordered[count - 1][0]
    out.extend(k for h, k in ordered[count:] if h == last)
    return (last + 1) & MASK64, out


def leaf_table(leaves, leaf_bits):
    """(leaf mask, {leaf: []}) for leaf_keys(leaves, leaf_bits), its arguments checked."""
    if not isinstance(leaf_bits, int) or not 1 <= leaf_bits <= 24:
        raise ValueError(f"leaf_bits must be from 1 to 24, got {leaf_bits}")
    lmask = (1 << leaf_bits) - 1
    out = {}
    for leaf in leaves:
        if not isinstance(leaf, int) or not 0 <= leaf <= lmask:
            raise ValueError(f"a leaf must be an integer from 0 to {lmask}, got {leaf!r}")
        out[leaf] = []
    return lmask, out


class SnapshotFold:
    """fold_snapshot over a store's read_snapshot."""

    def fold_snapshot(self, snap, start, count, tree):
        """Fold snapshot entries start .. start + count into `tree` (tree.update(key, None,
        value) for each pair read_snapshot returns); the next index."""
        end, pairs = self.read_snapshot(snap, start, count)
        for key, value in pairs:
            tree.update(key, None, value)
        return end
