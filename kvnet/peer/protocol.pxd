# Cython's view of protocol.py when the build compiles it (kvnet/compiled.py): the connection
# and a future's settling callback as extension types, their fields in C (no instance dict to
# probe); batch_request a C method that kvnet/coordinator/driver.py calls directly (and
# kvnet/localdoor.pyx reads state and _write_paused in C); the inbound side and the batcher
# typed, so each call to them is a C call.

from kvnet.peer.batching cimport Batcher
from kvnet.peer.core cimport PeerProtocolCore
from kvnet.peer.serving cimport Inbound


cdef class _Settle:
    cdef public object fut                  # the future a request() or request_future waits on


cdef class PeerConnection(PeerProtocolCore):
    cdef public object _loop, _handshake_timeout
    cdef public object _transport, _wbuf, peername
    cdef public Inbound _inbound            # serves the peer's requests (None: no handler)
    cdef public Batcher _batcher            # this iteration's batches (batch_request)
    cdef public dict _slots                 # req_id -> (callback, type, timeout, deadline)
    cdef public object _deadline_timer      # the one timer of every slot's deadline ...
    cdef public double _deadline_at         # ... due then (inf: none)
    cdef public object _ready_fut, _closed_fut, _drain_waiters, refuse_reason
    cdef public bint _write_paused          # the transport's write buffer is full
    cdef public Py_ssize_t received         # data_received calls (PeerPool's idle sweep)
    cdef public list _timers, _ready_callbacks, _close_callbacks

    cpdef bint batch_request(self, rtype, item, callback, timeout) except -1
    cpdef send_tracked(self, rtype, payload, callback, timeout)
    cpdef _track(self, req_id, type_, callback, timeout)
