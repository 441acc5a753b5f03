import importlib

import pytest

IMPLS = [pytest.param("kvcore.storage.store", id="cython"),
         pytest.param("kvcore.storage.store_py", id="python")]


@pytest.fixture(params=IMPLS)
def impl(request):
    """The store module under test: compiled, then the pure-Python twin."""
    return importlib.import_module(request.param)


@pytest.fixture
def open_store(impl, tmp_path):
    """open_store(**opts) -> a LogStore on tmp_path/store, closed after the test."""
    opened = []

    def _open(path=None, **kw):
        kw.setdefault("fsync", "never")
        s = impl.LogStore(path or tmp_path / "store", **kw)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()


_WRITER = r"""
import sys
from kvcore.storage import LogStore
s = LogStore(sys.argv[1], **eval(sys.argv[2]))
i = 0
while True:
    key = b"key-%06d" % i
    s.put(key, key * 7)
    sys.stdout.write("%d\n" % i)
    sys.stdout.flush()
    i += 1
"""


@pytest.fixture
def killed_writer():
    """killed_writer(path, at_least, twin, **store_opts) -> the last acknowledged i: a child
    process puts key-%06d -> key * 7 and reports each ack; it is SIGKILLed once at_least
    puts are acknowledged (the compiled store, or the twin with twin=True)."""
    import os
    import signal
    import subprocess
    import sys

    def run(path, at_least, twin, **opts):
        env = dict(os.environ)
        env.pop("RINGKV_NO_EXTENSIONS", None)       # the suite may run with it set
        if twin:
            env["RINGKV_NO_EXTENSIONS"] = "1"
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), repr(opts)],
                                stdout=subprocess.PIPE, env=env)
        acked = -1
        try:
            for line in proc.stdout:
                acked = int(line)
                if acked >= at_least:
                    break
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        assert acked >= at_least
        return acked

    return run
