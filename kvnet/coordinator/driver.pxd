# Cython's view of driver.py when the build compiles it (kvnet/compiled.py): the direct lane's
# per-request objects as extension types, their fields in C (no instance dict to probe).

cdef class DirectWrite:
    cdef public object future, raw, replies, pl, me
    cdef public Py_ssize_t left, pending, n, w


cdef class DirectRead:
    cdef public object cluster, future, p, key, replies, value, quorum, pl
    cdef public Py_ssize_t same, needed, pending, n
