"""The node-wide journal (kvcore/storage/journal.py; docs/storage.md, "The journal"): frames
byte for byte in both twins, every write path of a store journaled, and a replay that
rebuilds a store's contents, stops at a torn tail and never writes what a DROP came after."""
import importlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvcore import merkle as M
from kvcore import versions as V
from kvcore.storage import journal as J
from kvcore.storage import jbuffer_py

OWN = V.actor_prefix("n1", 7)
BUFFERS = [pytest.param("kvcore.storage.jbuffer", id="cython"),
           pytest.param("kvcore.storage.jbuffer_py", id="python")]


def _buffer(name):
    return importlib.import_module(name).JournalBuffer()


def _journal_bytes(directory):
    out = b""
    for n in J._numbers(directory):
        with open(os.path.join(directory, J.file_name(n)), "rb") as f:
            out += f.read()
    return out


def test_both_buffers_write_the_same_frames():
    from kvcore.storage import jbuffer
    a, b = jbuffer.JournalBuffer(), jbuffer_py.JournalBuffer()
    for buf in (a, b):
        buf.add(1, J.BIND, b"partitions/00001")
        buf.add(1, J.RECORDS, b"x" * 300)
        buf.add(7, J.DROP, b"partitions/00002")
    assert len(a) == len(b) and a.frames == b.frames == 3
    data = a.take()
    assert data == b.take() and len(a) == len(b) == 0
    frames, end = J.parse_frames(J.file_header(1) + data)
    assert end == J.FILE_HEADER_SIZE + len(data)
    assert frames == [(1, J.BIND, b"partitions/00001"), (1, J.RECORDS, b"x" * 300),
                      (7, J.DROP, b"partitions/00002")]


def _write(journal):
    batch = journal.take()
    if batch is not None:
        batch.write_sync()


def test_replay_stops_at_a_torn_or_flipped_frame(tmp_path):
    d = str(tmp_path / "j")
    j = J.Journal(d)
    sid = j.bind("a")
    for i in range(10):
        j.buffer.add(sid, J.RECORDS, b"r%d" % i)
    _write(j)
    path = j.file.path
    j.close(retire=False)
    whole = J.read_journal(d)
    assert whole.records == {"a": [b"r%d" % i for i in range(10)]} and whole.torn_bytes == 0
    size = os.path.getsize(path)
    with open(path, "r+b") as f:            # a write cut short: the last frame is torn
        f.truncate(size - 1)
    torn = J.read_journal(d)
    assert torn.records["a"] == [b"r%d" % i for i in range(9)] and torn.torn_bytes > 0
    with open(path, "r+b") as f:            # a flipped byte in the fifth frame's payload
        data = bytearray(f.read())
        pos = data.index(b"r4")
        data[pos] ^= 0x40
        f.seek(0)
        f.write(data)
    flipped = J.read_journal(d)
    assert flipped.records["a"] == [b"r%d" % i for i in range(4)]


def test_a_file_of_another_format_is_not_replayed(tmp_path):
    d = tmp_path / "j"
    d.mkdir()
    (d / J.file_name(1)).write_bytes(b"something else entirely" * 4)
    replay = J.read_journal(str(d))
    assert replay.records == {} and replay.torn_bytes > 0 and replay.files == []
    assert os.listdir(d) == [J.file_name(1) + ".damaged"]


def test_nothing_from_before_a_drop_is_replayed(tmp_path):
    """A store dropped and bound again (a partition handed off, then given back) replays only
    what was journaled after the drop, across a rotation too."""
    d = str(tmp_path / "j")
    j = J.Journal(d)
    a = j.bind("partitions/00001")
    b = j.bind("partitions/00002")
    j.buffer.add(a, J.RECORDS, b"old")
    j.buffer.add(b, J.RECORDS, b"b1")
    _write(j)
    j.drop("partitions/00001")
    j.rotate()                              # (the next file binds again whatever is bound)
    j.buffer.add(b, J.RECORDS, b"b2")
    a2 = j.bind("partitions/00001")
    assert a2 != a
    j.buffer.add(a2, J.RECORDS, b"new")
    _write(j)
    j.close(retire=False)
    replay = J.read_journal(d)
    assert replay.records == {"partitions/00001": [b"new"], "partitions/00002": [b"b1", b"b2"]}
    assert replay.files == [1, 2]
    j2 = J.Journal(d)                       # a new journal starts after the files left
    assert j2.file.number == 3 and j2.replay.files == [1, 2]
    j2.retire(j2.replay.files)
    j2.close()
    assert [f for f in os.listdir(d) if f.endswith(".jnl")] == []


def test_a_failed_write_or_fdatasync_raises(tmp_path):
    import errno
    j = J.Journal(str(tmp_path / "j"))
    sid = j.bind("a")
    for op in ("write", "fdatasync"):
        j.buffer.add(sid, J.RECORDS, b"x")
        j._fail_next(op, errno.EIO)
        with pytest.raises(OSError) as info:
            j.take().write_sync()
        assert info.value.errno == errno.EIO and op in str(info.value)
    j.close()


def _ops():
    key = st.sampled_from([b"k%d" % i for i in range(12)])
    value = st.binary(min_size=0, max_size=700)        # (some compress, some roll segments)
    return st.lists(st.one_of(
        st.tuples(st.just("put"), key, value),
        st.tuples(st.just("delete"), key, st.just(b"")),
        st.tuples(st.just("many"), st.lists(st.tuples(key, value), max_size=5), st.just(b"")),
        st.tuples(st.just("rw"), key, value),
    ), max_size=40)


@pytest.mark.parametrize("impl", ["kvcore.storage.store", "kvcore.storage.store_py"])
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops())
def test_every_write_path_is_journaled_and_a_replay_rebuilds_the_store(tmp_path_factory, impl,
                                                                       ops):
    """put, delete, put_many and the replica's one-lookup write (replicawrite) all journal
    what they store: replaying the journal into an empty store gives the same items, and
    the dict model's; replaying twice changes nothing."""
    store_mod = importlib.import_module(impl)
    rw = importlib.import_module("kvcore.replicawrite" if impl == "kvcore.storage.store"
                                 else "kvcore.replicawrite_py")
    base = tmp_path_factory.mktemp("j")
    j = J.Journal(str(base / "journal"))
    s = store_mod.LogStore(base / "a", fsync="never", max_segment_bytes=4096)
    s.attach_journal(j.buffer, j.bind("a"))
    tree = M.MerkleTree()
    model = {}
    for op, key, value in ops:
        if op == "put":
            s.put(key, value)
            model[key] = value
        elif op == "delete":
            s.delete(key)
            model.pop(key, None)
        elif op == "many":
            s.put_many(key)
            model.update(dict(key))
        else:
            rw.overwrite(s, tree, key, value, OWN, 0, 5, lambda: 1)     # (None: not ours)
            model[key] = s.get(key)
        if len(j.buffer) > 4096:
            _write(j)
    _write(j)
    assert dict(s.items()) == model
    replay = J.read_journal(str(base / "journal"))
    for copy in ("b", "c"):
        t = store_mod.LogStore(base / copy, fsync="never", max_segment_bytes=4096)
        payloads = replay.records.get("a", [])
        t.apply_records(payloads)
        assert dict(t.items()) == model
        if copy == "c":
            t.apply_records(payloads)           # a second replay: the same end state
            assert dict(t.items()) == model
        t.close()
    s.close()
    j.close()
