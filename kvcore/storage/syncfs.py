"""syncfs(2): flush every file of one file system with one call (docs/storage.md, "Durability").

A node's group commit used to fdatasync each partition store a round had touched, one after
the other: 20-50 syncs per round under load. `syncfs` writes back every dirty file of the file
system holding a given file descriptor and flushes the disk's cache once, so a round costs
one flush however many partitions it covered. It flushes EVERY file of that file system,
the node's and any other program's: on a disk shared with busy writers a round waits for
their data too (use sync_method = "fdatasync" there, or give the data directory its own file
system).

Only from Linux 5.8 on does syncfs report a writeback error (before, it returned 0 even when
pages could not be written: a lost write would have been acknowledged). `unsupported()` says
why syncfs cannot be trusted here (None when it can), and callers then fall back to
per-file fdatasync. Python's os module has no syncfs (os.sync is the whole machine's sync,
which reports nothing), hence ctypes on the C library's.
"""
import ctypes
import ctypes.util
import os
import platform
import re
import sys

MIN_KERNEL = (5, 8)         # syncfs returns writeback errors (errseq_t per super block)

_libc = None
_fn = None


def kernel_version(release=None):
    """(major, minor) of a Linux release string ("6.1.0-18-amd64" -> (6, 1)), or None."""
    m = re.match(r"(\d+)\.(\d+)", release if release is not None else platform.release())
    return (int(m.group(1)), int(m.group(2))) if m else None


def _function():
    """The C library's syncfs, or None (not Linux, no such symbol)."""
    global _libc, _fn
    if _fn is None and _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fn = _libc.syncfs
        except (OSError, AttributeError):
            _libc = False
            return None
        fn.argtypes = (ctypes.c_int,)
        fn.restype = ctypes.c_int
        _fn = fn
    return _fn or None


def unsupported(platform_name=None, release=None):
    """Why syncfs cannot be trusted on this machine (a sentence), or None when it can."""
    name = platform_name if platform_name is not None else sys.platform
    if not name.startswith("linux"):
        return f"syncfs(2) is Linux only (this is {name})"
    ver = kernel_version(release)
    if ver is None:
        return f"the kernel release {release or platform.release()!r} cannot be read"
    if ver < MIN_KERNEL:
        return (f"Linux {ver[0]}.{ver[1]} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}: its "
                "syncfs(2) does not report writeback errors")
    if _function() is None:
        return "the C library has no syncfs"
    return None


def syncfs(fd):
    """Flush every file of the file system holding `fd`; OSError (errno from the kernel) on
    failure. Callers check unsupported() first: before Linux 5.8 success means nothing."""
    fn = _function()
    if fn is None:
        raise OSError(38, "syncfs is not available")   # ENOSYS
    if fn(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "syncfs")


class FileSystemSync:
    """One open descriptor of a directory and its syncfs. The descriptor is opened once and
    kept: from 5.8 on, syncfs reports a writeback error of the file system once per open
    file (the error's sequence number is sampled at open and advanced by each report), so
    the same descriptor sees each error that happened since it was opened, exactly once."""

    def __init__(self, directory):
        self.directory = directory
        self.fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)

    def sync(self):
        if self.fd < 0:
            raise OSError(9, "syncfs: closed", self.directory)      # EBADF
        syncfs(self.fd)

    def close(self):
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
