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


# ---- byte-level fast paths of the Redis-style overwrite and read ------------------------------
# A SET over a key this node minted last, and a GET of a key with one value, are most of a
# node's traffic. Both work on the canonical bytes directly, without building the clock; every
# function returns None (or MISS) for any other shape, and the caller takes the general path.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcmp, memcpy

MISS = object()     # lww_common: not the common shape, decode it


cdef struct Reader:
    const unsigned char *p
    const unsigned char *end


cdef inline Py_ssize_t _array(Reader *r):
    """A canonical array header: its length, or -1."""
    cdef unsigned char c
    cdef Py_ssize_t n
    if r.p >= r.end:
        return -1
    c = r.p[0]
    if 0x90 <= c <= 0x9f:
        r.p += 1
        return c & 0x0f
    if c == 0xdc and r.end - r.p >= 3:
        n = (<Py_ssize_t>r.p[1] << 8) | r.p[2]
        if n < 16:
            return -1
        r.p += 3
        return n
    if c == 0xdd and r.end - r.p >= 5:
        n = ((<Py_ssize_t>r.p[1] << 24) | (<Py_ssize_t>r.p[2] << 16)
             | (<Py_ssize_t>r.p[3] << 8) | r.p[4])
        if n < 65536:
            return -1
        r.p += 5
        return n
    return -1


cdef inline uint64_t _be(const unsigned char *p, int n):
    cdef uint64_t v = 0
    cdef int i
    for i in range(n):
        v = (v << 8) | p[i]
    return v


cdef inline int _uint(Reader *r, uint64_t *out):
    """A canonical non-negative int: 0 and the value in out, or -1."""
    cdef unsigned char c
    cdef int n
    cdef uint64_t v
    if r.p >= r.end:
        return -1
    c = r.p[0]
    if c <= 0x7f:
        out[0] = c
        r.p += 1
        return 0
    if not 0xcc <= c <= 0xcf:
        return -1
    n = 1 << (c - 0xcc)           # uint 8, 16, 32, 64
    if r.end - r.p < 1 + n:
        return -1
    v = _be(r.p + 1, n)
    # the smallest form only: 0xcc holds 128..255, 0xcd 256.., 0xce 65536.., 0xcf 2**32..
    if (n == 1 and v < 0x80) or (n == 2 and v <= 0xff) or (n == 4 and v <= 0xffff) \
            or (n == 8 and v <= 0xffffffff):
        return -1
    out[0] = v
    r.p += 1 + n
    return 0


cdef inline int _skip_int(Reader *r):
    """Any canonical int (the timestamp of a superseded value may be negative): 0, or -1."""
    cdef uint64_t v
    cdef unsigned char c
    cdef int n
    cdef long long s
    if r.p >= r.end:
        return -1
    c = r.p[0]
    if c >= 0xe0:                 # negative fixint
        r.p += 1
        return 0
    if not 0xd0 <= c <= 0xd3:
        return _uint(r, &v)
    n = 1 << (c - 0xd0)           # int 8, 16, 32, 64
    if r.end - r.p < 1 + n:
        return -1
    v = _be(r.p + 1, n)
    if n == 1:
        s = <signed char>v
    elif n == 2:
        s = <short>v
    elif n == 4:
        s = <int>v
    else:
        s = <long long>v
    # packb writes a signed form only below zero, and the smallest one
    if s >= 0 or (n == 1 and s >= -32) or (n == 2 and s >= -128) \
            or (n == 4 and s >= -32768) or (n == 8 and s >= -2147483648):
        return -1
    r.p += 1 + n
    return 0


cdef inline Py_ssize_t _bin(Reader *r, const unsigned char **data):
    """A canonical bin (its length, data set) or nil (-2, data NULL); -1 for anything else."""
    cdef unsigned char c
    cdef Py_ssize_t n
    cdef int h
    if r.p >= r.end:
        return -1
    c = r.p[0]
    if c == 0xc0:
        data[0] = NULL
        r.p += 1
        return -2
    if c == 0xc4:
        h = 1
    elif c == 0xc5:
        h = 2
    elif c == 0xc6:
        h = 4
    else:
        return -1
    if r.end - r.p < 1 + h:
        return -1
    n = <Py_ssize_t>_be(r.p + 1, h)
    if (h == 2 and n <= 0xff) or (h == 4 and n <= 0xffff) or r.end - r.p - 1 - h < n:
        return -1
    data[0] = r.p + 1 + h
    r.p += 1 + h + n
    return n


cdef inline int _skip_sibling(Reader *r):
    cdef const unsigned char *d
    if _array(r) != 2 or _bin(r, &d) == -1 or _skip_int(r) != 0:
        return -1
    return 0


cdef inline int _skip_str(Reader *r):
    cdef unsigned char c
    cdef Py_ssize_t n
    cdef int h
    if r.p >= r.end:
        return -1
    c = r.p[0]
    if 0xa0 <= c <= 0xbf:
        n = c & 0x1f
        h = 0
    elif c == 0xd9 or c == 0xda or c == 0xdb:
        h = 1 if c == 0xd9 else (2 if c == 0xda else 4)
        if r.end - r.p < 1 + h:
            return -1
        n = <Py_ssize_t>_be(r.p + 1, h)
        if (h == 1 and n < 32) or (h == 2 and n <= 0xff) or (h == 4 and n <= 0xffff):
            return -1
    else:
        return -1
    if r.end - r.p - 1 - h < n:
        return -1
    r.p += 1 + h + n
    return 0


cdef inline Py_ssize_t _uint_len(uint64_t v):
    if v <= 0x7f:
        return 1
    if v <= 0xff:
        return 2
    if v <= 0xffff:
        return 3
    if v <= 0xffffffff:
        return 5
    return 9


cdef bint _valid_utf8(const unsigned char *s, const unsigned char *end):
    # s: a canonical str (header and bytes, ending at end); decode() reads it with raw=False
    cdef unsigned char c = s[0]
    cdef int h = 0 if 0xa0 <= c <= 0xbf else (1 if c == 0xd9 else (2 if c == 0xda else 4))
    cdef const unsigned char *q
    s += 1 + h
    q = s
    while q < end and q[0] < 0x80:       # ASCII (node names mostly are): valid
        q += 1
    if q == end:
        return True
    try:
        PyUnicode_DecodeUTF8(<const char *>s, end - s, NULL)
    except UnicodeDecodeError:
        return False
    return True


cdef inline char *_put_uint(char *o, uint64_t v):
    if v <= 0x7f:
        o[0] = <char>v
        return o + 1
    cdef int n, i
    if v <= 0xff:
        o[0] = <char>0xcc
        n = 1
    elif v <= 0xffff:
        o[0] = <char>0xcd
        n = 2
    elif v <= 0xffffffff:
        o[0] = <char>0xce
        n = 4
    else:
        o[0] = <char>0xcf
        n = 8
    for i in range(n):
        o[n - i] = <char>(v & 0xff)
        v >>= 8
    return o + 1 + n


cdef object _one_value_clock(const unsigned char *actor, Py_ssize_t actor_len, uint64_t counter,
                             object value, object ts):
    """encode(Clock(((actor, counter, ((value, ts),)),), ())) from the actor's encoded bytes
    (its array header included);
    None if ts is not a non-negative int below 2**64 or value is neither bytes nor None."""
    cdef uint64_t t
    cdef Py_ssize_t vlen = 0
    if type(ts) is not int or ts < 0 or ts > 0xffffffffffffffff:
        return None
    t = ts
    if value is not None:
        if type(value) is not bytes:
            return None
        vlen = PyBytes_GET_SIZE(value)
        if vlen > 0xffffffff:
            return None
    cdef Py_ssize_t head = 1 if value is None else (2 if vlen <= 0xff else (3 if vlen <= 0xffff else 5))
    # clock, tag, entries, entry (4) + actor + counter + values, sibling (2) + value + ts + anon (1)
    out = PyBytes_FromStringAndSize(NULL, 7 + actor_len + _uint_len(counter) + head + vlen
                                    + _uint_len(t))
    cdef char *o = PyBytes_AS_STRING(out)
    o[0] = <char>0x93
    o[1] = <char>0x01
    o[2] = <char>0x91
    o[3] = <char>0x93
    o += 4
    memcpy(o, actor, actor_len)
    o += actor_len
    o = _put_uint(o, counter)
    o[0] = <char>0x91
    o[1] = <char>0x92
    o += 2
    if value is None:
        o[0] = <char>0xc0
        o += 1
    else:
        if vlen <= 0xff:
            o[0] = <char>0xc4
            o[1] = <char>vlen
            o += 2
        elif vlen <= 0xffff:
            o[0] = <char>0xc5
            o[1] = <char>(vlen >> 8)
            o[2] = <char>(vlen & 0xff)
            o += 3
        else:
            o[0] = <char>0xc6
            o[1] = <char>(vlen >> 24)
            o[2] = <char>((vlen >> 16) & 0xff)
            o[3] = <char>((vlen >> 8) & 0xff)
            o[4] = <char>(vlen & 0xff)
            o += 5
        memcpy(o, PyBytes_AS_STRING(value), vlen)
        o += vlen
    o = _put_uint(o, t)
    o[0] = <char>0x90
    return out


def fresh(bytes own, epoch, value, ts):
    """encode(Clock((((node, incarnation, epoch), 1, ((value, ts),)),), ())), where `own` is
    packb(node) + packb(incarnation): the clock of a key written over nothing by a fresh actor.
    None if an argument is out of the encodable range (the caller takes the general path)."""
    if type(epoch) is not int or epoch < 0 or epoch > 0xffffffffffffffff:
        return None
    cdef char buf[9]
    cdef char *e = _put_uint(buf, <uint64_t>epoch)
    actor = b"\x93" + own + PyBytes_FromStringAndSize(buf, e - buf)
    return _one_value_clock(<const unsigned char *>PyBytes_AS_STRING(actor),
                            PyBytes_GET_SIZE(actor), 1, value, ts)


def bump_own(data, bytes own, trusted_from, value, ts):
    """The overwrite of a key whose stored clock (`data`, canonical bytes) has exactly one entry,
    minted by this node's incarnation (`own` = packb(node) + packb(incarnation)) at an epoch at
    or above trusted_from, and no anonymous values: that actor's next dot with the one value
    (value, ts), encoded. None for any other clock or argument: the general path decides.

    This is what LocalReplica.mint(..., overwrite=True) computes for that shape (the context is
    the clock's own, so every stored value is superseded and the actor is kept)."""
    if type(data) is not bytes or type(trusted_from) is not int or trusted_from < 0:
        return None
    cdef Reader r
    r.p = <const unsigned char *>PyBytes_AS_STRING(data)
    r.end = r.p + PyBytes_GET_SIZE(data)
    cdef Py_ssize_t own_len = PyBytes_GET_SIZE(own), nv, i
    cdef const unsigned char *actor
    cdef const unsigned char *actor_end
    cdef uint64_t epoch, counter
    if r.end - r.p < 4 or r.p[0] != 0x93 or r.p[1] != 0x01:
        return None
    r.p += 2
    if _array(&r) != 1 or _array(&r) != 3:
        return None
    actor = r.p
    if _array(&r) != 3 or r.end - r.p < own_len \
            or memcmp(r.p, PyBytes_AS_STRING(own), own_len) != 0:
        return None
    r.p += own_len
    if _uint(&r, &epoch) != 0 or epoch < <uint64_t>trusted_from:
        return None
    actor_end = r.p
    if _uint(&r, &counter) != 0 or counter < 1 or counter == 0xffffffffffffffff:
        return None
    nv = _array(&r)
    if nv < 0 or <uint64_t>nv > counter:
        return None
    for i in range(nv):
        if _skip_sibling(&r) != 0:
            return None
    if _array(&r) != 0 or r.p != r.end:
        return None
    return _one_value_clock(actor, actor_end - actor, counter + 1, value, ts)


def lww_common(data):
    """What versions.lww_value(decode(data)) returns, for canonical bytes of a clock with one
    entry of a (str, int, int) actor, one value and no anonymous ones; MISS for anything else."""
    if type(data) is not bytes:
        return MISS
    cdef Reader r
    r.p = <const unsigned char *>PyBytes_AS_STRING(data)
    r.end = r.p + PyBytes_GET_SIZE(data)
    cdef uint64_t u, counter
    cdef const unsigned char *d
    cdef const unsigned char *name
    cdef Py_ssize_t n
    if r.end - r.p < 4 or r.p[0] != 0x93 or r.p[1] != 0x01:
        return MISS
    r.p += 2
    if _array(&r) != 1 or _array(&r) != 3 or _array(&r) != 3:
        return MISS
    name = r.p
    if _skip_str(&r) != 0 or not _valid_utf8(name, r.p) or _uint(&r, &u) != 0 \
            or _uint(&r, &u) != 0:
        return MISS
    if _uint(&r, &counter) != 0 or counter < 1 or _array(&r) != 1 or _array(&r) != 2:
        return MISS
    n = _bin(&r, &d)
    if n == -1 or _skip_int(&r) != 0 or _array(&r) != 0 or r.p != r.end:
        return MISS
    if n == -2:
        return None
    return PyBytes_FromStringAndSize(<const char *>d, n)


cdef int _one_entry(Reader *r, const unsigned char **actor, Py_ssize_t *actor_len,
                    uint64_t *counter, Py_ssize_t *nv):
    """Read canonical bytes of a whole clock with one entry of a (str, int, int) actor and no
    anonymous values, as decode() would accept them: 0 with the actor's bytes, the counter and
    the number of values; -1 for anything else."""
    cdef const unsigned char *name
    cdef uint64_t u
    cdef Py_ssize_t i
    if r.end - r.p < 4 or r.p[0] != 0x93 or r.p[1] != 0x01:
        return -1
    r.p += 2
    if _array(r) != 1 or _array(r) != 3:
        return -1
    actor[0] = r.p
    if _array(r) != 3:
        return -1
    name = r.p
    if _skip_str(r) != 0 or not _valid_utf8(name, r.p) or _uint(r, &u) != 0 \
            or _uint(r, &u) != 0:
        return -1
    actor_len[0] = r.p - actor[0]
    if _uint(r, counter) != 0 or counter[0] < 1:
        return -1
    nv[0] = _array(r)
    if nv[0] < 0 or <uint64_t>nv[0] > counter[0]:
        return -1
    for i in range(nv[0]):
        if _skip_sibling(r) != 0:
            return -1
    if _array(r) != 0 or r.p != r.end:
        return -1
    return 0


def supersedes(old, new):
    """True when `new` (bytes) is a clock decode() accepts and sync(decode(old), decode(new))
    is decode(new) itself, for the shape replication brings: `old` None (nothing stored), or
    both one-entry clocks of the same (str, int, int) actor with new's counter ahead and its
    superseded part covering old's (versions._merge). False for anything else, which the
    general path (decode, sync) then decides: a replica stores new's bytes as they are."""
    if type(new) is not bytes or (old is not None and type(old) is not bytes):
        return False
    cdef Reader r
    cdef const unsigned char *a2
    cdef const unsigned char *a1
    cdef Py_ssize_t l2, l1, nv2, nv1
    cdef uint64_t c2, c1
    r.p = <const unsigned char *>PyBytes_AS_STRING(new)
    r.end = r.p + PyBytes_GET_SIZE(new)
    if _one_entry(&r, &a2, &l2, &c2, &nv2) != 0:
        return False
    if old is None:
        return True
    r.p = <const unsigned char *>PyBytes_AS_STRING(old)
    r.end = r.p + PyBytes_GET_SIZE(old)
    if _one_entry(&r, &a1, &l1, &c1, &nv1) != 0:
        return False
    if l1 != l2 or memcmp(a1, a2, l1) != 0 or c2 <= c1:
        return False
    return c2 - <uint64_t>nv2 >= c1 - <uint64_t>nv1
