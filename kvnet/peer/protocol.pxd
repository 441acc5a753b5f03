# Cython's view of protocol.py when the build compiles it (kvnet/compiled.py): a batch and its
# answer's fan-out as extension types, their fields in C (no instance dict to probe).

cdef class _Batch:
    cdef public list items, callbacks
    cdef public Py_ssize_t size
    cdef public object timeout


cdef class _Fanout:
    cdef public object conn, type, items, callbacks, timeout


from kvnet.peer.core cimport PeerProtocolCore


cdef class PeerConnection(PeerProtocolCore):
    cdef public object _loop, _handler, _handler_now, _handshake_timeout, _max_inflight
    cdef public object _transport, _wbuf, _inline, peername, _waiters, _callbacks
    cdef public object _deadline_timer, _deadline_at, _batches, _tasks, _backlog, _ready_fut
    cdef public object _closed_fut, _timers, _write_paused, _drain_waiters, _read_paused
    cdef public object _ready_callbacks, _close_callbacks, refuse_reason
