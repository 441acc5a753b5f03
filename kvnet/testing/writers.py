"""Recording writers: threads that write through a cluster's client ports with redis-py
(retries off) and record what was acknowledged. `SetWriter` (plain SETs of unique keys),
`ContextWriter` (KV.GET then KV.PUT with the context read, on a few shared keys: siblings and
racing contexts), `run_writers` around the faults of a test."""
import collections
import random
import threading
import time
from typing import NamedTuple

from kvnet.testing.clients import redis_client


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
