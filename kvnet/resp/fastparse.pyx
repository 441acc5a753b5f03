# cython: language_level=3
"""The common case of RESP request parsing in C: complete, well-formed multibulk commands.

`take_commands(buf, pos, n, ...)` walks buf[pos:n] and turns every complete command of the
canonical shape (`*<count>` then `<count>` bulk strings `$<len>` with CRLF everywhere, within
the limits) into a list of bytes, appended to `out`. It stops, without raising, at the first
byte it does not take: an inline command, an incomplete command, an empty or negative count,
anything malformed or over a limit. The Python parser (kvnet/resp/parser.py) continues from
there with its own checks and error messages, so this module changes speed, never results.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF

from kvnet.resp.respscan cimport resp_number as _number

cdef extern from "Python.h":
    char* PyByteArray_AS_STRING(object)
    Py_ssize_t PyByteArray_GET_SIZE(object)



def take_commands(bytearray buf, Py_ssize_t pos, Py_ssize_t n, long long max_bulk,
                  long long max_args, long long max_inline, long long max_command, list out):
    """Append the complete canonical commands from buf[pos:n] to `out`; the offset reached."""
    cdef const char* p = PyByteArray_AS_STRING(buf)
    cdef Py_ssize_t size = PyByteArray_GET_SIZE(buf)
    cdef Py_ssize_t off, body, end, limit, k
    cdef long long count, blen
    cdef list cmd
    cdef object arg
    if n > size:
        n = size
    while pos < n:
        if p[pos] != 42:                       # '*'
            return pos
        off = _number(p, pos + 1, n, &count)
        if off < 0 or count < 1 or count > max_args or off - pos - 2 > max_inline:
            return pos
        limit = pos + <Py_ssize_t>max_command if max_command < (<long long>1 << 62) else n + 1
        # Check the whole command first: nothing is built for one that is cut or odd.
        end = off
        k = 0
        while k < count:
            if end >= n or p[end] != 36:       # '$'
                return pos
            body = _number(p, end + 1, n, &blen)
            if body < 0 or blen > max_bulk:
                return pos
            end = body + <Py_ssize_t>blen + 2
            if end > limit or end > n or p[end - 2] != 13 or p[end - 1] != 10:
                return pos
            k += 1
        cmd = PyList_New(<Py_ssize_t>count)
        k = 0
        while k < count:
            body = _number(p, off + 1, n, &blen)
            arg = PyBytes_FromStringAndSize(p + body, <Py_ssize_t>blen)
            Py_INCREF(arg)
            PyList_SET_ITEM(cmd, k, arg)
            off = body + <Py_ssize_t>blen + 2
            k += 1
        out.append(cmd)
        pos = end
    return pos
