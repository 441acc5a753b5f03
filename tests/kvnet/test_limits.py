import resource

import pytest

from kvnet import limits


class _Limits:
    def __init__(self, soft, hard, settable=True):
        self.soft, self.hard, self.settable, self.set_to = soft, hard, settable, None

    def get(self, which):
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def set(self, which, value):
        if not self.settable:
            raise ValueError("not allowed")
        self.set_to = value
        self.soft = value[0]


def _raise(lim, partitions):
    return limits.raise_nofile(partitions, getrlimit=lim.get, setrlimit=lim.set)


def test_the_soft_limit_is_raised_to_the_hard_one():
    lim = _Limits(1024, 65536)
    assert _raise(lim, 256) == (65536, limits.needed_fds(256))
    assert lim.set_to == (65536, 65536)


def test_a_hard_limit_too_low_for_the_partitions_is_a_clear_error():
    lim = _Limits(512, 900)
    with pytest.raises(OSError, match=r"limit is 900 \(hard\) but 256 partitions need about 968"):
        _raise(lim, 256)
    assert lim.set_to is None


def test_a_soft_limit_that_cannot_be_raised_is_named():
    lim = _Limits(512, 65536, settable=False)
    with pytest.raises(OSError, match="limit is 512 but 256 partitions"):
        _raise(lim, 256)
    assert _raise(_Limits(512, 65536, settable=False), 16) == (512, limits.needed_fds(16))


def test_kvnode_start_reports_a_low_limit_as_a_start_error(tmp_path):
    import subprocess
    import sys

    from kvnet.testing import free_ports

    port, peer = free_ports(2)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300)); "
            "from kvnet.cli import kvnode; sys.exit(kvnode.main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "start", "--insecure-dev-secret",
                          "--port", str(port), "--peer-port", str(peer), "--data-dir",
                          str(tmp_path / "d")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "cannot start: the open-files limit is 300 (hard) but 256 partitions" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_map_count_limit_is_checked(tmp_path):
    """Maps per node are bounded (docs/storage.md, "Resources"): a vm.max_map_count below what
    the partitions may map at once is a clear error naming both; no such file: no check."""
    from kvcore.storage import store
    assert limits.MAPS_PER_PARTITION >= store.MAP_CACHE + 2
    f = tmp_path / "max_map_count"
    f.write_text("65530\n")
    assert limits.check_map_count(256, path=str(f)) == (65530, limits.needed_maps(256))
    f.write_text("3000\n")
    with pytest.raises(OSError, match=r"vm.max_map_count is 3000 but 256 partitions may map "
                                      rf"about {limits.needed_maps(256)}"):
        limits.check_map_count(256, path=str(f))
    assert limits.check_map_count(256, path=str(tmp_path / "absent")) == \
        (None, limits.needed_maps(256))
