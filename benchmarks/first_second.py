"""Is "ready" ready? SET throughput in the first second after a fresh `kvnode dev` says it
is up, against the same run's steady throughput.

Each round starts a fresh 3-node `kvnode dev` (default settings, an empty data directory)
and, the moment it prints "is up", runs redis-benchmark (`-t set -c 50 -d 100 -r 100000`)
for --seconds. redis-benchmark prints its current rate about four times a second; the script
times each report as it arrives and prints, per round, the mean rate over the first second
and over seconds 3 to the end, and their ratio (issue goal: at least 0.5).

    python benchmarks/first_second.py --rounds 3
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvnet.testing import OutputReader, dev_base_port  # noqa: E402


def _rates(port, seconds):
    """[(seconds since the first report, rps)] from redis-benchmark's progress reports."""
    proc = subprocess.Popen(["redis-benchmark", "-p", str(port), "-t", "set", "-c", "50", "-d",
                             "100", "-r", "100000", "-n", "100000000", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, buf, t0 = [], b"", None
    try:
        while t0 is None or time.monotonic() - t0 < seconds:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            *parts, buf = buf.split(b"\r")
            for part in parts:
                m = re.search(rb"rps=([\d.]+)", part)
                if m is None:
                    continue
                now = time.monotonic()
                if t0 is None:
                    t0 = now                 # the first report: connections are made
                    continue
                out.append((now - t0, float(m.group(1))))
    finally:
        proc.kill()
        proc.wait()
    if not out:
        raise RuntimeError("redis-benchmark printed no progress")
    return out


def _mean(rates, lo, hi):
    vals = [r for t, r in rates if lo < t <= hi]
    return statistics.mean(vals) if vals else float("nan")


def _round(seconds):
    with tempfile.TemporaryDirectory() as d:
        base = dev_base_port(3)
        dev = subprocess.Popen([sys.executable, "-m", "kvnet.cli.kvnode", "dev", "--base-port",
                                str(base), "--data-dir", os.path.join(d, "data")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            OutputReader(dev).until("is up", timeout=120)
            rates = _rates(base, seconds)
        finally:
            dev.send_signal(signal.SIGINT)
            try:
                dev.wait(60)
            except subprocess.TimeoutExpired:
                dev.kill()
                dev.wait()
    return _mean(rates, 0, 1.0), _mean(rates, 3.0, seconds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="of load per round")
    args = ap.parse_args()
    ratios = []
    print(f"{'round':>5}  {'first second rps':>16}  {'steady rps (3 s on)':>20}  {'ratio':>6}")
    for i in range(args.rounds):
        first, steady = _round(args.seconds)
        ratios.append(first / steady)
        print(f"{i + 1:>5}  {first:>16,.0f}  {steady:>20,.0f}  {first / steady:6.2f}", flush=True)
    print(f"median ratio of the first second to the steady rate: {statistics.median(ratios):.2f} "
          f"(goal: at least 0.5)")


if __name__ == "__main__":
    main()
