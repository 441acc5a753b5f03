"""Checks of what peers and clients send (kvnet/payload.py): a clear error, never a crash."""
import pytest

from kvcore import versions as V
from kvnet.errors import CommandError
from kvnet.payload import MAX_CONTEXT_BYTES, MAX_CONTEXT_ENTRIES, context

GOOD = V.encode_context(((("n1", 7, 3), 2), (("n2", (1 << 64) - 1, 0), 1)))


def test_a_context_a_read_returns_is_taken():
    assert context(GOOD) == ((("n1", 7, 3), 2), (("n2", (1 << 64) - 1, 0), 1))
    assert context(b"") is None and context(None) is None
    most = V.encode_context(tuple((("n1", 1, e), 1) for e in range(MAX_CONTEXT_ENTRIES)))
    assert len(context(most)) == MAX_CONTEXT_ENTRIES


@pytest.mark.parametrize("raw, error", [
    (b"\xc1garbage", "invalid context: context is not valid"),
    (b"x" * (MAX_CONTEXT_BYTES + 1), f"above the limit of {MAX_CONTEXT_BYTES}"),
    (V.encode_context(tuple((("n1", 1, e), 1) for e in range(MAX_CONTEXT_ENTRIES + 1))),
     f"{MAX_CONTEXT_ENTRIES + 1} actors, above the limit of {MAX_CONTEXT_ENTRIES}"),
    (V.encode_context(((("bad name!", 1, 1), 1),)), "is not an actor"),
    (V.encode_context(((("n1", 1), 1),)), "is not an actor"),
    (V.encode_context((((1, 2, 3), 1),)), "is not an actor"),
    (V.encode_context(((("n1", -1, 3), 1),)), "is not an actor"),
    (V.encode_context(((("n1", 1, -5), 1),)), "is not an actor"),
    (V.encode_context(((("n1", 1, "e"), 1),)), "is not an actor"),
    (V.encode_context(((("n1", 1, 1), 0),)), "counter"),
    (V.encode_context(((("n2", 1, 1), 1), (("n1", 1, 1), 1))), "not strictly increasing"),
    ("text", "must be the bytes a read returned"),
])
def test_a_malformed_or_oversized_context_is_refused_naming_why(raw, error):
    with pytest.raises(CommandError, match="invalid context") as info:
        context(raw)
    assert error in str(info.value)


def test_the_durable_flags_of_put_hput_and_coord_put():
    from kvnet.payload import durable, durable_count

    assert durable({}) is False and durable({"d": False}) is False      # absent: as before
    assert durable({"d": True}) is True
    for bad in (1, 0, "true", None, [True]):
        with pytest.raises(CommandError, match="'d' \\(durable\\) must be true or false"):
            durable({"d": bad})
    assert durable_count({}, 3) == 0 and durable_count({"d": 3}, 3) == 3
    for bad in (4, -1, True, "2", 2.0, None):
        with pytest.raises(CommandError, match="'d' \\(DURABLE\\) must be an integer from 0 "
                                               "to N=3"):
            durable_count({"d": bad}, 3)
