"""Membership benchmarks with real node processes: failure detection, false positives, hint
replay, handoff on join, and foreground load during a join (issue 6, section 6).

Every node is a `kvnode start` process on 127.0.0.1 with free ports (kvnet.testing.LocalCluster),
N=3, R=W=2, fsync `interval` (the product default). Each measurement prints a table with the
command, the date and the settings.

1. Detection: 5 nodes; `kill -9` node5; poll KV.STATUS on each live node (every 50 ms) until it
   shows node5 `down`; per observer min / median / max over `--reps` kills (node5 is restarted
   and the cluster warmed up between kills). Also the time until the observer's own detector
   suspects node5 (its name in `suspected_by`). For each `--settings` gossip:phi pair.
   False positives: before the kills, under `--threads` SET writers for `--fp-window` s, every
   live node's KV.STATUS is polled every 100 ms; a sample where a live node shows another live
   node `down` is a false positive (suspicions, i.e. a non-empty `suspected_by`, are counted too).
2. Hint replay: 5 nodes (product default gossip and replay settings); kill -9 node5; write
   `--hint-keys` keys whose preference list holds node5 with SET (W=2); the fallbacks keep hints
   (INFO hints_pending, summed); restart node5 and time until hints_pending is 0 everywhere.
   `hint_replay_rate` (hints/s per node, default 5000) has no `kvnode start` flag: a rate other
   than 5000 in `--hint-rates` is given to the nodes through a TOML file (`--config`).
3. Handoff on join: `--keys` keys of `--value-size` bytes into 3 nodes; `kvnode start --join`
   of node4 (its --members: node1 as seed and itself); KV.CLUSTER JOIN node4, PLAN, COMMIT
   through node1; time until KV.CLUSTER TRANSFERS says not moving; MB/s and keys/s.
4. Foreground during that join: `--threads` closed-loop redis-py clients (SET/GET 50/50 on
   10,000 keys, spread over node1-3) run for `--load-window` s before the join (steady state)
   and on through the join; ops/s, p50, p99 for each phase and the ratio join / steady.

    .venv/bin/python benchmarks/membership.py            # the full run (about 8-10 minutes)
    .venv/bin/python benchmarks/membership.py --quick    # a small run (1-2 minutes)
    .venv/bin/python benchmarks/membership.py --only join --keys 50000

Every process started is stopped at the end (also on Ctrl-C / SIGTERM). Data goes to a temporary
directory, deleted at the end unless `--keep`.
"""
import argparse
import collections
import datetime
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kvcore.ring import Ring                                              # noqa: E402
from kvnet.client import Client                                           # noqa: E402
from kvnet.testing import (LocalCluster, SetWriter, _plain, free_ports, ping,    # noqa: E402
                           redis_client)

N, R, W = 3, 2, 2
Q = 256
FSYNC = "interval"
REQUEST_TIMEOUT_MS = 2000          # the product default (LocalCluster's own default is 1000)
DEFAULT_HINT_RATE = 5000           # kvnet/config.py: hint_replay_rate


# ---- bookkeeping: everything started is stopped --------------------------------------------

class Resources:
    """Clusters and extra processes started by this run; `close()` stops them all."""

    def __init__(self):
        self.clusters = []
        self.procs = []

    def cluster(self, *args, **kw):
        c = LocalCluster(*args, **kw)
        self.clusters.append(c)
        return c

    def popen(self, cmd, log_path, env=None):
        with open(log_path, "ab") as log:
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(p)
        return p

    def close_cluster(self, c):
        try:
            c.stop(grace=15)
        finally:
            if c in self.clusters:
                self.clusters.remove(c)

    def stop_proc(self, p, grace=15):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def close(self):
        for p in list(self.procs):
            try:
                self.stop_proc(p)
            except Exception as exc:          # keep stopping the others
                print(f"warning: stopping pid {p.pid}: {exc}", file=sys.stderr)
        for c in list(self.clusters):
            try:
                self.close_cluster(c)
            except Exception as exc:
                print(f"warning: stopping a cluster: {exc}", file=sys.stderr)


def _sigterm(*_):
    raise KeyboardInterrupt("SIGTERM")


# ---- small helpers ----------------------------------------------------------------------------

def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def loadavg():
    try:
        return "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "?"


def git_rev():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + (" (with uncommitted changes in the tree)" if dirty else "")
    except Exception:
        return "?"


def pct(sorted_values, q):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 1)) - 1))
    return sorted_values[k]


def fmt_s(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f} s"


def fmt_ms(x):
    return "-" if x is None else f"{x * 1000:.1f} ms"


def header(title, args, settings, note=None):
    print(f"\n### {title}\n")
    print(f"- command: `{args.command}`")
    print(f"- date: {now_utc()}; commit {args.rev}; host: {os.cpu_count()} cores, load average "
          f"{loadavg()} (a shared machine: other test runs were using it)")
    print(f"- settings: {settings}")
    if note:
        print(f"- {note}")
    print(flush=True)


def wait_for(pred, timeout, interval=0.05):
    """Poll pred() (exceptions count as False) until true; -> seconds taken, or None on timeout."""
    t0 = time.monotonic()
    while True:
        try:
            if pred():
                return time.monotonic() - t0
        except Exception:
            pass
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)


class Poller:
    """Persistent redis-py connections to a cluster's nodes for KV.STATUS and INFO polling."""

    def __init__(self, ports, timeout=2.0):
        self.ports = list(ports)
        self.timeout = timeout
        self._c = {}

    def _client(self, i):
        c = self._c.get(i)
        if c is None:
            c = self._c[i] = redis_client(self.ports[i], self.timeout)
        return c

    def _drop(self, i):
        c = self._c.pop(i, None)
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    def view(self, i):
        """{member: row} of node i's KV.STATUS, or None when it does not answer."""
        try:
            st = self._client(i).execute_command("KV.STATUS")
        except Exception:
            self._drop(i)
            return None
        st = _plain(st)
        return {m["name"]: m for m in st["members"]}

    def info(self, i):
        try:
            return self._client(i).info("ringkv")
        except Exception:
            self._drop(i)
            return None

    def close(self):
        for i in list(self._c):
            self._drop(i)


def all_see_all_up(poller, live, names):
    for i in live:
        v = poller.view(i)
        if v is None:
            return False
        for j in live:
            if j != i and (names[j] not in v or v[names[j]].get("state") != "up"):
                return False
    return True


def cluster_settings(gossip_ms=None, phi=None, extra_note=""):
    s = (f"N={N} R={R} W={W}, Q={Q}, fsync={FSYNC}, request timeout {REQUEST_TIMEOUT_MS} ms, "
         f"gossip {gossip_ms or 1000} ms (fanout 2), phi threshold {phi if phi is not None else 8}")
    return s + (", " + extra_note if extra_note else "")


def make_cluster(res, root, name, nodes, gossip_ms=None, phi=None, extra=()):
    flags = list(extra)
    if gossip_ms is not None:
        flags += ["--gossip-interval-ms", str(gossip_ms)]
    if phi is not None:
        flags += ["--phi-threshold", str(phi)]
    c = res.cluster(os.path.join(root, name), nodes=nodes, n=N, r=R, w=W, fsync=FSYNC,
                    extra=flags, request_timeout_ms=REQUEST_TIMEOUT_MS, ring_size=Q)
    os.makedirs(c.data_dir, exist_ok=True)
    c.start(timeout=60)
    return c


# ---- 1. detection time and false positives ---------------------------------------------------

def false_positives(cluster, poller, window, threads):
    """Writers on every node for `window` s; poll every node's KV.STATUS every 100 ms."""
    names, live = cluster.names, list(range(len(cluster.names)))
    writers = [SetWriter(cluster.ports, prefix=f"fp{t}", name=f"fp{t}", seed=t, duration=window,
                         timeout=3.0) for t in range(threads)]
    samples = down = suspected = not_routable = polls_failed = 0
    down_pairs, susp_pairs = set(), set()
    for w in writers:
        w.start()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < window:
            tick = time.monotonic()
            for i in live:
                v = poller.view(i)
                if v is None:
                    polls_failed += 1
                    continue
                for j in live:
                    if j == i:
                        continue
                    row = v.get(names[j])
                    samples += 1
                    if row is None:
                        continue
                    if row.get("state") == "down":
                        down += 1
                        down_pairs.add((names[i], names[j]))
                    if row.get("suspected_by"):
                        suspected += 1
                        susp_pairs.add((names[i], names[j]))
                    if not row.get("up", True):
                        not_routable += 1
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    finally:
        for w in writers:
            w.stop()
    elapsed = time.monotonic() - t0
    ops = sum(w.ops for w in writers)
    errors = sum(w.error_count for w in writers)
    return {"samples": samples, "down": down, "down_pairs": sorted(down_pairs),
            "suspected": suspected, "susp_pairs": sorted(susp_pairs),
            "not_routable": not_routable, "polls_failed": polls_failed, "ops": ops,
            "ops_s": ops / elapsed, "errors": errors,
            "error_kinds": dict(sum((w.errors for w in writers), collections.Counter()))}


def detect_once(cluster, poller, victim, timeout):
    """kill -9 `victim`; poll every live node's KV.STATUS until each shows it down.
    -> {observer: {"down": s or None, "suspect": s or None}}"""
    names = cluster.names
    observers = [i for i in range(len(names)) if i != victim]
    vname = names[victim]
    out = {names[i]: {"down": None, "suspect": None, "suspected_by": None} for i in observers}
    t0 = time.monotonic()
    cluster.kill(victim, signal.SIGKILL)
    while time.monotonic() - t0 < timeout:
        pending = False
        for i in observers:
            rec = out[names[i]]
            if rec["down"] is not None:
                continue
            pending = True
            v = poller.view(i)
            t = time.monotonic() - t0
            if v is None or vname not in v:
                continue
            row = v[vname]
            if rec["suspect"] is None and names[i] in (row.get("suspected_by") or []):
                rec["suspect"] = t
            if row.get("state") == "down":
                rec["down"] = t
                rec["suspected_by"] = list(row.get("suspected_by") or [])
                if rec["suspect"] is None:
                    rec["suspect"] = t
        if not pending:
            break
        time.sleep(0.05)
    return out


def bench_detection(args, res, root, label, gossip_ms, phi):
    interval = gossip_ms / 1000.0
    cluster = make_cluster(res, root, f"detect-{label}", 5, gossip_ms, phi)
    poller = Poller(cluster.ports)
    names = cluster.names
    victim = 4
    warm = max(args.min_warm, args.warm_intervals * interval)
    timeout = max(30.0, 80 * interval)
    try:
        t = wait_for(lambda: all_see_all_up(poller, range(5), names), 60)
        if t is None:
            raise RuntimeError(f"{label}: the 5 nodes never all saw each other up in 60 s")
        time.sleep(warm)
        fp = false_positives(cluster, poller, args.fp_window, args.threads)
        runs = []
        for rep in range(args.reps):
            if rep:
                cluster.start(victim, timeout=60)
                t = wait_for(lambda: all_see_all_up(poller, range(5), names), 60)
                if t is None:
                    raise RuntimeError(f"{label}: node5 not seen up by everyone 60 s after restart")
                time.sleep(warm)
            runs.append(detect_once(cluster, poller, victim, timeout))
            got = runs[-1]
            print(f"  [{label}] kill {rep + 1}: " + ", ".join(
                f"{o} down {fmt_s(r['down'])}" for o, r in got.items()), flush=True)
    finally:
        poller.close()
        res.close_cluster(cluster)

    header(f"1a. Time to detect a killed node: {label} (gossip {gossip_ms} ms, phi {phi})", args,
           cluster_settings(gossip_ms, phi) + f"; 5 nodes; kill -9 node5, {args.reps} time(s) "
           f"(restarted, then {warm:.0f} s of warm-up after every node sees it up, before each "
           f"kill); KV.STATUS polled every 50 ms on each live node; no client load",
           note="`down` = the observer's KV.STATUS shows node5 state down (its own detector plus "
                "a second source); `own detector` = first poll where the observer itself is in "
                "node5's suspected_by. Times from the SIGKILL.")
    print("| observer | down: min | median | max | own detector: min | median | max | "
          "missed (timeout) |")
    print("|---|---|---|---|---|---|---|---|")
    allv, last = [], []
    for o in [n for n in names if n != names[victim]]:
        d = [r[o]["down"] for r in runs if r[o]["down"] is not None]
        s = [r[o]["suspect"] for r in runs if r[o]["suspect"] is not None]
        allv += d
        missed = sum(1 for r in runs if r[o]["down"] is None)
        print(f"| {o} | {fmt_s(min(d) if d else None)} | {fmt_s(statistics.median(d) if d else None)}"
              f" | {fmt_s(max(d) if d else None)} | {fmt_s(min(s) if s else None)} | "
              f"{fmt_s(statistics.median(s) if s else None)} | {fmt_s(max(s) if s else None)} | "
              f"{missed} of {len(runs)} |")
    for r in runs:
        ds = [x["down"] for x in r.values()]
        last.append(None if None in ds else max(ds))
    lv = [x for x in last if x is not None]
    print(f"| every observer (last of 4) | {fmt_s(min(lv) if lv else None)} | "
          f"{fmt_s(statistics.median(lv) if lv else None)} | {fmt_s(max(lv) if lv else None)} | | | | "
          f"{sum(1 for x in last if x is None)} of {len(runs)} |")
    print("\nper kill, seconds to `down` (node1..node4): " + "; ".join(
        ", ".join("-" if r[o]["down"] is None else f"{r[o]['down']:.2f}" for o in r) for r in runs))
    print(f"model (docs/membership.md): phi {phi} suspects after {phi * 2.302585:.2f} mean "
          f"news intervals = {phi * 2.302585 * interval:.2f} s at one arrival per gossip interval")

    header(f"1b. False positives under load: {label} (gossip {gossip_ms} ms, phi {phi})", args,
           cluster_settings(gossip_ms, phi) + f"; 5 nodes all alive; {args.threads} SetWriter "
           f"threads (redis-py, each through every node in turn) for {args.fp_window:g} s; "
           f"KV.STATUS of every node polled every 100 ms",
           note="a sample = one (observer, peer) row of one poll")
    print("| window | samples | `down` samples (false positives) | pairs shown down | "
          "suspected samples | pairs suspected | `up`=false samples | polls failed | "
          "writer ops/s | writer errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.fp_window:g} s | {fp['samples']:,} | {fp['down']} | "
          f"{', '.join(f'{a} saw {b}' for a, b in fp['down_pairs']) or 'none'} | {fp['suspected']} | "
          f"{', '.join(f'{a}: {b}' for a, b in fp['susp_pairs']) or 'none'} | "
          f"{fp['not_routable']} | {fp['polls_failed']} | {fp['ops_s']:,.0f} | {fp['errors']}"
          f"{(' ' + str(fp['error_kinds'])) if fp['errors'] else ''} |", flush=True)
    return runs, fp


# ---- 2. hint replay -------------------------------------------------------------------------

def keys_held_by(names, node, count, prefix):
    ring = Ring.create(sorted(names), q=Q, n=N)
    out, i = [], 0
    while len(out) < count:
        k = b"%s:%09d" % (prefix, i)
        if node in ring.preference_list(ring.partition_of(k)):
            out.append(k)
        i += 1
    return out


def pipelined_sets(port, items, batch=200, timeout=30.0):
    """SET every (key, value) through node `port` in pipelines; -> (acknowledged, error samples)."""
    c = redis_client(port, timeout)
    ok, errors = 0, []
    try:
        for j in range(0, len(items), batch):
            chunk = items[j:j + batch]
            try:
                p = c.pipeline(transaction=False)
                for k, v in chunk:
                    p.set(k, v)
                for r in p.execute(raise_on_error=False):
                    if isinstance(r, Exception):
                        if len(errors) < 5:
                            errors.append(f"{type(r).__name__}: {r}")
                        else:
                            errors.append(None)
                    else:
                        ok += 1
            except Exception as exc:
                errors.extend([f"{type(exc).__name__}: {exc}"] + [None] * (len(chunk) - 1))
                c.close()
                c = redis_client(port, timeout)
    finally:
        c.close()
    return ok, errors


def parallel_load(ports, items, threads):
    """Split items over `threads` threads, thread t writing through ports[t % len(ports)]."""
    results = [None] * threads
    chunks = [items[t::threads] for t in range(threads)]

    def work(t):
        results[t] = pipelined_sets(ports[t % len(ports)], chunks[t])

    ts = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        while t.is_alive():
            t.join(0.5)
    elapsed = time.monotonic() - t0
    ok = sum(r[0] for r in results if r)
    errs = [e for r in results if r for e in r[1]]
    return ok, errs, elapsed


def sum_info(poller, which, field):
    total = 0
    for i in which:
        inf = poller.info(i)
        if inf is None:
            return None
        total += int(inf.get(field, 0))
    return total


def bench_hints(args, res, root, rate):
    extra, note = [], "hint_replay_rate 5000 (the default)"
    if rate != DEFAULT_HINT_RATE:
        path = os.path.join(root, f"hint-rate-{rate}.toml")
        with open(path, "w") as f:
            f.write(f"hint_replay_rate = {rate}\n")
        extra = ["--config", path]
        note = f"hint_replay_rate {rate} (through --config {os.path.basename(path)}: no CLI flag)"
    cluster = make_cluster(res, root, f"hints-{rate}", 5, extra=extra)
    poller = Poller(cluster.ports)
    names, victim, live = cluster.names, 4, [0, 1, 2, 3]
    K = args.hint_keys
    out = {"rate": rate, "K": K}
    try:
        if wait_for(lambda: all_see_all_up(poller, range(5), names), 60) is None:
            raise RuntimeError("hints: the 5 nodes never all saw each other up in 60 s")
        keys = keys_held_by(names, "node5", K, b"hint")
        pl = _plain(cluster.client(0).execute_command("KV.PREFLIST", keys[0]))
        pl_nodes = [row["node"] for row in pl]
        if "node5" not in pl_nodes:
            raise RuntimeError(f"hints: the node's preference list of {keys[0]!r} is {pl_nodes}, "
                               "not the one computed here")
        rng = random.Random(7)
        items = [(k, rng.randbytes(args.value_size)) for k in keys]
        cluster.kill(victim, signal.SIGKILL)
        t_route = wait_for(lambda: all(not poller.view(i)["node5"]["up"] for i in live), 60)
        out["routed_around_s"] = t_route
        ok, errs, elapsed = parallel_load([cluster.ports[i] for i in live], items, args.threads)
        out.update(acked=ok, errors=len(errs), error_samples=[e for e in errs if e][:3],
                   write_s=elapsed)
        print(f"  [hints {rate}] wrote {ok:,} of {K:,} keys in {elapsed:.1f} s "
              f"({len(errs)} errors); node5 seen unroutable after {fmt_s(t_route)}", flush=True)
        # the fallbacks' hints: wait until the sum stops moving (or reaches K)
        last, still, t0 = -1, 0.0, time.monotonic()
        while time.monotonic() - t0 < 60:
            h = sum_info(poller, live, "hints_pending")
            if h is not None and h == last:
                still += 0.2
                if h >= ok or still >= 2.0:
                    break
            else:
                still = 0.0
            last = h
            time.sleep(0.2)
        out["pending"] = last
        out["per_node"] = {names[i]: int(poller.info(i).get("hints_pending", 0)) for i in live}
        replayed0 = sum_info(poller, live, "hints_replayed")
        # restart node5 and watch hints_pending everywhere
        t0 = time.monotonic()
        cluster.start(victim, timeout=60)
        out["ready_s"] = time.monotonic() - t0
        first_drop = seen_up = drained = None
        deadline = t0 + 60 + 5.0 * max(1, last) / rate
        start_pending = dict(out["per_node"])
        node_first = {names[i]: None for i in live}     # per fallback: first drop, drained
        node_zero = {names[i]: (0.0 if start_pending[names[i]] == 0 else None) for i in live}
        trace = []
        while time.monotonic() < deadline:
            t = time.monotonic() - t0
            cur = {}
            for i in live:
                inf = poller.info(i)
                if inf is not None:
                    cur[names[i]] = int(inf.get("hints_pending", 0))
            for nm, h in cur.items():
                if node_first[nm] is None and h < start_pending[nm]:
                    node_first[nm] = t
                if node_zero[nm] is None and h == 0:
                    node_zero[nm] = t
            if len(cur) == len(live):
                h = sum(cur.values())
                trace.append((t, h))
                if first_drop is None and h < last:
                    first_drop = t
                if h == 0:
                    drained = t
                    break
            if seen_up is None:
                v = poller.view(0)
                if v is not None and v.get("node5", {}).get("state") == "up" and v["node5"]["up"]:
                    seen_up = time.monotonic() - t0
            time.sleep(0.05)
        out["node_first"], out["node_zero"] = node_first, node_zero
        replayed1 = sum_info(poller, live, "hints_replayed")
        out.update(first_drop_s=first_drop, seen_up_s=seen_up, drained_s=drained,
                   replayed=None if replayed0 is None or replayed1 is None else replayed1 - replayed0,
                   left=None if drained is not None else (trace[-1][1] if trace else None),
                   note=note)
        print(f"  [hints {rate}] {last:,} pending; node5 ready {out['ready_s']:.2f} s after start, "
              f"first drop {fmt_s(first_drop)}, drained {fmt_s(drained)}", flush=True)
    finally:
        poller.close()
        res.close_cluster(cluster)
    return out


def print_hints(args, results):
    header("2. Hint replay rate", args,
           cluster_settings(None, None, "hint_replay_interval 1000 ms (the defaults)") +
           f"; 5 nodes; kill -9 node5, then {args.hint_keys:,} SETs (W=2, {args.value_size}-byte "
           f"values, {args.threads} threads pipelining 200 through node1-4) of keys whose preference "
           f"list holds node5; restart node5; INFO hints_pending of every node polled every 50 ms",
           note="times from the restart command (`kvnode start` process spawn). replay rate = "
                "hints / (drained - first drop); end to end = hints / (drained - node5 ready). "
                "The cap is per sending node (each fallback paces itself to hint_replay_rate).")
    print("| hint_replay_rate | keys written (acked / errors) | write time | hints pending "
          "(per fallback) | node5 ready | node1 sees it up | first drop | drained | replayed (INFO) "
          "| replay rate | end to end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        h = r.get("pending") or 0
        rate = e2e = "-"
        if r.get("drained_s") is not None and r.get("first_drop_s") is not None \
                and r["drained_s"] > r["first_drop_s"]:
            rate = f"{h / (r['drained_s'] - r['first_drop_s']):,.0f} hints/s"
        if r.get("drained_s") is not None:
            e2e = f"{h / max(1e-9, r['drained_s'] - r['ready_s']):,.0f} hints/s"
        per = ", ".join(f"{k[4:]}: {v:,}" for k, v in sorted(r.get("per_node", {}).items()))
        drained = fmt_s(r.get("drained_s")) if r.get("drained_s") is not None else \
            f"NOT drained ({r.get('left')} left)"
        print(f"| {r['rate']:,}/s per node | {r.get('acked', 0):,} / {r.get('errors', 0)} | "
              f"{fmt_s(r.get('write_s'), 1)} | {h:,} ({per}) | {fmt_s(r.get('ready_s'))} | "
              f"{fmt_s(r.get('seen_up_s'))} | "
              f"{fmt_s(r.get('first_drop_s'))} | {drained} | {r.get('replayed')} | {rate} | {e2e} |")
        if r.get("node_first"):
            print(f"\nper fallback (rate {r['rate']:,}/s): " + "; ".join(
                f"{nm}: {r['per_node'][nm]:,} hints, first drop {fmt_s(r['node_first'][nm])}, "
                f"zero at {fmt_s(r['node_zero'][nm])}" +
                (f" ({r['per_node'][nm] / (r['node_zero'][nm] - r['node_first'][nm]):,.0f}/s)"
                 if r['node_first'][nm] is not None and r['node_zero'][nm] is not None
                 and r['node_zero'][nm] > r['node_first'][nm] else "")
                for nm in sorted(r["node_first"])) + "\n")
        if r.get("error_samples"):
            print(f"\nwrite errors (samples): {r['error_samples']}")
    print(flush=True)


# ---- 3 + 4. handoff on join, foreground load during it ------------------------------------------

class Foreground:
    """Closed-loop SET/GET clients (threads, redis-py); each op recorded as (start, latency, ok)."""

    def __init__(self, ports, threads, keys, value_size):
        self.ports, self.keys, self.value_size = ports, keys, value_size
        self.records = [[] for _ in range(threads)]
        self.errors = [[] for _ in range(threads)]
        self._halt = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True)
                         for t in range(threads)]

    def _run(self, t):
        rng = random.Random(100 + t)
        port = self.ports[t % len(self.ports)]
        c = redis_client(port, 10.0)
        rec, errs = self.records[t], self.errors[t]
        value = rng.randbytes(self.value_size)
        keys = self.keys
        try:
            while not self._halt.is_set():
                k = keys[rng.randrange(len(keys))]
                is_set = rng.random() < 0.5
                t0 = time.monotonic()
                try:
                    if is_set:
                        c.set(k, value)
                    else:
                        c.get(k)
                    rec.append((t0, time.monotonic() - t0, True, port))
                except Exception as exc:
                    rec.append((t0, time.monotonic() - t0, False, port))
                    if len(errs) < 5:
                        errs.append(f"{type(exc).__name__}: {exc}")
                    c.close()
                    c = redis_client(port, 10.0)
                    time.sleep(0.01)
        finally:
            c.close()

    def start(self):
        for t in self._threads:
            t.start()

    def stop(self):
        self._halt.set()
        for t in self._threads:
            t.join(30)

    def window(self, a, b):
        recs = [r for rs in self.records for r in rs if a <= r[0] < b]
        lat = sorted(r[1] for r in recs if r[2])
        errors = sum(1 for r in recs if not r[2])
        span = max(1e-9, b - a)
        slow = sorted(recs, key=lambda r: -r[1])[:3]
        return {"span": span, "ops": len(lat), "ops_s": len(lat) / span, "errors": errors,
                "p50": pct(lat, 0.50), "p99": pct(lat, 0.99), "max": lat[-1] if lat else None,
                "slowest": [(r[0] - a, r[1], r[3]) for r in slow]}


def bench_join(args, res, root):
    cluster = make_cluster(res, root, "join", 3)
    poller = Poller(cluster.ports)
    out = {}
    node4 = None
    fg = None
    try:
        if wait_for(lambda: all_see_all_up(poller, range(3), cluster.names), 60) is None:
            raise RuntimeError("join: the 3 nodes never all saw each other up in 60 s")
        rng = random.Random(11)
        M, size = args.keys, args.value_size
        items = [(b"bulk:%09d" % i, rng.randbytes(size)) for i in range(M)]
        fg_keys = [b"fg:%05d" % i for i in range(args.fg_keys)]
        items += [(k, rng.randbytes(size)) for k in fg_keys]
        ok, errs, elapsed = parallel_load(cluster.ports, items, max(3, args.threads))
        out.update(loaded=ok, load_errors=len(errs), load_s=elapsed,
                   load_error_samples=[e for e in errs if e][:3])
        print(f"  [join] loaded {ok:,} of {len(items):,} keys in {elapsed:.1f} s "
              f"({ok / elapsed:,.0f} SET/s, {len(errs)} errors)", flush=True)
        part_keys = {}
        qring = Ring.create(sorted(cluster.names), q=Q, n=N)
        for k, v in items:
            p = qring.partition_of(k)
            c, b = part_keys.get(p, (0, 0))
            part_keys[p] = (c + 1, b + len(k) + len(v))
        del items

        fg = Foreground(cluster.ports, args.threads, fg_keys, size)
        fg.start()
        time.sleep(1.0)                                 # connections made, caches warm
        s0 = time.monotonic()
        time.sleep(args.load_window)
        s1 = time.monotonic()

        # node4: kvnode start --join, --members naming node1 (a seed) and itself
        port4, peer4 = _two_free_ports(cluster)
        d4 = os.path.join(cluster.data_dir, "node4")
        cmd = [sys.executable, "-m", "kvnet.cli.kvnode", "start", "--name", "node4",
               "--port", str(port4), "--peer-port", str(peer4), "--data-dir", d4,
               "--members", f"node1@127.0.0.1:{cluster.peer_ports[0]},node4@127.0.0.1:{peer4}",
               "--n", str(N), "--r", str(R), "--w", str(W), "--fsync", FSYNC,
               "--ring-size", str(Q), "--request-timeout-ms", str(REQUEST_TIMEOUT_MS), "--join"]
        out["node4_cmd"] = " ".join(shlex.quote(x) for x in cmd[1:])
        node4 = res.popen(cmd, os.path.join(cluster.data_dir, "node4.log"), cluster.env)
        t_ready = wait_for(lambda: node4.poll() is None and ping(port4), 90, 0.1)
        if t_ready is None:
            raise RuntimeError(f"join: node4 did not answer PING in 90 s (exit {node4.poll()}); "
                               f"see {cluster.data_dir}/node4.log")
        admin = Client("127.0.0.1", cluster.ports[0], route=False, socket_timeout=30)
        try:
            t_stage = time.monotonic()
            while True:
                try:
                    admin.cluster("join", "node4")
                    break
                except Exception as exc:
                    if time.monotonic() - t_stage > 60:
                        raise RuntimeError(f"join: KV.CLUSTER JOIN node4 refused for 60 s: "
                                           f"{exc}") from None
                    time.sleep(0.3)
            plan = admin.cluster("plan")
            xfers = plan.get("transfers") or []
            out["plan_transfers"] = len(xfers)
            out["plan_bytes"] = plan.get("bytes")
            out["plan_to"] = plan.get("moves")
            out["keys_moved"] = sum(part_keys.get(x[0], (0, 0))[0] for x in xfers)
            out["payload_moved"] = sum(part_keys.get(x[0], (0, 0))[1] for x in xfers)
            c0 = time.monotonic()
            commit = admin.cluster("commit")
            out["commit"] = commit
            rows, polls, moving_seen = {}, 0, False
            settled = None
            while time.monotonic() - c0 < args.join_timeout:
                try:
                    tr = admin.cluster("transfers")
                except Exception:
                    time.sleep(0.25)
                    continue
                polls += 1
                if tr.get("moving"):
                    moving_seen = True
                    for row in tr.get("transfers") or []:
                        rows[(row["partition"], row["to"])] = row
                elif moving_seen or time.monotonic() - c0 > 5:
                    settled = time.monotonic()
                    break
                time.sleep(0.25)
            c1 = settled if settled is not None else time.monotonic()
            out.update(join_s=c1 - c0 if settled is not None else None, moving_seen=moving_seen,
                       stalled_rows=None if settled is not None else _row_summary(rows))
            done = [r for r in rows.values() if r.get("state") == "done"]
            out["rows_done"] = len(done)
            out["row_keys"] = sum(int(r.get("keys") or 0) for r in done)
            out["row_bytes"] = sum(int(r.get("bytes") or 0) for r in done)
            out["failed_rows"] = sum(1 for r in rows.values() if r.get("state") == "failed")
            print(f"  [join] {len(xfers)} transfers planned; "
                  f"{'settled after ' + fmt_s(out['join_s']) if settled else 'NOT settled'}",
                  flush=True)
            s_node4 = c0 - s1
            # a short tail after the join, then stop the clients
            time.sleep(0.5)
            fg.stop()
            out["steady"] = fg.window(s0, s1)
            out["starting"] = fg.window(s1, c0)
            out["join"] = fg.window(c0, c1)
            out["fg_errors"] = [e for es in fg.errors for e in es][:3]
            out["node4_boot_to_commit_s"] = s_node4
            out["ports"] = dict(zip(cluster.ports, cluster.names))
            ring = admin.ring()
            out["ring_nodes"] = sorted(n["name"] for n in ring["nodes"])
            out["node4_partitions"] = ring["owners"].count("node4")
        finally:
            admin.close()
        # a sample of bulk keys must still read back (through node4)
        sample = random.Random(5).sample(range(M), min(M, 1000))
        c4 = redis_client(port4, 10.0)
        miss = 0
        try:
            for i in sample:
                try:
                    if c4.get(b"bulk:%09d" % i) is None:
                        miss += 1
                except Exception:
                    miss += 1
        finally:
            c4.close()
        out["sample_missing"], out["sample_n"] = miss, len(sample)
    finally:
        if fg is not None:
            fg.stop()
        poller.close()
        if node4 is not None:
            res.stop_proc(node4)
        res.close_cluster(cluster)
    return out


def _row_summary(rows):
    by = {}
    for r in rows.values():
        by[r.get("state")] = by.get(r.get("state"), 0) + 1
    return by


def _two_free_ports(cluster):
    taken = set(cluster.ports) | set(cluster.peer_ports)
    while True:
        ps = [p for p in free_ports(4) if p not in taken]
        if len(ps) >= 2:
            return ps[0], ps[1]


def print_join(args, r):
    M, size = args.keys, args.value_size
    header("3. Handoff rate on join (3 -> 4 nodes)", args,
           cluster_settings(None, None) + f"; {M:,} keys x {size}-byte values (+ {args.fg_keys:,} "
           f"foreground keys) loaded into node1-3, then node4 = `kvnode start --join` (--members: "
           f"node1 + itself); KV.CLUSTER JOIN node4, PLAN, COMMIT through node1; KV.CLUSTER "
           f"TRANSFERS polled every 250 ms; the foreground load of table 4 runs throughout",
           note="time = COMMIT sent -> TRANSFERS says not moving. keys/bytes moved = the loaded "
                "keys of each planned (partition, to) transfer (exact for this data set: key + "
                "value bytes); `wire` = keys/bytes of the TRANSFERS rows seen `done` (a key + its "
                "encoded clock; the last rows finish between two polls and are not seen).")
    print(f"load: {r.get('loaded', 0):,} SETs acknowledged in {fmt_s(r.get('load_s'), 1)} "
          f"({r.get('loaded', 0) / max(1e-9, r.get('load_s') or 1):,.0f} SET/s through 3 nodes, "
          f"{r.get('load_errors', 0)} errors)")
    print(f"node4: `{r.get('node4_cmd', '?')}`\n")
    js = r.get("join_s")
    print("| transfers (planned) | PLAN bytes (store live bytes) | keys moved | MB moved (key+value) "
          "| join time | keys/s | MB/s | wire rows seen done: keys / MB | failed rows | ring after | "
          "node4 partitions | 1,000 keys read back via node4 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    km, bm = r.get("keys_moved", 0), r.get("payload_moved", 0)
    rate_k = f"{km / js:,.0f}" if js else "-"
    rate_b = f"{bm / js / 1e6:.2f}" if js else "-"
    print(f"| {r.get('plan_transfers')} (to: {r.get('plan_to')}) | "
          f"{(r.get('plan_bytes') or 0) / 1e6:.1f} MB | {km:,} | {bm / 1e6:.1f} | "
          f"{fmt_s(js, 1) if js else 'NOT settled: ' + str(r.get('stalled_rows'))} | {rate_k} | "
          f"{rate_b} | {r.get('rows_done', 0)} rows: {r.get('row_keys', 0):,} / "
          f"{r.get('row_bytes', 0) / 1e6:.1f} | {r.get('failed_rows', 0)} | "
          f"{', '.join(r.get('ring_nodes', []))} | {r.get('node4_partitions')} | "
          f"{r.get('sample_n', 0) - r.get('sample_missing', 0)} of {r.get('sample_n', 0)} found |")
    if js and r.get("row_keys"):
        per_key = r["row_bytes"] / r["row_keys"]
        print(f"\nwire: {per_key:.0f} bytes per key in the rows seen done (key + encoded clock); "
              f"x {km:,} keys moved = about {per_key * km / 1e6:.1f} MB, {per_key * km / js / 1e6:.2f} "
              f"MB/s")

    header("4. Foreground throughput and latency: steady state vs during the join", args,
           cluster_settings(None, None) + f"; {args.threads} closed-loop redis-py threads (one "
           f"connection each, spread over node1-3), 50 % SET / 50 % GET of {size}-byte values on "
           f"{args.fg_keys:,} keys; the same run as table 3",
           note="steady = the window before node4 is started; node4 starting = its process "
                "start + KV.CLUSTER JOIN/PLAN (not a measurement target); during join = COMMIT -> "
                "not moving. Client threads share the 2 cores with the nodes.")
    print("| phase | window | ops | ops/s | p50 | p99 | max | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for name, key in (("steady state", "steady"), ("node4 starting", "starting"),
                      ("during join", "join")):
        w = r.get(key)
        if not w:
            continue
        print(f"| {name} | {w['span']:.1f} s | {w['ops']:,} | {w['ops_s']:,.0f} | "
              f"{fmt_ms(w['p50'])} | {fmt_ms(w['p99'])} | {fmt_ms(w['max'])} | {w['errors']} |")
    s, j = r.get("steady"), r.get("join")
    if s and j and s["ops_s"] and s["p99"] and j["p99"]:
        print(f"| **ratio join / steady** | | | {j['ops_s'] / s['ops_s']:.2f}x | "
              f"{j['p50'] / s['p50']:.2f}x | {j['p99'] / s['p99']:.2f}x | | |")
    ports = r.get("ports", {})
    for name, key in (("steady", "steady"), ("during join", "join")):
        w = r.get(key)
        if w and w.get("slowest"):
            print(f"\nslowest ops, {name}: " + ", ".join(
                f"{lat * 1000:.0f} ms at +{off:.1f} s via {ports.get(port, port)}"
                for off, lat, port in w["slowest"]))
    if r.get("fg_errors"):
        print(f"\nforeground errors (samples): {r['fg_errors']}")
    print(flush=True)


# ---- main -------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a small run: fast settings only, 1 kill, small data, short windows")
    ap.add_argument("--only", default="detect,hints,join",
                    help="comma-separated sections: detect (1), hints (2), join (3 and 4)")
    ap.add_argument("--settings", default=None,
                    help="detection settings as gossip_ms:phi pairs (default 1000:8,100:8; "
                         "--quick: 100:8)")
    ap.add_argument("--reps", type=int, default=None, help="kills per setting (default 3)")
    ap.add_argument("--fp-window", type=float, default=None,
                    help="false-positive window, s (default 20)")
    ap.add_argument("--warm-intervals", type=float, default=20,
                    help="warm-up before each kill, in gossip intervals (default 20)")
    ap.add_argument("--min-warm", type=float, default=2.0, help="... and at least this many s")
    ap.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    ap.add_argument("--hint-keys", type=int, default=None, help="K (default 20,000)")
    ap.add_argument("--hint-rates", default=None,
                    help="hint_replay_rate values to run, comma-separated (default 5000 (the "
                         "product default) and 50000; --quick: 5000; others than 5000 go in a TOML --config)")
    ap.add_argument("--keys", type=int, default=None, help="M for the join (default 200,000)")
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--fg-keys", type=int, default=10_000, help="foreground keyspace")
    ap.add_argument("--load-window", type=float, default=None,
                    help="steady-state window before the join, s (default 20)")
    ap.add_argument("--join-timeout", type=float, default=900.0)
    ap.add_argument("--data-dir", default=None, help="parent for the data (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the data directories and node logs")
    args = ap.parse_args(argv)
    q = args.quick
    defaults = {"settings": "100:8" if q else "1000:8,100:8", "reps": 1 if q else 3,
                "fp_window": 3.0 if q else 20.0, "hint_keys": 2000 if q else 20_000,
                "keys": 5000 if q else 200_000, "load_window": 3.0 if q else 20.0,
                "hint_rates": "5000" if q else "5000,50000"}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if q:
        args.warm_intervals = min(args.warm_intervals, 10)
        args.fg_keys = min(args.fg_keys, 1000)
    args.sections = {s.strip() for s in args.only.split(",") if s.strip()}
    bad = args.sections - {"detect", "hints", "join"}
    if bad:
        ap.error(f"--only: unknown section(s) {', '.join(sorted(bad))}")
    args.setting_pairs = []
    for s in args.settings.split(","):
        g, p = s.split(":")
        args.setting_pairs.append((int(g), float(p) if "." in p else int(p)))
    args.rates = [int(x) for x in args.hint_rates.split(",") if x.strip()]
    args.command = " ".join(shlex.quote(x) for x in
                            [os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd())
                             else sys.executable, *sys.argv])
    args.rev = git_rev()
    return args


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started with it ignored
    res = Resources()
    if args.data_dir:
        os.makedirs(args.data_dir, exist_ok=True)
    root = tempfile.mkdtemp(prefix="ringkv-membership-bench-", dir=args.data_dir)
    started = time.monotonic()
    print(f"# ringkv membership benchmarks\n\n`{args.command}`  \n{now_utc()}, commit {args.rev}, "
          f"{os.cpu_count()} cores, load average {loadavg()}, data in {root}", flush=True)
    ok = False
    try:
        if "detect" in args.sections:
            for g, phi in args.setting_pairs:
                label = "default" if (g, phi) == (1000, 8) else f"gossip {g} ms"
                bench_detection(args, res, root, label, g, phi)
        if "hints" in args.sections:
            results = [bench_hints(args, res, root, rate) for rate in args.rates]
            print_hints(args, results)
        if "join" in args.sections:
            print_join(args, bench_join(args, res, root))
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every node started", file=sys.stderr, flush=True)
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)       # a second Ctrl-C must not skip cleanup
        try:
            res.close()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.keep or not ok:
            print(f"\ndata and node logs kept in {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\ntotal {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
