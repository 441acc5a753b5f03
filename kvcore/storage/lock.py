"""One LogStore per directory: an flock on a lock file.

flock is held per open file description, so a second open in the same process
is refused too, and the lock dies with its process.
"""
import fcntl
import os

from kvcore.errors import StoreLocked


class DirLock:
    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = -1
            raise StoreLocked(
                f"{os.path.dirname(path) or '.'} is already open by another LogStore "
                "(in this or another process)"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self):
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1
