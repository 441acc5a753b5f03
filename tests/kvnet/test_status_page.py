"""One 3-node cluster of processes (small ring, short gossip interval, a metrics port each)
shared by the cluster metrics test and the status page's browser test (docs/observability.md):
starting it once keeps CI's time down. The browser test comes last: it stops node3.

The browser test drives Debian's chromium headless through /usr/bin/chromedriver (the
`chromium` and `chromium-driver` packages; .ci/run installs them) with selenium. Without them
it skips, saying why, except under CI (RINGKV_CI=1), where it fails."""
import os
import shutil
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvnet.testing import LocalCluster, SetWriter, free_ports, wait_until

SETS = 1000
# gossip every 100 ms and a low phi threshold: a stopped node is marked down in about a second
FAST = ["--gossip-interval-ms", "100", "--phi-threshold", "4", "--no-ae"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """3 nodes, N=2 (R=W=2), Q=16; `metrics_ports[i]` is node i's metrics port."""
    metrics = free_ports(3)
    c = LocalCluster(str(tmp_path_factory.mktemp("status-cluster")), nodes=3, n=2, r=2, w=2,
                     ring_size=16, request_timeout_ms=5000, extra=FAST,
                     node_extra={i: ["--metrics-port", str(p)] for i, p in enumerate(metrics)})
    c.metrics_ports = metrics
    try:
        yield c.start()
    finally:
        c.stop()


def scrape(port):
    """{(sample name, frozenset of labels): value} of /metrics on `port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as f:
        assert f.status == 200
        text = f.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def total(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _sets(client, prefix, pipelined):
    if pipelined:           # 10 commands per write: the door's receive() takes them together
        for i in range(0, SETS, 10):
            pipe = client.pipeline(transaction=False)
            for j in range(i, i + 10):
                pipe.set(f"{prefix}{j}", b"v%d" % j)
            assert all(pipe.execute())
    else:
        for i in range(SETS):
            assert client.set(f"{prefix}{i}", b"v%d" % i)


def _delta(after, before, name, **labels):
    return total(after, name, **labels) - total(before, name, **labels)


def _check_sets(before, after):
    labels = {"command": "set", "quorum": "w=2"}
    assert _delta(after, before, "ringkv_requests_total", **labels) == SETS
    assert _delta(after, before, "ringkv_request_duration_seconds_count", **labels) == SETS
    # the +Inf bucket is the count; the sum is some time
    assert total(after, "ringkv_request_duration_seconds_bucket", le="+Inf", **labels) \
        == total(after, "ringkv_request_duration_seconds_count", **labels)
    assert _delta(after, before, "ringkv_request_duration_seconds_sum", **labels) > 0


@pytest.mark.slow
def test_sets_on_the_direct_lane_and_forwarded_are_counted_once_each(cluster):
    """N=2 of 3 nodes: node1's SETs of its partitions go to the direct lane (the door's
    future, answered at W), the others are forwarded to a primary (a coroutine)."""
    ports = cluster.metrics_ports
    client = cluster.client(0)
    try:
        everyone = [scrape(p) for p in ports]
        _sets(client, "lane", pipelined=False)
        after = [scrape(p) for p in ports]
        _check_sets(everyone[0], after[0])
        # each SET was coordinated once: by node1 (the lane, or its general path) or,
        # forwarded, by a primary of its key; every one an ok at W=2
        coordinated = [_delta(a, b, "ringkv_coordinator_requests_total", op="put",
                              quorum="w=2", outcome="ok") for a, b in zip(after, everyone)]
        assert sum(coordinated) == SETS
        assert 0 < coordinated[0] < SETS
        assert _delta(after[0], everyone[0], "ringkv_coordinator_requests_total", op="put") \
            == coordinated[0]
        _sets(client, "pipe", pipelined=True)
        _check_sets(after[0], scrape(ports[0]))
    finally:
        client.close()


# ---- the status page in a real browser --------------------------------------------------------

def _browser():
    """A headless Chromium driven by selenium through the system's chromedriver (the driver's
    path given: Selenium Manager never looks for one on the network); skip or, under CI, fail
    when one is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing = [what for what, path in (("chromium", chromium), ("chromedriver", driver))
               if not path or not os.path.isfile(path)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (the test extra)")
    if missing:
        why = (f"the status page test needs {', '.join(missing)} "
               "(apt-get install chromium chromium-driver; .ci/run does)")
        if os.environ.get("RINGKV_CI") == "1":
            pytest.fail(why + " and RINGKV_CI=1")
        pytest.skip(why)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", "--window-size=1300,1100"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_a_missing_browser_skips_outside_ci_and_fails_under_it(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os.path, "isfile", lambda path: False)
    monkeypatch.delenv("RINGKV_CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium, chromedriver"):
        _browser()
    monkeypatch.setenv("RINGKV_CI", "1")
    with pytest.raises(pytest.fail.Exception, match="RINGKV_CI=1"):
        _browser()


def _page(drv):
    """What the page shows now: {member: state}, the requests/s shown, whether it loaded."""
    return drv.execute_script("""
        const rows = document.querySelectorAll('#members tbody tr[data-member]');
        const members = {};
        rows.forEach((r) => { members[r.dataset.member] = r.dataset.state; });
        return {loaded: document.body.dataset.loaded === '1', members: members,
                rps: Number(document.getElementById('rps').dataset.rps),
                stale: document.getElementById('fresh').classList.contains('stale'),
                arcs: document.querySelectorAll('#ring path').length};
    """)


@pytest.mark.slow
def test_the_page_shows_three_members_throughput_and_a_stopped_node_down(cluster, tmp_path):
    drv = _browser()
    writer = SetWriter([cluster.ports[0]], prefix="page", pause_s=0.005, timeout=5.0)
    shots = []
    seen = {}

    def shows(pred):
        def check():
            seen.update(_page(drv))
            return seen["loaded"] and pred(seen)
        return check

    def shot(name):
        path = str(tmp_path / name)
        drv.save_screenshot(path)
        shots.append(path)
        print(f"status page screenshot: {path}")

    try:
        writer.start()
        drv.set_page_load_timeout(30)
        drv.get(f"http://127.0.0.1:{cluster.metrics_ports[0]}/")
        assert "ringkv" in drv.title
        names = cluster.names
        try:
            wait_until(shows(lambda s: s["members"] == {n: "up" for n in names}
                             and s["rps"] > 0), 30, interval=0.2,
                       what="3 members up and requests/s above 0")
        finally:
            shot("status-up.png")
        # the ring picture: Q partitions times N replicas
        assert seen["arcs"] == 16 * 2
        cluster.kill(2)
        try:
            took = wait_until(shows(lambda s: s["members"].get(names[2]) == "down"), 15,
                              interval=0.2, what=f"{names[2]} shown down")
        finally:
            shot("status-down.png")
        print(f"{names[2]} shown down {took:.1f} s after it stopped")
        assert seen["members"][names[0]] == seen["members"][names[1]] == "up"
        assert not seen["stale"]
        # the node serving the page stopped (SIGSTOP): its polls go unanswered, the page says so
        cluster.pause(0)
        try:
            wait_until(shows(lambda s: s["stale"]), 20, interval=0.2, what="the page stale")
        finally:
            cluster.resume(0)
        wait_until(shows(lambda s: not s["stale"]), 20, interval=0.2, what="the page fresh again")
        assert all(os.path.getsize(p) > 0 for p in shots)
    finally:
        writer.stop()
        drv.quit()
