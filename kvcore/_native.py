"""Chooses compiled modules or their pure-Python twins, and fails loudly.

The twins (`*_py.py`) are test oracles. They are used only when
RINGKV_NO_EXTENSIONS=1 is set, never as a silent fallback for a missing build.
"""
import importlib
import os

NO_EXTENSIONS = os.environ.get("RINGKV_NO_EXTENSIONS", "") not in ("", "0")

BUILD_HINT = (
    "build the extensions with `pip install -e .` (or `python setup.py build_ext --inplace`) "
    "from the source tree, or set RINGKV_NO_EXTENSIONS=1 to use the slow pure-Python twins"
)


def require(name):
    """Import the compiled module `name`, or raise an ImportError saying how to build it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"ringkv: compiled module {name} is not built: {exc}; {BUILD_HINT}") from exc


def select(compiled, twin):
    """The compiled module, or its twin when RINGKV_NO_EXTENSIONS=1."""
    if NO_EXTENSIONS:
        return importlib.import_module(twin)
    return require(compiled)
