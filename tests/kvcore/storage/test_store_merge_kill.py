"""A SIGKILL at any point of a merge loses no acknowledged write: a child process overwrites
a small key set while merges run beside it (planned and swapped in on its thread, copied in
another, as a node does), and is killed at random moments, several times over the same
directory; every reopen must hold, for every key, its last acknowledged value or a later
one (docs/storage.md, "Merge")."""
import os
import random
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

_CHILD = r"""
import os, sys, threading
from kvcore.storage import LogStore
s = LogStore(sys.argv[1], fsync="never", max_segment_bytes=16 << 10)
i = int(sys.argv[2])
job = thread = None
while True:
    key = b"k%03d" % (i % 150)
    s.put(key, b"%09d" % i + b"x" * 60)
    sys.stdout.write("%d\n" % i)
    sys.stdout.flush()
    i += 1
    if job is None and i % 400 == 0:
        job = s.begin_merge()
        thread = threading.Thread(target=job.run)
        thread.start()
    elif job is not None and not thread.is_alive():
        s.finish_merge(job)
        job = None
"""


def _check(path, acked, impl):
    from importlib import import_module

    s = import_module(impl).LogStore(path, fsync="never", max_segment_bytes=16 << 10)
    try:
        for key, i in acked.items():
            got = s.get(key)
            assert got is not None, key
            assert int(got[:9]) >= i, (key, int(got[:9]), i)
        return max(int(s.get(k)[:9]) for k in acked) + 1 if acked else 0
    finally:
        s.close()


@pytest.mark.parametrize("impl", ["kvcore.storage.store"])
def test_sigkill_at_random_points_of_merges_loses_no_acknowledged_write(tmp_path, impl):
    rnd = random.Random(int.from_bytes(os.urandom(4), "little"))
    path = str(tmp_path / "s")
    acked, start = {}, 0
    env = dict(os.environ)
    env.pop("RINGKV_NO_EXTENSIONS", None)
    for kill in range(20):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, path, str(start)],
                                stdout=subprocess.PIPE, env=env)
        stop_after = rnd.randrange(300, 3000)
        n = 0
        try:
            for line in proc.stdout:
                i = int(line)
                acked[b"k%03d" % (i % 150)] = i
                n += 1
                if n >= stop_after:
                    break
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        assert n >= stop_after, f"the writer died on its own after {n} writes"
        start = _check(path, acked, impl)      # the next run writes later values
    # merge outputs are numbered `newest input + 1` (not a new sequence): some were swapped in
    ids = sorted(int(f.split(".")[0], 16) for f in os.listdir(path) if f.endswith(".data"))
    assert any(i & 0xFFFFFFFF for i in ids), [hex(i) for i in ids]
