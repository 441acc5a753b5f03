"""CI's package smoke: start `kvnode dev` from an installed ringkv (a venv with no extras), on
free ports and a temporary data directory; PING every node, SET through one node and GET
through another with the installed kvctl, load the status page and its JSON from a metrics
port (its files are package data), then SIGINT: exit status 0 and no node left.

Run it with the venv's python, from a directory outside the source tree (so `-m kvnet...`
imports the installed package). Usage: python package_smoke.py BIN_DIR WORK_DIR
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request

# the installed package's own helpers (this script runs with the venv's python)
from kvnet.cli.devcluster import dev_metrics_port
from kvnet.cli.kvnode import _port_free as port_free
from kvnet.probe import ping

NODES = 3


def _base_port():
    for _ in range(200):
        base = random.randrange(20000, 29000)
        if all(port_free(base + i) and port_free(base + 10000 + i)
               and port_free(dev_metrics_port(base + i)) for i in range(NODES)):
            return base
    raise SystemExit("smoke: no free ports")


def _get(url, timeout=30):
    """The body of url, retried until `timeout` (the metrics port opens just after PING does)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as f:
                return f.read()
        except OSError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"smoke: GET {url}: {exc}")
            time.sleep(0.2)


def _children(pid):
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                             text=True).stdout
    except OSError:
        return []
    return [int(p) for p in out.split()]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose (its parent has not reaped it yet)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def main(bin_dir, work):
    base = _base_port()
    data = os.path.join(work, "data")
    log_path = os.path.join(work, "kvnode-dev.log")
    log = open(log_path, "wb")
    cmd = [os.path.join(bin_dir, "kvnode"), "dev", "--base-port", str(base), "--data-dir", data]
    print("smoke:", " ".join(cmd), flush=True)
    dev = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    nodes = []
    ok = False
    try:
        ports = [base + i for i in range(NODES)]
        deadline = time.monotonic() + 90
        while not all(ping(p) for p in ports):
            if dev.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"smoke: the nodes did not answer PING (kvnode dev: {dev.poll()})")
            time.sleep(0.2)
        nodes = _children(dev.pid)
        kvctl = os.path.join(bin_dir, "kvctl")
        put = subprocess.run([kvctl, "--port", str(ports[0]), "put", "smoke-key", "smoke-value"],
                             capture_output=True, text=True, cwd=work, timeout=60)
        got = subprocess.run([kvctl, "--port", str(ports[2]), "get", "smoke-key"],
                             capture_output=True, text=True, cwd=work, timeout=60)
        print("smoke: kvctl put ->", put.returncode, put.stdout.strip(), put.stderr.strip())
        print("smoke: kvctl get ->", got.returncode, got.stdout.strip(), got.stderr.strip())
        if put.returncode or got.returncode or "smoke-value" not in got.stdout:
            raise SystemExit("smoke: SET through one node was not read back through another")
        status = f"http://127.0.0.1:{dev_metrics_port(ports[0])}"
        page = _get(status + "/")
        members = json.loads(_get(status + "/status.json"))["members"]
        print(f"smoke: status page {len(page)} bytes, /status.json lists {len(members)} members")
        if b"status.js" not in page or len(members) != NODES:
            raise SystemExit("smoke: the status page or its JSON is not served as it should be")
        dev.send_signal(signal.SIGINT)
        code = dev.wait(60)
        if code != 0:
            raise SystemExit(f"smoke: kvnode dev exited with {code} after SIGINT")
        left = [p for p in nodes if _alive(p)]
        if left:
            raise SystemExit(f"smoke: node processes left after SIGINT: {left}")
        ok = True
        print(f"smoke: ok ({len(nodes)} node processes, all stopped)")
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        for p in nodes:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        log.close()
        if not ok:
            with open(log_path, "rb") as f:
                sys.stderr.write("smoke: kvnode dev's output:\n")
                sys.stderr.write(f.read().decode(errors="replace")[-20000:])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
