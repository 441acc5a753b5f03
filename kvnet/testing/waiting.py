"""Waiting in tests: every line a process prints (`OutputReader`), a predicate polled until
it holds (`wait_until` in threads, `eventually` on an asyncio loop)."""
import asyncio
import threading
import time


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
