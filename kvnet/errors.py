"""Network and quorum errors, and the one table that maps them to RESP errors.

Every error a client can see is a KVNetError subclass with a RESP prefix, so
the front door never formats an error by hand (docs/design.md, habit 16).
"""
import errno as _errno


class KVNetError(Exception):
    """Base of kvnet errors; `resp_prefix` is the first word of the RESP error."""

    resp_prefix = "ERR"

    def resp(self):
        """The RESP error line (without '-' and CRLF)."""
        return f"{self.resp_prefix} {self}"


class ProtocolError(KVNetError):
    """Bytes that break the wire protocol (RESP or peer frames)."""


class CommandError(KVNetError):
    """A well-formed command with bad arguments."""


class WrongArity(CommandError):
    pass


class NoAuth(KVNetError):
    resp_prefix = "NOAUTH"


class WrongPass(KVNetError):
    resp_prefix = "WRONGPASS"


class NoPerm(KVNetError):
    """The session's user lacks the role a command needs (docs/security.md)."""

    resp_prefix = "NOPERM"


class QuorumError(KVNetError):
    """Too few replicas answered in time; the message says how many did."""

    resp_prefix = "QUORUM"


class Unavailable(KVNetError):
    """Not enough healthy nodes to even try (e.g. strict mode with primaries down)."""

    resp_prefix = "UNAVAILABLE"


class TooManySiblings(KVNetError):
    resp_prefix = "SIBLINGS"


class ObjectTooLarge(KVNetError):
    """A write would leave a key's object (its siblings and clock, encoded) above
    max_object_bytes: refused by its coordinator before anything is stored."""

    resp_prefix = "TOOLARGE"


class DiskError(KVNetError):
    """A node's disk refused a write: no space (ENOSPC, or below min_free_percent), too many
    open files (EMFILE), an I/O error (EIO), or a partition made read-only by a failed
    fdatasync. The message names the node, the partition and the cause; reads and the
    node's other partitions go on (docs/storage.md, "Faults")."""

    resp_prefix = "IOERR"


def os_cause(exc):
    """An OSError's cause in words, with its errno's name, as a DiskError says it:
    "reserving segment space: No space left on device (ENOSPC)"."""
    what = exc.strerror or str(exc)
    name = _errno.errorcode.get(exc.errno) if exc.errno else None
    if exc.filename:
        what = f"{exc.filename}: {what}"
    if name and name not in what:
        what += f" ({name})"
    return what


class PeerError(KVNetError):
    """A peer connection failed, was refused, or did not authenticate."""

    resp_prefix = "PEER"


class ConfigError(KVNetError, ValueError):
    """A setting is missing, malformed or out of bounds; the message names it."""
