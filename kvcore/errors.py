"""One exception hierarchy for kvcore (STYLE.md)."""


class KVError(Exception):
    """Base of every kvcore error."""


class StoreError(KVError):
    """A LogStore cannot do what was asked."""


class StoreClosed(StoreError):
    """The store was used after close()."""


class StoreLocked(StoreError):
    """Another LogStore (in this or another process) holds the directory."""


class CorruptStore(StoreError):
    """On-disk data cannot be used at all (not one bad record: those are skipped)."""


class KeyTooLarge(StoreError, ValueError):
    """A key is empty or longer than the store's key limit."""


class ValueTooLarge(StoreError, ValueError):
    """A value is longer than the store's value limit."""


class CorruptRecord(StoreError):
    """A record read back fails its CRC (counted; anti-entropy repairs it in a cluster)."""


class MergeError(StoreError):
    """A merge could not be planned or committed."""


class RingError(KVError, ValueError):
    """A ring cannot be built, changed or decoded as asked (bad members, Q, bytes)."""
