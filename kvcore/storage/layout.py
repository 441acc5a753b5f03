"""The on-disk constants for Python code, read from format.pxi (which owns them).

File names also come from here, so every reader and writer agrees on them.
"""
import os
import re

_PXI = os.path.join(os.path.dirname(__file__), "format.pxi")


def _load(path=_PXI):
    consts = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\s+([A-Z][A-Z0-9_]*)\s*=\s*(0x[0-9A-Fa-f]+|\d+)\s*(#.*)?$", line)
            if m:
                consts[m.group(1)] = int(m.group(2), 0)
    return consts


globals().update(_load())

SEG_SUFFIX = ".data"
HINT_SUFFIX = ".hint"
MERGING_SUFFIX = ".merging"
LOCK_NAME = "LOCK"
CLEAN_NAME = "CLEAN"

SEQ_SHIFT = 32   # segment id = sequence << 32 | merge output number


def segment_name(seg_id):
    return f"{seg_id:016x}{SEG_SUFFIX}"


def hint_name(seg_id):
    return f"{seg_id:016x}{HINT_SUFFIX}"


def parse_segment_name(name):
    """The segment id of a data file name, or None for any other file."""
    if len(name) == 16 + len(SEG_SUFFIX) and name.endswith(SEG_SUFFIX):
        try:
            return int(name[:16], 16)
        except ValueError:
            return None
    return None


def segment_ids(path):
    """Ids of the data segments in a store directory, oldest first."""
    ids = [parse_segment_name(n) for n in os.listdir(path)]
    return sorted(i for i in ids if i is not None)
