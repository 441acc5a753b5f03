"""Checkers: what the writers recorded read back through the cluster (`Reader`, `check`), and
the replicas of a stopped cluster compared offline (`replica_clocks`, `divergent_keys`,
`missing_replicas`); `read_back_and_compare` is the end every fault test shares."""
import asyncio
import collections
import os
import shutil
import tempfile
import time

from kvnet.testing.clients import redis_client


def context_map(context):
    """A context's bytes (or decoded pairs) as {actor: counter}."""
    from kvcore import versions as V

    if isinstance(context, (bytes, bytearray, memoryview)):
        context = V.decode_context(bytes(context)) if context else ()
    return {tuple(a) if isinstance(a, list) else a: n for a, n in context}


def new_dots(context, reply):
    """The dots a KV.PUT may have minted: (actor, counter) for each actor whose counter in the
    reply (the new context) is above the context the write carried. The coordinator minted
    exactly one of them; the others are events its replica had merged that the writer's read
    had not seen (all in the new value's causal past)."""
    before, after = context_map(context), context_map(reply)
    return sorted((a, n) for a, n in after.items() if n > before.get(a, 0))


def covers(context, dots):
    """True when a context ({actor: counter}) has seen every one of `dots`."""
    return all(context.get(a, 0) >= n for a, n in dots)


class Reader:
    """`reader(key)` -> the key's siblings (bytes, None for a tombstone) by KV.GET with R=`r`,
    through the given ports in turn; an error moves to the next port and is retried (backing
    off) until `patience` seconds have passed for this key, then raised."""

    def __init__(self, ports, r="ALL", patience=10.0, timeout=5.0):
        self.ports = list(ports)
        self.r, self.patience, self.timeout = r, patience, timeout
        self._clients = {}
        self._i = 0
        self.errors = 0

    def __call__(self, key):
        deadline = time.monotonic() + self.patience
        delay = 0.05
        while True:
            port = self.ports[self._i % len(self.ports)]
            self._i += 1
            c = self._clients.get(port) or self._clients.setdefault(port, redis_client(port, self.timeout))
            try:
                _ctx, values = c.execute_command("KV.GET", key, "R", self.r)
                return list(values)
            except Exception:
                self.errors += 1
                self._clients.pop(port, None)
                c.close()
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def close(self):
        for c in self._clients.values():
            c.close()
        self._clients.clear()


def check(read, sets=None, puts=()):
    """Read back every recorded key with `read(key)` -> list of sibling values; return violations.

    sets: {key: value} of acknowledged plain SETs (unique keys): each value must be readable
    (one of the key's siblings).
    puts: PutRecords of every KV.PUT attempted on shared keys. An acknowledged value v, minted
    with dot d (`new_dots`), must be present unless some attempted write carried a context that
    covers d (it replaced v); and it must not be present when an acknowledged write's context
    covers d (a replaced value came back). Every value present must be one some writer wrote.
    Returns a list of strings (empty: no violation).
    """
    violations = []

    def read_key(key):
        try:
            return read(key)
        except Exception as exc:
            violations.append(f"{key!r}: unreadable: {type(exc).__name__}: {exc}")
            return None

    for key, value in (sets or {}).items():
        key = key.encode() if isinstance(key, str) else key
        value = value.encode() if isinstance(value, str) else value
        got = read_key(key)
        if got is not None and value not in got:
            violations.append(f"{key!r}: acknowledged SET {value!r} lost (read {got[:4]!r})")

    by_key = collections.defaultdict(list)
    for rec in puts:
        by_key[rec.key].append(rec)
    for key, recs in sorted(by_key.items()):
        got = read_key(key)
        if got is None:
            continue
        present = set(got)
        contexts = [(rec, context_map(rec.context)) for rec in recs]
        written = {rec.value for rec in recs}
        for v in present:
            if v is not None and v not in written:
                violations.append(f"{key!r}: value {v!r} was never written")
        for rec in recs:
            if not rec.acked:
                continue
            dots = new_dots(rec.context, rec.reply)
            if not dots:
                violations.append(f"{key!r}: reply to the PUT of {rec.value!r} names no new event "
                                  f"(context {context_map(rec.context)}, reply {context_map(rec.reply)})")
                continue
            by = [x for x, ctx in contexts if x is not rec and covers(ctx, dots)]
            if rec.value in present:
                acked_by = [x for x in by if x.acked]
                if acked_by:
                    violations.append(f"{key!r}: {rec.value!r} is present, but the acknowledged "
                                      f"write {acked_by[0].value!r} had seen it (it came back)")
            elif not by:
                violations.append(f"{key!r}: acknowledged {rec.value!r} (dots {dots}) lost: "
                                  f"no write had seen it; present: {sorted(present, key=repr)[:6]!r}")
    return violations


# ---- offline convergence ------------------------------------------------------------------------

def replica_clocks(cluster, which=None):
    """{node name: {key: raw clock bytes}} read from the data directories of stopped nodes.

    Opens each with `kvnet.replica.LocalReplica` in this process (read only, but opening leases
    an epoch block and closing saves Merkle trees, as a node would) and closes it.
    """
    from kvnet.replica import LocalReplica

    out = {}
    for i in (range(len(cluster.names)) if which is None else which):
        if cluster.running(i):
            raise RuntimeError(f"{cluster.names[i]} is running: stop the cluster first")
        name, path = cluster.names[i], cluster.data_dir_of(i)
        held = out[name] = {}
        if not os.path.isdir(path):
            continue                               # wiped and never restarted: holds nothing
        rep = LocalReplica(path, name, fsync="never")
        try:
            rep.open_existing()
            for p, part in sorted(rep.partitions.items()):
                for key, raw in part.store.items():
                    held[key] = (p, raw)
        finally:
            asyncio.run(rep.close())
    return out


def keep_data(cluster):
    """Copy a failed test's data directories and logs where pytest's tmp rotation keeps them."""
    dest = os.path.join(tempfile.gettempdir(), "ringkv-fault-failures",
                        f"{os.path.basename(cluster.data_dir)}-{int(time.time())}")
    shutil.copytree(cluster.data_dir, dest, dirs_exist_ok=True)
    return dest


def read_back_and_compare(cluster, ports, sets, puts, unacked, summary, ring=None,
                          converged=True):
    """The end of a fault test: check every acknowledged write with R=ALL reads through
    `ports` (which also read-repair), read every unacknowledged SET key too (a failed SET may sit
    on some replicas only, and only a read brings them together with anti-entropy off), stop
    the cluster and, if `converged`, compare the clocks of every key's primaries (of `ring`, by
    default the configured one). AssertionError naming what went wrong and where the data was
    kept."""
    reader = Reader(ports, r="ALL")
    try:
        violations = check(reader, sets=sets, puts=puts)
        for key in unacked:
            reader(key)
    finally:
        reader.close()
    if violations:
        cluster.stop()
        raise AssertionError(f"{len(violations)} violations (data kept in {keep_data(cluster)}):\n"
                             + "\n".join(violations[:20]) + f"\nwriters: {summary}")
    time.sleep(1.0)                      # read repair is sent after the R=ALL reply
    cluster.stop()
    if not converged:
        return
    diverged = divergent_keys(cluster, ring=ring)
    if diverged:
        raise AssertionError(
            f"{len(diverged)} keys differ between their primaries"
            f"{' of the final ring' if ring is not None else ''} (data kept in "
            f"{keep_data(cluster)}):\n" + "\n".join(
                f"{k!r}: " + "; ".join(f"{node}: {clock}" for node, clock in d.items())
                for k, d in list(diverged.items())[:5]) + f"\nwriters: {summary}")


def divergent_keys(cluster, keys=None, held=None, ring=None):
    """Keys whose N primaries hold different clocks (or some lack the key), after `stop()`.

    Returns {key: {node: decoded Clock or None}} (empty: every replica converged). The ring:
    `ring` (a kvcore Ring) when given, else `cluster.final_ring()` (the ring the nodes keep
    after a ring change, else the configured one: `Ring.create(names, q=ring_size, n=n)`).
    Keys held only off their preference list (hints, fallbacks) are compared on their
    primaries too. `held`: a `replica_clocks(cluster)` result to reuse (opening every partition
    of every node takes seconds).
    """
    from kvcore import versions as V

    ring = cluster.final_ring() if ring is None else ring
    held = replica_clocks(cluster) if held is None else held
    all_keys = set(keys) if keys is not None else {k for h in held.values() for k in h}
    out = {}
    for key in sorted(all_keys):
        p = ring.partition_of(key)
        prim = ring.preference_list(p)
        raws = {node: held.get(node, {}).get(key, (p, None))[1] for node in prim}
        if len(set(raws.values())) != 1:
            out[key] = {node: (None if raw is None else V.decode(raw)) for node, raw in raws.items()}
    return out


def missing_replicas(cluster, keys, held=None, ring=None):
    """{key: [primaries that do not hold it]} for each of `keys` that fewer than N of its
    primaries hold (any version, a tombstone included), by `ring` (default
    `cluster.final_ring()`), after `stop()`. Unlike `divergent_keys`, a key that no primary
    holds (say, held only by a node that left) is reported too. Empty: every key has N copies.
    """
    ring = cluster.final_ring() if ring is None else ring
    held = replica_clocks(cluster) if held is None else held
    out = {}
    for key in sorted(keys):
        key = key.encode() if isinstance(key, str) else key
        prim = ring.preference_list(ring.partition_of(key))
        lacking = [node for node in prim if key not in held.get(node, {})]
        if lacking:
            out[key] = lacking
    return out
