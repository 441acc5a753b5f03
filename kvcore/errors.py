"""One exception hierarchy for kvcore (docs/design.md, habit 16)."""


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


class StoreFormatError(CorruptStore):
    """A file of the store is in a format version this code does not read (the message names
    the file and both versions); the store is not opened, so nothing is misread as corrupt."""


class StoreFull(StoreError, OSError):
    """A write refused because the file system's free space is below the store's
    `min_free_percent` watermark (errno ENOSPC); nothing was written, and writes resume
    once space is freed."""


class StoreReadOnly(StoreError, OSError):
    """An fdatasync failed: writes since the last good sync may be lost, so the store never
    syncs again as if they were not, and refuses every write (errno: the failed sync's).
    Reads go on; a reopen recovers as after a crash."""


class KeyTooLarge(StoreError, ValueError):
    """A key is empty or longer than the store's key limit."""


class ValueTooLarge(StoreError, ValueError):
    """A value is longer than the store's value limit."""


class CorruptRecord(StoreError):
    """A record read back fails its CRC. LogStore itself no longer raises it: such a record is
    dropped from the index, counted and reported to `on_corrupt` (docs/storage.md, "Faults")."""


class MergeError(StoreError):
    """A merge could not be planned or committed."""


class RingError(KVError, ValueError):
    """A ring cannot be built, changed or decoded as asked (bad members, Q, bytes)."""
