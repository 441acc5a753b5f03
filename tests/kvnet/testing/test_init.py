"""kvnet/testing/__init__.py: the toolkit as one import, as it was a single module (other
branches, benchmarks and older checkouts' tests say `from kvnet.testing import X`). That each
of its modules imports with the runtime dependencies alone is checked with the entry points
(tests/test_packaging.py)."""
import os
import pkgutil
import tomllib

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
        "checks", "clients", "cluster", "corruption", "fakes", "ports", "tls", "waiting",
        "writers")]
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    assert "kvnet.testing" in packages
