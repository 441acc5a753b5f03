"""Test toolkit: node processes on 127.0.0.1, a fault proxy, recording writers, checkers.

One module per concern; every name is re-exported here, so `from kvnet.testing import X`
works for each of them:

- `ports`: `free_ports` (kvnet/faultproxy.py's), `dev_base_port`, `pin_cpu` (benchmarks' --pin).
- `waiting`: `OutputReader` (every line a process prints), `wait_until`, `eventually`.
- `clients`: `redis_client` (retries off), `ping`, `_plain`.
- `cluster`: `LocalCluster`, each node its own `kvnode start` process, optionally with a
  `FaultProxy` (kvnet/faultproxy.py) on every directed link.
- `writers`: `SetWriter` and `ContextWriter` threads that record what was acknowledged,
  `PutRecord`, `run_writers`.
- `checks`: `check()` reads everything back and returns the violations; `divergent_keys()`,
  `missing_replicas()` and `replica_clocks()` open the stopped nodes' data directories;
  `read_back_and_compare()` is the end every fault test shares.
- `corruption`: `records_of`, `corrupt_records`, `rewrite_segment_version`.
- `fakes` (imported by name, not re-exported): `PeerTransport`, `CountingDoor`, stand-ins for
  a peer connection's transport and a node's compiled door.

`kvnet.testing.tls` (imported by itself, not re-exported here) makes a CA and certificates
(`DevPKI`, for `LocalCluster(tls=True)` and `kvnode dev --tls`) with the `cryptography`
package, which the test extra installs.

It ships with the package (benchmarks and `kvnode` tests use it from an installed tree) and
imports nothing the base install lacks: no pytest, no hypothesis. docs/testing.md explains
the rules.
"""
# the private names (_plain, _Writer, _PORT_FLOOR, ...) are imported here too: benchmarks and
# tests of older checkouts import them from kvnet.testing
from kvnet.faultproxy import FaultProxy
from kvnet.testing.checks import (Reader, check, context_map, covers, divergent_keys, keep_data,
                                  missing_replicas, new_dots, read_back_and_compare,
                                  replica_clocks)
from kvnet.testing.clients import _plain, ping, redis_client  # noqa: F401
from kvnet.testing.cluster import LocalCluster, _live_clusters, _stop_leftovers  # noqa: F401
from kvnet.testing.corruption import corrupt_records, records_of, rewrite_segment_version
from kvnet.testing.ports import (  # noqa: F401
    _PORT_FLOOR, _bindable, _ephemeral_low, dev_base_port, free_ports, pin_cpu)
from kvnet.testing.waiting import OutputReader, eventually, wait_until
from kvnet.testing.writers import (  # noqa: F401
    ContextWriter, PutRecord, SetWriter, _Writer, run_writers)

__all__ = [
    "ContextWriter", "FaultProxy", "LocalCluster", "OutputReader", "PutRecord", "Reader",
    "SetWriter", "check", "context_map", "corrupt_records", "covers", "dev_base_port",
    "divergent_keys", "eventually", "free_ports", "keep_data", "missing_replicas", "new_dots",
    "pin_cpu", "ping", "read_back_and_compare", "records_of", "redis_client", "replica_clocks",
    "rewrite_segment_version", "run_writers", "wait_until",
]
