"""Where a node's blocking disk work runs: merges and group-commit syncs go through one small
interface, so a node runs them in worker threads and a simulator can run them inline."""
import asyncio
from concurrent.futures import ThreadPoolExecutor


class Executor:
    """`await executor.run(fn, *args)`: fn(*args)'s result, computed off the event loop (or not:
    InlineExecutor)."""

    async def run(self, fn, *args):
        raise NotImplementedError

    def shutdown(self):
        pass


class ThreadExecutor(Executor):
    """Up to `workers` calls at once, each in a thread of its own pool (created on first use)."""

    def __init__(self, workers, name):
        self.workers, self.name = max(1, workers), name
        self._pool = None

    async def run(self, fn, *args):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class InlineExecutor(Executor):
    """Runs fn on the caller's thread, at once: deterministic, for simulations and tests."""

    async def run(self, fn, *args):
        return fn(*args)
