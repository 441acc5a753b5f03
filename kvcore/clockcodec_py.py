"""Pure-Python twin of kvcore/clockcodec.pyx (RINGKV_NO_EXTENSIONS=1): it takes nothing, so
kvcore.versions.decode does all the work in Python, with the same results."""


def bind(unpackb, packb, Sibling, Clock):
    pass


def decode_common(data):
    return None


MISS = object()


def fresh(own, epoch, value, ts):
    return None


def bump_own(data, own, trusted_from, value, ts):
    return None


def lww_common(data):
    return MISS


def supersedes(old, new):
    return False
