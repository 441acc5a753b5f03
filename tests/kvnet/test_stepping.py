"""finish(): a Task drives a coroutine on from its first step, exactly as if it had started it."""
import asyncio

import pytest

from kvnet.stepping import ReplyFuture, finish, reject, resolve


def _first_step(coro):
    return coro, coro.send(None)


def test_the_task_returns_the_result_and_raises_the_error():
    async def main():
        fut = asyncio.get_running_loop().create_future()

        async def work(x):
            got = await fut
            if got == "boom":
                raise ValueError("boom")
            return (x, got)

        t = asyncio.get_running_loop().create_task(finish(*_first_step(work(1))))
        await asyncio.sleep(0)
        fut.set_result("v")
        assert await t == (1, "v")

        fut = asyncio.get_running_loop().create_future()
        t = asyncio.get_running_loop().create_task(finish(*_first_step(work(2))))
        fut.set_result("boom")
        with pytest.raises(ValueError, match="boom"):
            await t

    asyncio.run(main())


@pytest.mark.parametrize("before_first_step", [True, False])
def test_cancel_reaches_the_coroutine_where_it_waits(before_first_step):
    async def main():
        seen = []

        async def hang():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            finally:
                seen.append("finally")

        t = asyncio.get_running_loop().create_task(finish(*_first_step(hang())))
        if not before_first_step:
            await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert seen == ["cancelled", "finally"]

    asyncio.run(main())


def test_cancel_before_the_first_step_cancels_what_the_coroutine_waits_on():
    async def main():
        child_cancelled = []

        async def child():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                child_cancelled.append(True)
                raise

        async def parent():
            await asyncio.get_running_loop().create_task(child())

        t = asyncio.get_running_loop().create_task(finish(*_first_step(parent())))
        t.cancel()                              # before the Task's first step
        with pytest.raises(asyncio.CancelledError):
            await t
        await asyncio.sleep(0)
        assert child_cancelled == [True]        # as with a Task that ran parent() itself

    asyncio.run(main())


def test_resolve_and_reject_call_on_settled_at_once():
    """on_settled runs inside resolve()/reject(), before any done callback; a plain Future
    is settled the same way, and a ReplyFuture is awaited like any Future."""
    async def main():
        loop = asyncio.get_running_loop()
        order = []
        ok, bad, plain = ReplyFuture(loop=loop), ReplyFuture(loop=loop), loop.create_future()
        for fut in (ok, bad):
            fut.on_settled = lambda f: order.append(("settled", f.done()))
            fut.add_done_callback(lambda f: order.append(("done callback",)))
        resolve(ok, 1)
        assert order == [("settled", True)]
        reject(bad, ValueError("x"))
        resolve(plain, 2)
        assert order == [("settled", True)] * 2
        assert await ok == 1 and await plain == 2
        with pytest.raises(ValueError):
            await bad
        await asyncio.sleep(0)
        assert order[2:] == [("done callback",)] * 2
        quiet = ReplyFuture(loop=loop)      # no on_settled: a Future as any other
        resolve(quiet, 3)
        assert quiet.result() == 3
    asyncio.run(main())
