# Cython's view of commands.py when the build compiles it (kvnet/compiled.py): a table entry
# and a connection's session as extension types, their fields in C (untyped: Python's
# semantics kept).

cdef class Command:
    cdef public object name, arity, flags, first, last, step, handler, group, categories
    cdef public object subcommands, now, then, level


cdef class Session:
    cdef public object id, addr, laddr, protocol, name, authenticated, db, created
    cdef public object last_active, last_command, closing, lib_name, lib_ver, pending, user
    cdef public object slot, started    # the request counts' slot and start of `pending`
    cdef public int level       # of its user's role (kvnet/acl.py): the door reads it
