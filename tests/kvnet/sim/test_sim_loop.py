"""The simulation's loop and clock (kvnet/sim/loop.py): time jumps to the next timer,
executors run inline, randomness and clocks follow the seed and the loop."""
import asyncio
import contextvars
import os
import random
import threading
import time

import pytest

from kvnet.sim.loop import EPOCH, SimDeadlock, SimLoop, determinism, inline_pools


def test_an_hour_of_sleeps_takes_no_waiting_and_keeps_timer_order():
    loop = SimLoop()
    order = []

    async def sleeper(name, seconds):
        await asyncio.sleep(seconds)
        order.append((name, loop.time()))

    async def main():
        await asyncio.gather(sleeper("b", 3600), sleeper("a", 1.5), sleeper("c", 3600))
        return loop.time()

    assert loop.run_until_complete(main()) == pytest.approx(3600)
    assert [n for n, _ in order] == ["a", "b", "c"] and order[0][1] == pytest.approx(1.5)


def test_executor_work_runs_inline_and_its_errors_reach_the_caller():
    loop = SimLoop()

    async def main():
        assert await loop.run_in_executor(None, lambda x: x * 2, 21) == 42
        assert await asyncio.to_thread(sum, [1, 2, 3]) == 6
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(None, lambda: 1 / 0)

    loop.run_until_complete(main())


def test_waiting_for_what_never_comes_is_a_deadlock_not_a_hang():
    loop = SimLoop()
    with pytest.raises(SimDeadlock):
        loop.run_until_complete(loop.create_future())


def test_determinism_gives_the_loops_clock_and_the_seeds_randomness():
    loop = SimLoop()
    before = time.time()
    draws = []
    for _ in range(2):
        with determinism(5, loop.time):
            draws.append((os.urandom(8), random.random(), random.Random().random(),
                          __import__("secrets").randbits(32)))
            assert time.time() == EPOCH + loop.time() and time.monotonic() == 1000.0
    assert draws[0] == draws[1]
    with determinism(6, loop.time):
        assert os.urandom(8) != draws[0][0]
    assert time.time() >= before and abs(time.time() - before) < 3600      # restored


def test_a_rolled_segment_is_sealed_by_the_loop_not_by_a_thread(tmp_path):
    """inline_pools(): the store's syncer is the loop's: a roll leaves its segment to seal
    until the loop's next step, which seals it (the syncer thread would seal it whenever it
    woke, so a crash would find a different file layout from run to run)."""
    from kvcore.storage import LogStore
    loop = SimLoop()

    async def main():
        s = LogStore(str(tmp_path / "store"), fsync="never", seal_later=True)
        try:
            s.put(b"k", b"v" * 100)
            s.roll()
            assert s.stats()["sealing_segments"] == 1
            await asyncio.sleep(0)
            assert s.stats()["sealing_segments"] == 0
        finally:
            s.close()

    with inline_pools():
        loop.run_until_complete(main())


def test_the_replicas_epoch_lease_ahead_runs_inline(tmp_path):
    """inline_pools(): the thread that leases the next block of epochs runs at once, so
    the lease file says the same whenever a crash comes."""
    from kvnet import replica
    with inline_pools():
        ident = replica.Identity(str(tmp_path), "n0")
        for _ in range(replica.EPOCH_BLOCK // 2 + 2):
            ident.new_epoch()
        assert ident._extending is None
        assert ident._leased == 2 * replica.EPOCH_BLOCK
    assert replica.threading.Thread is threading.Thread                    # restored


def test_a_paused_host_runs_nothing_until_resumed_then_all_in_order():
    """SimLoop.pause: a host's timers (and anything else in its context) wait; the others
    run on; resume runs what waited, in the order it came."""
    host = contextvars.ContextVar("host", default=None)
    loop = SimLoop(host_var=host)
    ticks = []

    async def ticker(name):
        host.set(name)
        for _ in range(5):
            await asyncio.sleep(1)
            ticks.append((name, loop.time()))

    async def main():
        tasks = [loop.create_task(ticker(n)) for n in "ab"]
        await asyncio.sleep(1.5)
        loop.pause("a")
        await asyncio.sleep(3)
        assert [t for n, t in ticks if n == "a"] == [1.0]
        loop.resume("a")
        await asyncio.gather(*tasks)

    loop.run_until_complete(main())
    assert [t for n, t in ticks if n == "a"] == [1.0, 4.5, 5.5, 6.5, 7.5]
    assert [t for n, t in ticks if n == "b"] == [1.0, 2.0, 3.0, 4.0, 5.0]
