"""A deterministic asyncio event loop on a simulated clock (docs/simulation.md).

The loop is asyncio's BaseEventLoop (its tasks, futures and handles), with its step
(_run_once) and timer heap written for simulation and three things replaced: its clock is a
number that jumps to the next timer when nothing is ready (no waiting: a simulated minute
takes the CPU time its callbacks take; timers due at the same moment run in the order they
were set); I/O is a simulated
network (kvnet/sim/net.py) that delivers bytes by timers; and work sent to an executor runs
inline, so no thread decides an order (inline_pools() does the same for the replica's
threads and the stores' syncer). Its ready queue can hold back one host's callbacks
(pause/resume: a stopped process). `determinism(seed, clock)` replaces, for the run, the
process's clocks (time.time, monotonic, perf_counter and their _ns forms) with the loop's and
its sources of randomness (random's global generator, os.urandom, secrets) with generators
seeded from `seed`, so the code under test runs unchanged.
"""
import asyncio
import contextlib
import gc
import heapq
import itertools
import logging
import os
import random
import time
import types
import weakref
from asyncio import events, format_helpers

EPOCH = 1_798_761_600.0        # 2027-01-01 UTC: time.time() of simulated second 0
_MAX_STEP = 24 * 3600.0         # the furthest the clock jumps in one step (asyncio's
                                # MAXIMUM_SELECT_TIMEOUT)


class SimDeadlock(RuntimeError):
    """Nothing is ready and no timer is set: everything waits for what never comes."""


class SimLoop(asyncio.BaseEventLoop):
    """asyncio's loop on simulated time, with `net` (a SimNetwork) for its connections.

    pause(host) stops a host's process (SIGSTOP): every callback that would run in its
    context (its tasks, timers and the network's deliveries to it) waits, in order, until
    resume(host) runs them; the clock goes on meanwhile. A host is the value of `host_var`
    (a ContextVar: kvnet/sim/net.py's CURRENT) in a callback's context."""

    def __init__(self, net=None, host_var=None):
        super().__init__()
        self._now = 0.0
        self._clock_resolution = 1e-9
        # Timers as (when, sequence, TimerHandle) in a heap: ordered by C comparisons of
        # tuples (asyncio's heap of TimerHandles calls their Python __lt__, a tenth of a
        # large run's CPU), and equal times run in the order they were set.
        self._timers = []
        self._sequence = itertools.count()
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

    # -- asyncio's call_soon, call_at and _run_once, less what a simulation never needs
    # (debug mode, a selector, other threads): the loop runs every callback of every node,
    # so its own Python calls are a large share of a run (docs/simulation.md, "Speed") --

    def call_soon(self, callback, *args, context=None):
        if self._closed:
            raise RuntimeError("Event loop is closed")
        handle = events.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_at(self, when, callback, *args, context=None):
        if self._closed:
            raise RuntimeError("Event loop is closed")
        timer = events.TimerHandle(when, callback, args, self, context)
        heapq.heappush(self._timers, (when, next(self._sequence), timer))
        timer._scheduled = True
        return timer

    def close(self):
        super().close()
        self._timers.clear()

    def _run_once(self):
        """asyncio's step (BaseEventLoop._run_once) on the simulated clock: drop cancelled
        timers, move the clock to the next timer when nothing is ready, make the timers due
        ready, run what is ready (holding back a paused host's callbacks, in order)."""
        timers = self._timers
        cancelled = self._timer_cancelled_count
        if cancelled > 100 and cancelled * 2 > len(timers):    # asyncio's rule
            kept = []
            for entry in timers:
                if entry[2]._cancelled:
                    entry[2]._scheduled = False
                else:
                    kept.append(entry)
            heapq.heapify(kept)
            self._timers = timers = kept
            self._timer_cancelled_count = 0
        else:
            while timers and timers[0][2]._cancelled:
                self._timer_cancelled_count -= 1
                heapq.heappop(timers)[2]._scheduled = False
        ready = self._ready
        if not ready and not self._stopping:
            if not timers:
                raise SimDeadlock("the simulation has nothing left to run")
            timeout = min(timers[0][0] - self._now, _MAX_STEP)
            if timeout > 0:
                self._now += timeout
        end = self._now + self._clock_resolution
        while timers and timers[0][0] < end:
            timer = heapq.heappop(timers)[2]
            timer._scheduled = False
            ready.append(timer)
        paused, host_var, popleft = self.paused, self.host_var, ready.popleft
        for _ in range(len(ready)):
            handle = popleft()
            if handle._cancelled:
                continue
            if paused:
                held = paused.get(handle._context.get(host_var))
                if held is not None:                # a paused host's: it waits, in order
                    held.append(handle)
                    continue
            try:
                handle._context.run(handle._callback, *handle._args)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:        # as Handle._run reports it
                cb = format_helpers._format_callback_source(handle._callback, handle._args)
                context = {"message": f"Exception in callback {cb}", "exception": exc,
                           "handle": handle}
                if handle._source_traceback:
                    context["source_traceback"] = handle._source_traceback
                self.call_exception_handler(context)
        handle = None

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
