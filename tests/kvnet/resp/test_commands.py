"""The command table against MemoryBackend, bytes in and bytes out, no sockets."""
import asyncio
import re

import hiredis
import pytest

from kvcore import versions
from kvnet.resp.backend import LATER, MemoryBackend, Reply, parse_quorum
from kvnet.resp.commands import Commands
from kvnet.resp.glob import glob_match
from kvnet.resp.replies import OK, encode
from kvnet.errors import CommandError, QuorumError


class Client:
    """A session on a Commands table; `raw` gives the reply bytes, `call` the parsed reply."""

    def __init__(self, commands, proto=2):
        self.commands = commands
        self.session = commands.open_session("127.0.0.1:1", "127.0.0.1:2")
        self.session.protocol = proto

    def raw(self, *args):
        argv = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        reply = asyncio.run(self.commands.execute(self.session, argv), debug=True)
        return encode(reply, self.session.protocol)

    def call(self, *args):
        r = hiredis.Reader()
        r.feed(self.raw(*args))
        return r.gets()


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def c(request):
    return Client(Commands(MemoryBackend()), request.param)


def test_ping_echo(c):
    assert c.raw("PING") == b"+PONG\r\n"
    assert c.raw("ping", "hi") == b"$2\r\nhi\r\n"
    assert c.raw("ECHO", "x") == b"$1\r\nx\r\n"
    assert c.raw("PING", "a", "b") == b"-ERR wrong number of arguments for 'ping' command\r\n"


def test_get_set_del_exists_mget_mset(c):
    null = b"$-1\r\n" if c.session.protocol == 2 else b"_\r\n"
    assert c.raw("GET", "k") == null
    assert c.raw("SET", "k", "v") == b"+OK\r\n"
    assert c.raw("SET", "k", "v2") == b"+OK\r\n"
    assert c.raw("GET", "k") == b"$2\r\nv2\r\n"
    assert c.raw("MSET", "a", "1", "b", "2") == b"+OK\r\n"
    assert c.call("MGET", "a", "nope", "b") == [b"1", None, b"2"]
    assert c.raw("EXISTS", "a", "a", "nope") == b":2\r\n"
    assert c.raw("DBSIZE") == b":3\r\n"
    assert c.raw("DEL", "a", "b", "nope") == b":2\r\n"
    assert c.raw("DEL", "a") == b":0\r\n"
    assert c.raw("GET", "a") == null
    assert c.raw("DBSIZE") == b":1\r\n"
    assert c.raw("MSET", "a") == b"-ERR wrong number of arguments for 'mset' command\r\n"
    assert c.raw("MSET", "a", "1", "b") == b"-ERR wrong number of arguments for 'mset' command\r\n"
    assert c.raw("TYPE", "k") == b"+string\r\n" and c.raw("TTL", "k") == b":-1\r\n"


@pytest.mark.parametrize("opt", ["EX", "px", "NX", "XX", "KEEPTTL", "GET"])
def test_set_options_refused_clearly(c, opt):
    assert c.raw("SET", "k", "v", opt, "10") == \
        f"-ERR SET option {opt.upper()} is not supported by ringkv\r\n".encode()
    assert c.raw("SET", "k", "v", "BOGUS") == b"-ERR syntax error\r\n"
    assert c.raw("GET", "k") in (b"$-1\r\n", b"_\r\n")


def test_unknown_command_and_arity_texts(c):
    assert c.raw("xyz") == b"-ERR unknown command 'xyz', with args beginning with: \r\n"
    assert c.raw("xyz", "a", "b c") == \
        b"-ERR unknown command 'xyz', with args beginning with: 'a' 'b c' \r\n"
    long = c.raw("xyz", "a" * 200, "b")
    assert long == b"-ERR unknown command 'xyz', with args beginning with: '" + b"a" * 128 + b"' \r\n"
    assert c.raw("GET") == b"-ERR wrong number of arguments for 'get' command\r\n"
    assert c.raw("CLIENT", "SETNAME") == \
        b"-ERR wrong number of arguments for 'client|setname' command\r\n"
    assert c.raw("CLIENT", "NOPE") == b"-ERR unknown subcommand 'NOPE'. Try CLIENT HELP.\r\n"


def test_kv_get_put_siblings_and_contexts(c):
    ctx0, values = c.call("KV.GET", "k")
    assert values == []
    ctx1 = c.call("KV.PUT", "k", "v1")
    c.call("KV.PUT", "k", "v2")  # no context: a sibling
    ctx, values = c.call("KV.GET", "k")
    assert values == [b"v2", b"v1"]
    c.call("KV.PUT", "k", "v3", "CONTEXT", ctx1)  # saw v1 only: v2 stays
    assert sorted(c.call("KV.GET", "k", "R", "ONE")[1]) == [b"v2", b"v3"]
    ctx, _ = c.call("KV.GET", "k", "R", "1", "STRICT")
    c.call("KV.PUT", "k", "merged", "CONTEXT", ctx, "W", "quorum")
    assert c.call("KV.GET", "k")[1] == [b"merged"]
    assert c.raw("GET", "k") == b"$6\r\nmerged\r\n"
    assert isinstance(versions.decode_context(ctx), tuple)


def test_kv_tombstones_read_as_null_beside_live_values(c):
    c.call("KV.PUT", "k", "v1")
    c.call("KV.DEL", "k", "CONTEXT", versions.encode_context(()))  # concurrent delete
    ctx, values = c.call("KV.GET", "k")
    assert sorted(values, key=lambda v: v or b"") == [None, b"v1"]
    c.call("KV.DEL", "k", "CONTEXT", ctx)
    ctx, values = c.call("KV.GET", "k")
    assert values == []
    assert c.raw("EXISTS", "k") == b":0\r\n"


def test_kv_errors(c):
    assert c.call("KV.PUT", "k", "v", "CONTEXT", "garbage").args[0].startswith("ERR invalid context")
    assert c.call("KV.GET", "k", "R", "MANY").args[0].startswith("ERR R must be")
    assert c.call("KV.GET", "k", "R", "2").args[0].startswith("ERR R=2 is more than")
    assert c.call("KV.GET", "k", "R").args[0] == "ERR syntax error: R needs a value"
    assert c.call("KV.PUT", "k", "v", "NOPE", "1").args[0].startswith("ERR syntax error")


def test_kv_put_and_del_take_durable_and_pass_it_on(c):
    assert c.call("KV.PUT", "k", "v", "DURABLE").args[0] == "ERR syntax error: DURABLE needs a value"
    assert c.call("KV.PUT", "k", "v", "DURABLE", "x").args[0].startswith(
        "ERR DURABLE must be a number >= 1 or ONE, QUORUM or ALL")
    assert c.call("KV.PUT", "k", "v", "DURABLE", "0").args[0].startswith("ERR DURABLE must be")
    assert c.call("KV.PUT", "k", "v", "DURABLE", "2").args[0] \
        == "ERR DURABLE=2 is more than the 1 replicas of a key (N=1)"
    # MemoryBackend keeps nothing on disk: refused, and nothing written
    err = c.call("KV.PUT", "k", "v", "W", "1", "durable", "1", "STRICT").args[0]
    assert err.startswith("UNAVAILABLE DURABLE cannot be met") and "nothing was written" in err
    assert c.call("KV.GET", "k")[1] == []
    assert c.call("KV.DEL", "k", "DURABLE", "ALL").args[0].startswith("UNAVAILABLE DURABLE")
    seen = []

    class Recording(MemoryBackend):
        async def put(self, key, value, context=None, w=None, strict=False, durable=None):
            seen.append(("put", w, strict, durable))
            return await super().put(key, value, context, w, strict)

        async def delete(self, key, context=None, w=None, strict=False, durable=None):
            seen.append(("del", w, strict, durable))
            return await super().delete(key, context, w, strict)

    r = Client(Commands(Recording()))
    r.call("KV.PUT", "k", "v", "DURABLE", "3", "W", "1")
    r.call("KV.PUT", "k", "v", "DURABLE", "quorum")
    r.call("KV.PUT", "k", "v")
    r.call("KV.DEL", "k", "durable", "ALL", "STRICT")
    assert seen == [("put", 1, False, 3), ("put", None, False, "quorum"),
                    ("put", None, False, None), ("del", None, True, "all")]


def test_too_many_siblings():
    c = Client(Commands(MemoryBackend(siblings_max=3)))
    for i in range(3):
        c.call("KV.PUT", "k", str(i))
    err = c.call("KV.PUT", "k", "x")
    assert err.args[0].startswith("SIBLINGS ")
    assert len(c.call("KV.GET", "k")[1]) == 3


def test_kv_ring_preflist_status(c):
    ring = c.call("KV.RING")
    if c.session.protocol == 3:
        assert ring[b"n"] == 1 and ring[b"members"][0][b"name"] == b"mem"
    else:
        assert ring[:2] == [b"epoch", 0]
    assert len(c.call("KV.PREFLIST", "k")) == 1
    assert c.call("KV.STATUS")


def test_select_dbsize_flush(c):
    assert c.raw("SELECT", "0") == b"+OK\r\n"
    assert c.raw("SELECT", "1").startswith(b"-ERR DB index is out of range")
    assert c.raw("SELECT", "x") == b"-ERR value is not an integer or out of range\r\n"
    c.call("SET", "a", "1")
    assert c.raw("FLUSHDB") == b"+OK\r\n"
    assert c.raw("DBSIZE") == b":0\r\n"
    c.call("SET", "a", "1")
    assert c.raw("FLUSHALL", "ASYNC") == b"+OK\r\n"
    assert c.raw("FLUSHALL", "LATER") == b"-ERR syntax error\r\n"


def test_flush_can_be_disabled():
    c = Client(Commands(MemoryBackend(), allow_flush=False))
    c.call("SET", "a", "1")
    assert c.raw("FLUSHALL").startswith(b"-ERR FLUSHALL is disabled on this node")
    assert c.raw("DBSIZE") == b":1\r\n"


def test_scan_walks_everything_once_with_match_and_count(c):
    keys = {b"user:%d" % i for i in range(300)} | {b"other:%d" % i for i in range(50)}
    for k in keys:
        c.call("SET", k, "x")
    seen, cursor, calls = [], b"0", 0
    while True:
        cursor, batch = c.call("SCAN", cursor, "MATCH", "user:*", "COUNT", 25)
        seen += batch
        calls += 1
        if cursor == b"0":
            break
    assert sorted(seen) == sorted(k for k in keys if k.startswith(b"user:"))
    assert calls >= 350 // 25
    _, batch = c.call("SCAN", 0, "COUNT", 1000, "TYPE", "hash")
    assert batch == []
    assert c.raw("SCAN", "x") == b"-ERR invalid cursor\r\n"
    assert c.raw("SCAN", "0", "COUNT", "0") == b"-ERR syntax error\r\n"
    assert c.raw("SCAN", "0", "MATCH") == b"-ERR syntax error\r\n"


def test_scan_count_counts_keys_examined(c):
    """As in Redis, COUNT counts keys examined before MATCH and TYPE filter them (and here
    deleted keys, whose tombstones stay): a few keys take one call with the default COUNT, and
    a call returns once COUNT keys were examined or the keyspace is done."""
    for k in (b"a", b"b", b"c"):
        c.call("SET", k, "1")
    cursor, keys = c.call("SCAN", 0)
    assert cursor == b"0" and sorted(keys) == [b"a", b"b", b"c"]
    assert c.call("SCAN", 0, "MATCH", "b") == [b"0", [b"b"]]
    assert c.call("SCAN", 0, "TYPE", "set") == [b"0", []]
    for i in range(97):
        c.call("SET", b"k%d" % i, "1")
    c.call("DEL", *[b"k%d" % i for i in range(0, 97, 2)])
    live = {b"a", b"b", b"c"} | {b"k%d" % i for i in range(1, 97, 2)}
    for count in (1, 10, 33):
        seen, cursor, calls = [], b"0", 0
        while True:
            cursor, keys = c.call("SCAN", cursor, "COUNT", count)
            seen += keys
            calls += 1
            if cursor == b"0":
                break
        assert sorted(seen) == sorted(live)
        assert calls == -(-100 // count)                 # 100 stored keys, count a call
    cursor, keys = c.call("SCAN", 0, "MATCH", "nothing*", "COUNT", 10)
    assert cursor != b"0" and keys == []
    cursor, keys = c.call("SCAN", 0, "TYPE", "hash", "COUNT", 10)
    assert cursor != b"0" and keys == []


def test_scan_while_keys_change():
    c = Client(Commands(MemoryBackend()))
    for i in range(100):
        c.call("SET", "k%d" % i, "x")
    cursor, batch = c.call("SCAN", 0, "COUNT", 30)
    seen = set(batch)
    for i in range(100, 150):
        c.call("SET", "k%d" % i, "x")
    c.call("DEL", *[b"k%d" % i for i in range(100, 150)])
    while cursor != b"0":
        cursor, batch = c.call("SCAN", cursor, "COUNT", 30)
        seen |= set(batch)
    assert {b"k%d" % i for i in range(100)} <= seen


def test_auth_flow():
    commands = Commands(MemoryBackend(), password="s3cret")
    c = Client(commands)
    assert c.raw("GET", "a") == b"-NOAUTH Authentication required.\r\n"
    assert c.raw("nope") .startswith(b"-ERR unknown command")  # lookup before auth, as Redis
    assert c.raw("PING") == b"-NOAUTH Authentication required.\r\n"
    assert c.raw("HELLO", "3").startswith(b"-NOAUTH HELLO must be called")
    assert c.raw("AUTH", "wrong") == \
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    assert c.raw("AUTH", "bob", "s3cret").startswith(b"-WRONGPASS")
    assert c.raw("AUTH", "s3cret") == b"+OK\r\n"
    assert c.raw("GET", "a") == b"$-1\r\n"
    d = Client(commands)
    hello = d.call("HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "me")
    assert d.session.protocol == 3 and hello[b"proto"] == 3 and d.session.name == b"me"
    e = Client(commands)
    assert e.raw("AUTH", "default", "s3cret") == b"+OK\r\n"
    assert e.raw("QUIT") == b"+OK\r\n" and e.session.closing


def test_auth_without_password():
    c = Client(Commands(MemoryBackend()))
    assert c.raw("AUTH", "x").startswith(b"-ERR AUTH <password> called without any password")
    assert c.raw("AUTH", "default", "anything") == b"+OK\r\n"


def test_hello(c):
    two = c.call("HELLO")
    assert dict(zip(two[::2], two[1::2]))[b"proto"] == 2 if c.session.protocol == 2 else two[b"proto"] == 3
    three = Client(c.commands).raw("HELLO", "3")
    assert three.startswith(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n")
    assert Client(c.commands).raw("HELLO", "4") == b"-NOPROTO unsupported protocol version\r\n"
    assert Client(c.commands).raw("HELLO", "3", "FOO").startswith(b"-ERR Syntax error in HELLO option 'FOO'")


def test_client_subcommands(c):
    assert c.raw("CLIENT", "GETNAME") == (b"$-1\r\n" if c.session.protocol == 2 else b"_\r\n")
    assert c.raw("CLIENT", "SETNAME", "conn-1") == b"+OK\r\n"
    assert c.raw("CLIENT", "GETNAME") == b"$6\r\nconn-1\r\n"
    assert c.raw("CLIENT", "SETNAME", "a b").startswith(b"-ERR Client names cannot contain spaces")
    assert c.raw("CLIENT", "ID") == b":%d\r\n" % c.session.id
    assert c.raw("CLIENT", "SETINFO", "LIB-NAME", "redis-py") == b"+OK\r\n"
    assert c.raw("CLIENT", "SETINFO", "LIB-VER", "5.0") == b"+OK\r\n"
    assert c.raw("CLIENT", "SETINFO", "COLOR", "x").startswith(b"-ERR Unrecognized option")
    info = c.call("CLIENT", "INFO")
    assert b"name=conn-1" in info and b"lib-name=redis-py" in info and b"id=" in info
    lst = c.call("CLIENT", "LIST")
    assert lst.count(b"\n") == len(c.commands.sessions)
    assert c.call("CLIENT", "LIST", "ID", c.session.id).count(b"\n") == 1


def test_command_table(c):
    count = c.call("COMMAND", "COUNT")
    assert count == len(c.call("COMMAND")) == len(c.call("COMMAND", "LIST"))
    (get,) = c.call("COMMAND", "INFO", "get")
    assert get[:2] == [b"get", 2] and get[3:6] == [1, 1, 1]
    assert set(get[2]) == {b"readonly", b"fast"}
    (mset, missing) = c.call("COMMAND", "INFO", "MSET", "nope")
    assert mset[1] == -3 and mset[3:6] == [1, -1, 2] and missing is None
    (client,) = c.call("COMMAND", "INFO", "client")
    assert any(sub[0] == b"client|setname" for sub in client[9])
    assert c.call("COMMAND", "DOCS") in ([], {})


def test_config(c):
    got = c.call("CONFIG", "GET", "save", "app*")
    if c.session.protocol == 2:
        got = dict(zip(got[::2], got[1::2]))
    assert got == {b"save": b"", b"appendonly": b"no", b"appendfsync": b"everysec"}
    got = c.call("CONFIG", "GET", "DATABASES")
    assert got in ([b"databases", b"1"], {b"databases": b"1"})
    assert c.call("CONFIG", "GET", "maxmemory") in ([b"maxmemory", b"0"], {b"maxmemory": b"0"})
    assert c.raw("CONFIG", "SET", "save", "").startswith(b"-ERR CONFIG SET is not supported")
    assert c.raw("CONFIG", "GET") == b"-ERR wrong number of arguments for 'config|get' command\r\n"


def test_info(c):
    c.call("SET", "a", "1")
    raw = c.raw("INFO")
    text = c.call("INFO")
    text = text.decode() if isinstance(text, bytes) else text
    if c.session.protocol == 3:
        assert raw.startswith(b"=") and raw[raw.index(b"\r\n") + 2:].startswith(b"txt:# Server\r\n")
    sections = [line for line in text.split("\r\n") if line.startswith("#")]
    assert sections == ["# Server", "# Clients", "# Memory", "# Persistence", "# Stats",
                        "# Replication", "# CPU", "# Cluster", "# Keyspace", "# Ringkv"]
    fields = dict(line.split(":", 1) for line in text.split("\r\n") if line and line[0] != "#")
    assert fields["redis_version"].startswith("7.")
    assert fields["redis_mode"] == "standalone" and fields["cluster_enabled"] == "0"
    assert fields["arch_bits"] in ("32", "64") and fields["db0"].startswith("keys=1,")
    assert fields["ringkv_backend"] == "memory" and "connected_clients" in fields
    one = c.call("INFO", "cluster")
    one = one.decode() if isinstance(one, bytes) else one
    assert one == "# Cluster\r\ncluster_enabled:0\r\n"
    # Redis 7's latencystats: asked for by name (or all), from the request histograms
    lat = c.call("INFO", "latencystats")
    lat = lat.decode() if isinstance(lat, bytes) else lat
    lines = lat.split("\r\n")
    assert lines[0] == "# Latencystats"
    assert any(re.fullmatch(r"latency_percentiles_usec_set:p50=[\d.]+,p99=[\d.]+,p99\.9=[\d.]+",
                            x) for x in lines)
    everything = c.call("INFO", "all")
    everything = everything.decode() if isinstance(everything, bytes) else everything
    assert "# Latencystats" in everything


def test_glob():
    assert glob_match(b"h?llo", b"hello") and glob_match(b"h*llo", b"hllo")
    assert glob_match(b"h[ae]llo", b"hallo") and not glob_match(b"h[^e]llo", b"hello")
    assert glob_match(b"h[a-c]llo", b"hbllo") and glob_match(b"h[c-a]llo", b"hbllo")
    assert glob_match(b"a\\*", b"a*") and not glob_match(b"a\\*", b"ab")
    assert glob_match(b"*", b"\n\x00") and not glob_match(b"a", b"ab")


def test_parse_quorum():
    assert [parse_quorum(x, 3) for x in (None, "one", "QUORUM", "all", 2)] == [None, 1, 2, 3, 2]
    for bad in (0, 4, "most"):
        with pytest.raises(CommandError):
            parse_quorum(bad, 3)
    assert Reply(b"", [versions.Sibling(b"a", 1), versions.Sibling(None, 2)]).value is None


class _NowBackend(MemoryBackend):
    """A MemoryBackend with a fast lane that answers for keys starting with b"now"."""

    def __init__(self):
        super().__init__()
        self.now_calls = []

    def get_lww_now(self, key):
        self.now_calls.append(("get", key))
        if key == b"bad":
            raise CommandError("bad key")
        return b"fast:" + key if key.startswith(b"now") else LATER

    def set_overwrite_now(self, key, value):
        self.now_calls.append(("set", key))
        return None if key.startswith(b"now") else LATER


def test_the_fast_lane_answers_without_a_coroutine_and_defers_with_later():
    cmds = Commands(_NowBackend())
    s = cmds.open_session()
    assert cmds.dispatch(s, [b"GET", b"now1"]) == b"fast:now1"          # a value, no coroutine
    assert cmds.dispatch(s, [b"SET", b"now1", b"v"]) is OK
    assert cmds.dispatch(s, [b"PING"]) is not None and not asyncio.iscoroutine(
        cmds.dispatch(s, [b"PING"]))
    later = cmds.dispatch(s, [b"SET", b"k", b"v"])                        # LATER: the coroutine
    assert asyncio.iscoroutine(later) and asyncio.run(later) is OK
    assert asyncio.run(cmds.execute(s, [b"GET", b"k"])) == b"v"
    err = cmds.dispatch(s, [b"GET", b"bad"])                              # raised: an error reply
    assert isinstance(err, CommandError) and "bad key" in str(err)
    assert cmds.stats["total_error_replies"] == 1
    opt = cmds.dispatch(s, [b"SET", b"now2", b"v", b"NX"])                # options checked first
    assert isinstance(opt, CommandError) and "NX" in str(opt)
    assert ("set", b"now2") not in cmds.backend.now_calls
    assert MemoryBackend().get_lww_now(b"x") is LATER                     # the default


class _FutureBackend(MemoryBackend):
    """set_overwrite_now answers with a future: done at once, failed for b"bad"."""

    def set_overwrite_now(self, key, value):
        fut = asyncio.get_running_loop().create_future()
        if key == b"bad":
            fut.set_exception(QuorumError("write quorum not met: 1 of 2"))
        else:
            fut.set_result(b"clock bytes")        # what the node's future ends with
        return fut


def test_a_backend_future_is_settled_into_the_reply():
    async def main():
        cmds = Commands(_FutureBackend())
        s = cmds.open_session()
        fut = cmds.dispatch(s, [b"SET", b"k", b"v"])
        assert isinstance(fut, asyncio.Future) and s.pending.name == "set"
        assert cmds.settle(s.pending, fut) is OK              # `then`: the result is unused
        err = await cmds.execute(s, [b"SET", b"bad", b"v"])
        assert isinstance(err, QuorumError) and "1 of 2" in str(err)
        assert await cmds.execute(s, [b"SET", b"k", b"v"]) is OK
        cancelled = asyncio.get_running_loop().create_future()
        cancelled.cancel()
        assert "cancelled" in str(cmds.settle(s.pending, cancelled))

    asyncio.run(main())
