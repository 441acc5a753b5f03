# Cython's view of parser.py when the build compiles it (kvnet/compiled.py): the parser as an
# extension type, its fields in C (untyped: Python's semantics kept).

cdef class RequestParser:
    cdef public object max_bulk, max_args, max_inline, max_command, preauth
    cdef public object _buf, _pos, _reader, _need, _scan, _failed
