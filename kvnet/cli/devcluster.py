"""`kvnode dev`'s supervisor: node processes that a user can kill and watch come back.

A node that exits on its own is reported with its exit status and started again after a
backoff (1 s, doubling to 30 s, back to 1 s once it has run a minute), while the others go on
serving; `--no-restart` leaves it down. The cluster's secret is random, made once per data
directory and kept there, so a restarted dev cluster still talks to itself
(docs/operations.md). With `--faults`, `kvctl fault kill|pause|resume NODE` reaches the
supervisor (kvnet/cli/devfaults.py): a node killed that way stays down until resumed.
"""
import os
import secrets
import signal
import subprocess
import sys
import time

from kvnet.cli.devfaults import FaultError
from kvnet.config import env_name
from kvnet.probe import ping

SECRET_FILE = "cluster-secret"
METRICS_OFFSET = 2000   # a dev node's metrics port: its client port + this (7379 -> 9379)


def dev_metrics_port(port):
    """The /metrics port `kvnode dev` and `kvnode add` give the node of client port `port`."""
    return port + METRICS_OFFSET
EXIT_LEFT = 3           # `kvnode start`'s exit status after the node left the ring (kvctl leave)


def dev_secret(data_dir, create=True):
    """The cluster secret of the dev cluster in data_dir: read from <data_dir>/cluster-secret,
    made (random, mode 0600) when absent and `create`; None when absent and not `create`."""
    path = os.path.join(data_dir, SECRET_FILE)
    try:
        with open(path, encoding="ascii") as f:
            secret = f.read().strip()
        if len(secret) >= 8:
            return secret
    except FileNotFoundError:
        pass
    if not create:
        return None
    os.makedirs(data_dir, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    return secret


def dev_env(secret, base=None):
    """The environment of a dev node: the secret goes in a variable, not on the command line
    (where `ps` shows it to every user of the machine)."""
    env = dict(os.environ if base is None else base)
    env[env_name("cluster_secret")] = secret
    return env


class Backoff:
    """When to start a node again: 1 s after its first unexpected exit, doubling to `cap`;
    a node that had run `reset_after` seconds starts from `first` again."""

    def __init__(self, first=1.0, cap=30.0, reset_after=60.0):
        self.first, self.cap, self.reset_after = first, cap, reset_after
        self.delay = first

    def after_exit(self, ran_s):
        """The wait before the next start of a node that exited after running ran_s."""
        if ran_s >= self.reset_after:
            self.delay = self.first
        wait = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return wait


def describe_exit(code):
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


class _Node:
    def __init__(self, name, cmd, port):
        self.name, self.cmd, self.port = name, cmd, port
        self.proc = None
        self.started = 0.0
        self.restart_at = None       # monotonic time of a scheduled restart
        self.awaiting_ready = False
        self.gone = False            # left the ring, or down for good (--no-restart)
        self.held = False            # killed by `kvctl fault kill`: down until `resume`
        self.paused = False          # SIGSTOP by `kvctl fault pause`
        self.backoff = Backoff()


class DevSupervisor:
    """Starts nodes, waits until each answers PING, then keeps them running until stopping()."""

    def __init__(self, names, cmds, ports, env, restart=True, log=None, err=None, clock=time.monotonic,
                 control=None, ssl=None):
        self.nodes = [_Node(n, c, p) for n, c, p in zip(names, cmds, ports)]
        self.ssl = ssl               # the client context of TLS ports (`kvnode dev --tls`)
        self.env, self.restart, self.clock = env, restart, clock
        self.out = log or sys.stdout
        self.err = err or sys.stderr
        self.control = control       # a DevFaults (`kvnode dev --faults`), polled while idle
        if control is not None:
            control.supervisor = self

    def _say(self, text, err=False):
        print(text, file=self.err if err else self.out, flush=True)

    say = _say

    def _spawn(self, node):
        node.paused = False
        node.proc = subprocess.Popen(node.cmd, env=self.env)
        node.started = self.clock()

    def start(self, stopping, timeout=60.0):
        """Start every node and wait for PING on each; False if one exited or timed out."""
        for node in self.nodes:
            self._spawn(node)
        deadline = self.clock() + timeout
        waiting = list(self.nodes)
        while waiting and not stopping():
            for node in list(waiting):
                if node.proc.poll() is not None:
                    self._say(f"kvnode dev: {node.name} exited with "
                              f"{describe_exit(node.proc.returncode)} while starting", err=True)
                    return False
                if ping(node.port, ssl=self.ssl):
                    waiting.remove(node)
            if self.clock() > deadline:
                self._say(f"kvnode dev: nodes did not become ready in {timeout:.0f} s", err=True)
                return False
            time.sleep(0.1)
        return not waiting

    def pids(self):
        return {n.name: n.proc.pid for n in self.nodes if n.proc is not None}

    def supervise(self, stopping, idle=0.2):
        """Until stopping(): restart nodes that exit, report them ready again. Returns when
        stopping() or when every node has left."""
        while not stopping():
            now = self.clock()
            for node in self.nodes:
                if stopping():        # Ctrl-C reaches the nodes too: their exits are no crash
                    return
                self._check(node, now)
            if all(n.gone for n in self.nodes):
                return
            if self.control is not None:
                self.control.poll(idle)
            else:
                time.sleep(idle)

    def _check(self, node, now):
        if node.gone or node.held:
            return
        if node.restart_at is not None:
            if now >= node.restart_at:
                node.restart_at = None
                self._spawn(node)
                node.awaiting_ready = True
                self._say(f"kvnode dev: {node.name} restarted (pid {node.proc.pid})")
            return
        code = node.proc.poll()
        if code is None:
            if node.awaiting_ready and ping(node.port, ssl=self.ssl):
                node.awaiting_ready = False
                self._say(f"kvnode dev: {node.name} is ready again on 127.0.0.1:{node.port}")
            return
        node.paused = False              # (killed from outside while paused)
        if code == EXIT_LEFT:
            self._say(f"kvnode dev: {node.name} left the cluster")
            node.gone = True
            return
        what = f"kvnode dev: {node.name} (pid {node.proc.pid}) exited with {describe_exit(code)}"
        if not self.restart:
            self._say(f"{what}; it stays down (--no-restart)", err=True)
            node.gone = True
            return
        wait = node.backoff.after_exit(now - node.started)
        node.restart_at = now + wait
        node.awaiting_ready = False
        self._say(f"{what}; restarting it in {wait:g} s (the other nodes keep serving)", err=True)

    def stop(self, grace=15.0):
        """SIGTERM every running node (each syncs and closes its stores); SIGKILL after grace.
        A paused node is continued first, or it would not act on SIGTERM."""
        for n in self.nodes:
            if n.paused and n.proc is not None and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)
                n.paused = False
        procs = [n.proc for n in self.nodes if n.proc is not None]
        return stop_all(procs, grace)

    # -- `kvctl fault` (kvnet/cli/devfaults.py); each returns the line kvctl prints --

    def _named(self, name):
        return next(n for n in self.nodes if n.name == name)

    def _running(self, node):
        return node.proc is not None and node.proc.poll() is None and not node.held

    def node_states(self):
        """{name: {"state": running|paused|killed|restarting|down, "pid": ...}}."""
        out = {}
        for n in self.nodes:
            if n.paused:
                state = "paused"
            elif n.held:
                state = "killed"
            elif n.gone:
                state = "down"
            elif n.restart_at is not None or n.proc is None or n.proc.poll() is not None:
                state = "restarting"
            else:
                state = "running"
            out[n.name] = {"state": state, "pid": n.proc.pid if state in ("running", "paused")
                           else None, "port": n.port}
        return out

    def fault_kill(self, name):
        node = self._named(name)
        if node.gone:
            raise FaultError(f"{name} is down for good (it left the ring, or --no-restart)")
        if node.held:
            raise FaultError(f"{name} is already killed (`kvctl fault resume {name}` starts it)")
        pid = node.proc.pid
        if node.proc.poll() is None:
            node.proc.kill()                    # SIGKILL: works on a paused node too
            node.proc.wait()
        node.held, node.paused = True, False
        node.restart_at, node.awaiting_ready = None, False
        said = (f"{name} (pid {pid}) killed with SIGKILL; it stays down until "
                f"`kvctl fault resume {name}`")
        self._say(f"kvnode dev: {said} (kvctl fault)")
        return said

    def fault_pause(self, name):
        node = self._named(name)
        if node.paused:
            return f"{name} is already paused"
        if not self._running(node):
            raise FaultError(f"{name} is not running (state {self.node_states()[name]['state']})")
        node.proc.send_signal(signal.SIGSTOP)
        node.paused = True
        said = f"{name} (pid {node.proc.pid}) paused with SIGSTOP; `kvctl fault resume {name}`"
        self._say(f"kvnode dev: {said} (kvctl fault)")
        return said

    def fault_resume(self, name):
        node = self._named(name)
        if node.paused:
            node.proc.send_signal(signal.SIGCONT)
            node.paused = False
            said = f"{name} (pid {node.proc.pid}) resumed with SIGCONT"
        elif node.held or node.restart_at is not None:
            node.held, node.restart_at = False, None
            self._spawn(node)
            node.awaiting_ready = True
            said = f"{name} started again (pid {node.proc.pid})"
        elif node.gone:
            raise FaultError(f"{name} is down for good (it left the ring, or --no-restart)")
        else:
            return f"{name} is running (pid {node.proc.pid}): nothing to resume"
        self._say(f"kvnode dev: {said} (kvctl fault)")
        return said


def stop_all(procs, grace=15.0):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    print("ringkv nodes stopped.", flush=True)
    return 0
