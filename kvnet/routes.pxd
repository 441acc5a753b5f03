# Cython's view of routes.py when the build compiles it (kvnet/compiled.py): the routes value
# and the lane's connections as extension types, their fields read in C by kvnet/localdoor.pyx.

cdef class Routes:
    cdef readonly object state, ring, me
    cdef readonly frozenset down, solo
    cdef dict _direct, _targets, _routes


cdef class Lanes:
    cdef readonly object pool, down
    cdef readonly dict conns

    cpdef object pick(self, object lane)
