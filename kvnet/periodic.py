"""A node's service that does one thing every period (a service of kvnet/node.py: start,
stop, handlers): the canary writer (kvnet/canary.py) and the merge policy's check
(kvnet/compaction.py)."""
import asyncio

__all__ = ["Periodic"]


class Periodic:
    """Runs `tick()` (a plain or a coroutine function) every `period` seconds from start()
    to stop(), when `runs()`. A tick's exception goes to `failed(exc)` and never ends the
    loop: the next period tries again."""

    period = 0.0
    _task = None

    def handlers(self):
        return {}

    def runs(self):
        return self.period > 0

    async def start(self):
        if self.runs() and self._task is None:
            self._task = asyncio.ensure_future(self._loop())

    async def stop(self):
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self):
        while True:
            await asyncio.sleep(self.period)
            try:
                done = self.tick()
                if asyncio.iscoroutine(done):
                    await done
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed(exc)

    def tick(self):
        raise NotImplementedError

    def failed(self, exc):
        raise NotImplementedError
