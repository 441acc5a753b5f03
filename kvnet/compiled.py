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

PY_MODULES = (
    "kvnet.stepping",
    "kvnet.resp.parser",
    "kvnet.resp.replies",
    "kvnet.resp.server",
    "kvnet.peer.framing",
    "kvnet.peer.core",
    "kvnet.peer.protocol",
    "kvnet.coordinator.driver",
    "kvnet.resp.commands",
    "kvnet.node",
)

REBUILD = "pip install -e . (or python setup.py build_ext --inplace)"


def stale(root):
    """The modules of PY_MODULES whose compiled copy under `root` (the directory holding the
    kvnet package) is older than its .py or .pxd."""
    out = []
    for name in PY_MODULES:
        base = os.path.join(root, *name.split("."))
        try:
            source = os.stat(base + ".py").st_mtime
        except OSError:
            continue
        try:        # an augmenting .pxd (its classes as extension types) is source too
            source = max(source, os.stat(base + ".pxd").st_mtime)
        except OSError:
            pass
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
