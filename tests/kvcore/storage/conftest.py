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
