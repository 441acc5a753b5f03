"""Users and roles at the RESP front door (docs/security.md, "Users and roles"): AUTH and HELLO
with a user name, Redis' error words, each role's commands, redis-py with a user name."""
import asyncio
import hashlib

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from kvcore._native import NO_EXTENSIONS
from kvnet.acl import ADMIN, NONE, READ, WRITE, User, parse_users, required_level
from kvnet.errors import ConfigError
from kvnet.resp.backend import MemoryBackend
from kvnet.resp.commands import Commands
from kvnet.resp.replies import OK
from kvnet.resp.server import serve
from kvnet.testing import free_ports

NO_RETRY = Retry(NoBackoff(), 0)
USERS = parse_users("ro:read:ro-pw,rw:write:rw-pw,ops:admin:#"
                    + hashlib.sha256(b"ops-pw").hexdigest())
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."


def run(coro):
    with asyncio.Runner(debug=True) as runner:
        return runner.run(asyncio.wait_for(coro, 60))


def execute(cmds, session, *argv):
    return run(cmds.execute(session, [a if isinstance(a, bytes) else a.encode() for a in argv]))


def resp(reply):
    return reply.resp() if hasattr(reply, "resp") else reply


# ---- the table ----------------------------------------------------------------------------------

def test_every_command_needs_the_level_of_its_kind():
    t = Commands(MemoryBackend()).table
    assert t[b"get"].level == t[b"scan"].level == t[b"kv.get"].level == READ
    assert t[b"info"].level == t[b"kv.status"].level == READ
    assert t[b"set"].level == t[b"del"].level == t[b"kv.put"].level == t[b"mset"].level == WRITE
    for name in (b"flushdb", b"flushall", b"kv.cluster", b"kv.compact"):
        assert t[name].level == ADMIN, name
    for sub in (b"get", b"set", b"resetstat", b"rewrite"):
        assert t[b"config"].subcommands[sub].level == ADMIN
    assert t[b"client"].subcommands[b"list"].level == ADMIN
    assert t[b"acl"].subcommands[b"list"].level == ADMIN
    for name in (b"ping", b"echo", b"auth", b"hello", b"quit", b"select"):
        assert t[name].level == NONE, name
    assert t[b"client"].subcommands[b"setinfo"].level == NONE
    assert t[b"acl"].subcommands[b"whoami"].level == NONE
    # every command flagged admin needs admin, every write write
    for c in t.values():
        for x in [c, *(c.subcommands or {}).values()]:
            if "admin" in x.flags:
                assert x.level == ADMIN, x.name
            elif "write" in x.flags:
                assert x.level >= WRITE, x.name
            assert x.level == required_level(x)


# ---- AUTH, HELLO and the error words --------------------------------------------------------------

def test_auth_with_user_names_and_roles():
    cmds = Commands(MemoryBackend(), password="def-pw", users=USERS)
    s = cmds.open_session()
    assert not s.authenticated and s.level == NONE
    assert resp(execute(cmds, s, "GET", "k")) == "NOAUTH Authentication required."
    assert resp(execute(cmds, s, "AUTH", "ro", "wrong")) == WRONGPASS
    assert resp(execute(cmds, s, "AUTH", "nobody", "ro-pw")) == WRONGPASS
    assert resp(execute(cmds, s, "AUTH", "wrong")) == WRONGPASS       # the default user's
    assert not s.authenticated
    assert execute(cmds, s, "AUTH", "ro", "ro-pw") is OK
    assert s.user == b"ro" and s.level == READ
    assert execute(cmds, s, "GET", "k") is None
    assert resp(execute(cmds, s, "SET", "k", "v")) == \
        "NOPERM User ro has no permissions to run the 'set' command"
    assert resp(execute(cmds, s, "CONFIG", "SET", "x", "y")) == \
        "NOPERM User ro has no permissions to run the 'config|set' command"
    assert execute(cmds, s, "ACL", "WHOAMI") == b"ro"
    assert execute(cmds, s, "PING") is not None
    # a failed AUTH leaves the session logged in as it was (as Redis does)
    assert resp(execute(cmds, s, "AUTH", "ops", "nope")) == WRONGPASS
    assert s.user == b"ro" and s.level == READ
    assert execute(cmds, s, "AUTH", "rw", "rw-pw") is OK
    assert execute(cmds, s, "SET", "k", "v") is OK
    assert resp(execute(cmds, s, "FLUSHDB")) == \
        "NOPERM User rw has no permissions to run the 'flushdb' command"
    assert resp(execute(cmds, s, "KV.CLUSTER", "PLAN")).startswith("NOPERM User rw ")
    assert execute(cmds, s, "AUTH", "ops", "ops-pw") is OK and s.level == ADMIN
    assert execute(cmds, s, "FLUSHDB") is OK
    assert execute(cmds, s, "AUTH", "def-pw") is OK and s.user == b"default" and s.level == ADMIN
    assert execute(cmds, s, "AUTH", "default", "def-pw") is OK


def test_config_get_requirepass_answers_the_digest_never_the_password():
    cmds = Commands(MemoryBackend(), password="def-pw")
    s = cmds.open_session()
    assert execute(cmds, s, "AUTH", "def-pw") is OK
    assert execute(cmds, s, "CONFIG", "GET", "requirepass") == \
        {"requirepass": "#" + hashlib.sha256(b"def-pw").hexdigest()}
    open_cmds = Commands(MemoryBackend())
    s = open_cmds.open_session()
    assert execute(open_cmds, s, "CONFIG", "GET", "requirepass") == {"requirepass": ""}


def test_kv_trace_needs_the_role_of_the_command_it_runs():
    class Traced(MemoryBackend):
        async def trace(self, op, key, *args):
            return {"op": op, "key": key}

    cmds = Commands(Traced(), users=USERS)
    s = cmds.open_session()
    assert execute(cmds, s, "AUTH", "ro", "ro-pw") is OK
    assert execute(cmds, s, "KV.TRACE", "GET", "k") == {"op": "get", "key": b"k"}
    assert execute(cmds, s, "KV.TRACE", "kv.get", "k", "R", "1")["op"] == "kv.get"
    for argv in (("SET", "k", "v"), ("DEL", "k"), ("KV.PUT", "k", "v"), ("KV.DEL", "k")):
        assert resp(execute(cmds, s, "KV.TRACE", *argv)) == \
            f"NOPERM User ro has no permissions to run the '{argv[0].lower()}' command"
    assert execute(cmds, s, "AUTH", "rw", "rw-pw") is OK
    assert execute(cmds, s, "KV.TRACE", "SET", "k", "v")["op"] == "set"
    assert resp(execute(cmds, s, "KV.TRACE", "FLUSHDB", "x")).startswith(
        "ERR KV.TRACE runs GET, SET, DEL")
    assert resp(execute(cmds, s, "KV.TRACE", "DEL", "a", "b")) == "ERR KV.TRACE DEL takes one key"
    assert resp(execute(cmds, s, "KV.TRACE", "KV.GET", "k", "W", "1")).startswith(
        "ERR syntax error: unknown option 'W'")
    # a backend without a coordinator (MemoryBackend) says so
    plain = Commands(MemoryBackend())
    assert resp(execute(plain, plain.open_session(), "KV.TRACE", "GET", "k")) == \
        "ERR KV.TRACE needs a ringkv node: this backend has no coordinator"


def test_hello_auth_with_a_user_name():
    cmds = Commands(MemoryBackend(), users=USERS)
    s = cmds.open_session()
    assert not s.authenticated      # named users and no requirepass: the default user is off
    assert resp(execute(cmds, s, "HELLO", "3")).startswith("NOAUTH HELLO must be called")
    assert resp(execute(cmds, s, "HELLO", "3", "AUTH", "default", "")) == WRONGPASS
    assert resp(execute(cmds, s, "AUTH", "anything")) == WRONGPASS
    reply = execute(cmds, s, "HELLO", "3", "AUTH", "rw", "rw-pw")
    assert reply["proto"] == 3 and s.user == b"rw" and s.level == WRITE
    assert b"user=rw " in execute(cmds, s, "CLIENT", "INFO").encode()


def test_without_password_or_users_everyone_is_the_default_admin():
    cmds = Commands(MemoryBackend())
    s = cmds.open_session()
    assert s.authenticated and s.level == ADMIN
    assert execute(cmds, s, "FLUSHALL") is OK
    assert resp(execute(cmds, s, "AUTH", "x")).startswith("ERR AUTH <password> called without")
    assert execute(cmds, s, "AUTH", "default", "anything") is OK
    assert execute(cmds, s, "ACL", "LIST") == ["user default on nopass ~* &* +@all"]


def test_acl_list_and_users_show_digests_never_passwords():
    cmds = Commands(MemoryBackend(), password="def-pw", users=USERS)
    s = cmds.open_session()
    execute(cmds, s, "AUTH", "def-pw")
    lines = execute(cmds, s, "ACL", "LIST")
    assert lines[0] == f"user default on #{hashlib.sha256(b'def-pw').hexdigest()} ~* &* +@all"
    assert any(x.startswith("user ro on #") and "+@read" in x and "+@write" not in x
               for x in lines)
    assert not any("pw" in x for x in lines)
    assert execute(cmds, s, "ACL", "USERS") == [b"default", b"ops", b"ro", b"rw"]


@pytest.mark.parametrize("value, word", [
    ("x:reader:pw", "role"), ("default:admin:pw", "requirepass"), ("x:read", "name:role:password"),
    ("a:read:p,a:write:q", "twice"), ("bad name:read:pw", "user name"),
    ("x:read:#abc", "64 hex digits"), ({"x": {"role": "read"}}, "password"),
    ({"x": {"role": "read", "password": "p", "extra": 1}}, "table"),
])
def test_bad_users_are_refused_naming_the_setting(value, word):
    with pytest.raises(ConfigError, match="users") as e:
        parse_users(value)
    assert word in str(e.value)


def test_users_from_a_toml_table(tmp_path):
    from kvnet.config import load
    p = tmp_path / "n.toml"
    p.write_text('requirepass = "#' + "cd" * 32 + '"\n[users.ro]\nrole = "read"\n'
                 'password = "a:b,c"\n')
    cfg = load(p)
    assert cfg.users == (User("ro", "read", hashlib.sha256(b"a:b,c").hexdigest()),)
    assert cfg.default_password == "#" + "cd" * 32
    assert load(password="x").default_password == "x"
    with pytest.raises(ConfigError, match="requirepass and password"):
        load(password="x", requirepass="y")
    assert "a:b,c" not in repr(cfg) and "cd" * 32 not in repr(cfg)


# ---- over the wire, with redis-py -----------------------------------------------------------------

@pytest.mark.parametrize("proto", [2, 3])
def test_redis_py_with_a_user_name(proto):
    async def main():
        server = await serve(MemoryBackend(), password="def-pw", users=USERS)
        try:
            ro = aredis.Redis(port=server.port, username="ro", password="ro-pw", protocol=proto,
                              retry=NO_RETRY)
            rw = aredis.Redis(port=server.port, username="rw", password="rw-pw", protocol=proto,
                              retry=NO_RETRY)
            ops = aredis.Redis(port=server.port, username="ops", password="ops-pw",
                               protocol=proto, retry=NO_RETRY)
            assert await rw.set("k", "v")
            assert await ro.get("k") == b"v"
            assert await ro.execute_command("ACL", "WHOAMI") in (b"ro", "ro")
            with pytest.raises(redis.exceptions.NoPermissionError, match="'set' command"):
                await ro.set("k", "w")
            with pytest.raises(redis.exceptions.NoPermissionError, match="'flushdb' command"):
                await rw.flushdb()
            assert await ops.flushdb()
            bad = aredis.Redis(port=server.port, username="ro", password="rw-pw", retry=NO_RETRY)
            with pytest.raises(redis.exceptions.AuthenticationError):
                await bad.ping()
            for c in (ro, rw, ops, bad):
                await c.aclose()
        finally:
            await server.close()
    run(main())


def test_a_real_node_refuses_a_read_only_set_through_its_compiled_door(tmp_path):
    """A one-node node (N=1: every GET and SET goes through LocalDoor): a read-only user
    gets NOPERM for SET and its GETs still answer; a write user's SET is stored."""
    from kvnet.config import load
    from kvnet.node import Node

    async def main():
        port, peer = free_ports(2)
        node = await Node(load(name="solo", data_dir=str(tmp_path / "d"), port=port,
                               peer_port=peer, n=1, r=1, w=1, ring_size=8, users=USERS,
                               fsync="never")).start()
        try:
            # (RINGKV_NO_EXTENSIONS=1: no door, and the general path refuses the same way)
            assert (node.resp.door is not None) == (not NO_EXTENSIONS)
            ro = aredis.Redis(port=node.resp.port, username="ro", password="ro-pw",
                              retry=NO_RETRY)
            rw = aredis.Redis(port=node.resp.port, username="rw", password="rw-pw",
                              retry=NO_RETRY)
            assert await rw.set("k", "v")
            with pytest.raises(redis.exceptions.NoPermissionError):
                await ro.set("k", "w")
            pipe = ro.pipeline(transaction=False)   # several in one packet: LocalDoor.receive
            pipe.get("k").set("k", "w").get("k")
            got = await pipe.execute(raise_on_error=False)
            assert got[0] == b"v" and got[2] == b"v"
            assert isinstance(got[1], redis.exceptions.NoPermissionError)
            assert await rw.get("k") == b"v"
            for c in (ro, rw):
                await c.aclose()
        finally:
            await node.stop()
    run(main())
