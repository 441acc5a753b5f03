"""kvnet/testing/waiting.py: polling and a process's output."""
import asyncio
import subprocess
import sys

import pytest

from kvnet.testing import OutputReader, eventually, wait_until


def test_wait_until_returns_once_true_and_names_what_and_the_last_error():
    calls = []

    def third_time():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("not yet")
        return len(calls) >= 3

    assert wait_until(third_time, timeout=30, interval=0.001) >= 0 and len(calls) == 3

    def broken():
        raise ConnectionError("refused")

    with pytest.raises(TimeoutError, match=r"the thing not reached in 0.05 s .*refused"):
        wait_until(broken, timeout=0.05, interval=0.01, what="the thing")


def test_eventually_is_true_or_false():
    async def main():
        n = []
        assert await eventually(lambda: n.append(1) or len(n) > 2, timeout=30, interval=0)
        assert not await eventually(lambda: False, timeout=0.05)

    asyncio.run(main())


def _proc(code):
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_output_reader_finds_a_line_and_gives_up_when_the_process_ends_without_it():
    p = _proc("print('one'); print('ready now'); print('after')")
    try:
        out = OutputReader(p)
        lines = out.until("ready", timeout=60)
        assert lines[:2] == ["one\n", "ready now\n"]
        with pytest.raises(AssertionError, match="'never' not seen"):
            out.until("never", timeout=60)          # the process ended: no 60 s wait
        with pytest.raises(AssertionError):
            out.until("one", timeout=60, after=1)   # only from line 1 on
    finally:
        p.wait(30)
