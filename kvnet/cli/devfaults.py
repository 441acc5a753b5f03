"""`kvnode dev --faults`: a fault proxy on every directed link, driven by `kvctl fault`.

Node A reaches node B through the proxy of link A->B (A's --members names the proxy's port
for B), so a link can be cut or slowed; the nodes themselves can be killed, paused and resumed
through the supervisor. The supervisor listens for `kvctl fault` on 127.0.0.1 only, on a port
the kernel picks, and writes that port with a random token into <data_dir>/dev-faults.json
(mode 0600, removed when it stops): only a user who can read the data directory drives it.

The control protocol is one JSON line each way per connection:
    {"token": ..., "op": "cut", "node": "node3", "peer": null, "ms": null}
    {"ok": true, "said": "node3: cut from node1, node2", "status": {...}}
    {"ok": false, "error": "unknown node 'node9' (the dev cluster has node1, node2, node3)"}
ops: status, kill, pause, resume (nodes), cut, heal, slow (links; `peer` limits them to the
NODE<->PEER pair, both directions). docs/operations.md has the walk-through.
"""
import itertools
import json
import os
import secrets
import select
import socket
import traceback

CONTROL_FILE = "dev-faults.json"
MAX_NODES = 16                 # a proxy per directed link: 240 of them (a thread each) at 16
NODE_OPS = ("kill", "pause", "resume")
LINK_OPS = ("cut", "heal", "slow")
OPS = ("status",) + NODE_OPS + LINK_OPS
MAX_LINE = 4096


class FaultError(Exception):
    """A `kvctl fault` request the dev cluster refuses (its message goes back to kvctl)."""


def control_path(data_dir):
    return os.path.join(data_dir, CONTROL_FILE)


class DevFaults:
    """The proxies of a dev cluster's links and the control socket of `kvctl fault`."""

    def __init__(self, names, peer_ports, taken=()):
        """A proxy per directed link, each on a free port that is none of `taken` (the
        cluster's client and peer ports, which its nodes have not bound yet)."""

        self.names = list(names)
        self.proxies = {}
        self.supervisor = None
        self._listener = None
        self._path = None
        self._token = secrets.token_urlsafe(24)
        taken = set(taken)
        try:
            for a, b in itertools.permutations(range(len(self.names)), 2):
                self.proxies[self.names[a], self.names[b]] = _proxy(
                    peer_ports[b], f"{self.names[a]}->{self.names[b]}", taken)
        except BaseException:
            self.close()
            raise

    def members(self, i, peer_ports):
        """Node i's --members: itself at its own peer port, every other node at the port of
        the proxy of the link from node i to it."""
        me = self.names[i]
        return ",".join(f"{nm}@127.0.0.1:"
                        f"{peer_ports[j] if nm == me else self.proxies[me, nm].port}"
                        for j, nm in enumerate(self.names))

    # -- the control socket --

    def listen(self, data_dir):
        """Listen on 127.0.0.1 and write the control file kvctl reads."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        self._listener = sock
        path = control_path(data_dir)
        body = json.dumps({"port": sock.getsockname()[1], "pid": os.getpid(),
                           "token": self._token, "nodes": self.names})
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(body + "\n")
        os.replace(path + ".tmp", path)
        self._path = path
        return sock.getsockname()[1]

    def poll(self, timeout):
        """Answer the kvctl requests that arrive within timeout seconds (the supervisor's
        idle wait: requests run on its thread, between its checks of the nodes)."""
        if self._listener is None:
            return
        ready, _, _ = select.select([self._listener], [], [], timeout)
        while ready:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            with conn:
                self._serve(conn)
            ready, _, _ = select.select([self._listener], [], [], 0)

    def _serve(self, conn):
        conn.setblocking(True)
        conn.settimeout(2.0)
        try:
            data = b""
            while not data.endswith(b"\n") and len(data) <= MAX_LINE:
                chunk = conn.recv(MAX_LINE + 1)
                if not chunk:
                    break
                data += chunk
            try:
                reply = self.handle(data)
            except Exception as exc:          # a bug here must not take the cluster down
                traceback.print_exc()
                reply = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass

    def handle(self, data):
        """The reply (a dict) to one request line (bytes)."""
        try:
            if len(data) > MAX_LINE:
                raise FaultError(f"request longer than {MAX_LINE} bytes")
            try:
                req = json.loads(data)
            except ValueError:
                raise FaultError("a request is one JSON object on one line") from None
            if not isinstance(req, dict):
                raise FaultError("a request is one JSON object on one line")
            token = req.get("token")
            if not isinstance(token, str) or not secrets.compare_digest(token, self._token):
                raise FaultError("wrong token (read it from the data directory's "
                                 f"{CONTROL_FILE})")
            said = self.apply(req.get("op"), req.get("node"), req.get("peer"), req.get("ms"))
            return {"ok": True, "said": said, "status": self.status()}
        except FaultError as exc:
            return {"ok": False, "error": str(exc)}

    def close(self):
        """Close the control socket (removing its file) and every proxy."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._path is not None:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            self._path = None
        for px in self.proxies.values():
            px.close()

    # -- the operations --

    def _node(self, name, what="node"):
        if not isinstance(name, str) or name not in self.names:
            raise FaultError(f"unknown {what} {name!r} (the dev cluster has "
                             f"{', '.join(self.names)})")
        return name

    def links(self, node, peer=None):
        """The proxies of every link from or to node (only those between node and peer)."""
        others = [peer] if peer is not None else [n for n in self.names if n != node]
        return [self.proxies[x, y] for o in others for x, y in ((node, o), (o, node))]

    def apply(self, op, node, peer=None, ms=None):
        if op not in OPS:
            raise FaultError(f"unknown operation {op!r} (one of {', '.join(OPS)})")
        if op == "status":
            return ""
        node = self._node(node)
        if peer is not None:
            if op in NODE_OPS:
                raise FaultError(f"{op} acts on a node, not a link: give no peer")
            peer = self._node(peer, "peer")
            if peer == node:
                raise FaultError(f"{node} has no link to itself")
        if op in NODE_OPS:
            if self.supervisor is None:
                raise FaultError("no supervisor")
            return getattr(self.supervisor, f"fault_{op}")(node)
        if op == "slow":
            if isinstance(ms, bool) or not isinstance(ms, (int, float)):
                raise FaultError("slow needs --ms, the added delay in milliseconds")
            from kvnet.faultproxy import MAX_DELAY_MS

            if not 0 <= ms <= MAX_DELAY_MS:
                raise FaultError(f"--ms is 0 to {MAX_DELAY_MS}, not {ms:g}")
        elif ms is not None:
            raise FaultError("--ms goes with slow only")
        for px in self.links(node, peer):
            if op == "cut":
                px.cut()
            elif op == "heal":
                px.heal()
            else:
                px.slow(ms)
        pair = f"{node} <-> {peer}" if peer else f"{node} <-> every other node"
        if op == "cut":
            said = f"cut {pair} (blackhole: nothing passes, connections stall)"
        elif op == "heal":
            said = f"healed {pair} (forwarding again, no added delay)"
        else:
            said = f"slowed {pair}: {ms:g} ms added each way"
        if self.supervisor is not None:
            self.supervisor.say(f"kvnode dev: {said} (kvctl fault)")
        return said

    def status(self):
        nodes = self.supervisor.node_states() if self.supervisor is not None else {}
        links = [{"from": a, "to": b, "port": px.port, **{k: v for k, v in px.stats().items()
                                                          if k != "sockets"}}
                 for (a, b), px in sorted(self.proxies.items())]
        return {"nodes": nodes, "links": links}


def _proxy(target, name, taken, attempts=20):
    from kvnet.faultproxy import FaultProxy, free_ports   # only with --faults

    taken = set(taken) if not isinstance(taken, set) else taken
    for attempt in range(attempts):
        port = next(p for p in free_ports(len(taken) + 1) if p not in taken)
        try:
            px = FaultProxy(target, port=port, name=name)
        except OSError:                      # another process bound it since: another one
            if attempt == attempts - 1:
                raise
            continue
        taken.add(px.port)
        return px


# ---- kvctl's side ------------------------------------------------------------------------------

class NoDevCluster(Exception):
    """No `kvnode dev --faults` answers for this data directory."""


def request(data_dir, op, node=None, peer=None, ms=None, timeout=30.0):
    """Send one request to the `kvnode dev --faults` of data_dir; its reply dict."""
    path = control_path(data_dir)
    try:
        with open(path, encoding="ascii") as f:
            ctl = json.load(f)
        port, token = int(ctl["port"]), str(ctl["token"])
    except FileNotFoundError:
        raise NoDevCluster(f"no `kvnode dev --faults` is running with data directory {data_dir} "
                           f"({CONTROL_FILE} not found there; give --data-dir)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NoDevCluster(f"cannot read {path}: {exc}") from None
    line = json.dumps({"token": token, "op": op, "node": node, "peer": peer, "ms": ms})
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(line.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except ConnectionRefusedError:
        raise NoDevCluster(f"the `kvnode dev --faults` of {data_dir} does not answer on "
                           f"127.0.0.1:{port} (it has stopped; {CONTROL_FILE} is left from a "
                           "run that did not end cleanly)") from None
    except OSError as exc:
        raise NoDevCluster(f"the `kvnode dev --faults` of {data_dir} on 127.0.0.1:{port}: "
                           f"{exc.strerror or exc}") from None
    try:
        reply = json.loads(data)
        if not isinstance(reply, dict) or "ok" not in reply:
            raise ValueError("not a reply")
    except ValueError:
        raise NoDevCluster(f"127.0.0.1:{port} did not answer as `kvnode dev --faults` "
                           f"({data[:80]!r})") from None
    return reply
