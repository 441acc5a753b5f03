"""100,000 random frames from clients that never authenticate, against a real node process on
127.0.0.1 (docs/security.md, "Limits before AUTH"): valid and broken RESP, huge declared
lengths and argument counts, bodies of up to 4 MiB. The node must not crash, must answer or
close every connection, and its RSS must stay bounded (read from /proc before, during and
after). Run with -s to see the figures docs/security.md quotes:

    python -m pytest -m slow -s tests/kvnet/test_preauth_fuzz.py

`python tests/kvnet/test_preauth_fuzz.py [frames]` runs the same frames against a node with a
password and one without (every connection authenticated at once: only the limits after AUTH
apply, a bulk up to max_value_bytes + 64 KiB and no auth timeout), side by side.
"""
import asyncio
import logging
import random
import threading
import time

import pytest
import redis

from kvnet.testing import LocalCluster

pytestmark = pytest.mark.slow

FRAMES = 100_000
CONCURRENCY = 64
AUTH_TIMEOUT_S = 1
RSS_GROWTH_BOUND = 16 << 20     # the same frames to a node without a password (only the
                                # limits after AUTH): peak +24.5 MiB for 10,000 of them
NAMES = [b"PING", b"GET", b"SET", b"AUTH", b"HELLO", b"ECHO", b"KV.CLUSTER", b"FLUSHALL",
         b"CONFIG", b"CLIENT", b"QUIT", b"ACL", b"MSET", b"KV.PUT", b"DEL", b"x" * 40]


def _bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)


def frame(rnd):
    """One random request: (bytes, bytes of body to stream after it)."""
    k = rnd.random()
    if k < 0.45:                       # well formed, small: NOAUTH (or AUTH's own answer)
        args = [rnd.choice(NAMES)] + [rnd.randbytes(rnd.randrange(0, 40))
                                      for _ in range(rnd.randrange(0, 10))]
        return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args), 0
    if k < 0.55:                       # inline
        return b" ".join([rnd.choice(NAMES)] + [b"a%d" % i for i in range(rnd.randrange(5))]) \
            + b"\r\n", 0
    if k < 0.65:                       # too many arguments, declared or sent
        n = rnd.choice([11, 100, 1024 * 1024, 2 ** 31 - 1, 10 ** 18])
        return b"*%d\r\n" % n + _bulk(b"PING") * rnd.randrange(0, 20), 0
    if k < 0.75:                       # a huge declared bulk, and some of its body
        size = rnd.choice([16385, 1 << 20, 8 << 20, 30 << 20, 512 << 20, 2 ** 31, 2 ** 62])
        body = rnd.choice([0, 100, 20_000]) if rnd.random() < 0.7 else 4 << 20
        return b"*2\r\n$3\r\nSET\r\n$%d\r\n" % size, body
    if k < 0.90:                       # broken framing
        return rnd.choice([
            b"*abc\r\n", b"*2\r\n$-5\r\n", b"*1\r\n$4\r\nPINGxx", b"*-1\r\n", b"*0\r\n",
            b"$5\r\nhello\r\n", b"*1\r\n*1\r\n", b'SET "unbalanced\r\n', b"*3\r\n$3\r\nSET\r\n",
            b"*1\r\n$99999999999999999999999\r\n", b"\r\n\r\n", b"*1\r\n$4\r\nPI",
        ]), 0
    return rnd.randbytes(rnd.randrange(1, 200)), 0         # noise


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def one_connection(port, rnd, count, stats):
    """Send `count` frames on one connection, then wait for an answer or the close."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        stats["refused"] += 1
        return
    answered = False
    try:
        for _ in range(count):
            data, body = frame(rnd)
            writer.write(data)
            while body > 0:
                step = min(body, 64 << 10)
                writer.write(b"b" * step)
                body -= step
                await writer.drain()
        await writer.drain()
        got = await asyncio.wait_for(reader.read(1 << 16), AUTH_TIMEOUT_S + 4)
        answered = True
        stats["answered" if got else "closed"] += 1
    except (ConnectionError, OSError):
        answered = True
        stats["reset"] += 1                 # closed by the node with input still unread
    except asyncio.TimeoutError:
        stats["hung"] += 1
    finally:
        if not answered:
            stats["unanswered"] += 1
        writer.close()


async def fuzz(port, frames, seed=19):
    # (asyncio warns of every write to a connection the node has closed: thousands here)
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    rnd = random.Random(seed)
    stats = dict.fromkeys(("answered", "closed", "reset", "hung", "refused", "unanswered"), 0)
    sent = 0
    pending = set()
    while sent < frames or pending:
        while sent < frames and len(pending) < CONCURRENCY:
            n = min(rnd.randrange(1, 40), frames - sent)
            sent += n
            pending.add(asyncio.create_task(
                one_connection(port, random.Random(rnd.random()), n, stats)))
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()
    return stats


def measure(data_dir, frames=FRAMES, password=True):
    """Fuzz a one-node cluster in `data_dir`; its figures (the node must be up after)."""
    auth = ["--requirepass", "fuzz-pw"] if password else []
    with LocalCluster(data_dir, nodes=1, n=1, r=1, w=1, ring_size=8,
                      extra=[*auth, "--auth-timeout-s", str(AUTH_TIMEOUT_S)]) as cluster:
        port, pid = cluster.ports[0], cluster.procs[0].pid
        r = redis.Redis(port=port, password="fuzz-pw" if password else None, socket_timeout=10)
        assert r.set("kept", "value")
        before = rss(pid)
        peak = [before]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.1):
                try:
                    peak[0] = max(peak[0], rss(pid))
                except (OSError, RuntimeError):
                    return
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        try:
            stats = asyncio.run(asyncio.wait_for(fuzz(port, frames), 600))
        finally:
            stop.set()
            sampler.join(5)
        elapsed = time.monotonic() - t0
        after = rss(pid)
        up = cluster.procs[0].poll() is None
        kept = r.get("kept") if up else None
        r.close()
    return dict(stats, frames=frames, seconds=elapsed, up=up, kept=kept, before=before,
                peak=peak[0], after=after)


def report(m):
    return (f"{m['frames']} frames in {m['seconds']:.1f} s ({m['frames'] / m['seconds']:,.0f} "
            f"frames/s); node RSS before {m['before'] / 2**20:.1f} MiB, peak "
            f"{m['peak'] / 2**20:.1f} MiB ({(m['peak'] - m['before']) / 2**20:+.1f}), after "
            f"{m['after'] / 2**20:.1f} MiB ({(m['after'] - m['before']) / 2**20:+.1f}); "
            f"connections answered {m['answered']}, closed {m['closed']}, reset {m['reset']}, "
            f"hung {m['hung']}")


def test_100k_preauth_frames_no_crash_every_connection_answered_rss_bounded(tmp_path):
    m = measure(str(tmp_path))
    print("\n" + report(m))
    assert m["up"], "the node crashed"
    assert m["kept"] == b"value"                  # it still serves its users
    assert m["unanswered"] == 0 and m["hung"] == 0, m
    assert m["peak"] - m["before"] < RSS_GROWTH_BOUND and m["after"] - m["before"] < RSS_GROWTH_BOUND


if __name__ == "__main__":      # the same frames with and without a password, side by side
    import sys
    import tempfile
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    for password in (True, False):
        with tempfile.TemporaryDirectory() as d:
            print(f"{'before AUTH ' if password else 'no password '}: "
                  f"{report(measure(d, n, password))}", flush=True)
