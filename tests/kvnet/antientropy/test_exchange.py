"""Anti-entropy exchange between two LocalReplicas (docs/algorithms.md, section 4)."""
import asyncio
import shutil
import tempfile

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcore import merkle as M
from kvcore import versions as V
from kvnet.antientropy import exchange as X
from kvnet.antientropy import keys_in_segment, keys_in_segments, run_exchange
from kvnet.replica import LocalReplica

P = 7


def S(v, ts=1):
    return V.sibling(v, ts)


def pair(path):
    return LocalReplica(str(path / "a"), "a"), LocalReplica(str(path / "b"), "b")


def close(*rs):
    for r in rs:
        asyncio.run(r.close())


def all_keys(r, p=P):
    return set(r.partition(p).store.keys())


def assert_converged(a, b, originals, p=P):
    """Equal roots, the same keys, and every key holds sync of both sides' original clocks."""
    assert a.partition(p).tree.root() == b.partition(p).tree.root()
    assert all_keys(a) == all_keys(b) == set(originals)
    for k, (ca, cb) in originals.items():
        want = ca if cb is None else cb if ca is None else V.sync(ca, cb)
        assert V.equal(a.read(p, k), want), k
        assert V.equal(b.read(p, k), want), k


def snapshot(a, b, p=P):
    keys = all_keys(a) | all_keys(b)
    return {k: (a.read(p, k), b.read(p, k)) for k in keys}


def copy_to(src, dst, keys, p=P):
    for k in keys:
        dst.merge(p, k, src.read(p, k))


def test_identical_replicas_exchange_roots_only(tmp_path):
    a, b = pair(tmp_path)
    for i in range(50):
        a.mint(P, b"k%d" % i, S(b"v"))
    copy_to(a, b, all_keys(a))
    st_ = run_exchange(a, b, P)
    assert list(st_.steps) == ["root"]
    assert st_.repaired_a == st_.repaired_b == 0
    assert st_.a_to_b <= 24 and st_.b_to_a <= 24   # an 8-byte root plus msgpack keys
    close(a, b)


def test_missing_stale_and_concurrent(tmp_path):
    a, b = pair(tmp_path)
    for i in range(200):
        a.mint(P, b"k%d" % i, S(b"v1"))
    copy_to(a, b, all_keys(a))
    for i in range(10):                       # missing on b
        a.mint(P, b"only-a%d" % i, S(b"x"))
    for i in range(10):                       # missing on a
        b.mint(P, b"only-b%d" % i, S(b"y"))
    for i in range(10):                       # stale on b
        a.mint(P, b"k%d" % i, S(b"v2"), overwrite=True)
    for i in range(10, 20):                   # stale on a
        b.mint(P, b"k%d" % i, S(b"v2"), overwrite=True)
    for i in range(20, 30):                   # concurrent siblings
        a.mint(P, b"k%d" % i, S(b"va"), overwrite=True)
        b.mint(P, b"k%d" % i, S(b"vb"), overwrite=True)
    orig = snapshot(a, b)
    st_ = run_exchange(a, b, P, max_keys=7)
    assert_converged(a, b, orig)
    assert st_.repaired_a == 30 and st_.repaired_b == 30
    for i in range(20, 30):
        assert sorted(s.value for s in V.values(a.read(P, b"k%d" % i))) == [b"va", b"vb"]
    assert st_.steps["repair"][0] == 5        # 30 keys, 7 per message
    assert set(st_.steps) == {"root", "level 1", "level 2", "keys", "clocks", "repair"}
    assert list(run_exchange(a, b, P).steps) == ["root"]
    close(a, b)


def test_wiped_replica_is_rebuilt(tmp_path):
    a, b = pair(tmp_path)
    for i in range(3000):
        a.mint(P, b"key-%05d" % i, S(b"value-%d" % i))
    orig = snapshot(a, b)
    st_ = run_exchange(a, b, P)
    assert_converged(a, b, orig)
    assert st_.repaired_b == 3000 and st_.repaired_a == 0
    assert st_.steps["repair"][0] == 3        # batched: 1,000 keys a message
    # the other way round: the wiped replica initiates
    c = LocalReplica(str(tmp_path / "c"), "c")
    st_ = run_exchange(c, a, P)
    assert_converged(c, a, snapshot(a, a))
    assert st_.repaired_a == 3000 and st_.repaired_b == 0
    assert "repair" not in st_.steps
    close(a, b, c)


def test_few_differences_cost_few_bytes(tmp_path):
    a, b = pair(tmp_path)
    for i in range(2000):
        a.mint(P, b"k%d" % i, S(b"v"))
    copy_to(a, b, all_keys(a))
    a.mint(P, b"k1", S(b"new"), overwrite=True)
    st_ = run_exchange(a, b, P)
    # root 2 x 9, one 1 KiB level, one 1 KiB branch, one small segment, one repair
    assert st_.a_to_b + st_.b_to_a < 4 * 1024
    assert len(st_.segments) == 1 and st_.repaired_b == 1
    close(a, b)


def test_keys_in_segments_one_pass(tmp_path):
    a, _ = pair(tmp_path)
    part = a.partition(P)
    for i in range(500):
        a.mint(P, b"k%d" % i, S(b"v"))
    segs = sorted({part.tree.segment_of(b"k%d" % i) for i in range(0, 500, 50)})
    got = keys_in_segments(part, segs)
    assert sorted(got) == segs
    for s in segs:
        want = sorted((b"k%d" % i, M.entry_hash(b"k%d" % i, part.store.get(b"k%d" % i)))
                      for i in range(500) if part.tree.segment_of(b"k%d" % i) == s)
        assert sorted(got[s]) == want == sorted(keys_in_segment(part, s))
    assert keys_in_segments(part, []) == {}
    close(a, _)


def test_messages_are_msgpack_data(tmp_path):
    a, b = pair(tmp_path)
    a.mint(P, b"x", S(b"1"))
    pa, pb = a.partition(P), b.partition(P)
    for msg in (X.root_msg(pa.tree), X.branches_msg(pa.tree, 0, [0]),
                X.diff_reply(pb.tree, X.branches_msg(pa.tree, 0, [0]))):
        assert msgpack.unpackb(msgpack.packb(msg), strict_map_key=False) == msg
    seg = pa.tree.segment_of(b"x")
    req = msgpack.unpackb(msgpack.packb(X.keylists_msg(pa, [seg])), strict_map_key=False)
    replies = [msgpack.unpackb(msgpack.packb(m)) for m in X.clocks_reply(pb, req)]
    assert replies[-1]["want"] == [b"x"]
    local, repairs, reap = X.repairs_from_clocks(pa, replies)
    assert local == [] and reap == [] and len(repairs) == 1
    close(a, b)


def test_reap_pending_tombstone_is_not_copied_back(tmp_path):
    a, b = pair(tmp_path)
    a.mint(P, b"gone", V.tombstone(5))
    a.mint(P, b"live", S(b"v"))
    pending = lambda k, clock: k == b"gone" and V.is_deleted(clock)
    st_ = run_exchange(a, b, P, reap_pending_a=pending)
    assert b.read(P, b"gone") is None and b.read(P, b"live") is not None
    assert st_.reap == [b"gone"]
    st_ = run_exchange(b, a, P, reap_pending_b=pending)  # the holder answers: still not copied
    assert b.read(P, b"gone") is None and st_.reap == [b"gone"]
    close(a, b)


KEYS = st.sampled_from([b"k%d" % i for i in range(12)])
OPS = st.lists(st.tuples(st.sampled_from("ab"), KEYS, st.sampled_from([b"x", b"y", None]),
                         st.booleans(), st.booleans()), max_size=40)


@settings(max_examples=25)
@given(ops=OPS)
def test_one_exchange_converges(ops):
    d = tempfile.mkdtemp()
    try:
        from pathlib import Path
        a, b = pair(Path(d))
        for side, k, v, overwrite, share in ops:
            src, dst = (a, b) if side == "a" else (b, a)
            clock = src.mint(P, k, S(v) if v else V.tombstone(2), overwrite=overwrite)
            if share:                          # replicated to the other side too
                dst.merge(P, k, clock)
        orig = snapshot(a, b)
        run_exchange(a, b, P, max_keys=3)
        assert_converged(a, b, orig)
        close(a, b)
    finally:
        shutil.rmtree(d)
