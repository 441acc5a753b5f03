"""Build the Cython extensions of kvcore.

RINGKV_EXT=kvcore.x,kvcore.y  build only these extensions
RINGKV_CYTHON_ALWAYS=1  re-run cythonize even when the .c files are newer than their source
RINGKV_DEBUG=1          KV_DEBUG invariant checks, linetrace and annotated HTML
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("RINGKV_DEBUG") == "1"
INCLUDE = ["kvcore/include"]
MACROS = [("KV_DEBUG", "1" if DEBUG else "0")]
if DEBUG:
    MACROS += [("CYTHON_TRACE_NOGIL", "1")]
CFLAGS = ["-O3", "-std=c99", "-Wno-unused-function"]

# One extension per concern (docs/design.md, habit 4): each compiles alone and in parallel.
EXTENSIONS = [
    Extension("kvcore.hashing", ["kvcore/hashing.pyx"]),
    Extension("kvcore.storage.record", ["kvcore/storage/record.pyx"]),
    Extension("kvcore.storage.keydir", ["kvcore/storage/keydir.pyx"]),
    # the node-wide journal's pending frames, appended by the store in C (twin: jbuffer_py)
    Extension("kvcore.storage.jbuffer", ["kvcore/storage/jbuffer.pyx"]),
    # LogStore's parts, cut by concern (docs/storage.md, "Code layout"); store is their API
    Extension("kvcore.storage.segments", ["kvcore/storage/segments.pyx"]),
    Extension("kvcore.storage.index", ["kvcore/storage/index.pyx"]),
    Extension("kvcore.storage.recovery", ["kvcore/storage/recovery.pyx"]),
    Extension("kvcore.storage.durability", ["kvcore/storage/durability.pyx"]),
    Extension("kvcore.storage.writes", ["kvcore/storage/writes.pyx"]),
    Extension("kvcore.storage.merge", ["kvcore/storage/merge.pyx"]),
    Extension("kvcore.storage.folds", ["kvcore/storage/folds.pyx"]),
    Extension("kvcore.storage.store", ["kvcore/storage/store.pyx"]),
    # issue 4 modules below (one line each)
    Extension("kvcore.ring", ["kvcore/ring.pyx"]),
    Extension("kvcore.merkle", ["kvcore/merkle.pyx"]),
    # issue 5: the RESP front door's request scan (kvnet/resp/parser.py; twin: fastparse_py)
    Extension("kvnet.resp.fastparse", ["kvnet/resp/fastparse.pyx"]),
    # issue 5: the common case of kvcore.versions.decode (twin: clockcodec_py)
    Extension("kvcore.clockcodec", ["kvcore/clockcodec.pyx"]),
    # a replica's SET and superseding merge in one store lookup (twin: replicawrite_py)
    Extension("kvcore.replicawrite", ["kvcore/replicawrite.pyx"]),
    # a node's plain GET/SET of keys it alone replicates, in C (twin: kvnet/localdoor_py)
    Extension("kvnet.localdoor", ["kvnet/localdoor.pyx"]),
    # the front door's request counts and latency histograms in C arrays (twin: reqstats_py)
    Extension("kvnet.reqstats", ["kvnet/reqstats.pyx"]),
    # the peer frame MAC's BLAKE2b in C, a struct copy per frame (twin: kvnet/peer/mac_py)
    Extension("kvnet.peer.mac", ["kvnet/peer/mac.pyx"]),
]
# Plain Python modules of the request path, compiled as they are (Cython's pure-Python mode):
# the same source, run without the interpreter's bytecode loop (docs/performance.md). Their
# list is kvnet/compiled.py's; kvnet/__init__.py refuses a build older than its source.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "kvnet"))
from compiled import PY_MODULES  # noqa: E402  (kvnet/compiled.py: no imports of its own)

# -O2 without debug info: their C is mostly calls into the C API, and -O3 -g (Python's own
# flags) takes twice as long to build
PY_EXTENSIONS = [Extension(m, [m.replace(".", "/") + ".py"], extra_compile_args=["-O2", "-g0"])
                 for m in PY_MODULES]
# RINGKV_EXT=a,b builds only those (for iterating on one module).
_only = [n for n in os.environ.get("RINGKV_EXT", "").split(",") if n]
if _only:
    EXTENSIONS = [e for e in EXTENSIONS if e.name in _only]
    PY_EXTENSIONS = [e for e in PY_EXTENSIONS if e.name in _only]
for ext in EXTENSIONS:
    ext.include_dirs = INCLUDE
    ext.define_macros = MACROS
    ext.extra_compile_args = CFLAGS


def _cythonized(extensions, py_extensions):
    from Cython.Build import cythonize

    force = os.environ.get("RINGKV_CYTHON_ALWAYS") == "1"
    # Python semantics kept whole: negative indexes, and annotations as hints only (a str
    # annotation must still take a str subclass)
    py_directives = {"language_level": "3", "binding": True, "annotation_typing": False}
    directives = {
        "language_level": "3",
        "boundscheck": DEBUG,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": DEBUG,
        "linetrace": DEBUG,
    }
    return cythonize(
        extensions,
        compiler_directives=directives,
        annotate=DEBUG,
        force=force,
        include_path=["."],
    ) + (cythonize(py_extensions, compiler_directives=py_directives, annotate=DEBUG,
                   force=force) if py_extensions else [])


class BuildExt(build_ext):
    """Cythonize when extensions are built, not when setup.py is read: an sdist then carries
    the .pyx/.py sources (and the .pxd/.pxi/.h package data) and no generated C, and the wheel
    built from it compiles once."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def run(self):
        # here, not in finalize_options: sdist finalizes build_ext to list the sources
        # (the C sources go into the finalized Extension objects, which carry setuptools' state)
        names = {e.name for e in self.extensions}
        done = _cythonized([e for e in EXTENSIONS if e.name in names],
                           [e for e in PY_EXTENSIONS if e.name in names])
        sources = {e.name: e.sources for e in done}
        for ext in self.extensions:
            ext.sources = sources[ext.name]
        super().run()


setup(ext_modules=EXTENSIONS + PY_EXTENSIONS, cmdclass={"build_ext": BuildExt})
