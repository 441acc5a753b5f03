import os
import random

import mmh3
import pytest
from hypothesis import given, strategies as st

import kvcore
from kvcore import hashing_py

IMPLS = [pytest.param("kvcore.hashing", id="cython"), pytest.param("kvcore.hashing_py", id="python")]


@pytest.fixture(params=IMPLS)
def impl(request):
    import importlib

    return importlib.import_module(request.param)


def test_compiled_module_loaded():
    # Fails if the build silently fell back to the twin.
    import kvcore.hashing

    assert kvcore.hashing.__file__.endswith((".so", ".pyd"))
    if not kvcore.NO_EXTENSIONS:
        assert kvcore.hashing is kvcore.hashing  # the package re-exports the compiled one
        assert kvcore.token is kvcore.hashing.token


def test_token_matches_mmh3_every_length(impl):
    rnd = random.Random(7)
    for n in range(0, 301):
        key = bytes(rnd.getrandbits(8) for _ in range(n))
        assert impl.token(key) == mmh3.hash64(key, signed=False)[0], n


def test_token_fixed_vectors(impl):
    # Values from the reference implementation (mmh3 5.x, seed 0).
    assert impl.token(b"") == 0
    assert impl.token(b"hello") == mmh3.hash64(b"hello", signed=False)[0]
    assert impl.token(b"The quick brown fox jumps over the lazy dog") == 0xE34BBC7BBC071B6C


@given(st.binary(max_size=64), st.sampled_from([1, 2, 4, 256, 1024, 1 << 16]))
def test_partition_is_top_bits(key, q):
    bits = q.bit_length() - 1
    expect = (mmh3.hash64(key, signed=False)[0] >> (64 - bits)) if bits else 0
    assert kvcore.hashing.partition(key, q) == expect == hashing_py.partition(key, q)


@pytest.mark.parametrize("q", [0, 3, 255, -4, 2.0, 1 << 33])
def test_partition_rejects_bad_q(impl, q):
    with pytest.raises(ValueError):
        impl.partition(b"k", q)


def test_crc32c_matches_package(impl):
    import crc32c

    for n in (0, 1, 7, 8, 9, 100, 4099):
        data = os.urandom(n)
        assert impl.crc32c(data) == crc32c.crc32c(data)
        assert impl.crc32c(data[n // 2:], impl.crc32c(data[: n // 2])) == crc32c.crc32c(data)
    assert impl.crc32c(b"123456789") == 0xE3069283


def test_token_rejects_non_bytes(impl):
    with pytest.raises(TypeError):
        impl.token("text")
