"""The process limits a node needs: open files and memory maps for its partitions' stores.

A partition's store keeps two files open (its lock and its active segment; sealed segments
are read through their maps, docs/storage.md "Resources"); a node also needs descriptors for client and peer
connections. `kvnode start` raises RLIMIT_NOFILE's soft limit to the hard limit and refuses
to start, with a message naming the numbers, when even that cannot serve its partitions.

Maps: a store maps at most `map_cache` sealed segments (8) besides its active one, one
rolled out and not yet sealed, and one input of a running merge, whatever its data size;
`kvnode start` refuses to start when `vm.max_map_count` (Linux) is below what its partitions
may map at once, plus the interpreter's own."""
import resource

FDS_PER_PARTITION = 3        # lock, active segment, and the next one during a roll
FDS_BASE = 200               # connections, logs, hint logs, the epoch and ring files


MAPS_PER_PARTITION = 8 + 3  # the store's map cache (LogStore map_cache), active, sealing, merge
MAPS_BASE = 1000            # the interpreter and its extension modules, hint logs, index tables
MAX_MAP_COUNT = "/proc/sys/vm/max_map_count"


def needed_fds(partitions):
    return FDS_BASE + FDS_PER_PARTITION * partitions


def needed_maps(partitions):
    return MAPS_BASE + MAPS_PER_PARTITION * partitions


def check_map_count(partitions, path=MAX_MAP_COUNT):
    """The system's limit on a process's memory maps, and what `partitions` need; OSError
    naming both when the limit is lower. (None, need) where there is no such file (not
    Linux)."""
    need = needed_maps(partitions)
    try:
        with open(path) as f:
            limit = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None, need
    if limit < need:
        raise OSError(f"vm.max_map_count is {limit} but {partitions} partitions may map about "
                      f"{need} segments at once: raise it (sysctl -w vm.max_map_count=...)")
    return limit, need


def raise_nofile(partitions, getrlimit=resource.getrlimit, setrlimit=resource.setrlimit):
    """Raise the soft open-files limit to the hard one; returns (soft limit now, needed).
    Raises OSError naming both when the hard limit is below what `partitions` need."""
    need = needed_fds(partitions)
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        raise OSError(f"the open-files limit is {hard} (hard) but {partitions} partitions need "
                      f"about {need}: raise it (ulimit -n, or LimitNOFILE= in a systemd unit)")
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        raise OSError(f"the open-files limit is {soft} but {partitions} partitions need about "
                      f"{need}: raise it (ulimit -n)")
    return soft, need
