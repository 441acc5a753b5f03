"""benchmarks/durable.py's stand-ins for a node's group commit sync, loaded (through
PYTHONPATH) only by the node processes of its comparison clusters, never by a real node.

RINGKV_BENCH_SYNC=nosync: a round syncs nothing (what the fsync=always request path costs
without its disk). RINGKV_BENCH_SYNC=journal: a round appends 200 bytes per partition it
touched to one file per node and fdatasyncs that file: the disk cost of a node-wide journal
(its replay, checkpoints and write-path hooks are not simulated), to compare with syncfs.
"""
import os

_MODE = os.environ.get("RINGKV_BENCH_SYNC")

if _MODE in ("nosync", "journal"):
    import kvnet.replica as _R

    _fds = {}

    def _nosync(fs, parts):
        return [], None

    def _journal(fs, parts):
        fd = _fds.get(fs.directory)
        if fd is None:
            fd = _fds[fs.directory] = os.open(os.path.join(fs.directory, "BENCH-JOURNAL"),
                                              os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, b"j" * (200 * len(parts)))
        os.fdatasync(fd)
        return [], None

    _R._syncfs_all = _nosync if _MODE == "nosync" else _journal
