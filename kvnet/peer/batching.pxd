# Cython's view of batching.py when the build compiles it (kvnet/compiled.py): a batch, the
# connection's batcher and a batch answer's fan-out as extension types, their fields in C (no
# instance dict to probe); Batcher.add a C method that PeerConnection.batch_request calls.

cimport cython


cdef class _Batch:
    cdef public list items, callbacks       # the items joined so far, a callback each
    cdef public Py_ssize_t size             # the len() of their clocks
    cdef public object timeout              # of the whole batch: one request


cdef class Batcher:
    cdef public object conn, loop           # the PeerConnection; its event loop
    cdef public dict batches                # type -> _Batch of this loop iteration

    @cython.locals(batch=_Batch, size=Py_ssize_t, batches=dict)
    cpdef bint add(self, rtype, item, callback, timeout) except -1


cdef class Fanout:
    cdef public object conn, type, items, callbacks, timeout
