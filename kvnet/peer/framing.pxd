# Cython's view of framing.py when the build compiles it (kvnet/compiled.py): the frame reader
# as an extension type, its fields in C (untyped: Python's semantics kept).

cdef class FrameReader:
    cdef public object max_frame_size, _buf, _error, mac, hold
