"""kvnet/testing/__init__.py: the toolkit as one import, as it was a single module (other
branches, benchmarks and older checkouts' tests say `from kvnet.testing import X`), importable
with the runtime dependencies alone."""
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata

import kvnet.testing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# every name kvnet/testing.py had before it became a package (dev_env and dev_secret were only
# its imports from kvnet.cli.devcluster)
NAMES = ["ContextWriter", "FaultProxy", "LocalCluster", "OutputReader", "PutRecord", "Reader",
         "SetWriter", "_PORT_FLOOR", "_Writer", "_bindable", "_ephemeral_low", "_live_clusters",
         "_plain", "_stop_leftovers", "check", "context_map", "corrupt_records", "covers",
         "dev_base_port", "divergent_keys", "eventually", "free_ports", "keep_data",
         "missing_replicas", "new_dots", "pin_cpu", "ping", "read_back_and_compare", "records_of",
         "redis_client", "replica_clocks", "rewrite_segment_version", "run_writers", "wait_until"]


def test_every_name_of_the_old_module_is_still_there():
    missing = [n for n in NAMES if not hasattr(kvnet.testing, n)]
    assert not missing, missing
    assert all(hasattr(kvnet.testing, n) for n in kvnet.testing.__all__)
    assert {n for n in NAMES if not n.startswith("_")} == set(kvnet.testing.__all__)


def test_the_names_are_the_modules_objects_not_copies():
    import kvnet.faultproxy
    import kvnet.testing.checks
    import kvnet.testing.cluster

    assert kvnet.testing.FaultProxy is kvnet.faultproxy.FaultProxy
    assert kvnet.testing.free_ports is kvnet.faultproxy.free_ports
    assert kvnet.testing.LocalCluster is kvnet.testing.cluster.LocalCluster
    assert kvnet.testing.check is kvnet.testing.checks.check


def _submodules():
    return sorted(m.name for m in pkgutil.iter_modules(kvnet.testing.__path__, "kvnet.testing."))


def test_the_package_is_split_by_concern_and_shipped():
    assert _submodules() == [f"kvnet.testing.{m}" for m in (
        "checks", "clients", "cluster", "corruption", "ports", "tls", "waiting", "writers")]
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    assert "kvnet.testing" in packages


def _dist(requirement):
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")


def test_no_module_of_the_toolkit_needs_the_test_extra():
    """`kvnode dev` and the benchmarks import it from a base install (no pytest, no hypothesis)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    test_only = ({_dist(r) for r in project["optional-dependencies"]["test"]}
                 - {_dist(r) for r in project["dependencies"]})
    blocked = sorted(mod for mod, dists in metadata.packages_distributions().items()
                     if {d.lower().replace("_", "-") for d in dists} & test_only
                     and not mod.startswith("_")) + ["_pytest"]
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
        for name in {_submodules()!r} + ["kvnet.testing"]:
            importlib.import_module(name)
        print("imports ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imports ok" in proc.stdout
