"""`LocalCluster`: node processes (`kvnode start`) on 127.0.0.1 and free ports, each of which a
test can kill (SIGKILL), pause (SIGSTOP), restart or wipe; with `proxied=True` every directed
node-to-node link goes through a `FaultProxy` (kvnet/faultproxy.py, shared with `kvnode dev
--faults`), so a test can cut the network between two nodes. `stop()` (and the context
manager) stops every process and closes every proxy, even when a test fails; an atexit hook
stops what a crashed test left."""
import atexit
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref

from kvnet.cli.devcluster import dev_env, dev_secret
from kvnet.faultproxy import FaultProxy, free_ports
from kvnet.probe import ping
from kvnet.testing.clients import _plain, redis_client
from kvnet.testing.waiting import wait_until

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
    tls=True: each node also serves TLS on `tls_ports[i]` (`tls_client(i)`), and nodes talk
    over mutual TLS (tls_cluster) with certificates of a CA in <data_dir>/tls (`pki`).
    """

    def __init__(self, data_dir, nodes=3, n=3, r=2, w=2, fsync="never", extra=(),
                 node_extra=None, proxied=False, request_timeout_ms=1000, ring_size=256,
                 tls=False):
        self.data_dir = data_dir
        self.n, self.r, self.w, self.ring_size = n, r, w, ring_size
        # every port of the cluster from one call, the proxies' too: a later call could hand a
        # proxy a port chosen here for a node that has not bound it yet
        links = list(itertools.permutations(range(nodes), 2)) if proxied else []
        ports = free_ports((3 if tls else 2) * nodes + len(links))
        self.ports, self.peer_ports = ports[:nodes], ports[nodes:2 * nodes]
        # tls=True: every node also serves clients over TLS on tls_ports[i] and talks to its
        # peers over mutual TLS (tls_cluster), with certificates of a CA made in
        # <data_dir>/tls (kvnet/testing/tls.py; `pki.client()` are a client's keywords)
        self.tls_ports = ports[2 * nodes:3 * nodes] if tls else []
        self.pki = None
        if tls:
            from kvnet.testing.tls import DevPKI

            self.pki = DevPKI(os.path.join(data_dir, "tls"))
        proxy_ports = dict(zip(links, ports[(3 if tls else 2) * nodes:]))
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
                    *self._common, *self._tls_flags(i), *node_extra[i]])
        except BaseException:
            self._close_proxies()
            raise
        _live_clusters.add(self)

    def _tls_flags(self, i):
        if self.pki is None:
            return []
        return ["--tls-port", str(self.tls_ports[i]), *self.pki.node_flags(self.names[i])]

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
        taken = set(self.ports) | set(self.peer_ports) | set(self.tls_ports)
        port = peer = tport = None
        while port is None or {port, peer, tport} & taken:
            port, peer, tport = free_ports(3)
        i = len(self.names)
        name = f"node{i + 1}"
        while name in self.names:
            name = f"node{int(name[4:]) + 1}"
        self.names.append(name)
        self.ports.append(port)
        self.peer_ports.append(peer)
        if self.pki is not None:
            self.tls_ports.append(tport)
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
            "--members", members, *self._common, *self._tls_flags(i), *node_extra,
            *(["--join"] if join else [])])
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

    def tls_client(self, i, timeout=5.0):
        """A redis-py client to node i's TLS port (tls=True), with the client certificate."""
        return redis_client(self.tls_ports[i], timeout, tls=self.pki.client())

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
