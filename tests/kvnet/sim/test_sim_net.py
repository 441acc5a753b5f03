"""The simulated network (kvnet/sim/net.py): ordered streams through asyncio's own stream
API, cut links that kill connections and hold connects until the heal, crashed hosts."""
import asyncio
import random

import pytest

from kvnet.sim.loop import SimLoop
from kvnet.sim.net import CURRENT, SimNetwork


def _setup():
    loop = SimLoop()
    net = SimNetwork(loop, random.Random(1), latency=0.01, jitter=0.0)
    loop.net = net
    return loop, net


def _as(net, loop, host, coro):
    return loop.create_task(coro, context=net.context(host).copy())


async def _echo_server(net, loop):
    async def handle(reader, writer):
        while data := await reader.read(100):
            writer.write(data.upper())
        writer.close()

    return await _as(net, loop, "b", asyncio.start_server(handle, "127.0.0.1", 7000))


def test_bytes_arrive_in_order_after_the_latency():
    loop, net = _setup()

    async def main():
        await _echo_server(net, loop)

        async def client():
            assert CURRENT.get() == "a"
            reader, writer = await asyncio.open_connection("127.0.0.1", 7000)
            t0 = loop.time()
            for part in (b"one ", b"two ", b"three"):
                writer.write(part)
            got = b""
            while len(got) < 13:
                got += await reader.read(100)
            return got, loop.time() - t0

        got, took = await _as(net, loop, "a", client())
        assert got == b"ONE TWO THREE" and took == pytest.approx(0.02, abs=1e-6)

    loop.run_until_complete(main())


def test_writes_due_at_the_same_time_arrive_in_the_order_written():
    """A slowed link: every write after the first is due at the same time (the first's, so as
    not to overtake it); the loop's timers keep no order among equal times, the stream must."""
    loop, net = _setup()

    async def main():
        got = []

        async def handle(reader, writer):
            while data := await reader.read(100_000):
                got.append(data)

        await _as(net, loop, "b", asyncio.start_server(handle, "127.0.0.1", 7001))

        async def client():
            reader, writer = await asyncio.open_connection("127.0.0.1", 7001)
            net.slow("a", "b", 3.0)
            for i in range(200):
                writer.write(b"%04d," % i)
                if i % 7 == 0:
                    await asyncio.sleep(0.001)      # some writes later, all due together
            await asyncio.sleep(5)

        await _as(net, loop, "a", client())
        assert b"".join(got) == b"".join(b"%04d," % i for i in range(200))

    loop.run_until_complete(main())


def test_a_cut_kills_connections_and_holds_connects_until_the_heal():
    loop, net = _setup()

    async def main():
        await _echo_server(net, loop)

        async def client():
            reader, writer = await asyncio.open_connection("127.0.0.1", 7000)
            net.cut("a", "b")
            writer.write(b"lost")
            with pytest.raises(ConnectionResetError):
                await reader.read(100)
                await reader.read(100)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.open_connection("127.0.0.1", 7000)
            loop.call_later(2, net.heal)
            t0 = loop.time()
            reader, writer = await asyncio.open_connection("127.0.0.1", 7000)
            assert loop.time() - t0 >= 2
            writer.write(b"back")
            return await reader.read(100)

        assert await _as(net, loop, "a", client()) == b"BACK"

    loop.run_until_complete(main())


def test_a_crashed_host_refuses_connects_and_resets_its_connections():
    loop, net = _setup()

    async def main():
        await _echo_server(net, loop)

        async def client():
            reader, writer = await asyncio.open_connection("127.0.0.1", 7000)
            net.crash("b")
            with pytest.raises(ConnectionResetError):
                await reader.read(100)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", 7000)

        await _as(net, loop, "a", client())

    loop.run_until_complete(main())


def test_a_slow_link_delays_every_write_in_order_until_it_is_fast_again():
    loop, net = _setup()

    async def main():
        await _echo_server(net, loop)

        async def client():
            reader, writer = await asyncio.open_connection("127.0.0.1", 7000)
            net.slow("a", "b", 2.0)
            t0 = loop.time()
            writer.write(b"one ")
            writer.write(b"two")
            got = b""
            while len(got) < 7:
                got += await reader.read(100)
            took = loop.time() - t0
            net.slow("a", "b", 0)
            t0 = loop.time()
            writer.write(b"x")
            assert await reader.read(100) == b"X"
            return got, took, loop.time() - t0

        got, slow, fast = await _as(net, loop, "a", client())
        assert got == b"ONE TWO" and slow == pytest.approx(4.02, abs=1e-6)
        assert fast == pytest.approx(0.02, abs=1e-6)

    loop.run_until_complete(main())
