"""redis-cli and redis-benchmark, unchanged, against a server in this process.

Skipped only when the binary is missing (Debian package redis-tools)."""
import asyncio
import shutil

import pytest

from kvnet.resp.backend import MemoryBackend
from kvnet.resp.server import serve

REDIS_CLI = shutil.which("redis-cli")
REDIS_BENCHMARK = shutil.which("redis-benchmark")


def run(coro):
    with asyncio.Runner(debug=True) as runner:
        return runner.run(asyncio.wait_for(coro, 120))


async def tool(*args, stdin=None):
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), 90)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, (args, out, err)
    return out.decode()


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed (apt-get install redis-tools)")
def test_redis_cli():
    async def main():
        server = await serve(MemoryBackend(), password="pw")
        port = str(server.port)
        cli = [REDIS_CLI, "-p", port, "--no-auth-warning", "-a", "pw"]
        try:
            assert await tool(*cli, "ping") == "PONG\n"
            assert await tool(*cli, "set", "greeting", "hello world") == "OK\n"
            assert await tool(*cli, "get", "greeting") == "hello world\n"
            assert await tool(*cli, "-3", "get", "greeting") == "hello world\n"
            info = await tool(*cli, "info")
            assert "redis_version:7." in info and "cluster_enabled:0" in info
            assert "# Ringkv" in info
            assert await tool(*cli, "--scan", "--pattern", "gr*") == "greeting\n"
            assert "NOAUTH" in await tool(REDIS_CLI, "-p", port, "get", "greeting")
            # Commands on stdin (as a pipe), replies in order.
            out = await tool(*cli, stdin=b"set a 1\nget a\nkv.status\nset a 1 ex 5\n")
            assert out.startswith("OK\n1\n") and "SET option EX is not supported" in out
        finally:
            await server.close()
    run(main())


@pytest.mark.skipif(REDIS_BENCHMARK is None,
                    reason="redis-benchmark is not installed (apt-get install redis-tools)")
def test_redis_benchmark():
    async def main():
        server = await serve(MemoryBackend())
        try:
            out = await tool(REDIS_BENCHMARK, "-p", str(server.port), "-t", "set,get",
                             "-n", "2000", "-c", "10", "-q")
            assert "SET:" in out and "GET:" in out and "requests per second" in out
            assert server.commands.stats["total_commands_processed"] >= 4000
            out = await tool(REDIS_BENCHMARK, "-p", str(server.port), "-t", "get",
                             "-n", "2000", "-c", "4", "-P", "16", "-q")
            assert "GET:" in out
        finally:
            await server.close()
    run(main())
