# Cython's view of server.py when the build compiles it (kvnet/compiled.py): a connection, a
# command still running and the server as extension types, their fields in C. The counters,
# flags and containers the request path touches are typed (C integers and booleans, list and
# dict: direct calls, no attribute lookup); the rest stay Python objects.

from kvnet.resp.commands cimport Session


cdef class RespServer
cdef class _Waiting


cdef class RespProtocol:
    cdef public RespServer server       # their fields read in C on every command
    cdef public Session session
    cdef public object commands, loop, parser, transport
    cdef public object _queue, _slots, _key_of, _idle_handle, _auth_handle
    cdef public dict _running, _keys
    cdef public list _out
    cdef public Py_ssize_t _out_size, _in_buf
    cdef public bint _barrier, _flush_queued, _in_run, _write_paused, _reading, _closed
    cdef public double _last_read

    cpdef _task_done(self, task, _Waiting waiting)


cdef class _Waiting:
    cdef public RespProtocol conn
    cdef public object key, cmd, data, slot, started
    cdef public int ahead              # 0, AHEAD or AHEAD_LANE


cdef class RespServer:
    cdef public object loop, backend, idle_timeout, write_high_water, parser_limits, commands
    cdef public object door, server, tls_server, auth_timeout, preauth_limits
    cdef public Py_ssize_t max_run_ahead, run_ahead, max_lane_ahead, lane_ahead
    cdef public Py_ssize_t max_clients, max_pending
    cdef public Py_ssize_t max_input, input_bytes
    cdef public tuple door_limits
    cdef public set connections
    cdef public list unflushed
