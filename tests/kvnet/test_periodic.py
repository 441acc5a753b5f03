"""kvnet/periodic.py: a service's tick every period, failures reported and survived, stop
ends it, and a service that does not run starts nothing."""
import asyncio

from kvnet.periodic import Periodic


class Ticker(Periodic):
    def __init__(self, period, fail_on=(), coroutine=False):
        self.period = period
        self.ticks, self.failures = 0, []
        self.fail_on, self.coroutine = set(fail_on), coroutine

    def tick(self):
        self.ticks += 1
        if self.ticks in self.fail_on:
            raise RuntimeError(f"tick {self.ticks}")
        if self.coroutine:
            return asyncio.sleep(0)

    def failed(self, exc):
        self.failures.append(str(exc))


def test_a_failing_tick_is_reported_and_the_next_one_runs():
    async def main():
        for coroutine in (False, True):
            t = Ticker(0.01, fail_on=(2,), coroutine=coroutine)
            assert t.handlers() == {}
            await t.start()
            for _ in range(500):
                if t.ticks >= 4:
                    break
                await asyncio.sleep(0.01)
            await t.stop()
            assert t.ticks >= 4 and t.failures == ["tick 2"]
            after = t.ticks
            await asyncio.sleep(0.05)
            assert t.ticks == after            # stopped: no more ticks
            await t.stop()                     # (twice is harmless)
    asyncio.run(main())


def test_a_service_that_does_not_run_starts_no_task():
    async def main():
        t = Ticker(0)
        await t.start()
        await asyncio.sleep(0.02)
        assert t.ticks == 0 and t._task is None
        await t.stop()
    asyncio.run(main())
