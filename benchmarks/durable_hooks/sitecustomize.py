"""benchmarks/durable.py's stand-in for a node's group commit sync, loaded (through
PYTHONPATH) only by the node processes of its comparison cluster, never by a real node.

RINGKV_BENCH_SYNC=nosync (with sync_method syncfs): a round syncs nothing (what the
fsync=always request path costs without its disk).
"""
import os

if os.environ.get("RINGKV_BENCH_SYNC") == "nosync":
    import kvnet.groupcommit as _G

    def _nosync(fs, parts):
        return [], None

    _G._syncfs_all = _nosync
