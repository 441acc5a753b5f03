# Cython's view of protocol.py when the build compiles it (kvnet/compiled.py): a batch and its
# answer's fan-out as extension types, their fields in C (no instance dict to probe).

cdef class _Batch:
    cdef public list items, callbacks
    cdef public Py_ssize_t size
    cdef public object timeout


cdef class _Fanout:
    cdef public object conn, type, items, callbacks, timeout
