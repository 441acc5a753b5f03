"""Pure-Python twin of kvcore/clockcodec.pyx (RINGKV_NO_EXTENSIONS=1): it takes nothing, so
kvcore.versions.decode does all the work in Python, with the same results."""


def bind(unpackb, packb, Sibling, Clock):
    pass


def decode_common(data):
    return None
