"""The member table value: merge is a join (hypothesis), digests converge, encoding validates."""
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvnet.membership import state
from kvnet.membership.state import (
    STATUSES, Digest, MemberState, MemberTable, apply, beat, decode_digest, decode_entries,
    decode_member, decode_table, diff, digest, encode_digest, encode_member, encode_table,
    entries, merge, merge_member, next_generation, set_status, with_member,
)

NODES = ["a", "b", "c", "d"]
fast = settings(max_examples=60)    # the laws fail on small tables if at all; keep the suite quick


def member(node="a", gen=100, hb=0, status="joining", epoch=0, host="127.0.0.1", port=17379,
           zone=None):
    return MemberState(node, host, port, host, port - 10000, gen, hb, status, epoch, zone)


small = st.integers(0, 4)
members = st.builds(
    MemberState,
    node=st.sampled_from(NODES),
    host=st.sampled_from(["127.0.0.1", "10.0.0.2"]),
    peer_port=st.sampled_from([17379, 17380]),
    client_host=st.sampled_from(["127.0.0.1", "::1"]),
    client_port=st.sampled_from([7379, 7380]),
    generation=small,
    heartbeat=small,
    status=st.sampled_from(STATUSES),
    ring_epoch=st.integers(0, 2),
    zone=st.sampled_from([None, "z1", "z2"]),
)
tables = st.lists(members, max_size=6).map(MemberTable)


def _honest(m):
    """One process announces one set of addresses: fields follow (node, generation)."""
    k = NODES.index(m.node) + 4 * m.generation
    return m._replace(host=f"10.0.0.{k}", peer_port=17000 + k, client_host=f"10.0.0.{k}",
                      client_port=7000 + k, zone=None if k % 3 == 0 else f"z{k % 3}")


# tables as gossip can produce them (equal (generation, heartbeat) -> equal process fields)
honest_tables = st.lists(members.map(_honest), max_size=6).map(MemberTable)


# ---- merge is a join ---------------------------------------------------------------------------

@fast
@given(tables, tables)
def test_merge_commutative(a, b):
    assert merge(a, b) == merge(b, a)


@fast
@given(tables, tables, tables)
def test_merge_associative(a, b, c):
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@fast
@given(tables, tables)
def test_merge_idempotent_and_absorbing(a, b):
    assert merge(a, a) == a
    m = merge(a, b)
    assert merge(m, a) == m and merge(m, b) == m


@fast
@given(tables, tables)
def test_merge_takes_the_higher_parts(a, b):
    m = merge(a, b)
    assert set(m) == set(a) | set(b)
    for node, e in m.items():
        sides = [t[node] for t in (a, b) if node in t]
        assert e.version == max(s.version for s in sides)
        assert e.membership == max(s.membership for s in sides)


@fast
@given(members, st.integers(0, 4), st.integers(0, 100))
def test_restarted_node_wins_over_its_old_entry(old, bump, old_hb):
    old = old._replace(heartbeat=old_hb)
    new = old._replace(generation=old.generation + 1 + bump, heartbeat=0, host="10.9.9.9")
    for m in (merge(MemberTable([old]), MemberTable([new])),
              merge(MemberTable([new]), MemberTable([old]))):
        assert m[old.node].version == (new.generation, 0)
        assert m[old.node].host == "10.9.9.9"


def test_status_is_monotonic_within_an_epoch_and_survives_newer_heartbeats():
    # The claimant moved a to leaving; a itself, unaware, keeps beating as valid.
    a_self = member("a", gen=5, hb=40, status="valid", epoch=3)
    claimant_view = member("a", gen=5, hb=30, status="leaving", epoch=3)
    m = merge_member(a_self, claimant_view)
    assert (m.heartbeat, m.status, m.ring_epoch) == (40, "leaving", 3)
    # backward within the epoch loses; a later epoch may restart the order
    assert merge_member(m, m._replace(status="joining")).status == "leaving"
    rejoin = m._replace(status="joining", ring_epoch=4)
    assert merge_member(m, rejoin).status == "joining"
    assert merge_member(m._replace(status="removed"), rejoin).ring_epoch == 4


def test_status_order_is_the_documented_one():
    assert STATUSES == ("joining", "valid", "leaving", "exiting", "removed")


def test_set_status_refuses_what_merge_would_discard():
    t = MemberTable([member("a", status="valid", epoch=2)])
    assert set_status(t, "a", "leaving", 2)["a"].status == "leaving"
    assert set_status(t, "a", "joining", 3)["a"].status == "joining"
    with pytest.raises(ValueError, match="behind valid in ring epoch 2"):
        set_status(t, "a", "joining", 2)
    with pytest.raises(ValueError, match="behind"):
        set_status(t, "a", "removed", 1)
    with pytest.raises(ValueError, match="status must be one of"):
        set_status(t, "a", "gone", 5)
    with pytest.raises(ValueError, match="not in the member table"):
        set_status(t, "zz", "valid", 5)


def test_beat_increments_only_mine():
    t = MemberTable([member("a", hb=3), member("b", hb=9)])
    t2 = beat(beat(t, "a"), "a")
    assert t2["a"].heartbeat == 5 and t2["b"] == t["b"] and t["a"].heartbeat == 3
    assert merge(t, t2) == t2
    with pytest.raises(ValueError):
        beat(t, "c")


def test_table_is_an_immutable_hashable_mapping():
    t = MemberTable([member("b"), member("a")])
    assert list(t) == ["a", "b"] and len(t) == 2
    assert hash(t) == hash(MemberTable([member("a"), member("b")]))
    assert with_member(t, member("c"))["c"].node == "c" and "c" not in t
    with pytest.raises(TypeError):
        t["a"] = member("a")
    with pytest.raises(TypeError):
        MemberTable([("a", 1)])
    with pytest.raises(ValueError):
        merge_member(member("a"), member("b"))


# ---- digests: syn / ack / ack2 converge ------------------------------------------------------

def gossip(a, b):
    """One exchange initiated by a; -> (a', b', entries sent each way)."""
    send, want = diff(b, decode_digest(encode_digest(digest(a))))       # b handles the syn
    a = apply(a, decode_entries(state.encode_entries(send)))            # a handles the ack
    ack2 = entries(a, want)
    b = apply(b, decode_entries(state.encode_entries(ack2)))            # b handles the ack2
    return a, b, len(send) + len(ack2)


@fast
@given(honest_tables, honest_tables)
def test_one_exchange_makes_both_sides_the_merge(a, b):
    m = merge(a, b)
    a2, b2, _ = gossip(a, b)
    assert a2 == m and b2 == m
    assert gossip(a2, b2)[2] == 0          # nothing left to send


def test_diff_sends_only_what_is_newer_either_way():
    mine = MemberTable([member("a", hb=5), member("b", hb=1), member("c", hb=2)])
    theirs = [Digest("a", 100, 5, 0, "joining"), Digest("b", 100, 3, 0, "joining"),
              Digest("d", 7, 0, 0, "valid"), Digest("c", 100, 2, 1, "valid")]
    send, want = diff(mine, theirs)
    assert send == []
    assert want == ["b", "c", "d"]
    send, want = diff(mine, [])
    assert [e.node for e in send] == ["a", "b", "c"] and want == []


def test_status_change_without_heartbeat_change_still_spreads():
    a = MemberTable([member("x", hb=9, status="valid", epoch=1)])
    b = set_status(a, "x", "leaving", 1)
    assert digest(a) != digest(b)
    a2, b2, n = gossip(a, b)
    assert n == 1 and a2["x"].status == "leaving" and a2 == b2


# ---- encoding ---------------------------------------------------------------------------------

@fast
@given(tables)
def test_table_round_trips_through_msgpack(t):
    wire = msgpack.packb(encode_table(t))
    assert decode_table(msgpack.unpackb(wire, raw=False)) == t
    assert decode_digest(msgpack.unpackb(msgpack.packb(encode_digest(digest(t))))) == digest(t)


GOOD = encode_member(member("a", gen=1, hb=2, zone="z1"))


@pytest.mark.parametrize("index,value,message", [
    (0, "", "node is not a valid name"),
    (0, b"a", "node is not a valid name"),
    (1, "", "host is not a valid name"),
    (2, 0, "peer_port must be an integer from 1 to 65535"),
    (4, 70000, "client_port must be an integer"),
    (5, -1, "generation must be an integer"),
    (5, 1 << 64, "generation must be an integer"),
    (6, True, "heartbeat must be an integer"),
    (6, 1.5, "heartbeat must be an integer"),
    (7, "alive", "status must be one of"),
    (8, None, "ring_epoch must be an integer"),
    (9, "", "zone is not a valid name"),
])
def test_decode_member_names_the_problem(index, value, message):
    bad = list(GOOD)
    bad[index] = value
    with pytest.raises(ValueError, match=message):
        decode_member(bad)


@pytest.mark.parametrize("data,message", [
    (None, "expected a list"),
    ({"a": 1}, "expected a list"),
    ([GOOD[:5]], r"table\[0\]: expected 10 fields"),
    ([GOOD, GOOD], r"table\[1\]: node 'a' appears twice"),
    (["x"], r"table\[0\]: expected a list"),
])
def test_decode_table_garbage(data, message):
    with pytest.raises(ValueError, match=message):
        decode_table(data)


@pytest.mark.parametrize("data,message", [
    ("abc", "expected a list"),
    ([["a", 1, 2, 3]], "expected \\[node"),
    ([["a", 1, 2, 3, "up"]], "status must be one of"),
    ([["a", 1, -2, 3, "valid"]], r"digest\[0\] \(a\): heartbeat"),
    ([["a", 1, 2, 3, "valid"], ["a", 1, 2, 3, "valid"]], "appears twice"),
])
def test_decode_digest_garbage(data, message):
    with pytest.raises(ValueError, match=message):
        decode_digest(data)


@settings(max_examples=100)
@given(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=3), st.binary(max_size=2),
                          st.booleans(), st.lists(st.integers(), max_size=2)),
                min_size=10, max_size=10))
def test_decode_member_garbage_is_value_error_only(fields):
    try:
        decode_member(fields)
    except ValueError:
        pass


# ---- the fast paths: what a known table spares, and the roster -------------------------------

KNOWN = MemberTable([member("a", gen=1, hb=0, zone="z1"), member("b", gen=1, hb=0)])


@pytest.mark.parametrize("index,value,message", [
    (0, "", "node is not a valid name"),
    (1, "", "host is not a valid name"),
    (2, 0, "peer_port must be an integer from 1 to 65535"),
    (5, -1, "generation must be an integer"),
    (5, 1 << 64, "generation must be an integer"),
    (6, True, "heartbeat must be an integer"),
    (6, 1.5, "heartbeat must be an integer"),
    (7, "alive", "status must be one of"),
    (8, None, "ring_epoch must be an integer"),
    (9, "", "zone is not a valid name"),
])
def test_a_known_table_spares_no_check(index, value, message):
    bad = list(GOOD)
    bad[index] = value
    with pytest.raises(ValueError, match=message):
        decode_member(bad, known=KNOWN)
    with pytest.raises(ValueError, match=message):
        decode_entries([GOOD, bad], known=KNOWN)


@settings(max_examples=200)
@given(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=3), st.binary(max_size=2),
                          st.booleans(), st.lists(st.integers(), max_size=2)),
                min_size=10, max_size=10), st.sampled_from(["a", "b", "x"]))
def test_decoding_with_a_known_table_is_decoding_without(fields, node):
    fields[0] = node
    for item in (fields, GOOD, encode_member(member("b", gen=3, hb=9, status="valid"))):
        try:
            plain = decode_member(item)
        except ValueError:
            plain = None
        try:
            fast = decode_member(item, known=KNOWN)
        except ValueError:
            fast = None
        assert plain == fast
    dig = [[node, 1, 2, 0, "valid"], fields[:5]]
    try:
        plain = decode_digest(dig)
    except ValueError:
        plain = None
    try:
        fast = decode_digest(dig, known=KNOWN)
    except ValueError:
        fast = None
    assert plain == fast


def test_the_digest_of_a_table_is_its_encoded_digest():
    t = MemberTable([member("a", gen=1, hb=5), member("c", gen=2, hb=1, status="valid", epoch=3)])
    assert state.table_digest(t) == encode_digest(digest(t))
    assert decode_digest(state.table_digest(t), known=t) == digest(t)


def test_heartbeats_keep_the_roster_and_nothing_else_does():
    t = MemberTable([member("a", gen=1, hb=0), member("b", gen=1, hb=0)])
    r = t.roster
    assert [x[0] for x in r] == ["a", "b"]
    assert beat(t, "a").roster is r                                     # a beat
    newer = apply(t, [member("b", gen=1, hb=7)])
    assert newer["b"].heartbeat == 7 and newer.roster is r              # news of heartbeats
    assert apply(newer, [member("b", gen=1, hb=3)]) is newer            # old news: no change
    moved = apply(t, [member("b", gen=1, hb=8, host="10.0.0.9")])
    assert moved.roster is not r and ("b", "joining", 0, "10.0.0.9") == moved.roster[1][:4]
    assert set_status(t, "b", "valid", 1).roster is not r               # a status
    grown = apply(t, [member("c", gen=1, hb=0)])
    assert list(grown) == ["a", "b", "c"] and grown.roster is not r     # a member
    # the fast apply is the plain merge
    for got in (newer, moved, grown):
        assert got == merge(t, MemberTable(got.members()))


@fast
@given(honest_tables, st.lists(members.map(_honest), max_size=6))
def test_apply_is_the_merge_with_the_received_table(a, received):
    assert apply(a, received) == merge(a, MemberTable(received))
    assert apply(a, received).roster == MemberTable(apply(a, received).members()).roster


@fast
@given(honest_tables, honest_tables)
def test_an_exchange_with_beats_makes_both_sides_the_merge(a, b):
    # A -> B syn: digest(A); B -> A ack: send whole, beats, want, want_beats;
    # A -> B ack2: A's entries for want, A's beats for want_beats
    send, beats, want, want_beats = state.diff_beats(b, digest(a))
    a2, changed = state.apply_beats(apply(a, send), beats)
    assert a2.roster == MemberTable(a2.members()).roster
    assert set(changed) <= set(a2.members())
    b2, _ = state.apply_beats(apply(b, entries(a2, want)), state.beats_of(a2, want_beats))
    assert a2 == b2 == merge(a, b)
    # beats are what diff would have sent whole, and nothing is sent twice
    plain_send, plain_want = diff(b, digest(a))
    assert sorted([e.node for e in send] + [x[0] for x in beats]) == [e.node for e in plain_send]
    assert sorted(want + want_beats) == plain_want
    assert state.diff_beats(b2, digest(a2)) == ([], [], [], [])


def test_beats_only_replace_a_lower_heartbeat_of_the_same_generation():
    t = MemberTable([member("a", gen=2, hb=5, status="valid", epoch=1), member("b", gen=1, hb=1)])
    got, changed = state.apply_beats(t, [("a", 2, 9), ("a", 1, 99), ("b", 1, 1), ("x", 1, 3)])
    assert got["a"] == t["a"]._replace(heartbeat=9) and got["b"] == t["b"]
    assert changed == [got["a"]] and got.roster is t.roster
    assert state.apply_beats(t, [("b", 1, 0)]) == (t, [])
    flat = state.encode_beats([("a", 2, 9), ("b", 1, 1)])
    assert flat == ["a", 2, 9, "b", 1, 1]
    assert state.decode_beats(flat) == state.decode_beats(flat, known=t) == [("a", 2, 9),
                                                                            ("b", 1, 1)]


@pytest.mark.parametrize("data,message", [
    (None, "flat list"),
    (["a", 1], "flat list"),
    (["", 1, 2], r"beats\[0\]: node is not a valid name"),
    (["a", 1, 2, "b", -1, 2], r"beats\[1\] \(b\): generation"),
    (["a", 1, True], "heartbeat must be an integer"),
])
def test_decode_beats_garbage(data, message):
    with pytest.raises(ValueError, match=message):
        state.decode_beats(data)
    with pytest.raises(ValueError, match=message):
        state.decode_beats(data, known=KNOWN)


# ---- the generation file ----------------------------------------------------------------------

def test_next_generation(tmp_path):
    d = tmp_path / "node1"
    assert next_generation(str(d), 1000.7) == 1000             # fresh: wall clock, dir created
    assert next_generation(str(d), 1000.9) == 1001             # same second: previous + 1
    assert next_generation(str(d), 500.0) == 1002              # clock went back: still up
    assert next_generation(str(d), 5000.0) == 5000             # clock ahead: wall clock
    assert (d / "generation").read_text() == "5000\n"
    (d / "generation").write_text("garbage")
    with pytest.raises(ValueError, match="not a generation number"):
        next_generation(str(d), 6000.0)
