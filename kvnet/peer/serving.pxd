# Cython's view of serving.py when the build compiles it (kvnet/compiled.py): a connection's
# inbound side as an extension type, its fields in C; request a C method that
# PeerConnection._on_request calls for every inbound request.

cdef class Inbound:
    cdef public object conn, handler, now   # the PeerConnection; the handler, its sync side
    cdef public Py_ssize_t max_inflight     # handlers running at once; answers inline per flush
    cdef public Py_ssize_t inline           # answers built inline since the last flush
    cdef public set tasks                   # running handler tasks
    cdef public object backlog              # deque of coroutines waiting for a slot
    cdef public bint read_paused            # reading paused: every slot taken

    cpdef request(self, rtype, req_id, payload, bint write_paused)
    cpdef notify(self, rtype, payload)
    cpdef start(self, coro)
    cpdef spawn(self, coro)
