"""Small durable-file helpers shared by both LogStore twins."""
import os


def fsync_dir(path):
    """Make renames and creations in a directory durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path, data, sync=True):
    """Write a whole file and fdatasync it (sync=False: leave it to the OS, for a file that
    checks itself when read, such as the hint file an open writes after a scan)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)
