"""The package as a user installs it: an sdist that holds every source the build needs, and
runtime imports that need only the runtime dependencies (a test-only import once broke
`kvnode dev` on a fresh machine while the suite stayed green)."""
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import tomllib
from importlib import metadata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}): the sdist is checked against git ls-files")
    return out.split()


def _pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _dist_name(requirement):
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory):
    """The file names of an sdist built from the tracked files alone, as a clean clone holds
    them (a source tree's build leftovers, such as an old egg-info, stay out of it)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("sdist")
    for name in _tracked():
        os.makedirs(os.path.dirname(src / name), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), src / name)
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                           "--outdir", str(out), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (tar,) = [p for p in os.listdir(out) if p.endswith(".tar.gz")]
    with tarfile.open(out / tar) as t:
        # drop the top folder (ringkv-0.1.0/)
        return {n.split("/", 1)[1] for n in t.getnames() if "/" in n}


def test_the_sdist_holds_every_tracked_build_source(sdist_names):
    tracked = _tracked()
    needed = [f for f in tracked if f.endswith((".pyx", ".pxd", ".pxi", ".h"))
              or (f.endswith(".py") and f.startswith(("kvcore/", "kvnet/")))]
    # the status page's files (package data: kvnet/metrics.py serves them)
    needed += [f for f in tracked if f.startswith("kvnet/status/")]
    needed += ["setup.py", "pyproject.toml", "README.md", "LICENSE"]
    assert len(needed) > 60
    missing = sorted(set(needed) - sdist_names)
    assert not missing, f"tracked files the sdist lacks: {missing}"


def test_the_sdist_carries_no_generated_or_built_files(sdist_names):
    tracked = set(_tracked())         # (the status page's .html is a source)
    built = sorted(n for n in sdist_names if n.endswith((".so", ".c", ".html"))
                   and n not in tracked)
    assert not built, built


def test_metadata_names_license_pythons_and_posix():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert os.path.exists(os.path.join(ROOT, "LICENSE"))
    assert project["requires-python"] == ">=3.11"
    classifiers = project["classifiers"]
    assert "Operating System :: POSIX" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.11") for c in classifiers)


def _test_only_modules():
    """Top-level import names of the distributions only the test extra brings."""
    project = _pyproject()["project"]
    runtime = {_dist_name(r) for r in project["dependencies"]}
    test_only = {_dist_name(r) for r in project["optional-dependencies"]["test"]} - runtime
    mods = set()
    for mod, dists in metadata.packages_distributions().items():
        if {d.lower().replace("_", "-") for d in dists} & test_only:
            mods.add(mod)
    return sorted(m for m in mods if not m.startswith("_"))


def test_runtime_entry_points_import_without_the_test_extra():
    blocked = _test_only_modules()
    assert "pytest" in blocked and "hypothesis" in blocked
    code = textwrap.dedent(f"""
        import importlib, importlib.abc, sys
        BLOCKED = set({blocked!r})

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} comes only with the test extra")
                return None

        sys.meta_path.insert(0, Refuse())
        import kvnet
        from kvnet import Client, AsyncClient
        import kvnet.node, kvnet.cli.kvnode, kvnet.cli.kvctl
        import kvnet.faultproxy, kvnet.cli.devfaults      # kvnode dev --faults, kvctl fault
        import pkgutil, kvnet.testing                     # the benchmarks' and kvnode's toolkit
        for m in pkgutil.iter_modules(kvnet.testing.__path__, "kvnet.testing."):
            importlib.import_module(m.name)
        for argv in (["dev", "--help"], ["start", "--help"], ["add", "--help"]):
            try:
                kvnet.cli.kvnode.main(argv)
            except SystemExit as exc:
                assert exc.code == 0, exc.code
        for argv in (["--help"], ["fault", "--help"]):
            try:
                kvnet.cli.kvctl.main(argv)
            except SystemExit as exc:
                assert exc.code == 0, exc.code
        print("imports ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imports ok" in proc.stdout
