# Cython's view of protocol.py when the build compiles it (kvnet/compiled.py): a batch and its
# answer's fan-out as extension types, their fields in C (no instance dict to probe), and
# batch_request a C method that kvnet/coordinator/driver.py and kvnet/localdoor.pyx call directly.

cimport cython

cdef class _Batch:
    cdef public list items, callbacks
    cdef public Py_ssize_t size
    cdef public object timeout


cdef class _Fanout:
    cdef public object conn, type, items, callbacks, timeout


from kvnet.peer.core cimport PeerProtocolCore


cdef class PeerConnection(PeerProtocolCore):
    cdef public object _loop, _handler, _handler_now, _handshake_timeout
    cdef public object _transport, _wbuf, peername, _deadline_timer, _deadline_at
    cdef public object _backlog, _ready_fut, _closed_fut, _drain_waiters, refuse_reason
    cdef public Py_ssize_t _inline, _max_inflight
    cdef public bint _write_paused, _read_paused
    cdef public dict _waiters, _callbacks, _batches
    cdef public set _tasks
    cdef public list _timers, _ready_callbacks, _close_callbacks

    @cython.locals(batch=_Batch, size=Py_ssize_t)
    cpdef bint batch_request(self, rtype, item, callback, timeout) except -1
