"""Peer-transport failures, each a kvnet.errors.PeerError so callers can catch one class."""
from kvnet.errors import PeerError


class AuthenticationError(PeerError):
    """The peer (or we) failed the cluster-secret challenge."""


class VersionMismatch(PeerError):
    """The two nodes share no peer protocol version."""


class ConnectionLost(PeerError):
    """The connection closed before the handshake finished or a request was answered."""


class PeerUnavailable(PeerError):
    """No connection could be made (refused, unreachable, or waiting out a backoff)."""


class PeerTimeout(PeerError, TimeoutError):
    """A connect, handshake or request did not finish in time."""


class RemoteError(PeerError):
    """The peer's handler raised: ``code`` is the exception's class name there."""

    def __init__(self, message, *, code="Error", remote_message=""):
        super().__init__(message)
        self.code = code
        self.remote_message = remote_message
