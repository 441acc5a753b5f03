"""DVV sets: the fixed scenarios of docs/algorithms.md, section 1, encodings, and properties
over a model."""
import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from kvcore import versions as dvv
from kvcore.versions import Clock, Sibling, InvalidClock, InvalidContext

a, b = "a", "b"


def clock(*entries, anonymous=()):
    return Clock(tuple((actor, n, tuple(vals)) for actor, n, vals in entries), tuple(anonymous))


# ---- docs/algorithms.md, section 1, fixed scenarios ------------------------------------------

def test_scenario_1_context_replaces_what_it_saw():
    c1 = dvv.update(dvv.new("v1"), None, a)
    assert c1 == clock((a, 1, ["v1"]))
    ctx = dvv.join(c1)
    assert ctx == ((a, 1),)
    c2 = dvv.update(dvv.new("v2"), c1, a)
    assert c2 == clock((a, 2, ["v2", "v1"]))
    assert dvv.values(c2) == ["v2", "v1"]
    c3 = dvv.update(dvv.new(ctx, "v3"), c2, a)
    assert c3 == clock((a, 3, ["v3", "v2"]))


def test_scenario_2_other_actor_and_same_actor():
    a0 = clock((a, 1, ["v1"]))
    a1 = clock((a, 2, ["v2"]))
    assert dvv.update(dvv.new(dvv.join(a0), "v4"), a1, b) == clock((a, 2, ["v2"]), (b, 1, ["v4"]))
    assert dvv.update(dvv.new(dvv.join(a0), "v5"), a1, a) == clock((a, 3, ["v5", "v2"]))


def test_scenario_3_sync_disjoint_actors():
    ca, cb = clock((a, 1, ["v1"])), clock((b, 1, ["v2"]))
    want = clock((a, 1, ["v1"]), (b, 1, ["v2"]))
    assert dvv.sync(ca, cb) == want
    assert dvv.sync(cb, ca) == want


# ---- construction, less, equal ----------------------------------------------------------------

def test_new_forms():
    assert dvv.new("v") == Clock((), ("v",))
    assert dvv.new(((b, 2), (a, 1)), "v") == clock((a, 1, []), (b, 2, []), anonymous=["v"])
    assert dvv.new_with_context({b: 2, a: 0}, "v") == clock((b, 2, []), anonymous=["v"])
    assert dvv.new((), "v") == dvv.new("v")
    with pytest.raises(TypeError):
        dvv.new()
    with pytest.raises(InvalidContext):
        dvv.new(((a, 1), (a, 2)), "v")
    with pytest.raises(InvalidContext):
        dvv.new(((a, -1),), "v")


def test_update_takes_one_client_value():
    with pytest.raises(InvalidClock):
        dvv.update(dvv.EMPTY, None, a)
    with pytest.raises(InvalidClock):
        dvv.update(clock(anonymous=["x", "y"]), None, a)


def test_update_inserts_actor_in_order():
    c = dvv.update(dvv.new("x"), clock((a, 1, ["v1"]), ("c", 1, ["v3"])), b)
    assert [e[0] for e in c.entries] == [a, b, "c"]


def test_less_and_equal():
    c1 = clock((a, 1, ["v1"]))
    c2 = clock((a, 2, ["v2"]))
    c3 = clock((a, 1, ["v1"]), (b, 1, ["v3"]))
    assert dvv.less(c1, c2) and not dvv.less(c2, c1)
    assert dvv.less(c1, c3) and not dvv.less(c3, c1)
    assert not dvv.less(c2, c3) and not dvv.less(c3, c2)
    assert not dvv.less(c1, c1)
    assert dvv.less(dvv.EMPTY, c1)
    assert dvv.equal(c1, clock((a, 1, ["v1"])))
    assert not dvv.equal(c1, clock((a, 1, [])))
    assert not dvv.equal(c1, c3)
    assert not dvv.equal(dvv.new("x"), dvv.new("y"))


def test_actor_ids_are_node_incarnation_epoch():
    n1 = ("node-1", 0xFEDCBA9876543210, 1)
    n1e2 = ("node-1", 0xFEDCBA9876543210, 2)
    n2 = ("node-2", 17, 1)
    c = dvv.update(dvv.new(dvv.sibling(b"x", 1)), None, n2)
    c = dvv.update(dvv.new(dvv.join(c), dvv.sibling(b"y", 2)), c, n1e2)
    c = dvv.sync(c, dvv.update(dvv.new(dvv.sibling(b"z", 3)), None, n1))
    assert [e[0] for e in c.entries] == [n1, n1e2, n2]
    assert sorted(s.value for s in dvv.values(c)) == [b"y", b"z"]
    assert dvv.decode(dvv.encode(c)) == c
    assert dvv.decode_context(dvv.encode_context(dvv.join(c))) == dvv.join(c)


def test_sync_all():
    assert dvv.sync_all([]) == dvv.EMPTY
    cs = [clock((a, 1, ["v1"])), clock((b, 1, ["v2"])), clock((a, 2, ["v3"]))]
    assert dvv.sync_all(cs) == clock((a, 2, ["v3"]), (b, 1, ["v2"]))


def test_anonymous_values_follow_riak_rule():
    x, y = Sibling(b"x", 1), Sibling(b"y", 1)
    assert dvv.sync(dvv.new(x), dvv.new(y)) == dvv.sync(dvv.new(y), dvv.new(x)) == Clock((), (x, y))
    stored = dvv.update(dvv.new(y), None, a)
    assert dvv.sync(dvv.new(x), stored) == stored  # new(x) has seen nothing: strictly older


def test_sync_with_anonymous_values_is_not_associative():
    # Documented limitation (docs/versions.md): anonymous values belong to client clocks, which
    # only `update` consumes; stored clocks never carry them, and the laws are tested on those.
    client = dvv.new(((a, 1),), "v")
    c = clock((a, 1, ["p"]))
    other = clock((b, 1, ["w"]))
    left = dvv.sync(dvv.sync(client, c), other)
    right = dvv.sync(client, dvv.sync(c, other))
    assert left.anonymous == ("v",) and right.anonymous == ()


# ---- tombstones, last-write-wins, sibling count ------------------------------------------------

def test_tombstones_and_lww():
    assert dvv.is_deleted(dvv.EMPTY) and dvv.lww(dvv.EMPTY) is None
    c = dvv.update(dvv.new(dvv.sibling(b"old", 10)), None, a)
    c = dvv.update(dvv.new(dvv.sibling(b"new", 30)), c, b)
    c = dvv.update(dvv.new(dvv.sibling(b"mid", 20)), c, a)
    assert dvv.sibling_count(c) == len(dvv.values(c)) == 3
    assert dvv.lww_value(c) == b"new" and not dvv.is_deleted(c)
    d = dvv.update(dvv.new(dvv.join(c), dvv.tombstone(40)), c, a)
    assert dvv.values(d) == [dvv.tombstone(40)] and dvv.is_deleted(d)
    assert dvv.lww(d).is_tombstone and dvv.lww_value(d) is None
    # a write concurrent with the delete survives as a sibling; a delete of the same instant wins
    e = dvv.update(dvv.new(dvv.join(c), dvv.sibling(b"again", 40)), d, b)
    assert dvv.sibling_count(e) == 2 and not dvv.is_deleted(e)
    assert dvv.lww_value(e) is None
    f = dvv.update(dvv.new(dvv.sibling(b"later", 41)), e, b)
    assert dvv.lww_value(f) == b"later"


def test_sibling_helpers():
    s = dvv.sibling(b"v")
    assert s.timestamp > 1_600_000_000_000_000 and not s.is_tombstone
    assert dvv.tombstone().is_tombstone
    with pytest.raises(TypeError):
        dvv.sibling("text")


# ---- encodings ---------------------------------------------------------------------------------

def test_encode_shape_and_round_trip():
    c = dvv.update(dvv.new(Sibling(b"x", 5)), None, (1, 2, 3))
    data = dvv.encode(c)
    assert msgpack.unpackb(data) == [1, [[[1, 2, 3], 1, [[b"x", 5]]]], []]
    assert dvv.decode(data) == c
    assert hash(dvv.decode(data)) == hash(c)  # clocks are immutable values
    assert dvv.decode(dvv.encode(dvv.EMPTY)) == dvv.EMPTY
    t = dvv.update(dvv.new(dvv.tombstone(9)), None, "n")
    assert dvv.decode(dvv.encode(t)) == t


def test_encode_anonymous_canonical():
    x, y = Sibling(b"x", 1), Sibling(b"y", 2)
    assert dvv.encode(Clock((), (y, x))) == dvv.encode(Clock((), (x, y)))
    assert dvv.decode(dvv.encode(Clock((), (y, x)))) == Clock((), (x, y))


def test_encode_rejects_non_siblings():
    with pytest.raises(InvalidClock):
        dvv.encode(dvv.update(dvv.new("plain"), None, a))
    with pytest.raises(InvalidClock):
        dvv.encode(dvv.new(Sibling("str", 1)))


GOOD = dvv.encode(clock((a, 2, [Sibling(b"v", 1)]), (b, 1, [])))


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"garbage", GOOD[:-1], GOOD + b"\x00",
    msgpack.packb([2, [], []]), msgpack.packb([1, [], []])[:-1], msgpack.packb([1, []]),
    msgpack.packb([1, [[a, 0, []]], []]),                               # counter 0
    msgpack.packb([1, [[a, 1, [[b"x", 1], [b"y", 2]]]], []]),           # more values than events
    msgpack.packb([1, [[b, 1, []], [a, 1, []]], []]),                   # actors out of order
    msgpack.packb([1, [[a, 1, []], [a, 2, []]], []]),                   # duplicate actor
    msgpack.packb([1, [[a, 1, [["text", 1]]]], []]),                    # value not bytes
    msgpack.packb([1, [[a, 1, [[b"x", 1.5]]]], []]),                    # timestamp not int
    msgpack.packb([1, [], [[b"y", 1], [b"x", 1]]]),                     # anonymous not sorted
    msgpack.packb([1, [[a, 1, []], [1, 1, []]], []]),                   # actors not comparable
    msgpack.packb({"entries": []}),
    dvv.encode_context(((a, 1),)),                                      # a context, not a clock
])
def test_decode_rejects_garbage(data):
    with pytest.raises(InvalidClock) as info:
        dvv.decode(data)
    assert isinstance(info.value, ValueError)


@given(st.binary(max_size=64))
def test_decode_arbitrary_bytes_only_raises_value_error(data):
    try:
        c = dvv.decode(data)
    except ValueError:
        return
    assert dvv.encode(c) == data


def test_context_round_trip_and_garbage():
    ctx = dvv.join(clock((a, 3, ["x"]), (b, 1, [])))
    assert dvv.decode_context(dvv.encode_context(ctx)) == ctx
    assert dvv.decode_context(dvv.encode_context(())) == ()
    for data in [b"", b"\xff\xff", b"hello", GOOD, msgpack.packb([2, [[a, 0]]]),
                 msgpack.packb([2, [[b, 1], [a, 1]]]), msgpack.packb([2, [[a, "1"]]]),
                 dvv.encode_context(ctx) + b"x"]:
        with pytest.raises(InvalidContext, match="context"):
            dvv.decode_context(data)


# ---- model-based properties --------------------------------------------------------------------

ACTORS = [("n0", 11, 1), ("n1", 7, 1), ("n1", 7, 2), ("n2", 3, 1)]
OPS = st.lists(
    st.tuples(
        st.sampled_from(["blind", "ctx", "own", "sync", "stale", "read"]),
        st.integers(0, len(ACTORS) - 1), st.integers(0, len(ACTORS) - 1), st.integers(0, 1000),
    ),
    max_size=40,
)


class Model:
    """Replicas of one key, each an actor with a DVV clock beside the exact causal history.

    `known[r]`: ids of every write replica r has seen; `covered[w]`: what write w's context had
    seen. The live writes at r are those known there and covered by no write known there.
    """

    def __init__(self):
        n = len(ACTORS)
        self.clocks = [dvv.EMPTY] * n
        self.known = [frozenset()] * n
        self.covered = {}
        self.reads = []            # (context, writes it had seen)
        self.history = [(dvv.EMPTY, frozenset())]

    def live(self, known):
        hidden = set().union(*(self.covered[w] for w in known)) if known else set()
        return known - hidden

    def write(self, r, context, seen):
        w = len(self.covered)
        value = Sibling(b"w%d" % w, w)
        client = dvv.new(value) if context is None else dvv.new(context, value)
        self.clocks[r] = dvv.update(client, self.clocks[r], ACTORS[r])
        self.covered[w] = seen
        self.known[r] = self.known[r] | seen | {w}
        self.history.append((self.clocks[r], self.known[r]))

    def receive(self, r, other, other_known, flip):
        mine = self.clocks[r]
        self.clocks[r] = dvv.sync(other, mine) if flip else dvv.sync(mine, other)
        self.known[r] = self.known[r] | other_known
        self.history.append((self.clocks[r], self.known[r]))

    def run(self, ops):
        for kind, r, s, k in ops:
            if kind == "blind":
                self.write(r, None, frozenset())
            elif kind == "ctx" and self.reads:
                self.write(r, *self.reads[k % len(self.reads)])
            elif kind == "own":  # Redis SET: the coordinator's own context
                self.write(r, dvv.join(self.clocks[r]), self.known[r])
            elif kind == "sync":
                self.receive(s, self.clocks[r], self.known[r], k % 2)
            elif kind == "stale":  # a delayed message, a hint replay, a repair from an old read
                self.receive(s, *self.history[k % len(self.history)], k % 2)
            elif kind == "read":
                self.reads.append((dvv.join(self.clocks[r]), self.known[r]))
            self.check()
        return self

    def check(self):
        for c, known in (self.history[-1],):
            vals = dvv.values(c)
            assert len(vals) == len(set(vals))
            assert {v.value for v in vals} == {b"w%d" % w for w in self.live(known)}
            assert len(c.entries) <= len(ACTORS)
            assert all(len(e[2]) <= e[1] for e in c.entries)
            assert not c.anonymous


@settings(deadline=None, max_examples=200)
@given(OPS)
def test_kept_values_are_exactly_the_concurrent_ones(ops):
    m = Model().run(ops)
    for c, known in zip(m.clocks, m.known):
        assert {v.value for v in dvv.values(c)} == {b"w%d" % w for w in m.live(known)}
    everything = dvv.sync_all(m.clocks)
    all_known = frozenset().union(*m.known)
    assert {v.value for v in dvv.values(everything)} == {b"w%d" % w for w in m.live(all_known)}


@st.composite
def three_clocks(draw):
    hist = Model().run(draw(OPS)).history
    pick = st.sampled_from([c for c, _ in hist])
    return draw(pick), draw(pick), draw(pick)


@settings(deadline=None, max_examples=200)
@given(three_clocks())
def test_sync_laws(abc):
    x, y, z = abc
    assert dvv.sync(x, y) == dvv.sync(y, x)
    assert dvv.sync(dvv.sync(x, y), z) == dvv.sync(x, dvv.sync(y, z))
    assert dvv.sync(x, x) == x
    xy = dvv.sync(x, y)
    assert dvv.sync(xy, x) == xy
    assert dvv.less(x, xy) or dvv.equal(x, xy)


@settings(deadline=None, max_examples=200)
@given(three_clocks())
def test_less_equal_consistent_with_sync(abc):
    x, y, _ = abc
    if dvv.less(x, y):
        assert dvv.sync(x, y) == y and dvv.sync(y, x) == y
        assert not dvv.less(y, x) and not dvv.equal(x, y)
    assert not dvv.less(x, x)
    if dvv.equal(x, y):
        assert x == y and dvv.sync(x, y) == x
    if x == y:
        assert dvv.equal(x, y)


@settings(deadline=None, max_examples=200)
@given(three_clocks())
def test_encode_is_canonical(abc):
    x, y, _ = abc
    ex, ey = dvv.encode(x), dvv.encode(y)
    assert dvv.decode(ex) == x
    assert (ex == ey) == (x == y)
    assert dvv.decode_context(dvv.encode_context(dvv.join(x))) == dvv.join(x)
    assert dvv.new(dvv.join(x), "v").entries == tuple((e[0], e[1], ()) for e in x.entries)


@given(st.lists(st.tuples(st.sampled_from([None, b"", b"a", b"b"]), st.integers(0, 3)), max_size=5),
       st.lists(st.tuples(st.sampled_from([None, b"", b"a", b"b"]), st.integers(0, 3)), max_size=5))
def test_anonymous_sync_commutes_and_encodes_canonically(xs, ys):
    cx = dvv.sync_all([dvv.new(Sibling(*v)) for v in xs])
    cy = dvv.sync_all([dvv.new(Sibling(*v)) for v in ys])
    assert dvv.sync(cx, cy) == dvv.sync(cy, cx)
    assert dvv.decode(dvv.encode(dvv.sync(cx, cy))) == dvv.sync(cx, cy)


# ---- the C decode (kvcore/clockcodec.pyx) changes speed, never results -------------------------

def _decode_both(data):
    """(C-first decode, Python-only decode): each the clock or the exception's type and text."""
    out = []
    for common in (dvv._decode_common, lambda d: None):
        saved = dvv._decode_common
        dvv._decode_common = common
        try:
            c = dvv.decode(data)
            out.append(("ok", c, type(c), [type(v) for v in dvv.values(c)]))
        except Exception as exc:
            out.append(("error", type(exc), str(exc)))
        finally:
            dvv._decode_common = saved
    return out


_actors = st.one_of(st.text(max_size=3), st.tuples(st.sampled_from(["n1", "n2"]),
                    st.integers(0, 2 ** 64 - 1), st.integers(0, 2 ** 40)), st.integers(-5, 5))
_sibs = st.builds(Sibling, st.one_of(st.none(), st.binary(max_size=8)),
                  st.integers(-2 ** 63, 2 ** 64 - 1))
_edits = st.lists(st.tuples(st.integers(0, 400), st.binary(max_size=2)), max_size=3)


def _entries(actors, max_size):
    return st.lists(st.tuples(actors, st.integers(1, 2 ** 64 - 1), st.lists(_sibs, max_size=3)),
                    max_size=max_size)


def _clock_of(entries, anonymous):
    """A clock from drawn entries (one per actor, in order, counters covering their values), or
    None when it cannot be encoded (actors that do not compare)."""
    entries = sorted({repr(e[0]): e for e in entries}.values(), key=lambda e: repr(e[0]))
    c = clock(*[(a_, max(n, len(v)), v) for a_, n, v in entries], anonymous=anonymous)
    try:
        dvv.encode(c)
    except (InvalidClock, TypeError):
        return None
    return c


def _damaged(data, edits):
    mutated = bytearray(data)
    for at, piece in edits:
        at = min(at, len(mutated))
        mutated[at:at + 1] = piece
    return bytes(mutated)


@settings(max_examples=400)
@given(_entries(_actors, 4), st.lists(_sibs, max_size=2), _edits)
def test_c_decode_matches_python(entries, anonymous, edits):
    c = _clock_of(entries, anonymous)
    if c is None:
        return
    data = dvv.encode(c)
    a_, b_ = _decode_both(data)
    assert a_ == b_
    a_, b_ = _decode_both(_damaged(data, edits))   # the same clock or the same error
    assert a_ == b_


@pytest.mark.parametrize("obj", [
    (1, ((("n", 1, 2), 1, ((b"v", 5),)),), ()),
    (1, ((("n", 1, 2), 1, ((None, 5),)),), ((b"x", 1),)),
    (1, ((("n", 1, 2), 1, ((b"v", 5), (b"w", 4))),), ()),     # more values than the counter
    (1, ((("n", 1, 2), 0, ()),), ()),                         # counter 0
    (1, (("b", 1, ()), ("a", 1, ())), ()),                    # actors out of order
    (1, ((["x"], 1, ()),), ()),                               # an unhashable actor (list)
    (1, (({"x": 1}, 1, ()),), ()),                            # a map actor
    (1, (("a", 1, ()), (1, 1, ())), ()),                      # actors not comparable
    (True, (), ()), (1, (), ((b"a", 1), (b"b", 2))), (1, (), ((b"b", 2), (b"a", 1))),
    (1, (("a", 1, ((b"v", 1.5),)),), ()), (2, (), ()), [1, [], []],
])
def test_c_decode_matches_python_on_odd_clocks(obj):
    data = msgpack.packb(obj)
    a_, b_ = _decode_both(data)
    assert a_ == b_
    a_, b_ = _decode_both(data + b"\x00")          # trailing bytes
    assert a_ == b_
    a_, b_ = _decode_both(bytearray(data))         # not bytes
    assert a_ == b_


# ---- the byte-level overwrite and read (kvcore/clockcodec.pyx) ---------------------------------

from kvcore._native import NO_EXTENSIONS  # noqa: E402

_C = not NO_EXTENSIONS      # the twin's *_raw functions take nothing (None): the general path
_c_only = pytest.mark.skipif(not _C, reason="the pure-Python twin has no byte-level path")
_ME = ("n1", 2 ** 63 + 5)
_OWN = dvv.actor_prefix(*_ME)


def _general_overwrite(local, value, actor):
    """What LocalReplica.mint(..., overwrite=True) computes: the local clock's own context."""
    client = dvv.new_with_context(dvv.join(local), value)
    return dvv.update(client, local, actor)


_own_actors = st.tuples(st.sampled_from(["n1", "n2", "é"]), st.sampled_from([_ME[1], 7]),
                        st.integers(0, 2 ** 64 - 1))


@settings(max_examples=400)
@given(_entries(st.one_of(_own_actors, _actors), 2), st.lists(_sibs, max_size=1),
       st.integers(0, 2 ** 64 - 1), st.one_of(st.none(), st.binary(max_size=300)),
       st.integers(-5, 2 ** 64 + 5))
def test_bump_own_is_the_general_overwrite(entries, anonymous, trusted_from, value, ts):
    local = _clock_of(entries, anonymous)
    if local is None:
        return
    data = dvv.encode(local)
    raw = dvv.bump_own_raw(data, _OWN, trusted_from, value, ts)
    own = [e for e in local.entries if isinstance(e[0], tuple) and e[0][:2] == _ME]
    common = (len(local.entries) == 1 and own and not local.anonymous
              and own[0][0][2] >= trusted_from and own[0][1] < 2 ** 64 - 1 and 0 <= ts < 2 ** 64)
    if not common or not _C:
        assert raw is None
        return
    expect = _general_overwrite(local, Sibling(value, ts), own[0][0])
    assert raw == dvv.encode(expect)
    assert dvv.decode(raw) == expect
    assert dvv.lww_value_raw(raw) == value
    assert dvv._lww_common(raw) == value        # the C read takes it (not MISS)


@given(st.integers(0, 2 ** 64 - 1), st.one_of(st.none(), st.binary(max_size=70000)),
       st.integers(-3, 2 ** 64 + 3))
@settings(max_examples=100)
def test_fresh_is_the_general_first_write(epoch, value, ts):
    raw = dvv.fresh_raw(_OWN, epoch, value, ts)
    if not 0 <= ts < 2 ** 64 or not _C:
        assert raw is None
        return
    expect = dvv.update(dvv.new_with_context((), Sibling(value, ts)), None, (*_ME, epoch))
    assert raw == dvv.encode(expect)


@_c_only
@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536])
def test_fresh_and_bump_at_bin_header_edges(size):
    v = b"v" * size
    raw = dvv.fresh_raw(_OWN, 1, v, 127)
    assert dvv.decode(raw) == clock(((*_ME, 1), 1, [Sibling(v, 127)]))
    for counter in (127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32):
        data = dvv.encode(clock(((*_ME, 1), counter, [Sibling(b"x", 1)])))
        bumped = dvv.bump_own_raw(data, _OWN, 0, v, 2 ** 40)
        assert dvv.decode(bumped) == clock(((*_ME, 1), counter + 1, [Sibling(v, 2 ** 40)]))


@settings(max_examples=400)
@given(_entries(_actors, 3), st.lists(_sibs, max_size=2), _edits)
def test_lww_value_raw_and_is_deleted_raw_match_decode(entries, anonymous, edits):
    c = _clock_of(entries, anonymous)
    if c is None:
        return
    data = dvv.encode(c)
    for d in (data, _damaged(data, edits)):
        for raw_form, general in ((dvv.lww_value_raw, dvv.lww_value),
                                  (dvv.is_deleted_raw, dvv.is_deleted)):
            try:
                expect = ("ok", general(dvv.decode(d)))
            except InvalidClock as exc:
                expect = ("error", str(exc))
            try:
                got = ("ok", raw_form(d))
            except InvalidClock as exc:
                got = ("error", str(exc))
            assert got == expect


@_c_only
@settings(max_examples=300)
@given(st.text(min_size=1, max_size=40), st.integers(0, 2 ** 64 - 1), st.integers(0, 2 ** 64 - 1),
       st.integers(1, 2 ** 64 - 1), st.one_of(st.none(), st.binary(max_size=300)),
       st.integers(0, 2 ** 64 - 1))
def test_the_c_read_takes_every_one_value_clock(name, inc, epoch, counter, value, ts):
    raw = dvv.encode(clock(((name, inc, epoch), counter, [Sibling(value, ts)])))
    assert dvv._lww_common(raw) == value


@_c_only
def test_bump_own_refuses_damaged_and_foreign_bytes():
    good = dvv.encode(clock(((*_ME, 3), 2, [Sibling(b"a", 1)])))
    assert dvv.bump_own_raw(good, _OWN, 3, b"b", 2) is not None
    assert dvv.bump_own_raw(good, _OWN, 4, b"b", 2) is None          # epoch below trusted_from
    assert dvv.bump_own_raw(good, dvv.actor_prefix("n1", 1), 0, b"b", 2) is None
    assert dvv.bump_own_raw(good + b"\x00", _OWN, 0, b"b", 2) is None
    assert dvv.bump_own_raw(good[:-1], _OWN, 0, b"b", 2) is None
    assert dvv.bump_own_raw(bytearray(good), _OWN, 0, b"b", 2) is None
    assert dvv.bump_own_raw(good, _OWN, 0, "text", 2) is None
    assert dvv.bump_own_raw(good, _OWN, 0, b"b", 1.5) is None
    # a wider-than-needed counter (0xcd 0x00 0x02): not canonical, so not taken
    wide = good.replace(b"\x02\x91", b"\xcd\x00\x02\x91")
    assert wide != good and dvv.bump_own_raw(wide, _OWN, 0, b"b", 2) is None


def _supersedes_general(old, new):
    """The meaning of supersedes_raw: new decodes, and sync(old, new) is new's own entries."""
    try:
        n = dvv.decode(new)
    except InvalidClock:
        return False
    if old is None:
        return True
    merged = dvv.sync(dvv.decode(old), n)
    return merged == n and all(x is y for x, y in zip(merged.entries, n.entries)) \
        and merged.anonymous == n.anonymous


@settings(max_examples=500)
@given(_entries(st.one_of(_own_actors, _actors), 2), st.lists(_sibs, max_size=1),
       _entries(st.one_of(_own_actors, _actors), 2), st.lists(_sibs, max_size=1), _edits,
       st.booleans())
def test_supersedes_raw_only_says_what_sync_says(e1, a1, e2, a2, edits, none):
    """For random clocks and damaged bytes: True only when new decodes and sync(old, new) is
    new itself (so a replica may store new's bytes without decoding either)."""
    c1, c2 = _clock_of(e1, a1), _clock_of(e2, a2)
    if c1 is None or c2 is None:
        return
    old = None if none else dvv.encode(c1)
    for new in (dvv.encode(c2), _damaged(dvv.encode(c2), edits)):
        if dvv.supersedes_raw(old, new):
            assert _C and _supersedes_general(old, new)


@settings(max_examples=300)
@given(st.sampled_from(["n1", "n2", "é", "x" * 40]), st.integers(0, 2 ** 64 - 1),
       st.integers(0, 2 ** 64 - 1), st.integers(1, 2 ** 40), st.integers(1, 3),
       st.one_of(st.none(), st.binary(max_size=300)), st.integers(0, 2 ** 64 - 1),
       st.one_of(st.none(), st.binary(max_size=300)))
def test_supersedes_raw_takes_every_replicated_overwrite(name, inc, epoch, counter, step, v1,
                                                          ts, v2):
    """The shape replication brings (a coordinator's overwrite of what the replica holds, or a
    first write): the byte path takes it (with the extension), and it agrees with sync."""
    actor = (name, inc, epoch)
    old = clock((actor, counter, [Sibling(v1, ts)]))
    new = _general_overwrite(old, Sibling(v2, ts), actor)
    for _ in range(step - 1):                      # replicas that missed some writes
        new = _general_overwrite(new, Sibling(v2, ts), actor)
    o, n = dvv.encode(old), dvv.encode(new)
    assert dvv.supersedes_raw(o, n) is _C and dvv.supersedes_raw(None, n) is _C
    assert _supersedes_general(o, n)
    assert not dvv.supersedes_raw(n, o) and not dvv.supersedes_raw(n, n)   # older, the same


@_c_only
def test_supersedes_raw_refuses_damaged_and_other_actors():
    a = dvv.encode(clock((("n1", 1, 1), 2, [Sibling(b"a", 1)])))
    b = dvv.encode(clock((("n1", 1, 1), 3, [Sibling(b"b", 2)])))
    assert dvv.supersedes_raw(a, b)
    other = dvv.encode(clock((("n2", 1, 1), 3, [Sibling(b"b", 2)])))
    assert not dvv.supersedes_raw(a, other)
    assert not dvv.supersedes_raw(a, b + b"\x00") and not dvv.supersedes_raw(a, b[:-1])
    assert not dvv.supersedes_raw(a, bytearray(b)) and not dvv.supersedes_raw("a", b)
    wide = b.replace(b"\x03\x91", b"\xcd\x00\x03\x91")     # a non-canonical counter
    assert wide != b and not dvv.supersedes_raw(a, wide)
    bad_utf8 = dvv.encode(clock((("n\u00e9", 1, 1), 3, [Sibling(b"b", 2)]))).replace(
        "é".encode(), b"\xc3\x28")
    assert not dvv.supersedes_raw(None, bad_utf8)
