# Cython's view of core.py when the build compiles it (kvnet/compiled.py): the protocol core as
# an extension type, its fields in C (a Python subclass, as the tests' recording core, still
# has a __dict__ of its own).

cdef class PeerProtocolCore:
    cdef public object node_id, initiator, expected_peer, max_frame_size, state, peer_id
    cdef public object max_message_size, _chunk_limit, _partial
    cdef public object version, close_exc, late_responses, frame_mac, mac, _send_mac
    cdef public object _secret, _versions, _nonce, _peer_nonce, _reader, _next_id
    cdef public set _pending
    cdef public dict _dispatch
    cdef object __weakref__
