"""What a FaultProxy (kvnet/faultproxy.py) costs a link, and what slow() adds.

An echo server on 127.0.0.1; the same client runs through each contender in turn, rounds
alternated (the machine is shared: compare the ratios of one run, not figures across runs):
64-byte request/reply round trips per second, and MB/s of a 64 MiB stream echoed back.
Contenders: no proxy; a proxy of this tree; with --against REF, the FaultProxy of a git
revision (kvnet/faultproxy.py there, or kvnet/testing.py before the move); with --slow MS,
this tree's proxy slowed by MS (round trips only: each takes 2 * MS more).

    python benchmarks/faultproxy.py --rounds 5 --against main
"""
import argparse
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kvnet.faultproxy import FaultProxy  # noqa: E402


class Echo:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        with c:
            try:
                while data := c.recv(1 << 20):
                    c.sendall(data)
            except OSError:
                pass


def round_trips(port, seconds):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            s.sendall(b"x" * 64)
            got = 0
            while got < 64:
                got += len(s.recv(64 - got))
            n += 1
        return n / (time.perf_counter() - start)


def stream(port, total=64 << 20):
    with socket.create_connection(("127.0.0.1", port)) as s:
        got = [0]

        def read():
            while got[0] < total:
                got[0] += len(s.recv(1 << 20))
        t = threading.Thread(target=read)
        start = time.perf_counter()
        t.start()
        chunk = b"y" * (1 << 20)
        for _ in range(total >> 20):
            s.sendall(chunk)
        t.join()
        return total / (time.perf_counter() - start) / 1e6


def proxy_of(ref):
    """The FaultProxy class of git revision ref."""
    for path in ("kvnet/faultproxy.py", "kvnet/testing.py"):
        p = subprocess.run(["git", "-C", ROOT, "show", f"{ref}:{path}"], capture_output=True,
                           text=True)
        if p.returncode == 0 and "class FaultProxy" in p.stdout:
            f = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
            f.write(p.stdout)
            f.close()
            spec = importlib.util.spec_from_file_location(f"faultproxy_{ref}", f.name)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            os.unlink(f.name)
            return mod.FaultProxy
    raise SystemExit(f"no FaultProxy in {ref}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="round trips: per measurement")
    ap.add_argument("--against", default=None, help="a git revision's FaultProxy too")
    ap.add_argument("--slow", type=float, default=None, help="this proxy slowed by MS too")
    args = ap.parse_args()
    echo = Echo()
    contenders = [("direct", None), ("proxy (this tree)", FaultProxy)]
    if args.against:
        contenders.append((f"proxy ({args.against})", proxy_of(args.against)))
    if args.slow is not None:
        contenders.append((f"proxy slowed {args.slow:g} ms", FaultProxy))
    rt = {name: [] for name, _ in contenders}
    mb = {name: [] for name, _ in contenders}
    for r in range(args.rounds):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for name, cls in order:
            px = None if cls is None else cls(echo.port)
            try:
                port = echo.port if px is None else px.port
                if name.startswith("proxy slowed"):
                    px.slow(args.slow)
                rt[name].append(round_trips(port, args.seconds))
                if not name.startswith("proxy slowed"):
                    mb[name].append(stream(port))
            finally:
                if px is not None:
                    px.close()
    base = statistics.median(rt["proxy (this tree)"])
    print(f"{'link':28} {'round trips/s':>14} {'vs this proxy':>14} {'stream MB/s':>12}")
    for name, _ in contenders:
        m = statistics.median(rt[name])
        s = f"{statistics.median(mb[name]):12.0f}" if mb[name] else f"{'-':>12}"
        print(f"{name:28} {m:14.0f} {m / base:13.2f}x {s}")
    print(f"(medians of {args.rounds} alternated rounds; 64-byte round trips, a 64 MiB echoed "
          "stream)")


if __name__ == "__main__":
    main()
