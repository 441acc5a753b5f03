"""kvnet.peer: the node-to-node transport (docs/peer.md).

framing (bytes <-> frames), core (PeerProtocolCore: states, handshake, auth),
protocol (asyncio PeerConnection: sending, completing requests; connect), batching (batched
requests and their answers), serving (inbound requests, serve_peers), pool (PeerPool).
"""
from kvnet.peer.core import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, PeerProtocolCore, State
from kvnet.peer.errors import (
    AuthenticationError,
    ConnectionLost,
    PeerTimeout,
    PeerUnavailable,
    RemoteError,
    VersionMismatch,
)
from kvnet.peer.framing import (DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE, Frame,
                                 FrameReader, Kind, encode_frame)
from kvnet.peer.pool import PeerPool
from kvnet.peer.protocol import PeerConnection, connect
from kvnet.peer.serving import PeerServer, current_peer, serve_peers

__all__ = [
    "AuthenticationError",
    "ConnectionLost",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Frame",
    "FrameReader",
    "Kind",
    "MIN_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
    "PeerConnection",
    "PeerPool",
    "PeerProtocolCore",
    "PeerServer",
    "PeerTimeout",
    "PeerUnavailable",
    "RemoteError",
    "State",
    "VersionMismatch",
    "connect",
    "current_peer",
    "encode_frame",
    "serve_peers",
]
