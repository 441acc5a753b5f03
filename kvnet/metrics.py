"""A node's Prometheus metrics: one collector over the counters the node keeps anyway, and the
HTTP endpoint that serves them (docs/observability.md lists every metric).

Nothing on the request path touches a prometheus_client object: the front door counts each
command and its latency in C arrays (kvnet/reqstats.pyx), and the node's parts keep their
plain counters (the coordinator's coord_stats, the hint replay's, anti-entropy's, the
compactor's...). `NodeCollector.collect()` reads them when Prometheus scrapes and yields
metric families (prometheus_client's custom collector API).

`/metrics` is served by a ThreadingHTTPServer in a daemon thread (prometheus_client's
`MetricsHandler` answers it; the same server serves the status page, `/` and `/status.json`,
kvnet/status), not in the node's asyncio loop: a scrape then never waits for the loop, so it
still answers while the loop is saturated or stuck (when metrics matter most), and the loop
never waits for a scrape's formatting either. The status page's JSON is bytes the loop
rebuilds once a second (kvnet/status/snapshot.py); the thread only sends them. The collector
only reads: dict lookups, list copies and C arrays, each done atomically under the GIL, and
the hint log's reads take its own lock; a histogram read while a command is counted may be
one command apart between its buckets and its sum, never torn.
"""
import bisect
import logging
import math
import socket
import threading
from http.server import ThreadingHTTPServer
from importlib import resources
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, MetricsHandler, ProcessCollector
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from kvnet import canary as _canary

from kvcore._native import select
from kvnet.coordinator.staleness import fractions

__all__ = ["NodeCollector", "MetricsServer", "latency_percentiles", "SIBLING_BUCKETS",
           "telemetry"]

log = logging.getLogger("kvnet.metrics")

_RS = select("kvnet.reqstats", "kvnet.reqstats_py")
BOUNDS_NS = _RS.BOUNDS_NS
# Prometheus gets every fourth fine bound (the powers of two, 1.024 us .. 8.6 s) and +Inf
_EXPORTED = [i for i, b in enumerate(BOUNDS_NS) if b is not None and (b & (b - 1)) == 0]

# reads' sibling counts (FrontDoor.sibling_counts): a bucket per upper bound, then +Inf
SIBLING_BUCKETS = (1, 2, 3, 5, 10, 25, 100)


def count_siblings(counts, n):
    """One read that returned `n` siblings, into `counts` (len(SIBLING_BUCKETS) + 1 ints)."""
    counts[bisect.bisect_left(SIBLING_BUCKETS, n)] += 1


def _histogram(buckets, sum_ns):
    """(prometheus buckets [(le, cumulative)], sum in seconds) of a reqstats slot."""
    out = []
    total = 0
    j = 0
    for i in _EXPORTED:
        while j <= i:
            total += buckets[j]
            j += 1
        out.append((repr(BOUNDS_NS[i] / 1e9), total))
    total += sum(buckets[j:])
    out.append(("+Inf", total))
    return out, sum_ns / 1e9


def percentile_us(buckets, q):
    """The latency at percentile q (0-100) of a slot's buckets, in microseconds: the upper
    bound of the bucket it falls in (the top finite bound for the +Inf bucket); None when
    nothing was counted."""
    n = sum(buckets)
    if not n:
        return None
    rank = max(1, math.ceil(n * q / 100))
    seen = 0
    for i, c in enumerate(buckets):
        seen += c
        if seen >= rank:
            b = BOUNDS_NS[i] if BOUNDS_NS[i] is not None else BOUNDS_NS[-2]
            return b / 1000.0
    return BOUNDS_NS[-2] / 1000.0


def latency_percentiles(reqstats, qs=(50, 99, 99.9)):
    """INFO latencystats (as Redis 7): [(latency_percentiles_usec_<cmd>, "p50=..,p99=..")] per
    command, its slots of every quorum merged."""
    merged = {}
    for command, _quorum, buckets, _sum in reqstats.snapshot():
        have = merged.get(command)
        merged[command] = buckets if have is None else [a + b for a, b in zip(have, buckets)]
    out = []
    for command in sorted(merged):
        parts = []
        for q in qs:
            v = percentile_us(merged[command], q)
            parts.append(f"p{q:g}={v:.3f}")
        out.append((f"latency_percentiles_usec_{command}", ",".join(parts)))
    return out


class NodeCollector:
    """prometheus_client's custom collector of one Node (kvnet/node.py): every family is built
    from the node's counters at scrape time."""

    def __init__(self, node):
        self.node = node

    def describe(self):
        return []           # no description pass at registration (collect() reads live state)

    def collect(self):
        for part in (self._requests, self._coordinator, self._staleness, self._handoff,
                     self._antientropy, self._storage, self._node):
            try:
                yield from part()
            except Exception:   # a part closing under a scrape: the others still report
                log.debug("metrics: %s failed", part.__name__, exc_info=True)

    def _requests(self):
        node = self.node
        resp = node.resp
        if resp is None:
            return
        commands = resp.commands
        reqs = CounterMetricFamily("ringkv_requests", "Commands answered by the front door, "
                                   "per command and R/W quorum", labels=["command", "quorum"])
        lat = HistogramMetricFamily("ringkv_request_duration_seconds",
                                    "Time from a command's start to its reply, per command and "
                                    "R/W quorum", labels=["command", "quorum"])
        for command, quorum, buckets, sum_ns in commands.reqstats.snapshot():
            hist, total = _histogram(buckets, sum_ns)
            reqs.add_metric([command, quorum], hist[-1][1])
            lat.add_metric([command, quorum], hist, total)
        yield reqs
        yield lat
        st = commands.stats
        yield CounterMetricFamily("ringkv_connections_received",
                                  "Client connections accepted",
                                  value=st["total_connections_received"])
        yield CounterMetricFamily("ringkv_rejected_connections",
                                  "Client connections refused (max_connections)",
                                  value=st["rejected_connections"])
        yield CounterMetricFamily("ringkv_error_replies", "Error replies sent to clients",
                                  value=st["total_error_replies"])
        yield GaugeMetricFamily("ringkv_connected_clients", "Client connections open",
                                value=len(commands.sessions))

    def _coordinator(self):
        node = self.node
        st = node.stats
        ops = CounterMetricFamily("ringkv_client_operations",
                                  "Reads, writes and deletes of clients counted by the front door "
                                  "(the door's own GETs and SETs included)", labels=["op"])
        for op, key in (("get", "gets"), ("put", "puts"), ("delete", "deletes")):
            ops.add_metric([op], st.get(key, 0))
        yield ops
        coord = node.coord_stats
        out = CounterMetricFamily("ringkv_coordinator_requests",
                                  "Reads and writes coordinated here, per R/W asked for and "
                                  "outcome (ok, unavailable, timeout, failed)",
                                  labels=["op", "quorum", "outcome"])
        for key, v in list(coord.items()):
            if type(key) is tuple:
                out.add_metric(list(key), v)
        yield out
        yield CounterMetricFamily("ringkv_divergent_reads",
                                  "Reads whose replicas' replies disagreed (a read repair "
                                  "followed)", value=coord["divergent_reads"])
        yield CounterMetricFamily("ringkv_read_repairs",
                                  "Replicas sent the merged value by read repair",
                                  value=coord["read_repairs"])
        yield CounterMetricFamily("ringkv_forwarded_writes",
                                  "Writes sent to another node to coordinate (this node holds "
                                  "no replica of their partition)",
                                  value=coord["forwarded_writes"])
        counts = list(node.front.sibling_counts)
        buckets, total = [], 0
        for bound, c in zip(SIBLING_BUCKETS, counts):
            total += c
            buckets.append((str(float(bound)), total))
        total += counts[-1]
        buckets.append(("+Inf", total))
        yield HistogramMetricFamily("ringkv_read_siblings",
                                    "Siblings returned per KV.GET", buckets=buckets,
                                    sum_value=node.front.siblings_returned)
        yield CounterMetricFamily("ringkv_sibling_reads",
                                  "KV.GETs that returned more than one sibling",
                                  value=total - counts[0])

    def _staleness(self):
        node = self.node
        counts = node.coord_stats["staleness"]
        checked = CounterMetricFamily("ringkv_reads_checked",
                                      "Reads coordinated here whose answer was compared with "
                                      "every reply once all were in, per R", labels=["r"])
        stale = CounterMetricFamily("ringkv_stale_reads",
                                    "Of those, reads whose answer was older than the sync of "
                                    "every reply (stale), per R", labels=["r"])
        for r, (n_checked, n_stale) in sorted(list(counts.items())):
            checked.add_metric([str(r)], n_checked)
            stale.add_metric([str(r)], n_stale)
        yield checked
        yield stale
        canary = getattr(node, "canary", None)
        if canary is None:
            return
        hist = HistogramMetricFamily("ringkv_convergence_seconds",
                                     "Time from a canary write's acknowledgement until every "
                                     "replica held it, per W", labels=["w"])
        never = CounterMetricFamily("ringkv_canary_unconverged",
                                    "Canary writes some replica did not hold in time, per W",
                                    labels=["w"])
        for w, conv in sorted(list(canary.by_w.items())):
            buckets, total = [], 0
            for bound, c in zip(_canary.BUCKETS, conv.buckets):
                total += c
                buckets.append((repr(float(bound)), total))
            buckets.append(("+Inf", total + conv.buckets[-1]))
            hist.add_metric([str(w)], buckets, conv.sum)
            never.add_metric([str(w)], conv.unconverged)
        yield hist
        yield never
        yield CounterMetricFamily("ringkv_canary_failures",
                                  "Canary writes that failed (no quorum, refused)",
                                  value=canary.stats["failures"])

    def _handoff(self):
        node = self.node
        pending = GaugeMetricFamily("ringkv_hints_pending",
                                    "Hints held here for a node, not yet replayed",
                                    labels=["target"])
        for target, n in sorted(node.handoff.pending().items()):
            pending.add_metric([target], n)
        yield pending
        st = node.handoff.stats
        for key, name, text in (
                ("replayed", "ringkv_hints_replayed", "Hints replayed to their node"),
                ("received", "ringkv_hints_received", "Hinted writes received from others' "
                                                      "replay"),
                ("failures", "ringkv_hint_replay_failures", "Hint replay batches that failed"),
                ("rehomed", "ringkv_hints_rehomed", "Hints moved to a new owner after a "
                                                    "ring change")):
            yield CounterMetricFamily(name, text, value=st[key])
        st = node.changes.stats
        yield CounterMetricFamily("ringkv_transfer_sent_keys",
                                  "Keys sent by ownership transfers", value=st["sent_keys"])
        yield CounterMetricFamily("ringkv_transfer_sent_bytes",
                                  "Bytes sent by ownership transfers", value=st["sent_bytes"])
        yield CounterMetricFamily("ringkv_transfer_received_keys",
                                  "Keys received by ownership transfers",
                                  value=st["received_keys"])

    def _antientropy(self):
        ae = self.node.antientropy
        if ae is None:
            return
        st = ae.stats
        ex = CounterMetricFamily("ringkv_antientropy_exchanges",
                                 "Merkle tree exchanges started here, by result",
                                 labels=["result"])
        ex.add_metric(["equal"], st["exchanges_equal"])
        ex.add_metric(["differ"], max(0, st["exchanges"] - st["exchanges_equal"]))
        ex.add_metric(["failed"], st["exchanges_failed"])
        yield ex
        rep = CounterMetricFamily("ringkv_antientropy_repairs",
                                  "Keys repaired by anti-entropy, here or on the peer",
                                  labels=["where"])
        rep.add_metric(["here"], st["keys_repaired_here"])
        rep.add_metric(["there"], st["keys_repaired_there"])
        rep.add_metric(["served"], st["served_repairs"])
        yield rep
        yield CounterMetricFamily("ringkv_antientropy_sent_bytes",
                                  "Bytes sent by anti-entropy exchanges", value=st["bytes_sent"])
        yield CounterMetricFamily("ringkv_antientropy_received_bytes",
                                  "Bytes received by anti-entropy exchanges",
                                  value=st["bytes_received"])
        reaped = ae.reaper.stats
        yield CounterMetricFamily("ringkv_tombstones_reaped", "Tombstones reaped",
                                  value=reaped["reaped"])

    def _storage(self):
        node = self.node
        info = node.front._storage_info()
        yield GaugeMetricFamily("ringkv_storage_data_bytes",
                                "Bytes of the partitions' data files held here",
                                value=info["storage_data_bytes"])
        yield GaugeMetricFamily("ringkv_storage_live_bytes",
                                "Bytes of their live records", value=info["storage_live_bytes"])
        yield GaugeMetricFamily("ringkv_storage_dead_bytes",
                                "Bytes of overwritten or deleted records, until a merge",
                                value=info["storage_dead_bytes"])
        st = node.compactor.stats
        yield CounterMetricFamily("ringkv_merges", "Partition merges (compactions) done",
                                  value=st["merges"])
        yield CounterMetricFamily("ringkv_merge_failures", "Partition merges that failed",
                                  value=st["merge_failures"])
        yield CounterMetricFamily("ringkv_merge_reclaimed_bytes",
                                  "Bytes reclaimed by merges", value=st["bytes_reclaimed"])
        yield CounterMetricFamily("ringkv_merge_seconds", "Time spent merging",
                                  value=st["merge_seconds"])
        faults = node.replica.fault_stats()
        yield GaugeMetricFamily("ringkv_corrupt_records",
                                "Records found corrupt (and dropped) in the open partitions "
                                "since each was opened", value=faults["corrupt_records"])
        yield GaugeMetricFamily("ringkv_read_only_partitions",
                                "Partitions refusing writes after a disk fault",
                                value=faults["read_only_partitions"])
        commits = node.replica.group.stats()
        yield CounterMetricFamily("ringkv_group_commits",
                                  "Group commit rounds that synced something",
                                  value=commits["group_commits"])

    def _node(self):
        node = self.node
        ring = node.ring
        yield GaugeMetricFamily("ringkv_ring_epoch", "Epoch of the ring in use", value=ring.epoch)
        yield GaugeMetricFamily("ringkv_ring_members", "Members of the ring in use",
                                value=len(ring.nodes))
        yield GaugeMetricFamily("ringkv_partitions_open", "Partitions open here",
                                value=len(node.replica.partitions))
        yield CounterMetricFamily("ringkv_peer_frame_mac_failures",
                                  "Peer connections closed on a frame that failed its MAC "
                                  "check (docs/security.md)", value=node.pool.mac_failures)


# the status page's files (package data of kvnet/status), by path: (file, content type)
STATUS_FILES = {
    "/": ("page.html", "text/html; charset=utf-8"),
    "/status": ("page.html", "text/html; charset=utf-8"),
    "/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/status.css": ("status.css", "text/css; charset=utf-8"),
}


class _Handler(MetricsHandler):
    """/metrics: prometheus_client's handler; the status page's paths: ours; others: 404."""

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/metrics":
            return super().do_GET()
        server = self.server
        if path == "/status.json":
            self._send(200, server.status.body, "application/json")
        elif path in server.files:
            self._send(*server.files[path])
        else:
            self._send(404, b"not found: try /metrics, / or /status.json\n", "text/plain")

    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # a browser or scraper that went away mid-reply: not worth a traceback on stderr
        log.debug("metrics port: request from %s failed", client_address, exc_info=True)

    def __init__(self, address, registry, status, files):
        # an IPv6 metrics_host binds an IPv6 socket (as start_http_server does)
        self.address_family = socket.getaddrinfo(address[0], address[1],
                                                 type=socket.SOCK_STREAM)[0][0]
        self.status, self.files = status, files
        super().__init__(address, type("Handler", (_Handler,), {"registry": registry}))


def _status_files():
    """{path: (HTTP status, bytes, content type)} of the page's files, read once. An install
    that lacks them (package data left out) still serves /metrics; the page's paths then say
    why (500)."""
    pkg = resources.files("kvnet.status")
    out = {}
    for path, (name, ctype) in STATUS_FILES.items():
        try:
            out[path] = (200, pkg.joinpath(name).read_bytes(), ctype)
        except OSError as exc:
            log.warning("status page: %s missing from this install of ringkv: %s", name, exc)
            out[path] = (500, f"the status page's {name} is missing from this install of ringkv "
                         f"(package data of kvnet/status): {exc}\n".encode(),
                         "text/plain; charset=utf-8")
    return out


def telemetry(node):
    """KV.STATS: this node's read staleness per R and canary convergence per W, as plain data
    (kvctl stats shows it; docs/observability.md)."""
    reads = fractions(node.coord_stats["staleness"])
    canary = getattr(node, "canary", None)
    out = {"node": node.name,
           "reads": [{"r": r, **v} for r, v in reads.items()],
           "canary_interval_ms": node.cfg.canary_interval_ms,
           "convergence": [], "canary_rounds": 0, "canary_failures": 0}
    if canary is not None:
        out["convergence"] = [{"w": w, **conv.data()} for w, conv in sorted(canary.by_w.items())]
        out["canary_rounds"] = canary.stats["rounds"]
        out["canary_failures"] = canary.stats["failures"]
    return out


class MetricsServer:
    """`/metrics` of one node on host:port (port 0: a free one), served in a thread from the
    node's own registry (the node's collector and the process's `process_*` metrics: CPU,
    memory, open_fds), beside the status page (`/`, `/status.json`: kvnet/status). Made on
    the node's loop; the node spawns `status.run()`, which refreshes the page's snapshot."""

    def __init__(self, node, host="127.0.0.1", port=0):
        from kvnet.status import StatusSampler      # (it imports this module)

        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(node))
        ProcessCollector(registry=self.registry)
        self.host = host
        self.status = StatusSampler(node)
        self._httpd = _Server((host, port), self.registry, self.status, _status_files())
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name=f"metrics-{self.port}")
        self._thread.start()

    def close(self):
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5.0)
            self._httpd = None
