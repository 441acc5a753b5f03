"""The process limits a node needs: open files for its partitions' stores, raised at start.

A partition's store keeps two files open (its lock and its active segment; sealed segments
are read through their maps, docs/storage.md "Resources"); a node also needs descriptors for client and peer
connections. `kvnode start` raises RLIMIT_NOFILE's soft limit to the hard limit and refuses
to start, with a message naming the numbers, when even that cannot serve its partitions."""
import resource

FDS_PER_PARTITION = 3        # lock, active segment, and the next one during a roll
FDS_BASE = 200               # connections, logs, hint logs, the epoch and ring files


def needed_fds(partitions):
    return FDS_BASE + FDS_PER_PARTITION * partitions


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
