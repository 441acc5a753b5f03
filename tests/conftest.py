"""Shared fixtures: every twinned module is tested as compiled and as its twin."""
import importlib

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ringkv", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("ringkv")


def twin_params(compiled, twin):
    """pytest params for a compiled module and its pure-Python twin."""
    return [pytest.param(compiled, id="cython"), pytest.param(twin, id="python")]


def load(name):
    return importlib.import_module(name)


# ---- a size-limited file system (disk-full tests) -------------------------------------------

import contextlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402


@contextlib.contextmanager
def _tmpfs(size):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    d = tempfile.mkdtemp(prefix="ringkv-full-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", d],
                       capture_output=True)
    if r.returncode != 0:
        os.rmdir(d)
        pytest.skip("cannot mount a tmpfs here: " + r.stderr.decode(errors="replace"))
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", d], check=False)
        os.rmdir(d)


@pytest.fixture
def small_fs():
    """A 1 MiB tmpfs mounted for the test and removed after it (skips, saying why, where
    mounting is not allowed: not root, or no mount permission in a container)."""
    with _tmpfs("1m") as d:
        yield d


@pytest.fixture
def sized_fs():
    """sized_fs(size) -> a tmpfs of that size ("4m"), mounted for the test (as small_fs)."""
    with contextlib.ExitStack() as stack:
        yield lambda size: stack.enter_context(_tmpfs(size))
