"""Fault-test toolkit: node processes on 127.0.0.1, a fault proxy, recording writers, checkers.

- `LocalCluster` runs each node as its own process (`kvnode start`) on free ports, so a test
  can kill (SIGKILL), pause (SIGSTOP), restart or wipe one; with `proxied=True` every directed
  node-to-node link goes through a `FaultProxy` (kvnet/faultproxy.py, shared with `kvnode dev
  --faults`), so a test can cut the network between two nodes.
  `stop()` (and the context manager) stops every process and closes every proxy, even when a
  test fails.
- `SetWriter` and `ContextWriter` are threads that write through the cluster's client ports with
  redis-py and record what was acknowledged; `check()` reads everything back and returns the
  violations; `divergent_keys()` opens the stopped nodes' data directories and returns the keys
  whose primaries hold different clocks.

docs/testing.md explains the rules.
"""
import asyncio
import atexit
import collections
import itertools
import os
import random
import shutil
import signal
import socket
import tempfile
import subprocess
import sys
import threading
import time
import weakref
from typing import NamedTuple

from kvnet.cli.devcluster import dev_env, dev_secret
from kvnet.faultproxy import (  # noqa: F401  (moved there; the toolkit's names stay)
    _PORT_FLOOR, FaultProxy, _ephemeral_low, free_ports)
from kvnet.probe import ping  # noqa: F401  (re-exported for tests)


def pin_cpu(pid, cpu):
    """Every thread of process `pid` onto one CPU (taskset): benchmarks' --pin."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], capture_output=True,
                   check=True)


# ---- ports and processes ------------------------------------------------------------------------

def _bindable(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def dev_base_port(nodes):
    """A base port for `kvnode dev --nodes nodes`: its client ports base..base+nodes-1 and
    peer ports base+10000.. all free now."""
    for _ in range(50):
        p = free_ports(1)[0]
        ports = [p + i for i in range(nodes)] + [p + 10000 + i for i in range(nodes)]
        if p + 10000 + nodes < 65535 and all(_bindable(q) for q in ports):
            return p
    raise AssertionError("no block of free ports")


class OutputReader:
    """Every line a process prints, read by a thread: nobody must stop reading the pipe, or
    the nodes (whose logs go to it) block on a full pipe."""

    def __init__(self, proc):
        self.lines = []
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append(line)

    def until(self, needle, timeout=60, after=0):
        """The lines so far once one (from line `after` on) holds needle; AssertionError with
        the last lines after timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in ln for ln in self.lines[after:]):
                return list(self.lines)
            if not self._t.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not seen: {self.lines[-30:]}")


def rewrite_segment_version(path, version):
    """Rewrite the format version in a segment file's header (and the header's CRC), as a
    data file of another ringkv version would have it (tests of the format check)."""
    from kvcore.hashing_py import crc32c

    with open(path, "r+b") as f:
        head = bytearray(f.read(32))
        head[8:10] = version.to_bytes(2, "little")
        head[28:32] = crc32c(bytes(head[:28])).to_bytes(4, "little")
        f.seek(0)
        f.write(head)


# ---- the cluster --------------------------------------------------------------------------------

_live_clusters = weakref.WeakSet()


@atexit.register
def _stop_leftovers():
    for c in list(_live_clusters):
        try:
            c.stop(grace=5)
        except Exception:
            pass


class LocalCluster:
    """`nodes` node processes with N=n replicas; `ports[i]` is node i's client port.

    extra: flags for every node; node_extra: {i: flags} (or a list) for some nodes, after
    `extra` (argparse: the last occurrence wins). proxied=True: node i reaches node j through
    `proxies[i, j]` (its --members names the proxy's port for every other member).
    """

    def __init__(self, data_dir, nodes=3, n=3, r=2, w=2, fsync="never", extra=(),
                 node_extra=None, proxied=False, request_timeout_ms=1000, ring_size=256):
        self.data_dir = data_dir
        self.n, self.r, self.w, self.ring_size = n, r, w, ring_size
        # every port of the cluster from one call, the proxies' too: a later call could hand a
        # proxy a port chosen here for a node that has not bound it yet
        links = list(itertools.permutations(range(nodes), 2)) if proxied else []
        ports = free_ports(2 * nodes + len(links))
        self.ports, self.peer_ports = ports[:nodes], ports[nodes:2 * nodes]
        proxy_ports = dict(zip(links, ports[2 * nodes:]))
        self.names = [f"node{i + 1}" for i in range(nodes)]
        self.proxies = {}
        self.paused = set()
        self.procs = [None] * nodes
        if isinstance(node_extra, dict):
            node_extra = [node_extra.get(i, ()) for i in range(nodes)]
        node_extra = list(node_extra or [()] * nodes)
        # a random cluster secret per data directory, as `kvnode dev` keeps one (in the
        # environment, never on the command line)
        self.env = dev_env(dev_secret(data_dir))
        self._common = ["--n", str(n), "--r", str(r), "--w", str(w), "--fsync", fsync,
                        "--ring-size", str(ring_size),
                        "--request-timeout-ms", str(request_timeout_ms), *extra]
        try:
            if proxied:
                for i, j in links:
                    self.proxies[i, j] = self._proxy(i, j, proxy_ports[i, j], set(ports))
            self.cmds = []
            for i, (nm, cp) in enumerate(zip(self.names, self.ports)):
                members = ",".join(f"{other}@127.0.0.1:{self._peer_port_seen_by(i, j)}"
                                   for j, other in enumerate(self.names))
                self.cmds.append([
                    sys.executable, "-m", "kvnet.cli.kvnode", "start", "--name", nm,
                    "--port", str(cp), "--peer-port", str(self.peer_ports[i]),
                    "--data-dir", self.data_dir_of(i), "--members", members,
                    *self._common, *node_extra[i]])
        except BaseException:
            self._close_proxies()
            raise
        _live_clusters.add(self)

    def _proxy(self, i, j, port, taken, attempts=20):
        """The proxy of link i -> j on `port`, or, when another process bound that port since
        it was chosen, on a fresh one that is none of the cluster's (`taken`)."""
        for attempt in range(attempts):
            try:
                return FaultProxy(self.peer_ports[j], port=port,
                                  name=f"{self.names[i]}->{self.names[j]}")
            except OSError:
                if attempt == attempts - 1:
                    raise
                port = next(p for p in free_ports(len(taken) + 1) if p not in taken)
                taken.add(port)

    def _peer_port_seen_by(self, i, j):
        if i == j or not self.proxies:
            return self.peer_ports[j]
        return self.proxies[i, j].port

    def data_dir_of(self, i):
        return os.path.join(self.data_dir, self.names[i])

    def log_of(self, i):
        return os.path.join(self.data_dir, f"{self.names[i]}.log")

    # -- processes --

    def start(self, i=None, timeout=30):
        which = [i] if i is not None else list(range(len(self.cmds)))
        try:
            for j in which:
                if self.procs[j] is not None and self.procs[j].poll() is None:
                    continue
                with open(self.log_of(j), "ab") as log:
                    self.procs[j] = subprocess.Popen(self.cmds[j], stdout=log, env=self.env,
                                                     stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            for j in which:
                while not ping(self.ports[j]):
                    if self.procs[j].poll() is not None:
                        raise RuntimeError(f"{self.names[j]} exited with {self.procs[j].returncode}: "
                                           f"see {self.log_of(j)}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.names[j]} not ready in {timeout} s")
                    time.sleep(0.05)
        except BaseException:
            for j in which:
                self.kill(j)
            raise
        return self

    def running(self, i):
        p = self.procs[i]
        return p is not None and p.poll() is None

    def kill(self, i, sig=signal.SIGKILL, timeout=30):
        """Send `sig` (SIGKILL by default) and wait for the exit; SIGKILL after `timeout`."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            if i in self.paused and sig != signal.SIGKILL:
                p.send_signal(signal.SIGCONT)     # a stopped process handles nothing else
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.paused.discard(i)
        self.procs[i] = None

    def pause(self, i):
        """SIGSTOP: the process keeps its sockets but answers nothing."""
        self.procs[i].send_signal(signal.SIGSTOP)
        self.paused.add(i)

    def resume(self, i):
        if self.procs[i] is not None:
            self.procs[i].send_signal(signal.SIGCONT)
        self.paused.discard(i)

    def restart(self, i, sig=signal.SIGTERM, timeout=30):
        """Stop node i (SIGTERM: a clean close; SIGKILL: a crash) and start it on its data dir."""
        self.kill(i, sig)
        return self.start(i, timeout)

    def wipe(self, i):
        """Delete a stopped node's data directory (a permanent failure; `start(i)` gets it empty)."""
        if self.running(i):
            raise RuntimeError(f"{self.names[i]} is running: kill it before wiping its data")
        shutil.rmtree(self.data_dir_of(i), ignore_errors=True)

    def add_node(self, join=True, seed=None, node_extra=(), start=True, timeout=60):
        """One more node, `node{k}` on free ports, registered like the others (ports, names,
        procs, cmds: stop(), kill(), status(), replica_clocks() cover it); returns its index.

        join=True: `kvnode start --join` with `--members` naming one member as the seed (`seed`:
        an index; default the first running node) and the new node itself; it takes the ring
        from the seed's gossip and owns nothing until a join is staged and committed
        (`cluster_admin(i, "join", name)`, `cluster_admin(i, "commit")`). join=False: its
        `--members` names every member, as the others' do (it is no ring change by itself).
        start=False only builds and registers the command. Not with proxied=True (a proxy per
        new directed link is not implemented)."""
        if self.proxies:
            raise NotImplementedError("add_node is not implemented for proxied clusters")
        taken = set(self.ports) | set(self.peer_ports)
        port = peer = None
        while port is None or port in taken or peer in taken:
            port, peer = free_ports(2)
        i = len(self.names)
        name = f"node{i + 1}"
        while name in self.names:
            name = f"node{int(name[4:]) + 1}"
        self.names.append(name)
        self.ports.append(port)
        self.peer_ports.append(peer)
        self.procs.append(None)
        if join:
            if seed is None:
                seed = next((j for j in range(i) if self.running(j)), 0)
            members = f"{self.names[seed]}@127.0.0.1:{self.peer_ports[seed]},{name}@127.0.0.1:{peer}"
        else:
            members = ",".join(f"{nm}@127.0.0.1:{pp}" for nm, pp in zip(self.names, self.peer_ports))
        self.cmds.append([
            sys.executable, "-m", "kvnet.cli.kvnode", "start", "--name", name,
            "--port", str(port), "--peer-port", str(peer), "--data-dir", self.data_dir_of(i),
            "--members", members, *self._common, *node_extra, *(["--join"] if join else [])])
        if start:
            self.start(i, timeout)          # a joining node answers PING once it has the ring
        return i

    def set_seeds(self, i, seeds):
        """Rewrite node i's `--members` to name the nodes `seeds` (indexes) and itself, for its
        next `start(i)`. A node that joined knows the other members' addresses from gossip only
        (they are not kept across a restart); if its seed has left the ring since, restart it
        with seeds that are still members."""
        if self.proxies:
            raise NotImplementedError("set_seeds is not implemented for proxied clusters")
        cmd = self.cmds[i]
        at = cmd.index("--members") + 1
        cmd[at] = ",".join(f"{self.names[j]}@127.0.0.1:{self.peer_ports[j]}"
                           for j in sorted(set(seeds) | {i}))

    def running_nodes(self):
        """Indexes of the nodes whose process is running."""
        return [i for i in range(len(self.names)) if self.running(i)]

    def live_ports(self):
        """Client ports of the running nodes (for writers and readers after a node left)."""
        return [self.ports[i] for i in self.running_nodes()]

    def wait_exit(self, i, timeout=30):
        """Wait for node i to exit on its own (a node that left the ring exits with code 3);
        returns the exit code (the process stays registered: running(i) is False)."""
        p = self.procs[i]
        if p is None:
            raise RuntimeError(f"{self.names[i]} is not started")
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.names[i]} still running after {timeout} s: see "
                               f"{self.log_of(i)}") from None

    def exit_code(self, i):
        """Node i's exit code, or None while it runs (or was never started / was killed)."""
        p = self.procs[i]
        return None if p is None else p.poll()

    def stop_nodes(self, grace=15):
        """SIGTERM every node (SIGCONT first for paused ones); SIGKILL what has not exited in time."""
        for i, p in enumerate(self.procs):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                if i in self.paused:
                    p.send_signal(signal.SIGCONT)
        self.paused.clear()
        deadline = time.monotonic() + grace
        for i, p in enumerate(self.procs):
            if p is None:
                continue
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.procs[i] = None

    def stop(self, grace=15):
        """Stop every node and close every proxy (safe to call twice)."""
        try:
            self.stop_nodes(grace)
        finally:
            self._close_proxies()

    close = stop

    def _close_proxies(self):
        for px in self.proxies.values():
            try:
                px.close()
            except Exception:
                pass

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    # -- network faults (proxied=True) --

    def _links(self, a, b):
        if not self.proxies:
            raise RuntimeError("network faults need LocalCluster(..., proxied=True)")
        return [self.proxies[a, b], self.proxies[b, a]]

    def cut(self, a, b, mode="blackhole"):
        """Cut both directions between nodes a and b."""
        for px in self._links(a, b):
            px.cut(mode)

    def heal(self, a, b):
        for px in self._links(a, b):
            px.heal()

    def isolate(self, a, mode="blackhole"):
        for b in range(len(self.names)):
            if b != a:
                self.cut(a, b, mode)

    def heal_all(self):
        for px in self.proxies.values():
            px.heal()

    # -- clients and introspection --

    def client(self, i, timeout=5.0):
        return redis_client(self.ports[i], timeout)

    def _ask(self, i, *cmd, timeout=2.0):
        c = self.client(i, timeout)
        try:
            return c.execute_command(*cmd)
        finally:
            c.close()

    def status(self, i, timeout=2.0):
        """Node i's KV.STATUS with str keys and values: {"node", "ring_epoch", "members": [...]}."""
        return _plain(self._ask(i, "KV.STATUS", timeout=timeout))

    def view(self, i, timeout=2.0):
        """{member name: its row in node i's KV.STATUS} (state, up, suspected_by, ...)."""
        return {m["name"]: m for m in self.status(i, timeout)["members"]}

    def info(self, i, section="everything", timeout=2.0):
        """Node i's INFO as a dict; section "ringkv" is the node's own fields (hints_pending, ...).
        Any INFO asks every member for its key count first (DBSIZE's estimate), so with a member
        frozen it takes the request timeout."""
        c = self.client(i, timeout)
        try:
            return c.info(section)
        finally:
            c.close()

    def hints_pending(self, i):
        return int(self.info(i, "ringkv").get("hints_pending", 0))

    def ring(self, i, timeout=5.0):
        """Node i's KV.RING: {"epoch", "q", "n", "nodes": [{"name", "host", "port", "up"}], "owners"}."""
        return _plain(self._ask(i, "KV.RING", timeout=timeout))

    def cluster_admin(self, i, op, node=None, timeout=10.0):
        """KV.CLUSTER op [node] through node i (answered by the claimant): join/leave/remove/
        clear stage a change, plan, commit, transfers. No retry (a retried commit would be a
        second request)."""
        return _plain(self._ask(i, "KV.CLUSTER", op, *([node] if node is not None else []),
                                timeout=timeout))

    def stage(self, i, op, node, timeout=30.0):
        """Stage `op` (join/leave/remove) of `node` through node i, retrying while it is refused
        (a joiner must first be seen up by the claimant through gossip); returns the staged map."""
        last = None
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.cluster_admin(i, op, node)["staged"]
            except Exception as exc:
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"KV.CLUSTER {op} {node} refused for {timeout} s: {last}")
            time.sleep(0.1)

    def wait_settled(self, timeout=60.0, epoch=None, via=None):
        """Wait until no ring change is moving: KV.CLUSTER TRANSFERS (through `via`, default any
        running node) reports not moving (at `epoch` or later, when given: a commit's epoch + 1
        is its settled one) and every running node's KV.RING has the same owners. Returns
        the seconds it took."""
        def settled():
            nodes = self.running_nodes()
            asked = [via] if via is not None else nodes
            tr = None
            for j in asked:
                try:
                    tr = self.cluster_admin(j, "transfers", timeout=2.0)
                    break
                except Exception:
                    continue
            if tr is None or tr["moving"] or (epoch is not None and tr["epoch"] < epoch):
                return False
            owners = {tuple(self.ring(j, timeout=2.0)["owners"]) for j in nodes}
            return len(owners) == 1
        return wait_until(settled, timeout, interval=0.1, what="ring change settled")

    def kept_ring(self, i):
        """The ring state node i keeps in `<data_dir>/RING` (kvnet.membership.ringstate), or None
        (a node that never changed rings keeps none: it uses its configured members)."""
        from kvnet.membership import ringstate

        if not os.path.isdir(self.data_dir_of(i)):
            return None
        return ringstate.load(self.data_dir_of(i))

    def final_ring(self):
        """The ring to judge replicas by: the current ring of the highest ring state any node
        keeps, else the configured one (`Ring.create(names of the nodes that did not join,
        q=ring_size, n=n)`)."""
        from kvcore.ring import Ring

        states = [s for s in (self.kept_ring(i) for i in range(len(self.names))) if s is not None]
        if states:
            return max(states, key=lambda s: s.order).current
        first = [nm for nm, cmd in zip(self.names, self.cmds) if "--join" not in cmd]
        return Ring.create(sorted(first), q=self.ring_size, n=self.n)


def _plain(x):
    """RESP replies with bytes keys/values as str (recursively)."""
    if isinstance(x, bytes):
        try:
            return x.decode()
        except UnicodeDecodeError:
            return x
    if isinstance(x, dict):
        return {_plain(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


async def eventually(predicate, timeout=15.0, interval=0.02):
    """The asyncio twin of wait_until for in-process nodes: poll `predicate()` without blocking
    the loop; True once it holds, False if it never did within `timeout` (tests assert it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Poll `predicate()` (exceptions count as False) until true; TimeoutError after `timeout`.
    Returns the seconds it took."""
    start = time.monotonic()
    deadline = start + timeout
    last = None
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached in {timeout} s" + (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


def redis_client(port, timeout=5.0):
    """A redis-py client that never retries (a retried KV.PUT would be a second write)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))


# ---- recording writers --------------------------------------------------------------------------

class PutRecord(NamedTuple):
    """One KV.PUT attempt: the context it carried and, when acknowledged, the reply (new context)."""

    key: bytes
    value: bytes
    context: bytes          # b"" when the read found nothing
    reply: bytes | None     # None: not acknowledged (error or timeout; it may still have applied)
    writer: str
    error: str | None = None

    @property
    def acked(self):
        return self.reply is not None


class _Writer(threading.Thread):
    """Base: a thread writing through `ports` in turn until `count` operations, `duration`
    seconds or `stop()`; errors are counted by kind, and the writer moves to the next node."""

    def __init__(self, ports, count=None, duration=None, timeout=3.0, pause_s=0.0, name=None,
                 seed=None):
        super().__init__(name=name or type(self).__name__, daemon=True)
        self.ports = list(ports)
        self.count, self.duration, self.timeout, self.pause_s = count, duration, timeout, pause_s
        self.errors = collections.Counter()
        self.error_samples = []
        self.error_times = []               # time.monotonic() of each error
        self.error_starts = []              # when each failed operation started
        self.trace = []                     # (start, seconds, port) of each operation
        self.ops = 0
        self.rng = random.Random(seed)
        self._halt = threading.Event()
        self._clients = {}
        self._op_start = None

    def _client(self, port):
        c = self._clients.get(port)
        if c is None:
            c = self._clients[port] = redis_client(port, self.timeout)
        return c

    def _drop(self, port):
        c = self._clients.pop(port, None)
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    def _error(self, port, exc):
        kind = type(exc).__name__
        msg = str(exc).split(" ", 1)[0] if kind == "ResponseError" else ""
        self.errors[f"{kind} {msg}".strip()] += 1
        self.error_times.append(time.monotonic())
        self.error_starts.append(self._op_start)
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{port}: {kind}: {exc}")
        self._drop(port)
        time.sleep(0.02)

    @property
    def error_count(self):
        return sum(self.errors.values())

    def run(self):
        deadline = None if self.duration is None else time.monotonic() + self.duration
        i = 0
        try:
            while not self._halt.is_set():
                if self.count is not None and self.ops >= self.count:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                ports = self.ports               # set_ports() may replace the list
                port = ports[i % len(ports)]
                t0 = self._op_start = time.monotonic()
                self.step(port)
                self.trace.append((t0, time.monotonic() - t0, port))
                self.ops += 1
                i += 1
                if self.pause_s:
                    time.sleep(self.pause_s)
        finally:
            for port in list(self._clients):
                self._drop(port)

    def set_ports(self, ports):
        """Write through `ports` from the next operation on (a node joined or left)."""
        if not ports:
            raise ValueError("a writer needs at least one port")
        self.ports = list(ports)

    def step(self, port):
        raise NotImplementedError

    def stop(self, timeout=30):
        self._halt.set()
        if self.is_alive():
            self.join(timeout)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class SetWriter(_Writer):
    """Plain SET of unique keys; `acked` maps each acknowledged key to its value (bytes),
    `unacked` each key whose SET failed (it may still exist, on some replicas only)."""

    def __init__(self, ports, prefix="set", **kw):
        super().__init__(ports, **kw)
        self.prefix = prefix
        self.acked = {}
        self.unacked = {}
        self.attempted = 0

    def step(self, port):
        key = f"{self.prefix}:{self.name}:{self.ops}".encode()
        value = f"v{self.ops}:{self.rng.getrandbits(32):08x}".encode()
        self.attempted += 1
        try:
            if self._client(port).set(key, value):
                self.acked[key] = value
            else:
                self.unacked[key] = value
        except Exception as exc:        # redis errors, and OSError from a reset socket
            self.unacked[key] = value
            self._error(port, exc)


class ContextWriter(_Writer):
    """Rewrites a few shared keys: KV.GET, then KV.PUT of a unique value with the context read.

    `records` lists every PUT attempted (PutRecord), acknowledged or not.
    """

    def __init__(self, ports, keys, r=None, w=None, **kw):
        super().__init__(ports, **kw)
        self.keys = [k.encode() if isinstance(k, str) else k for k in keys]
        self.r, self.w = r, w
        self.records = []

    @property
    def acked(self):
        return [rec for rec in self.records if rec.acked]

    def step(self, port):
        key = self.rng.choice(self.keys)
        c = self._client(port)
        try:
            args = ["KV.GET", key] + (["R", self.r] if self.r is not None else [])
            ctx, _values = c.execute_command(*args)
        except Exception as exc:
            self._error(port, exc)
            return
        value = f"{self.name}:{self.ops}".encode()
        ctx = bytes(ctx or b"")
        try:
            args = ["KV.PUT", key, value, "CONTEXT", ctx] + (["W", self.w] if self.w is not None else [])
            reply = c.execute_command(*args)
        except Exception as exc:
            self.records.append(PutRecord(key, value, ctx, None, self.name, f"{type(exc).__name__}: {exc}"))
            self._error(port, exc)
            return
        self.records.append(PutRecord(key, value, ctx, bytes(reply), self.name))


def run_writers(writers, during, settle=0.0):
    """Start the writers, call `during()` (the faults), stop the writers (also on error)."""
    for wr in writers:
        wr.start()
    try:
        return during()
    finally:
        time.sleep(settle)
        for wr in writers:
            wr.stop()


# ---- the checker --------------------------------------------------------------------------------

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


# ---- corrupt records on disk (tests of "corruption is missing data", docs/storage.md) -------

def records_of(segment_path):
    """[(offset, size, key, value offset, value length)] of the whole records of one segment
    file, in file order (stops at the first bad one or at zeros: a crashed store's tail)."""
    from kvcore.storage import layout as L
    from kvcore.storage import record_py as R

    with open(segment_path, "rb") as f:
        buf = f.read()
    out, off = [], L.SEG_HEADER_SIZE
    while off < len(buf):
        rec = R.decode_record(buf, off, len(buf))
        if rec is None:
            break
        _, _, key, stored, size = rec
        out.append((off, size, key, off + size - len(stored), len(stored)))
        off += size
    return out


def corrupt_records(store_dir, per_segment=2, rng=None, where="value"):
    """Flip one byte in `per_segment` records of every segment of a (closed or crashed) store
    directory: in the value (where="value") or in the key. Returns the keys hit, {key: (segment
    file, offset)}. A record already superseded by a later one of its key hits nothing."""
    from kvcore.storage import layout as L

    rng = rng or random.Random(7)
    hit = {}
    for seg_id in L.segment_ids(store_dir):
        path = os.path.join(store_dir, L.segment_name(seg_id))
        recs = [r for r in records_of(path) if r[2] not in hit]
        for off, size, key, voff, vlen in rng.sample(recs, min(per_segment, len(recs))):
            at = voff + rng.randrange(vlen) if where == "value" and vlen else off + 24 + rng.randrange(len(key))
            with open(path, "r+b") as f:
                f.seek(at)
                b = f.read(1)
                f.seek(at)
                f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))
            hit[key] = (path, off)
    return hit
