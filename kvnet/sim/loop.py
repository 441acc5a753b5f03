"""A deterministic asyncio event loop on a simulated clock (docs/simulation.md).

The loop is asyncio's own (BaseEventLoop: the same ready queue, timers and tasks), with three
things replaced: its clock is a number that jumps to the next timer when nothing is ready
(no waiting: a simulated minute takes the CPU time its callbacks take); I/O is a simulated
network (kvnet/sim/net.py) that delivers bytes by timers; and work sent to an executor runs
inline, so no thread decides an order (inline_pools() does the same for the replica's
threads and the stores' syncer). Its ready queue can hold back one host's callbacks
(pause/resume: a stopped process). `determinism(seed, clock)` replaces, for the run, the
process's clocks (time.time, monotonic, perf_counter and their _ns forms) with the loop's and
its sources of randomness (random's global generator, os.urandom, secrets) with generators
seeded from `seed`, so the code under test runs unchanged.
"""
import asyncio
import collections
import contextlib
import gc
import logging
import os
import random
import time
import types
import weakref

EPOCH = 1_798_761_600.0        # 2027-01-01 UTC: time.time() of simulated second 0


class SimDeadlock(RuntimeError):
    """Nothing is ready and no timer is set: everything waits for what never comes."""


class _Selector:
    """What BaseEventLoop polls for I/O: here, the place the clock moves forward."""

    def __init__(self, loop):
        self.loop = loop

    def select(self, timeout):
        if timeout is None:
            raise SimDeadlock("the simulation has nothing left to run")
        if timeout > 0:
            self.loop._now += timeout
        return []

    def close(self):
        pass


class _Ready(collections.deque):
    """The loop's ready queue, which holds back the callbacks of paused hosts: popleft() sets
    aside a callback whose context is a paused host's (it gets a cancelled stand-in, which
    the loop skips) until resume() puts it back, in order."""

    def __init__(self, loop):
        super().__init__()
        self.loop = loop

    def popleft(self):
        handle = super().popleft()
        paused = self.loop.paused
        if paused and not handle._cancelled:
            ctx = handle._context
            host = None if ctx is None else ctx.get(self.loop.host_var)
            if host in paused:
                paused[host].append(handle)
                return self.loop._skip
        return handle


class SimLoop(asyncio.BaseEventLoop):
    """asyncio's loop on simulated time, with `net` (a SimNetwork) for its connections.

    pause(host) stops a host's process (SIGSTOP): every callback that would run in its
    context (its tasks, timers and the network's deliveries to it) waits, in order, until
    resume(host) runs them; the clock goes on meanwhile. A host is the value of `host_var`
    (a ContextVar: kvnet/sim/net.py's CURRENT) in a callback's context."""

    def __init__(self, net=None, host_var=None):
        super().__init__()
        self._now = 0.0
        self._selector = _Selector(self)
        self._clock_resolution = 1e-9
        self._ready = _Ready(self)
        self._skip = asyncio.Handle(lambda: None, (), self)       # (what a held one leaves)
        self._skip.cancel()
        self.net = net
        self.host_var = host_var
        self.paused = {}            # host -> [handles held back], in the order they came

    def pause(self, host):
        if self.host_var is None:
            raise RuntimeError("pause needs the loop's host_var")
        self.paused.setdefault(host, [])

    def resume(self, host):
        held = self.paused.pop(host, [])
        self._ready.extend(held)

    def time(self):
        return self._now

    def _process_events(self, event_list):
        pass

    def _write_to_self(self):
        pass

    def run_in_executor(self, executor, func, *args):
        """Runs `func` now, on the loop: an executor's work is part of the simulated step."""
        fut = self.create_future()
        try:
            fut.set_result(func(*args))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        return fut

    async def shutdown_default_executor(self, timeout=None):
        pass

    def add_signal_handler(self, sig, callback, *args):
        raise NotImplementedError("no signals in a simulation")

    async def create_connection(self, protocol_factory, host=None, port=None, **kw):
        return await self.net.connect(protocol_factory, host, port)

    async def create_server(self, protocol_factory, host=None, port=None, **kw):
        return self.net.listen(protocol_factory, host, port)

    async def getaddrinfo(self, host, port, *a, **kw):
        return [(2, 1, 6, "", (host, port))]


class _Urandom:
    """os.urandom from a seeded generator."""

    def __init__(self, rng):
        self.rng = rng

    def __call__(self, n):
        return self.rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


def _seeded_random(urandom):
    class SeededRandom(random.Random):
        """random.Random() seeded from the simulation's seed, not from the OS."""

        def seed(self, a=None, version=2):
            if a is None:
                a = int.from_bytes(urandom(32), "little")
            super().seed(a, version)

    return SeededRandom


class InlinePool:
    """A ThreadPoolExecutor that runs each call at once, in order (LocalReplica opens and
    closes partitions through a pool: in threads, the order they finish in, and so which
    partition gets which fresh epoch after a crash, would vary from run to run)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, *iterables):
        return [fn(*args) for args in zip(*iterables)]

    def shutdown(self, wait=True, **kw):
        pass


class InlineThread:
    """A threading.Thread whose start() runs its target at once, on the caller's thread (the
    replica's epoch lease ahead: in a thread, whether its file write lands before a crash
    would decide the epochs a restart hands out)."""

    def __init__(self, group=None, target=None, name=None, args=(), kwargs=None, daemon=None):
        self._target, self._args, self._kwargs = target, args, kwargs or {}
        self.name, self.daemon = name, daemon

    def start(self):
        if self._target is not None:
            self._target(*self._args, **self._kwargs)

    def join(self, timeout=None):
        pass

    def is_alive(self):
        return False


class LoopSyncer:
    """kvcore.storage.syncer on the running event loop instead of its daemon thread: a poke
    (a store's roll left a segment to seal) seals it in the next loop step, so a seal happens
    at a simulated moment, not whenever the thread wakes. Stores are visited in the order
    they registered. (The replica's stores use fsync="never" and are synced by its group
    commits on the loop; a store's own fsync="interval" timer is not simulated.)"""

    def __init__(self):
        self.stores = weakref.WeakKeyDictionary()      # (insertion ordered)
        self._scheduled = False

    def register(self, store):
        self.stores[store] = None
        self.poke()

    def unregister(self, store):
        self.stores.pop(store, None)

    def poke(self):
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return                  # (no loop: a later poke, a sync or the close seals it)
        self._scheduled = True
        loop.call_soon(self._pass)

    def _pass(self):
        self._scheduled = False
        for store in list(self.stores):
            try:
                if store._sync_due() == 0.0:        # a seal pending: now
                    store._timer_sync()
            except Exception:       # a closed or failing store must not stop the others
                pass


@contextlib.contextmanager
def inline_pools():
    """For the `with` block, no thread decides an order: kvnet.replica's thread pools and
    threads run inline, and the stores' syncer (which seals rolled segments) runs on the
    event loop."""
    import threading as real_threading

    from kvcore.storage import syncer
    from kvnet import replica
    shim = types.ModuleType("threading")
    shim.__dict__.update(real_threading.__dict__)
    shim.Thread = InlineThread
    loop_syncer = LoopSyncer()
    saved = (replica.ThreadPoolExecutor, replica.threading,
             syncer.register, syncer.poke, syncer.unregister)
    replica.ThreadPoolExecutor = InlinePool
    replica.threading = shim
    syncer.register, syncer.poke, syncer.unregister = (
        loop_syncer.register, loop_syncer.poke, loop_syncer.unregister)
    try:
        yield
    finally:
        (replica.ThreadPoolExecutor, replica.threading,
         syncer.register, syncer.poke, syncer.unregister) = saved


@contextlib.contextmanager
def quiet(name="kvnet", level=logging.CRITICAL):
    """The nodes' logs off for the `with` block (a run's own output is its summary)."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


GC_THRESHOLDS = (200_000, 50, 1_000)


@contextlib.contextmanager
def collect_less(thresholds=GC_THRESHOLDS):
    """For the `with` block: the cyclic garbage collector runs far less often (its youngest
    generation every 200,000 allocations rather than 700). A simulated cluster holds millions
    of objects (member tables, arrival windows, connections) and makes garbage at a high rate,
    so the default thresholds spent about a quarter of a 100-node run's CPU walking them;
    what the run frees by reference counting is freed at once as before. Restores the
    thresholds after."""
    saved = gc.get_threshold()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


@contextlib.contextmanager
def determinism(seed, clock):
    """For the `with` block: the process's clocks read `clock()` (simulated seconds) and its
    randomness comes from `seed`. Restores everything after."""
    import secrets
    saved_time = {name: getattr(time, name) for name in
                  ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter",
                   "perf_counter_ns")}
    saved_urandom = os.urandom
    saved_rand_urandom = random._urandom
    saved_state = random.getstate()
    saved_random = random.Random
    urandom = _Urandom(random.Random(seed ^ 0x5EED))
    try:
        time.time = lambda: EPOCH + clock()
        time.time_ns = lambda: int((EPOCH + clock()) * 1e9)
        time.monotonic = time.perf_counter = lambda: 1000.0 + clock()
        time.monotonic_ns = time.perf_counter_ns = lambda: int((1000.0 + clock()) * 1e9)
        os.urandom = urandom
        random._urandom = urandom          # SystemRandom, secrets and random.Random()'s seed
        random.Random = _seeded_random(urandom)
        random.seed(seed)
        secrets._sysrand = random.SystemRandom()
        yield
    finally:
        for name, fn in saved_time.items():
            setattr(time, name, fn)
        os.urandom = saved_urandom
        random._urandom = saved_rand_urandom
        random.Random = saved_random
        random.setstate(saved_state)
        secrets._sysrand = random.SystemRandom()
