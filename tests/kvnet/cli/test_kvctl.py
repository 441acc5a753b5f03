"""kvctl against in-process nodes (one cluster for the module, its loop in a thread): --json on
every subcommand, the tables, transfers with running counts and --watch, and the errors: one
line on stderr and exit status 1, never a traceback."""
import asyncio
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from kvnet.cli import kvctl
from kvnet.client import Client
from kvnet.config import load
from kvnet.membership import changes
from kvnet.node import Node
from kvnet.testing import free_ports

FAST = dict(gossip_interval_ms=50, hint_replay_interval_ms=100, ae_enabled=False, fsync="never",
            request_timeout_ms=2000)
PASSWORD = "s3cret-pw"


class _Cluster:
    """c0..c2 (members, Q=16, N=3), c3 started later with --join; `locked`, a lone node with a
    client password."""

    def __init__(self, tmp):
        ports = free_ports(10)
        self.ports, peers = ports[:4], ports[4:8]
        members = [f"c{i}@127.0.0.1:{peers[i]}" for i in range(4)]
        self.cfgs = [load(name=f"c{i}", port=self.ports[i], peer_port=peers[i], n=3, r=2, w=2,
                          ring_size=16, data_dir=str(tmp / f"c{i}"),
                          members=[members[0], members[3]] if i == 3 else members[:3],
                          join=i == 3, **FAST) for i in range(4)]
        self.locked_port = ports[8]
        self.locked_cfg = load(name="lone", port=ports[8], peer_port=ports[9], n=1, r=1, w=1,
                               ring_size=8, data_dir=str(tmp / "lone"),
                               members=[f"lone@127.0.0.1:{ports[9]}"], password=PASSWORD,
                               users="ro:read:ro-pw", **FAST)
        self.nodes = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self):
        async def start():
            for cfg in self.cfgs[:3] + [self.locked_cfg]:
                self.nodes.append(await Node(cfg).start())
        self.loop.run_until_complete(start())
        self.thread.start()

    def call(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_joiner(self):
        async def start():
            node = await Node(self.cfgs[3]).start()
            self.nodes.append(node)
            return node
        return self.call(start())

    def stop(self):
        async def stop():
            for n in reversed(self.nodes):
                await n.stop()
        try:
            self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = _Cluster(tmp_path_factory.mktemp("kvctl"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _run(cluster, *argv, port=None):
    out, err = io.StringIO(), io.StringIO()
    rc = kvctl.main(["--port", str(port or cluster.ports[1]), *argv], out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def _json(cluster, *argv, port=None):
    rc, text, err = _run(cluster, "--json", *argv, port=port)
    assert rc == 0, err
    return json.loads(text)


def _wait(pred, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ---- --json ------------------------------------------------------------------------------------

def test_status_ring_and_preflist_json(cluster):
    st = _json(cluster, "status")
    assert st["node"] == "c1" and isinstance(st["ring_epoch"], int)
    by_name = {m["name"]: m for m in st["members"]}
    assert set(by_name) >= {"c0", "c1", "c2"}
    for m in by_name.values():
        assert {"up", "status", "state", "heartbeat_age_s", "partitions", "suspected_by"} <= set(m)
    assert by_name["c1"]["heartbeat_age_s"] == 0.0 and by_name["c0"]["partitions"] > 0
    ring = _json(cluster, "ring")
    assert ring["q"] == 16 and ring["n"] == 3 and len(ring["owners"]) == 16
    assert sorted(n["port"] for n in ring["nodes"]) == sorted(cluster.ports[:3])
    pl = _json(cluster, "preflist", "some-key")
    assert len(pl) == 3 and len({r["partition"] for r in pl}) == 1
    assert all({"node", "partition", "up"} <= set(r) for r in pl)


def test_json_flag_before_or_after_the_subcommand(cluster):
    rc, text, _ = _run(cluster, "ring", "--json")
    assert rc == 0 and json.loads(text)["q"] == 16
    rc, text, _ = _run(cluster, "--json", "ring", "--json")
    assert rc == 0 and json.loads(text)["q"] == 16
    rc, text, _ = _run(cluster, "ring")
    assert rc == 0 and "Q=16, N=3" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_put_get_del_json(cluster):
    put = _json(cluster, "put", "cart", "apple")
    assert set(put) == {"key", "context"} and bytes.fromhex(put["context"])
    _json(cluster, "put", "cart", "pear")                    # no context: a sibling
    got = _json(cluster, "get", "cart")
    assert got["key"] == "cart" and got["found"] is True
    assert sorted(got["values"]) == ["apple", "pear"]
    put = _json(cluster, "put", "cart", "apple+pear", "--context", got["context"])
    assert _json(cluster, "get", "cart")["values"] == ["apple+pear"]
    gone = _json(cluster, "del", "cart", "--context", put["context"])
    assert bytes.fromhex(gone["context"])
    got = _json(cluster, "get", "cart")
    assert got["found"] is False and all(v is None for v in got["values"])
    # a value that is not UTF-8 goes out as {"hex": ...}
    with Client("127.0.0.1", cluster.ports[0]) as c:
        c.put("blob", b"\xff\x00ok")
    assert _json(cluster, "get", "blob")["values"] == [{"hex": "ff006f6b"}]
    rc, text, _ = _run(cluster, "get", "blob")
    assert rc == 0 and "\\xff\\x00ok" in text


def test_tables_keep_the_status_columns_and_are_greppable(cluster):
    rc, text, _ = _run(cluster, "status")
    assert rc == 0 and "node c1, ring epoch" in text
    header = next(line for line in text.splitlines() if "heartbeat age" in line)
    for col in ("member", "status", "route", "liveness", "partitions", "suspected by"):
        assert col in header
    rows = {line.split()[0]: line.split() for line in text.splitlines()
            if line.split() and line.split()[0] in ("c0", "c1", "c2")}
    assert set(rows) == {"c0", "c1", "c2"}
    assert rows["c1"][1:4] == ["valid", "up", "up"] and rows["c1"][4:6] == ["0.00", "s"]
    assert re.search(r"anti-entropy on c1: \d+ catch-up exchanges queued, \d+ exchanges run, "
                     r"[\d,]+ keys repaired into it", text)
    assert not any(line != line.rstrip() for line in text.splitlines())
    assert "\x1b[" not in text                               # no terminal codes in a pipe
    rc, text, _ = _run(cluster, "ring")
    owned = {line.split()[0]: int(line.split()[3]) for line in text.splitlines()
             if line.split() and line.split()[0] in ("c0", "c1", "c2")}
    assert sum(owned.values()) == 16


def test_membership_commands_json_and_transfers_while_they_run(cluster, monkeypatch):
    """Join c3 through kvctl with --json at each step; the transfers are slowed (small batches,
    a pause after each) so that kvctl sees them running with keys counted before they end."""
    with Client("127.0.0.1", cluster.ports[0]) as c:
        c.mput([(f"k{i}", f"value-{i}" * 4) for i in range(400)])
    joiner = cluster.start_joiner()
    assert _json(cluster, "plan") == {"staged": {}, "transfers": [], "bytes": 0, "moves": {}}
    assert _json(cluster, "clear", "c3") == {"staged": {}}
    _wait(lambda: _run(cluster, "--json", "join", "c3")[0] == 0, what="c3 seen up")
    staged = _json(cluster, "join", "c3")
    assert staged == {"staged": {"c3": "join"}}
    plan = _json(cluster, "plan")
    assert plan["staged"] == {"c3": "join"} and set(plan["moves"]) == {"c3"}
    assert plan["bytes"] > 0 and sum(plan["owned_after"].values()) == 16
    for p, to, sources, size in plan["transfers"]:
        assert to == "c3" and len(sources) == 3 and size > 0
    rc, text, _ = _run(cluster, "plan")
    assert rc == 0 and "staged: join c3" in text and "c3 receives" in text

    monkeypatch.setattr(changes, "XFER_BATCH_KEYS", 4)
    push = changes.ClusterChanges._push

    async def slow_push(self, *a, **kw):
        await asyncio.sleep(0.05)           # (long enough to be seen on a loaded machine)
        return await push(self, *a, **kw)
    monkeypatch.setattr(changes.ClusterChanges, "_push", slow_push)

    res = _json(cluster, "commit")
    assert res["transfers"] == len(plan["transfers"]) and isinstance(res["epoch"], int)
    seen = []

    def running_with_keys():
        t = _json(cluster, "transfers")
        if not t["moving"]:
            return True
        assert t["epoch"] == res["epoch"]
        for r in t["transfers"]:
            assert {"partition", "to", "state", "from", "source", "keys", "bytes", "est_keys",
                    "est_bytes"} <= set(r)
            if r["state"] == "running" and r["keys"] > 0:
                seen.append(r)
        return len({r["source"] for r in seen}) >= 2
    _wait(running_with_keys, 60, "running transfers")
    assert seen, "no transfer seen running with keys counted"
    r = seen[0]
    assert 0 < r["keys"] and r["bytes"] > 0 and r["est_keys"] and r["est_keys"] > 0
    # the table shows the same
    rc, text, _ = _run(cluster, "transfers")
    assert rc == 0 and ("transfers done" in text or "settled" in text)
    # --watch in a pipe: a line per transfer that starts or ends, until the ring settles
    rc, text, err = _run(cluster, "transfers", "--watch", "--interval", "0.1")
    assert rc == 0, err
    assert text.rstrip().splitlines()[-1].startswith("ring epoch") and "settled" in text
    rc, text, _ = _run(cluster, "transfers", "--watch", "--json", "--interval", "0.1")
    docs = [json.loads(line) for line in text.splitlines()]
    assert rc == 0 and docs[-1]["moving"] is False
    assert _json(cluster, "transfers") == {"epoch": docs[-1]["epoch"], "moving": False,
                                           "transfers": []}
    # (the claimant settled the ring; the node kvctl asks may hear of it a gossip round later)
    _wait(lambda: _json(cluster, "ring")["owners"].count("c3") >= 3, 30, "c3 owning partitions")
    assert joiner.changes.stats["received_keys"] > 0


def test_watch_draws_bars_on_a_terminal(cluster):
    """The live view (rich) on a forced terminal: a bar for the change and one per running
    transfer, from answers given in turn; it ends once the ring settles."""
    from rich.console import Console

    answers = iter([
        {"epoch": 7, "moving": True, "transfers": [
            {"partition": 3, "to": "c3", "state": "running", "from": "c0,c1,c2", "source": "c1",
             "keys": 120, "bytes": 4000, "est_keys": 300, "est_bytes": 12000, "tries": 1},
            {"partition": 5, "to": "c3", "state": "waiting", "from": None, "source": None,
             "keys": 0, "bytes": 0, "est_keys": None, "est_bytes": None, "tries": 0}]},
        {"epoch": 7, "moving": True, "transfers": [
            {"partition": 3, "to": "c3", "state": "done", "from": "c0,c1,c2", "source": None,
             "keys": 300, "bytes": 10000, "est_keys": 300, "est_bytes": 12000, "tries": 1},
            {"partition": 5, "to": "c3", "state": "failed", "from": "c0,c1,c2", "source": "c0",
             "keys": 0, "bytes": 0, "est_keys": None, "est_bytes": None, "tries": 1,
             "error": "c0 went away"}]},
        {"epoch": 8, "moving": False, "transfers": []}])

    class Fake:
        def cluster(self, op):
            assert op == "transfers"
            return next(answers)

    out = io.StringIO()
    con = Console(file=out, force_terminal=True, width=120, color_system=None, highlight=False)
    assert kvctl.watch_transfers(Fake(), out, interval=0.01, console=con) == 0
    text = out.getvalue()
    assert "partition 3 -> c3" in text and "120/300 keys" in text and "from c1" in text
    assert "failed: c0 went away" in text and "ring epoch 8: settled" in text


# ---- errors ------------------------------------------------------------------------------------

def _cli(*argv, timeout=30):
    """kvctl as a process: what a shell sees (stderr, exit status, no traceback)."""
    return subprocess.run([sys.executable, "-m", "kvnet.cli.kvctl", *argv], capture_output=True,
                          text=True, timeout=timeout)


def _one_error_line(p, *needles):
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvctl: "), p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_a_node_that_never_answers_is_a_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()                                   # accepts (the kernel does), never answers
        port = s.getsockname()[1]
        for cmd in (["status"], ["get", "k"], ["transfers", "--watch"]):
            t0 = time.monotonic()
            p = _cli("--port", str(port), "--timeout", "0.3", *cmd)
            _one_error_line(p, f"127.0.0.1:{port}", "did not answer within 0.3 s", "timed out")
            assert time.monotonic() - t0 < 15


def test_a_refused_connection():
    port = free_ports(1)[0]                          # nothing listens there
    for cmd in (["ring"], ["--json", "put", "k", "v"], ["commit"]):
        p = _cli("--port", str(port), *cmd)
        _one_error_line(p, f"cannot connect to 127.0.0.1:{port}", "refused")


def test_noauth_and_a_wrong_password(cluster):
    port = str(cluster.locked_port)
    _one_error_line(_cli("--port", port, "status"), f"127.0.0.1:{port} needs a password",
                    "NOAUTH", "--password")
    _one_error_line(_cli("--port", port, "--password", "nope", "get", "k"),
                    f"127.0.0.1:{port} refused the password", "WRONGPASS")
    ok = _cli("--port", port, "--password", PASSWORD, "--json", "put", "k", "v")
    assert ok.returncode == 0 and json.loads(ok.stdout)["context"], ok.stderr
    rc, text, err = _run(cluster, "--password", PASSWORD, "get", "k", port=cluster.locked_port)
    assert rc == 0 and "v" in text.splitlines()[1:]


def test_a_named_user_from_the_flags_or_ringkv_user_and_password(cluster, monkeypatch):
    port = cluster.locked_port
    assert _run(cluster, "--password", PASSWORD, "put", "ku", "v", port=port)[0] == 0
    rc, text, err = _run(cluster, "--user", "ro", "--password", "ro-pw", "get", "ku", port=port)
    assert rc == 0 and "v" in text.splitlines()[1:], err
    rc, text, err = _run(cluster, "--user", "ro", "--password", "ro-pw", "put", "ku", "w",
                         port=port)
    assert rc == 1 and "refused the command (NOPERM: User ro has no permissions to run the " \
        "'kv.put' command)" in err
    rc, text, err = _run(cluster, "--user", "ro", "--password", "nope", "get", "ku", port=port)
    assert rc == 1 and "refused user ro with this password (WRONGPASS" in err
    monkeypatch.setenv("RINGKV_USER", "ro")
    rc, text, err = _run(cluster, "--password", "ro-pw", "del", "ku", port=port)
    assert rc == 1 and "NOPERM: User ro " in err
    monkeypatch.setenv("RINGKV_PASSWORD", "ro-pw")         # the password from it too
    rc, text, err = _run(cluster, "del", "ku", port=port)
    assert rc == 1 and "NOPERM: User ro " in err
    rc, text, err = _run(cluster, "get", "ku", port=port)
    assert rc == 0, err


def test_the_nodes_error_replies_are_one_line(cluster):
    p = _cli("--port", str(cluster.ports[0]), "commit")
    _one_error_line(p, f"127.0.0.1:{cluster.ports[0]}: ", "nothing staged")
    p = _cli("--port", str(cluster.ports[0]), "leave", "nobody")
    _one_error_line(p, "not a member of the ring")
    p = _cli("--port", str(cluster.ports[0]), "--json", "get", "k", "--r", "9")
    _one_error_line(p, f"127.0.0.1:{cluster.ports[0]}: ")


@pytest.mark.parametrize("argv", [["--port", "http"], ["--port", "70000"], ["--timeout", "0", "ring"],
                                  ["put", "k", "v", "--context", "zz"], ["bogus"], [],
                                  ["transfers", "--interval", "-1"]])
def test_bad_arguments_exit_2(argv):
    p = _cli(*argv, *(["ring"] if argv[:1] == ["--port"] else []))
    assert p.returncode == 2 and "Traceback" not in p.stderr and "usage: kvctl" in p.stderr


def test_compact_merges_one_node_or_every_member(cluster):
    for i in range(300):
        assert _run(cluster, "put", f"compact{i % 30}", "x" * 200)[0] == 0
    one = _json(cluster, "compact")
    c1 = next(n for n in cluster.nodes if n.name == "c1")
    assert [r["node"] for r in one] == ["c1"] and one[0]["partitions"] == len(c1.replica.partitions)
    every = _json(cluster, "compact", "--all")
    ring = _json(cluster, "ring")
    assert sorted(r["node"] for r in every) == sorted(n["name"] for n in ring["nodes"])
    assert sum(r["bytes_reclaimed"] for r in every) > 0          # c0, c2 still had dead bytes
    rc, text, _ = _run(cluster, "compact", "--partition", "3")
    assert rc == 0 and "c1: 1 partitions merged" in text
    rc, _, err = _run(cluster, "compact", "--partition", "999")
    assert rc == 1 and "holds no partition 999" in err and "Traceback" not in err


# ---- zones: shown, and the relayout command ----------------------------------------------------

def test_ring_and_status_carry_zones_and_relayout_says_why_it_is_refused(cluster):
    ring = _json(cluster, "ring")
    assert all(n["zone"] is None for n in ring["nodes"])
    (row,) = ring["zones"]                                  # no zones: one row, zone None
    assert row["zone"] is None and row["partitions"] == 16 and row["replicas"] == 16 * 3
    status = _json(cluster, "status")
    assert all("zone" in m for m in status["members"]) and status["zones"]
    rc, text, _ = _run(cluster, "ring")
    assert rc == 0 and "zone" in text.splitlines()[1] and "replicas" not in text
    rc, _, err = _run(cluster, "relayout")
    assert rc == 1 and "relayout: no member of the ring has a zone" in err
    rc, text, _ = _run(cluster, "relayout", "--cancel")
    assert rc == 0 and "relayout unstaged" in text


def test_the_zone_tables(monkeypatch):
    ring = {"epoch": 3, "q": 8, "n": 2, "owners": ["a", "b", "c", "d"] * 2,
            "nodes": [{"name": x, "host": "h", "port": 1, "up": True, "zone": z}
                      for x, z in (("a", "east"), ("b", "west"), ("c", "east"), ("d", "west"))],
            "zones": [{"zone": "east", "nodes": ["a", "c"], "partitions": 4, "replicas": 8},
                      {"zone": "west", "nodes": ["b", "d"], "partitions": 4, "replicas": 8}]}
    out = io.StringIO()
    kvctl._show_ring(ring, kvctl._console(out))
    lines = out.getvalue().splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    assert rows["a"][-1] == "east" and rows["b"][-1] == "west"
    assert rows["east"][1:] == ["a,", "c", "4", "8"] and rows["west"][1:] == ["b,", "d", "4", "8"]
