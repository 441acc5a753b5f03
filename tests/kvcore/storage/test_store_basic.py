import os

import pytest

from kvcore.errors import KeyTooLarge, StoreClosed, StoreLocked, ValueTooLarge


def test_compiled_store_loaded():
    import kvcore.storage.store as m

    assert m.__file__.endswith(".so")


def test_put_get_delete_roundtrip(open_store):
    s = open_store()
    assert s.get(b"a") is None
    s.put(b"a", b"1")
    s.put(b"b", b"")
    assert s.get(b"a") == b"1" and s.get(b"b") == b""
    assert b"a" in s and b"zz" not in s and len(s) == 2
    s.put(b"a", b"2")
    assert s.get(b"a") == b"2" and len(s) == 2
    assert s.delete(b"a") is True
    assert s.delete(b"a") is False
    assert s.get(b"a") is None and len(s) == 1
    assert sorted(s.keys()) == [b"b"] and sorted(s) == [b"b"]
    assert list(s.items()) == [(b"b", b"")]


def test_reopen_keeps_data_and_deletes(open_store, tmp_path):
    s = open_store()
    for i in range(500):
        s.put(b"k%d" % i, b"v%d" % i)
    for i in range(0, 500, 3):
        s.delete(b"k%d" % i)
    s.close()
    s = open_store()
    assert s.recovery["clean"] is True
    assert s.recovery["scanned_segments"] == 0
    for i in range(500):
        assert s.get(b"k%d" % i) == (None if i % 3 == 0 else b"v%d" % i)
    assert len(s) == 500 - 167


def test_put_many_get_many(open_store):
    s = open_store(max_segment_bytes=4096)
    items = [(b"key%05d" % i, os.urandom(i % 300)) for i in range(2000)]
    items.append((b"key00001", b"last wins"))
    s.put_many(items)
    expect = dict(items)
    assert len(s) == len(expect)
    assert s.get_many(list(expect)) == list(expect.values())
    assert s.get_many([b"nope"]) == [None]
    assert s.stats()["segments"] > 10


def test_big_values_compressed_transparently(open_store):
    s = open_store(compress_min_bytes=100)
    big = b"abc" * 10000
    rnd = os.urandom(5000)
    s.put(b"big", big)
    s.put(b"rnd", rnd)
    assert s.get(b"big") == big and s.get(b"rnd") == rnd
    st = s.stats()
    assert st["live_bytes"] < len(rnd) + 2000     # big was stored compressed
    s.close()
    s = open_store(compress_min_bytes=100)
    assert s.get(b"big") == big and s.get(b"rnd") == rnd


@pytest.mark.parametrize("bad", ["str", 1, None, bytearray(b"x"), memoryview(b"x")])
def test_non_bytes_rejected(open_store, bad):
    s = open_store()
    with pytest.raises(TypeError):
        s.put(bad, b"v")
    with pytest.raises(TypeError):
        s.put(b"k", bad)
    with pytest.raises(TypeError):
        s.get(bad)
    assert len(s) == 0 and s.stats()["active_offset"] == 32


def test_limits(open_store):
    s = open_store(max_key_bytes=10, max_value_bytes=100)
    with pytest.raises(KeyTooLarge):
        s.put(b"", b"v")
    with pytest.raises(KeyTooLarge):
        s.put(b"x" * 11, b"v")
    with pytest.raises(ValueTooLarge):
        s.put(b"k", b"v" * 101)
    with pytest.raises(ValueTooLarge):
        s.put_many([(b"ok", b"v"), (b"k", b"v" * 101)])
    assert len(s) == 0 and s.stats()["active_offset"] == 32   # nothing written
    s.put(b"x" * 10, b"v" * 100)
    assert s.get(b"x" * 10) == b"v" * 100


def test_default_limits(open_store):
    s = open_store()
    with pytest.raises(KeyTooLarge):
        s.put(b"k" * (8 * 1024 + 1), b"")
    s.put(b"k" * (8 * 1024), b"")


@pytest.mark.parametrize("opts", [dict(fsync="sometimes"), dict(max_segment_bytes=10),
                                  dict(max_key_bytes=70000), dict(sync_interval_ms=0),
                                  dict(max_value_bytes=-1)])
def test_bad_options(impl, tmp_path, opts):
    with pytest.raises(ValueError):
        impl.LogStore(tmp_path / "s", **opts)


def test_use_after_close(open_store):
    s = open_store()
    s.close()
    for call in (lambda: s.get(b"k"), lambda: s.put(b"k", b"v"), lambda: s.delete(b"k"),
                 lambda: len(s), lambda: s.stats(), lambda: s.sync(), lambda: b"k" in s):
        with pytest.raises(StoreClosed):
            call()
    s.close()   # idempotent


def test_second_open_refused_same_process(open_store, impl, tmp_path):
    s = open_store()
    with pytest.raises(StoreLocked):
        impl.LogStore(tmp_path / "store")
    s.put(b"k", b"v")
    s.close()
    s2 = open_store()
    assert s2.get(b"k") == b"v"


def test_second_open_refused_other_process(open_store, tmp_path):
    import subprocess
    import sys

    s = open_store()
    code = ("import sys; from kvcore.storage import LogStore, StoreLocked\n"
            "try:\n    LogStore(sys.argv[1])\nexcept StoreLocked as e:\n    print('locked', e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "store")],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("locked"), out.stderr
    s.close()


def test_context_manager(impl, tmp_path):
    with impl.LogStore(tmp_path / "s", fsync="always") as s:
        s.put(b"k", b"v")
    with impl.LogStore(tmp_path / "s") as s:
        assert s.get(b"k") == b"v"


def test_segments_roll_over(open_store):
    s = open_store(max_segment_bytes=4096)
    for i in range(300):
        s.put(b"k%d" % i, b"x" * 50)
    assert s.stats()["segments"] >= 4
    for i in range(300):
        assert s.get(b"k%d" % i) == b"x" * 50


def test_env_selects_twins_and_missing_build_fails_loudly(tmp_path):
    import subprocess
    import sys

    code = "import kvcore.storage as s; print(s.LogStore.__module__)"
    env = dict(os.environ, RINGKV_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "kvcore.storage.store_py", out.stderr
    env.pop("RINGKV_NO_EXTENSIONS")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "kvcore.storage.store", out.stderr
    # a copy of the sources without compiled modules: the import names the way to build
    src = tmp_path / "src"
    import shutil
    import kvcore

    shutil.copytree(os.path.dirname(kvcore.__file__), src / "kvcore",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    out = subprocess.run([sys.executable, "-c", "import kvcore.storage"], capture_output=True,
                         text=True, env=env, cwd=src, timeout=60)
    assert out.returncode != 0 and "pip install -e ." in out.stderr


def test_records_bigger_than_a_segment_as_a_node_opens_its_stores(open_store, tmp_path):
    """A node's partition stores take any object a replica holds (a sync of siblings may be
    above every write's own limit): their value limit is the record limit, 2 GiB - 1, and a
    record bigger than max_segment_bytes goes in a segment of its own. Read back, after a
    merge and after a reopen (docs/storage.md, "Limits, and how they agree")."""
    opts = dict(max_segment_bytes=4096, max_value_bytes=(1 << 31) - 1)
    s = open_store(**opts)
    big = {b"a": os.urandom(100 << 10), b"b": os.urandom(300 << 10), b"c": b"z" * (200 << 10)}
    for k, v in big.items():
        s.put(b"small-" + k, b"v")
        s.put(k, v)
    s.put(b"a", big[b"a"])                  # the first copy is dead now
    assert s.get_many(list(big)) == list(big.values())
    s.merge()
    assert s.get_many(list(big)) == list(big.values())
    s.close()
    s = open_store(**opts)
    assert s.get_many(list(big)) == list(big.values())
    assert s.get(b"small-b") == b"v"
