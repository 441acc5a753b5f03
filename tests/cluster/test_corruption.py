"""Corruption is missing data, with real node processes (docs/storage.md, "Faults";
docs/antientropy.md, "Corrupt records"): a node is stopped (kill -9, or a clean stop), bytes are
flipped in records of its active and sealed segments (a 4 KiB segment size makes many sealed
ones), and it is started again. It opens and serves; after a kill -9 (no saved trees: the open
finds the records bad) anti-entropy alone gives it back every key; every key reads back with
R=ALL; and once read repair and anti-entropy have run, it holds every key itself, read from it
alone while the other nodes are paused."""
import os
import signal
import time

import pytest

from kvcore.storage import layout as L
from kvnet.testing import LocalCluster, corrupt_records

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT_S = 2.0        # the default request_timeout_ms
FLAGS = ["--ring-size", "16", "--ae-interval-ms", "50", "--max-segment-bytes", "4096",
         "--gossip-interval-ms", "100", "--request-timeout-ms", str(int(REQUEST_TIMEOUT_S * 1000))]
KEYS = {f"key{i:04d}": (f"value-{i}-" + "x" * 120).encode() for i in range(600)}


def _partition_dirs(cluster, i):
    root = os.path.join(cluster.data_dir_of(i), "partitions")
    return [os.path.join(root, name) for name in sorted(os.listdir(root))]


def _values(reply):
    return [] if not reply else list(reply[1])


def _missing_on_alone(cluster, i, keys):
    """Keys that node i does not hold, read from it alone (R=1) with the other nodes stopped
    (SIGSTOP) for the read. They stay stopped until node i's requests to them have timed out
    (REQUEST_TIMEOUT_S), so that their late replies start no read repair: what node i holds
    afterwards, anti-entropy gave it."""
    others = [j for j in range(len(cluster.names)) if j != i]
    r = cluster.client(i, timeout=10)
    for j in others:
        cluster.pause(j)
    try:
        missing = [k for k in keys
                   if KEYS[k] not in _values(r.execute_command("KV.GET", k, "R", "1"))]
        time.sleep(REQUEST_TIMEOUT_S + 1.0)
        return missing
    finally:
        for j in others:
            cluster.resume(j)
        r.close()


def _wait_held_alone(cluster, i, timeout=40):
    deadline = time.monotonic() + timeout
    missing = list(KEYS)
    while missing and time.monotonic() < deadline:
        time.sleep(1.0)
        missing = _missing_on_alone(cluster, i, missing)
    assert not missing, f"{len(missing)} keys not held by {cluster.names[i]} alone: {missing[:5]}"


@pytest.mark.parametrize("stop", ["kill-9", "clean-stop"])
def test_corrupt_records_are_healed_from_the_other_replicas(tmp_path, stop):
    t0 = time.monotonic()
    cluster = LocalCluster(str(tmp_path), nodes=3, fsync="never", extra=FLAGS).start()
    try:
        r = cluster.client(0, timeout=10)
        for k, v in KEYS.items():
            assert r.set(k, v)
        r.close()
        time.sleep(1.0)                             # the third replica's copies land
        cluster.kill(2, signal.SIGKILL if stop == "kill-9" else signal.SIGTERM)
        hit, sealed, active = {}, 0, 0
        for pdir in _partition_dirs(cluster, 2):
            newest = L.segment_ids(pdir)[-1]
            got = corrupt_records(pdir, per_segment=1)
            hit.update(got)
            for path, _ in got.values():
                if path.endswith(L.segment_name(newest)):
                    active += 1
                else:
                    sealed += 1
        assert sealed >= 10 and active >= 10, (sealed, active)
        cluster.start(2)                            # it opens: nothing raises at the fold
        if stop == "kill-9":
            # The open found them (the scan of the last segment, the fold of the sealed
            # ones): anti-entropy alone brings them back, before any client reads them.
            _wait_held_alone(cluster, 2)
            # (an exchange adds its repairs to the counts when it ends, which may be a moment
            # after the keys it repaired are readable)
            deadline = time.monotonic() + 15
            while True:
                repaired = cluster.status(2)["antientropy"]["keys_repaired"]
                if repaired >= len(hit) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert repaired >= len(hit), (repaired, len(hit))

        c = cluster.client(2, timeout=10)
        for k, v in KEYS.items():                   # R=ALL through the corrupted node itself
            assert v in _values(c.execute_command("KV.GET", k, "R", "all")), k
        info = c.info()
        c.close()
        assert info["corrupt_records"] > 0, info

        _wait_held_alone(cluster, 2)                # (after a clean stop: read repair, and
                                                    # anti-entropy once the trees are rebuilt)
        with open(cluster.log_of(2), encoding="utf-8", errors="replace") as f:
            log = f.read()
        assert "fails its CRC: dropped as missing" in log
        assert "Traceback" not in log, log[-3000:]
    finally:
        cluster.stop()
    assert time.monotonic() - t0 < 60
