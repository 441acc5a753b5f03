# Cython's view of driver.py when the build compiles it (kvnet/compiled.py): the direct lane's
# per-request objects as extension types, their fields in C (no instance dict to probe).

cimport cython
from kvnet.peer.protocol cimport PeerConnection

cdef class DirectWrite:
    cdef public object future, raw, replies, pl, me, stats
    cdef public Py_ssize_t left, pending, n, w

    cdef object _outcome(self, object result, object quorum)


cdef class DirectRead:
    cdef public object cluster, future, p, key, replies, value, quorum, pl, answer
    cdef public Py_ssize_t same, needed, pending, n


# The lane's entry points, called from C by kvnet/localdoor.pyx; the replicas' connections
# typed, so each batch_request is a C call.
cpdef object put_direct(object cluster, object p, object key, object raw, Py_ssize_t w,
                        object pl, list conns)
cpdef object get_direct(object cluster, object p, object key, object raw, Py_ssize_t r,
                        object pl, list conns)

# a direct read whose replies were all equal: counted fresh (a C call from DirectRead)
cdef object _fresh(object cluster, Py_ssize_t r)
@cython.locals(counts=dict, c=list)
cdef object _read_checked(dict stats, object r, bint stale)

@cython.locals(conn=PeerConnection)
cdef object _batch_to(list conns, object rtype, object item, object callback, object timeout)

# the coordinator's outcome counts (_count): dict calls in C, once per coordinated request
cdef dict _LABELS
cdef object _tally(dict stats, object op, object needed, object result, object quorum)
