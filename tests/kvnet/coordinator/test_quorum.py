"""PutQuorum / GetQuorum: fixed examples and properties over random reply orders (docs/quorum.md)."""
import pytest
from hypothesis import given, strategies as st

from kvcore import versions as v
from kvcore import ring as ring_native
from kvnet.coordinator.preflist import Target, preflist_for
from kvnet.coordinator.quorum import (
    DURABLE, NOT_FOUND, OK, TIMEOUT, Failed, Found, GetQuorum, GetResult, PutQuorum, PutResult, ReadRepair,
    resolve_quorum,
)
from kvnet.errors import CommandError, ConfigError, QuorumError, Unavailable

A = v.update(v.new(v.sibling(b"v1", 1)), None, "a")            # [(a,1,[v1])]
B = v.update(v.new(v.join(A), v.sibling(b"v2", 2)), A, "a")     # [(a,2,[v2])]
C = v.update(v.new(v.sibling(b"v3", 3)), None, "b")             # [(b,1,[v3])]
P3 = ["a", "b", "c"]


def feed(q, replies):
    for node, r in replies:
        q.add_result(node, r)
    return q


# ---- resolving R and W ------------------------------------------------------------------------

@pytest.mark.parametrize("value,n,want", [
    ("one", 3, 1), ("QUORUM", 3, 2), ("quorum", 5, 3), ("quorum", 4, 3), ("All", 3, 3),
    (b"ALL", 5, 5), (b"2", 3, 2), ("3", 3, 3), (1, 1, 1), ("quorum", 1, 1), (" one ", 2, 1),
])
def test_resolve(value, n, want):
    assert resolve_quorum(value, n) == want


@pytest.mark.parametrize("value", [0, 4, -1, "0", "4", "two", b"\xff", 2.0, True, None, "", "²"])
def test_resolve_refuses(value):
    with pytest.raises(CommandError) as exc:
        resolve_quorum(value, 3, "W")
    assert "W" in str(exc.value)


def test_resolve_messages_and_error_type():
    with pytest.raises(CommandError, match=r"W must be from 1 to N=3, got 4"):
        resolve_quorum(4, 3, "W")
    with pytest.raises(ConfigError, match="r_default"):
        resolve_quorum("most", 3, "r_default", error=ConfigError)
    with pytest.raises(ValueError):
        resolve_quorum(1, 0)


# ---- writes: examples -------------------------------------------------------------------------

def test_put_succeeds_at_w_counting_the_coordinator():
    q = PutQuorum(3, "quorum", P3)
    assert not q.enough()
    q.add_result("a", OK)                      # the coordinator's own store
    assert not q.enough()
    q.add_result("c", OK)
    assert q.enough()
    assert q.response() == PutResult(("a", "c"), 2)
    q.add_result("b", TIMEOUT)                 # a straggler changes nothing decided
    assert q.response() == PutResult(("a", "c"), 2) and q.done


def test_put_fails_as_soon_as_w_is_out_of_reach():
    q = PutQuorum(3, "all", P3)
    q.add_result("a", OK)
    q.add_result("b", Failed("connection refused"))
    assert q.enough() and not q.done
    err = q.response()
    assert isinstance(err, QuorumError)
    assert str(err).startswith("write quorum not met: 1 of 3 needed acknowledgements (W=3, N=3")
    assert "b: connection refused" in str(err) and "no reply yet: c" in str(err)
    assert err.resp().startswith("QUORUM ")
    q = feed(PutQuorum(2, 2, ["a", "b"]), [("a", Failed("disk\r\nfull"))])
    assert "a: disk full" in str(q.response()) and "\n" not in str(q.response())


def test_put_fallback_counts_unless_strict():
    targets = ["a", Target("d", "b"), "c"]
    q = feed(PutQuorum(3, 3, targets), [("a", OK), ("d", OK), ("c", OK)])
    assert q.response() == PutResult(("a", "d", "c"), 3)
    q = PutQuorum(3, 2, targets, strict=True)
    feed(q, [("d", OK), ("a", OK)])
    assert not q.enough() and q.counted == 1
    q.add_result("c", OK)
    assert q.response() == PutResult(("a", "c"), 2)
    q = feed(PutQuorum(3, 2, targets, strict=True), [("d", OK), ("a", OK), ("c", TIMEOUT)])
    assert "not counted: d (for b)" in str(q.response())


def test_unavailable_up_front():
    ring = ring_native.Ring.create(["n1", "n2", "n3", "n4", "n5"], q=64, n=3)
    prefs = ring.preference_list(0)
    pl = preflist_for(ring, 0, lambda x: x != prefs[0], strict=True)
    q = PutQuorum(3, "all", pl, strict=False)
    assert q.strict is False and q.unavailable and q.enough()
    err = q.response()
    assert isinstance(err, Unavailable)
    assert str(err) == f"write needs W=3 replicas but only 2 are reachable (N=3; down: {prefs[0]})"
    assert PutQuorum(3, 2, pl).strict is True          # a Preflist passes its strict flag on
    q = GetQuorum(3, 3, pl)
    assert str(q.response()) == ("read needs R=3 primaries but only 2 are reachable "
                                 f"(N=3, strict: primaries only; down: {prefs[0]})")
    q = GetQuorum(3, 1, [], strict=False)
    assert isinstance(q.response(), Unavailable) and "only 0 are reachable" in str(q.response())


def test_bookkeeping_errors():
    q = PutQuorum(3, 2, P3)
    with pytest.raises(RuntimeError):
        q.response()
    with pytest.raises(ValueError):
        q.add_result("z", OK)
    with pytest.raises(TypeError):
        q.add_result("a", NOT_FOUND)           # not a write reply
    assert q.add_result("a", OK) is True
    assert q.add_result("a", Failed("late")) is False and q.failed == 0
    assert q.add_result("b", TimeoutError()) is True and q.failed == 1
    assert q.replies()["b"] == Failed("TimeoutError")
    with pytest.raises(ValueError):
        PutQuorum(3, 2, ["a", "a"])
    with pytest.raises(ValueError):
        PutQuorum(2, 2, P3)
    with pytest.raises(CommandError):
        GetQuorum(3, 4, P3)


# ---- reads: examples --------------------------------------------------------------------------

def test_get_merges_found_clocks():
    q = GetQuorum(3, 2, P3)
    q.add_result("a", Found(A))
    q.add_result("b", Found(C))
    got = q.response()
    assert isinstance(got, GetResult) and got.found and got.quorum_met and not got.not_found
    assert v.equal(got.clock, v.sync(A, C))
    q.add_result("c", NOT_FOUND)
    rr = q.final()
    assert rr == ReadRepair(v.sync(A, C), tuple(Target(x) for x in P3), (), False)


def test_get_read_repair_and_confirmation():
    q = feed(GetQuorum(3, 2, P3), [("a", Found(B)), ("b", Found(A))])
    assert q.final() is None                   # not every target has replied
    q.add_result("c", Found(B))
    rr = q.final()
    assert v.equal(rr.clock, B) and rr.stale == (Target("b"),) and not rr.confirmed
    q = feed(GetQuorum(3, 1, P3), [("a", Found(B)), ("b", Found(B)), ("c", Found(B))])
    assert q.final().confirmed and q.final().stale == ()
    q = feed(GetQuorum(3, 1, P3), [("a", Found(B)), ("b", Found(B)), ("c", TIMEOUT)])
    assert not q.final().confirmed and q.final().failed == (Target("c"),)


def test_fallback_not_found_does_not_count():
    targets = ["a", Target("d", "b"), Target("e", "c")]
    q = GetQuorum(3, 2, targets)
    q.add_result("a", NOT_FOUND)
    q.add_result("d", NOT_FOUND)
    assert not q.enough() and q.counted == 1
    q.add_result("e", Found(A))                # a found reply counts from anyone
    assert q.enough() and v.equal(q.response().clock, A)


def test_every_target_answered_gives_what_was_found():
    targets = ["a", Target("d", "b"), Target("e", "c")]
    q = feed(GetQuorum(3, 2, targets), [("a", NOT_FOUND), ("d", NOT_FOUND), ("e", NOT_FOUND)])
    got = q.response()
    assert got.not_found and not got.found and got.counted == 1 and not got.quorum_met
    assert q.final().stale == ()               # nothing to repair with
    q = feed(GetQuorum(3, 3, targets), [("a", Found(A)), ("d", NOT_FOUND), ("e", NOT_FOUND)])
    got = q.response()
    assert got.found and got.counted == 1 and v.equal(got.clock, A)
    assert q.final().stale == (Target("d", "b"), Target("e", "c"))
    # ... but not when a target failed: then it is a quorum error naming the counts.
    q = feed(GetQuorum(3, 2, targets), [("a", NOT_FOUND), ("d", NOT_FOUND), ("e", TIMEOUT)])
    err = q.response()
    assert isinstance(err, QuorumError)
    assert str(err) == ("read quorum not met: 1 of 2 needed replies (R=2, N=3, 3 targets); "
                        "failed: e (for c): timeout; not counted: d (for b)")


def test_tombstones_read_as_not_found_but_merge():
    dead = v.update(v.new(v.join(A), v.tombstone(5)), A, "a")
    q = feed(GetQuorum(3, 2, P3), [("a", Found(dead)), ("b", Found(A))])
    got = q.response()
    assert got.found and got.not_found and v.equal(got.clock, dead)
    q.add_result("c", NOT_FOUND)
    assert q.final().stale == (Target("b"), Target("c"))


def test_strict_read_ignores_fallbacks():
    targets = ["a", Target("d", "b"), "c"]
    q = feed(GetQuorum(3, 2, targets, strict=True), [("d", Found(A)), ("a", NOT_FOUND)])
    assert not q.enough()
    q.add_result("c", TIMEOUT)
    assert isinstance(q.response(), QuorumError)
    assert "1 of 2 needed" in str(q.response())


# ---- properties over random replies and orders ------------------------------------------------

@st.composite
def clocks(draw):
    """Clocks from one key's plausible history: replicas a, b, c each mint from their own stored
    clock (so no dot is ever minted twice, the rule versions.sync relies on) with or without a
    context a client read, and sync with each other now and then."""
    local = {"a": None, "b": None, "c": None}
    hist = []
    for i in range(draw(st.integers(1, 6))):
        actor = draw(st.sampled_from("abc"))
        if hist and draw(st.integers(0, 3)) == 0:
            other = draw(st.sampled_from("abc"))
            if local[other] is not None:
                mine = local[actor]
                local[actor] = local[other] if mine is None else v.sync(mine, local[other])
                hist.append(local[actor])
            continue
        value = v.tombstone(i) if draw(st.integers(0, 5)) == 0 else v.sibling(b"v%d" % i, i)
        ctx = v.join(draw(st.sampled_from(hist))) if hist and draw(st.booleans()) else ()
        local[actor] = v.update(v.new(ctx, value), local[actor], actor)
        hist.append(local[actor])
    if not hist:
        hist.append(v.update(v.new(v.sibling(b"v", 0)), None, "a"))
    return hist


@st.composite
def scenarios(draw, kind):
    """N, R/W, strict, targets (primaries, fallbacks, missing slots), one reply per target and
    two arrival orders."""
    n = draw(st.integers(1, 5))
    need = draw(st.integers(1, n))
    strict = draw(st.booleans())
    targets = []
    for i in range(n):
        slot = draw(st.sampled_from(["primary", "primary", "fallback", "missing"]))
        if slot == "primary":
            targets.append(Target(f"p{i}"))
        elif slot == "fallback":
            targets.append(Target(f"f{i}", f"p{i}"))
    hist = draw(clocks())
    fail = st.sampled_from([TIMEOUT, Failed("refused"), Failed("error: disk full")])
    if kind == "get":
        reply = st.one_of(st.sampled_from(hist).map(Found), st.just(NOT_FOUND), fail)
    else:
        reply = st.one_of(st.just(OK), st.just(OK), fail)
    replies = {t.node: draw(reply) for t in targets}
    order1 = draw(st.permutations(targets))
    order2 = draw(st.permutations(targets))
    return n, need, strict, tuple(targets), replies, order1, order2, hist


def qualifies(t, strict):
    return t.is_primary or not strict


def oracle(kind, need, strict, targets, replies):
    """'unavailable' / 'ok' / 'fail' once every target replied, stated from docs/algorithms.md,
    section 2."""
    if sum(qualifies(t, strict) for t in targets) < need:
        return "unavailable"
    if kind == "put":
        acks = sum(qualifies(t, strict) and replies[t.node] == OK for t in targets)
        return "ok" if acks >= need else "fail"
    counted = sum(qualifies(t, strict) and (isinstance(replies[t.node], Found)
                                            or (replies[t.node] == NOT_FOUND and t.is_primary))
                  for t in targets)
    failed = any(isinstance(replies[t.node], Failed) for t in targets)
    return "ok" if counted >= need or (not strict and not failed) else "fail"


def kind_of(resp):
    if isinstance(resp, Unavailable):
        return "unavailable"
    if isinstance(resp, QuorumError):
        return "fail"
    assert isinstance(resp, (GetResult, PutResult))
    return "ok"


def completions(kind, targets, replies, hist):
    """The best and the worst way the pending targets could still reply."""
    good = Found(hist[0]) if kind == "get" else OK
    best = {t.node: replies.get(t.node, good) for t in targets}
    worst = {t.node: replies.get(t.node, TIMEOUT) for t in targets}
    return best, worst


def run(kind, scenario, order):
    n, need, strict, targets, replies, _, _, hist = scenario
    cls = GetQuorum if kind == "get" else PutQuorum
    q = cls(n, need, targets, strict=strict)
    seen, decided, kinds = {}, False, []
    for t in [None] + list(order):
        if t is not None:
            assert q.add_result(t.node, replies[t.node])
            seen[t.node] = replies[t.node]
        enough = q.enough()
        assert enough or not decided, "enough() is monotonic"
        decided = enough
        best, worst = completions(kind, targets, seen, hist)
        a = oracle(kind, need, strict, targets, best)
        b = oracle(kind, need, strict, targets, worst)
        # enough() holds exactly when no reply still to come can change the outcome.
        assert enough == (a == b)
        if enough:
            kinds.append(kind_of(q.response()))
            assert kinds[-1] == a
        else:
            with pytest.raises(RuntimeError):
                q.response()
    assert q.done and q.enough()
    assert len(set(kinds)) == 1, "a decided outcome never changes"
    return q


def counted_by_hand(kind, strict, targets, replies):
    out = 0
    for t in targets:
        r = replies[t.node]
        if not qualifies(t, strict) or isinstance(r, Failed):
            continue
        out += kind == "put" or isinstance(r, Found) or t.is_primary
    return out


@given(scenarios("put"))
def test_put_properties(s):
    n, need, strict, targets, replies, order1, order2, _ = s
    q1, q2 = run("put", s, order1), run("put", s, order2)
    r1, r2 = q1.response(), q2.response()
    want = oracle("put", need, strict, targets, replies)
    assert kind_of(r1) == kind_of(r2) == want
    assert q1.counted == q2.counted == counted_by_hand("put", strict, targets, replies)
    if want == "ok":
        assert set(r1.acked) == set(r2.acked)
        assert r1.count >= need
        assert all(replies[x] == OK for x in r1.acked)
        assert r1.acked == tuple(t.node for t in order1 if replies[t.node] == OK
                                 and qualifies(t, strict))
        if strict:
            assert all(x.startswith("p") for x in r1.acked), "strict mode never counts fallbacks"
    elif want == "fail":
        assert f"{q1.counted} of {need} needed acknowledgements (W={need}, N={n}" in str(r1)
    else:
        have = sum(qualifies(t, strict) for t in targets)
        assert f"needs W={need}" in str(r1) and f"only {have} " in str(r1)


@given(scenarios("get"))
def test_get_properties(s):
    n, need, strict, targets, replies, order1, order2, _ = s
    q1, q2 = run("get", s, order1), run("get", s, order2)
    r1, r2 = q1.response(), q2.response()
    want = oracle("get", need, strict, targets, replies)
    assert kind_of(r1) == kind_of(r2) == want
    counted = counted_by_hand("get", strict, targets, replies)
    assert q1.counted == q2.counted == counted
    found = [replies[t.node].clock for t in targets if isinstance(replies[t.node], Found)]
    merged = v.sync_all(found)
    if want == "ok":
        assert r1.counted == r2.counted == counted and r1.found == r2.found == bool(found)
        assert v.equal(r1.clock, merged) and v.equal(r2.clock, merged)
        assert sorted(v.encode(x) for x in [r1.clock, r2.clock]) == [v.encode(merged)] * 2
        assert r1.quorum_met == (counted >= need)
        assert r1.not_found == (not found or v.is_deleted(merged))
    elif want == "fail":
        assert f"{counted} of {need} needed replies (R={need}, N={n}" in str(r1)
    else:
        have = sum(qualifies(t, strict) for t in targets)
        assert f"needs R={need}" in str(r1) and f"only {have} " in str(r1)
    # Read repair: every replica that answered without the merged clock, and only those.
    f1, f2 = q1.final(), q2.final()
    assert f1 == f2 or (v.equal(f1.clock, f2.clock) and f1[1:] == f2[1:])
    assert v.encode(f1.clock) == v.encode(merged)
    want_stale = tuple(t for t in targets if found and not isinstance(replies[t.node], Failed)
                       and not (isinstance(replies[t.node], Found)
                                and v.equal(replies[t.node].clock, merged)))
    assert f1.stale == want_stale
    assert f1.failed == tuple(t for t in targets if isinstance(replies[t.node], Failed))
    primaries_equal = [t for t in targets if t.is_primary and isinstance(replies[t.node], Found)
                       and v.equal(replies[t.node].clock, merged)]
    assert f1.confirmed == (len(primaries_equal) == n)


@given(scenarios("get"), st.data())
def test_strict_outcome_ignores_fallback_replies(s, data):
    n, need, strict, targets, replies, order1, _, hist = s
    other = dict(replies)
    for t in targets:
        if t.is_fallback:
            other[t.node] = data.draw(st.sampled_from([NOT_FOUND, TIMEOUT, Found(hist[-1])]))
    q1 = feed(GetQuorum(n, need, targets, strict=True), [(t.node, replies[t.node]) for t in order1])
    q2 = feed(GetQuorum(n, need, targets, strict=True), [(t.node, other[t.node]) for t in order1])
    assert q1.counted == q2.counted
    assert q1.enough() and q2.enough()
    r1, r2 = q1.response(), q2.response()
    assert kind_of(r1) == kind_of(r2)


# ---- durable writes (DURABLE k) ---------------------------------------------------------------

def test_durable_put_waits_for_k_fsync_confirmations_besides_w():
    q = PutQuorum(3, 1, P3, durable=2)
    q.add_result("a", DURABLE)
    assert q.counted == 1 and q.durable == 1 and not q.enough()    # W=1 met, k=2 not yet
    q.add_result("b", OK)                     # stored, no fsync confirmed (a node before DURABLE)
    assert not q.enough()
    q.add_result("c", DURABLE)
    assert q.enough() and q.response() == PutResult(("a", "b", "c"), 1, ("a", "c"))
    assert PutQuorum(3, 2, P3).durable_needed == 0                # none asked: as before
    assert feed(PutQuorum(3, 2, P3), [("a", OK), ("b", DURABLE)]).response() \
        == PutResult(("a", "b"), 2, ("b",))


def test_durable_put_fails_once_k_is_out_of_reach_and_says_it_may_be_stored():
    q = feed(PutQuorum(3, 2, P3, durable=3), [("a", DURABLE), ("b", OK)])
    assert q.enough() and not q.done          # W met, but b answered without an fsync
    err = q.response()
    assert isinstance(err, QuorumError) and err.resp().startswith("QUORUM ")
    msg = str(err)
    assert msg.startswith("write not acknowledged: 2 of 2 needed acknowledgements and 1 of 3 "
                          "needed fsync confirmations (W=2, DURABLE=3, N=3, 3 targets)")
    assert "stored without an fsync confirmation: b" in msg and "no reply yet: c" in msg
    assert "not acknowledged is not the same as not written" in msg
    q = feed(PutQuorum(3, 1, P3, durable=2), [("a", DURABLE), ("b", TIMEOUT), ("c", Failed("x"))])
    assert "b: timeout" in str(q.response()) and "c: x" in str(q.response())


def test_a_fallbacks_fsynced_hint_counts_toward_k_unless_strict():
    targets = ["a", Target("d", "b"), "c"]
    q = feed(PutQuorum(3, 2, targets, durable=3), [("a", DURABLE), ("d", DURABLE), ("c", DURABLE)])
    assert q.response() == PutResult(("a", "d", "c"), 2, ("a", "d", "c"))
    q = PutQuorum(3, 2, targets, strict=True, durable=2)
    feed(q, [("d", DURABLE), ("a", DURABLE)])
    assert not q.enough() and q.durable == 1
    q.add_result("c", DURABLE)
    assert q.response() == PutResult(("a", "c"), 2, ("a", "c"))


def test_durable_above_the_reachable_nodes_is_unavailable_up_front():
    ring = ring_native.Ring.create(["n1", "n2", "n3", "n4", "n5"], q=64, n=3)
    prefs = ring.preference_list(0)
    pl = preflist_for(ring, 0, lambda x: x != prefs[0], strict=True)
    q = PutQuorum(3, 2, pl, durable=3)
    assert q.unavailable and q.enough()
    err = q.response()
    assert isinstance(err, Unavailable) and err.resp().startswith("UNAVAILABLE ")
    assert str(err) == ("write needs DURABLE=3 primaries to fsync it but only 2 are reachable "
                        f"(N=3, strict: primaries only; down: {prefs[0]}); nothing was written")
    with pytest.raises(CommandError, match="DURABLE must be from 1 to N=3, got 4"):
        PutQuorum(3, 2, P3, durable=4)
    assert PutQuorum(3, 1, P3, durable="all").durable_needed == 3


@given(st.data())
def test_durable_put_properties(data):
    """Over random replies and orders: success exactly when W acknowledgements and k fsync
    confirmations count; enough() holds exactly when the replies still to come cannot change
    the outcome, and a decided outcome never changes."""
    nodes = ["a", "b", "c", "d", "e"][:data.draw(st.integers(1, 5))]
    n = len(nodes)
    fallbacks = data.draw(st.sets(st.sampled_from(nodes)))
    targets = [Target(x, "z") if x in fallbacks else Target(x) for x in nodes]
    strict = data.draw(st.booleans())
    w, k = data.draw(st.integers(1, n)), data.draw(st.integers(1, n))
    replies = {x: data.draw(st.sampled_from([OK, DURABLE, TIMEOUT])) for x in nodes}
    order = data.draw(st.permutations(nodes))

    def counts(t):
        return not strict or t.hint_for is None

    def outcome(got):
        acks = sum(1 for t in targets if counts(t) and got.get(t.node) in (OK, DURABLE))
        fsyncs = sum(1 for t in targets if counts(t) and got.get(t.node) == DURABLE)
        return acks >= w and fsyncs >= k

    q = PutQuorum(n, w, targets, strict=strict, durable=k)
    seen, decided = {}, None
    for x in order:
        best = outcome({**seen, **{y: DURABLE for y in nodes if y not in seen}})
        worst = outcome(seen)
        assert q.enough() == (best == worst)
        if q.enough():
            now = not isinstance(q.response(), Exception)
            assert decided in (None, now) and now == worst
            decided = now
        q.add_result(x, replies[x])
        seen[x] = replies[x]
    assert q.enough() and (not isinstance(q.response(), Exception)) == outcome(replies)
