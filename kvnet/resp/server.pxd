# Cython's view of server.py when the build compiles it (kvnet/compiled.py): a connection and
# the server as extension types, their fields in C (untyped: Python's semantics kept).

cdef class RespProtocol:
    cdef public object server, commands, loop, parser, transport, session
    cdef public object _queue, _slots, _running, _keys, _barrier, _key_of, _out, _out_size
    cdef public object _flush_queued, _in_run, _write_paused, _reading, _closed
    cdef public object _idle_handle, _last_read


cdef class RespServer:
    cdef public object loop, max_run_ahead, run_ahead, backend, max_clients, idle_timeout
    cdef public object max_pending, write_high_water, parser_limits, commands, door_limits
    cdef public object door, connections, unflushed, server
