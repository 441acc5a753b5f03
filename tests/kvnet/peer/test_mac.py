"""kvnet/peer/mac.pyx against its twin kvnet/peer/mac_py.py (hashlib): the same tags, byte for
byte, for any key, frame, piece and sequence number, on both sides of MAC_SHA256_FROM; and
BLAKE2b in C against hashlib.blake2b itself."""
import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from kvcore._native import NO_EXTENSIONS
from kvnet.peer import mac_py

pytestmark = pytest.mark.skipif(NO_EXTENSIONS, reason="compares the compiled MAC with its twin")

keys = st.binary(min_size=1, max_size=64)
frames = st.one_of(st.binary(max_size=300),                         # one or a few blocks
                   st.binary(min_size=100, max_size=9000))          # around the switch to HMAC
pieces = st.one_of(st.none(), st.binary(max_size=5000))


def _mac():
    from kvnet.peer import mac
    return mac


@settings(max_examples=300, deadline=None)
@given(key=keys, frames_=st.lists(st.tuples(frames, pieces), min_size=1, max_size=6),
       start=st.sampled_from([0, 1, 255, 256, 2**32, 2**64 - 8]),
       kind=st.sampled_from([bytes, bytearray, memoryview]))
def test_tags_equal_the_twins(key, frames_, start, kind):
    c, py = _mac().FrameMac(key), mac_py.FrameMac(key)
    c.seq = py.seq = start
    for frame, piece in frames_:
        got = c.tag(kind(frame), None if piece is None else kind(piece))
        assert got == py.tag(frame, piece)
        assert len(got) == mac_py.MAC_SIZE
    assert c.seq == py.seq == start + len(frames_)


@given(key=keys, data=st.lists(st.binary(max_size=400), max_size=4))
def test_seal_equals_the_twins(key, data):
    from kvnet.peer.framing import seal
    c, py = _mac().FrameMac(key), mac_py.FrameMac(key)
    whole = b"".join(data)
    assert seal(c, whole) == seal(py, whole)
    chunked = [x for d in data for x in (d[:7], d[7:])]
    assert seal(c, chunked) == seal(py, chunked)


@pytest.mark.parametrize("n", [0, 1, 111, 112, 127, 128, 129, 255, 256, 257, 1000])
def test_blake2b_block_edges_against_hashlib(n):
    """Frames that end at, before and after the 128-byte block edges (the 8-byte sequence
    number first), against hashlib.blake2b with the same key and person."""
    key, data = b"k" * 32, bytes(range(256)) * 4
    want = hashlib.blake2b(key=key, digest_size=16, person=b"ringkv-frame")
    want.update((7).to_bytes(8, "big"))
    want.update(data[:n])
    m = _mac().FrameMac(key)
    m.seq = 7
    assert m.tag(data[:n]) == want.digest()


def test_constants_match_and_a_long_key_is_refused():
    mac = _mac()
    assert (mac.MAC_SIZE, mac.MAC_SHA256_FROM, mac.MAC_PERSON) == (
        mac_py.MAC_SIZE, mac_py.MAC_SHA256_FROM, mac_py.MAC_PERSON)
    with pytest.raises(ValueError, match="64 bytes"):
        mac.FrameMac(b"x" * 65)
