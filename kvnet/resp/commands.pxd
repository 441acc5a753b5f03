# Cython's view of commands.py when the build compiles it (kvnet/compiled.py): a table entry
# and a connection's session as extension types, their fields in C (untyped: Python's
# semantics kept).

cimport cython
from kvnet.reqstats cimport ReqStats


cdef class Command:
    cdef public object name, arity, flags, first, last, step, handler, group, categories
    cdef public object subcommands, now, then, level


cdef class Session:
    cdef public object id, addr, laddr, protocol, name, authenticated, db, created
    cdef public object last_active, last_command, closing, lib_name, lib_ver, pending, user
    cdef public object slot, started    # the request counts' slot and start of `pending`
    cdef public int level       # of its user's role (kvnet/acl.py): the door reads it


# the general path's timing (Commands.dispatch, execute, count): C calls into ReqStats
@cython.locals(rs=ReqStats)
cdef object _now(object reqstats)
@cython.locals(rs=ReqStats)
cdef object _count(object reqstats, int slot, object started)
