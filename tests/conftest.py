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
