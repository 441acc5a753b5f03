"""kvnet/compiled.py: the plain Python modules the build compiles are the ones imported, and
a compiled copy older than its source is refused rather than run."""
import importlib
import importlib.machinery
import os
import re

import pytest

from kvcore._native import NO_EXTENSIONS
from kvnet import compiled

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.mark.skipif(NO_EXTENSIONS, reason="checks the compiled build")
def test_every_listed_module_runs_compiled():
    for name in compiled.PY_MODULES:
        assert importlib.import_module(name).__file__.endswith(".so"), name
    # every class an augmenting .pxd declares is an extension type: its fields are C slots
    # (getset descriptors), and an instance has no __dict__ for other attributes
    root = os.path.dirname(os.path.dirname(compiled.__file__))
    declared = 0
    for name in compiled.PY_MODULES:
        pxd = os.path.join(root, *name.split(".")) + ".pxd"
        if not os.path.exists(pxd):
            continue
        module = importlib.import_module(name)
        text = open(pxd).read()
        for cls_name, body in re.findall(r"^cdef class (\w+)[^:]*:\n((?:    .*\n|\n)*)", text,
                                         re.M):
            field = re.search(r"cdef (?:public|readonly) \w+ (\w+)", body).group(1)
            cls = getattr(module, cls_name)
            assert type(cls.__dict__[field]).__name__ == "getset_descriptor", (name, cls_name)
            assert cls.__dictoffset__ == 0, (name, cls_name)
            declared += 1
    assert declared >= 10
    from kvnet.peer.batching import _Batch
    with pytest.raises(AttributeError):
        _Batch(1.0).other = 1


def _tree(tmp_path, modules, with_setup=True):
    for name in modules:
        path = tmp_path.joinpath(*name.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".py").write_text("")
    if with_setup:
        (tmp_path / "setup.py").write_text("")
    return tmp_path


def _touch(path, mtime):
    path.write_text("")
    os.utime(path, (mtime, mtime))


def test_a_compiled_copy_older_than_its_source_is_refused(tmp_path):
    server, driver = "kvnet.resp.server", "kvnet.coordinator.driver"
    root = _tree(tmp_path, [server, driver])
    src = root / "kvnet" / "resp" / "server.py"
    os.utime(src, (1000, 1000))
    _touch(src.with_name("server" + SUFFIX), 2000)          # built after the edit: fine
    os.utime(root / "kvnet" / "coordinator" / "driver.py", (3000, 3000))
    _touch(root / "kvnet" / "coordinator" / ("driver" + SUFFIX), 2000)  # edited since
    assert compiled.stale(str(root)) == [driver]
    with pytest.raises(ImportError, match="kvnet.coordinator.driver.*rebuild"):
        compiled.check(str(root))
    os.utime(root / "kvnet" / "coordinator" / ("driver" + SUFFIX), (4000, 4000))
    compiled.check(str(root))
    _touch(root / "kvnet" / "coordinator" / "driver.pxd", 5000)    # its classes' layout
    assert compiled.stale(str(root)) == [driver]


def test_a_changed_declaration_makes_its_cimporters_stale(tmp_path):
    # a module compiles in the layout of what it cimports: a .pxd edited and rebuilt alone
    # (RINGKV_EXT) leaves every module that cimports it, directly or not, to rebuild
    driver = "kvnet.coordinator.driver"
    root = _tree(tmp_path, [driver])
    kv = root / "kvnet"
    (kv / "peer").mkdir()
    (kv / "coordinator" / "driver.pxd").write_text(
        "from kvnet.peer.protocol cimport PeerConnection\n")
    (kv / "peer" / "protocol.pxd").write_text("from kvnet.peer.core cimport PeerProtocolCore\n")
    (kv / "localdoor.pyx").write_text("from kvnet.coordinator.driver cimport put_direct\n")
    for path in kv.rglob("*.p*"):
        os.utime(path, (1000, 1000))
    _touch(kv / "coordinator" / ("driver" + SUFFIX), 2000)
    _touch(kv / ("localdoor" + SUFFIX), 2000)
    assert compiled.stale(str(root)) == []
    _touch(kv / "peer" / "core.pxd", 3000)                  # two cimports away
    assert compiled.stale(str(root)) == [driver, "kvnet.localdoor"]


def test_an_installed_copy_is_not_checked(tmp_path):
    # (a wheel's files are written in any order: there, mtimes say nothing)
    root = _tree(tmp_path, ["kvnet.stepping"], with_setup=False)
    os.utime(root / "kvnet" / "stepping.py", (3000, 3000))
    _touch(root / "kvnet" / ("stepping" + SUFFIX), 2000)
    assert compiled.stale(str(root)) == ["kvnet.stepping"]
    compiled.check(str(root))                               # no error
