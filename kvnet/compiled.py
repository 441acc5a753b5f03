"""Which plain Python modules the build also compiles with Cython (setup.py), and the check
that their compiled copies are not older than their source.

They are the request path's glue: the front door, the peer protocol, the coordinator's lane
and the node (only what each plain GET or SET runs: each module adds to the build's time).
Compiled, the same code runs without the bytecode loop, about a fifth of a node's CPU under
load (docs/performance.md). Python imports a module's compiled copy before its .py, so an
edited .py whose build was not redone would silently run the old code: `check()` (called by
kvnet/__init__.py) refuses that, naming the rebuild command. This module imports nothing of
the project: setup.py reads PY_MODULES before anything is built.
"""
import importlib.machinery
import os
import re

PY_MODULES = (
    "kvnet.stepping",
    "kvnet.resp.parser",
    "kvnet.resp.replies",
    "kvnet.resp.server",
    "kvnet.peer.framing",
    "kvnet.peer.core",
    "kvnet.peer.batching",
    "kvnet.peer.serving",
    "kvnet.peer.protocol",
    "kvnet.coordinator.driver",
    "kvnet.routes",
    "kvnet.resp.commands",
    "kvnet.handlers",
    "kvnet.replicahandlers",
    "kvnet.frontdoor",
    "kvnet.node",
)

REBUILD = "pip install -e . (or python setup.py build_ext --inplace)"


# Compiled modules whose .py/.pyx source the check reads besides PY_MODULES: Cython sources
# that cimport the PY_MODULES' declarations (their structures' layout is compiled in).
CIMPORTING = ("kvnet.localdoor",)

_CIMPORT = re.compile(r"^\s*(?:from\s+((?:kvnet|kvcore)\.[\w.]+)\s+cimport"
                      r"|cimport\s+((?:kvnet|kvcore)\.[\w.]+))", re.M)


def _sources(root, name):
    """The files a module's compiled copy is built from: its .py or .pyx, its .pxd, and every
    project .pxd these cimport, transitively (a changed declaration changes the layout that
    the importing module compiled in)."""
    seen, todo, files = set(), [name], []
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        base = os.path.join(root, *mod.split("."))
        for suffix in ((".py", ".pyx", ".pxd") if mod == name else (".pxd",)):
            path = base + suffix
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            files.append(path)
            if suffix != ".py":
                todo.extend(a or b for a, b in _CIMPORT.findall(text))
    return files


def stale(root):
    """The modules of PY_MODULES and CIMPORTING whose compiled copy under `root` (the
    directory holding the kvnet package) is older than a file it is built from."""
    out = []
    for name in PY_MODULES + CIMPORTING:
        files = _sources(root, name)
        if not files:
            continue
        source = max(os.stat(path).st_mtime for path in files)
        base = os.path.join(root, *name.split("."))
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            try:
                if os.stat(base + suffix).st_mtime < source:
                    out.append(name)
                break
            except OSError:
                continue
    return out


def check(root):
    """In a source tree (where setup.py is: an installed copy's files all come from one
    build), refuse compiled copies older than their source."""
    if not os.path.exists(os.path.join(root, "setup.py")):
        return
    old = stale(root)
    if old:
        raise ImportError(f"ringkv: the compiled copies of {', '.join(old)} are older than "
                          f"their source; rebuild them: {REBUILD}")
