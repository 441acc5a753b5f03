# cython: language_level=3
"""The common case of kvcore.versions.decode in C (twin: clockcodec_py).

`decode_common(data)` returns the Clock that versions.decode would return for well-formed
canonical bytes whose anonymous values number at most one, and None for anything else (bad
bytes, odd actors, several anonymous values ...): versions.decode then decides in Python, with
its own checks and messages. So this module changes speed, never results.
"""
cdef object _unpackb = None
cdef object _packb = None
cdef object _Sibling = None
cdef object _Clock = None
cdef object _tnew = tuple.__new__


def bind(unpackb, packb, Sibling, Clock):
    """versions.py hands over its msgpack functions and value types once, at import."""
    global _unpackb, _packb, _Sibling, _Clock
    _unpackb, _packb, _Sibling, _Clock = unpackb, packb, Sibling, Clock


cdef inline object _sibling(object v):
    # A [bytes or nil, int] pair as a Sibling, or None when it is anything else.
    if type(v) is not tuple or len(<tuple>v) != 2:
        return None
    value = (<tuple>v)[0]
    if type((<tuple>v)[1]) is not int or (value is not None and type(value) is not bytes):
        return None
    return _tnew(_Sibling, v)


def decode_common(data):
    if type(data) is not bytes:
        return None
    try:
        obj = _unpackb(data, use_list=False, raw=False, strict_map_key=True)
    except Exception:
        return None
    if type(obj) is not tuple or len(<tuple>obj) != 3:
        return None
    tag = (<tuple>obj)[0]
    if type(tag) is not int or tag != 1:
        return None
    raw_entries = (<tuple>obj)[1]
    raw_anon = (<tuple>obj)[2]
    if type(raw_entries) is not tuple or type(raw_anon) is not tuple or len(<tuple>raw_anon) > 1:
        return None
    cdef Py_ssize_t n = len(<tuple>raw_entries), i, j, nv
    cdef list entries = []
    cdef list vals_out
    prev = None
    for i in range(n):
        e = (<tuple>raw_entries)[i]
        if type(e) is not tuple or len(<tuple>e) != 3:
            return None
        actor = (<tuple>e)[0]
        counter = (<tuple>e)[1]
        vals = (<tuple>e)[2]
        try:
            hash(actor)
            if prev is not None and not (prev < actor):
                return None
        except Exception:
            return None
        if type(counter) is not int or counter < 1:
            return None
        if type(vals) is not tuple:
            return None
        nv = len(<tuple>vals)
        if nv > counter:
            return None
        vals_out = []
        for j in range(nv):
            s = _sibling((<tuple>vals)[j])
            if s is None:
                return None
            vals_out.append(s)
        entries.append((actor, counter, tuple(vals_out)))
        prev = actor
    if len(<tuple>raw_anon):
        s = _sibling((<tuple>raw_anon)[0])
        if s is None:
            return None
        anonymous = (s,)
    else:
        anonymous = ()
    entries_t = tuple(entries)
    if _packb((1, entries_t, anonymous)) != data:
        return None
    return _tnew(_Clock, (entries_t, anonymous))
