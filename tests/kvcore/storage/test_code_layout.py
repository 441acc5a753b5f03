"""The storage engine's classes stay small (issue 18: modules cut by concern, "no class holds
more than about 40 methods"; docs/storage.md, "Code layout"). Methods are counted in the
source, as written in each class body: def, cdef and cpdef, properties included."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MAX_METHODS = 42            # "about 40": LogStore's API (what kvnet, its syncer and the tests call) is 42
SOURCES = sorted(os.path.join("kvcore", "storage", n)
                 for n in os.listdir(os.path.join(ROOT, "kvcore", "storage"))
                 if n.endswith((".py", ".pyx"))) + [os.path.join("kvnet", "sim", "storage.py")]
PARTS = ["SegmentTable", "Index", "Recovery", "Durability", "Writer", "MergeJob"]

_CLASS = re.compile(r"^(?:cdef\s+)?class\s+(\w+)")
_METHOD = re.compile(r"^    (?:async\s+)?(?:def|cdef|cpdef)\s[^(=]*\(\s*self\b")


def methods_per_class(text):
    """{class name: methods in its body} of a .py or .pyx source (top-level classes)."""
    out, cur = {}, None
    for line in text.splitlines():
        m = _CLASS.match(line)
        if m:
            cur = m.group(1)
            out[cur] = 0
            continue
        if line[:1] not in ("", " ", "#", ")"):
            cur = None                  # any other top-level statement ends the class
        if cur is not None and _METHOD.match(line):
            out[cur] += 1
    return out


def test_the_counter_counts_methods_not_attributes():
    src = ("cdef class A:\n    cdef int x\n    cdef object y\n\n    def __init__(self):\n"
           "        pass\n\n    cdef int f(self, int a) except -1:\n        return 0\n\n"
           "    @property\n    def p(self):\n        return 1\n\n\ndef g(self):\n    pass\n\n"
           "class B:\n    def h(self):\n        def inner(self):\n            pass\n")
    assert methods_per_class(src) == {"A": 3, "B": 1}


@pytest.mark.parametrize("path", SOURCES)
def test_no_storage_class_holds_more_than_about_40_methods(path):
    with open(os.path.join(ROOT, path)) as f:
        counts = methods_per_class(f.read())
    big = {name: n for name, n in counts.items() if n > MAX_METHODS}
    assert not big, f"{path}: {big} (cut by concern: docs/storage.md, 'Code layout')"


@pytest.mark.parametrize("source", ["kvcore/storage/store_py.py"]
                         + [f"kvcore/storage/{m}.pyx" for m in
                            ("segments", "index", "recovery", "durability", "writes", "merge")])
def test_the_twin_has_the_compiled_stores_parts(source):
    with open(os.path.join(ROOT, source)) as f:
        names = set(methods_per_class(f.read()))
    if source.endswith("store_py.py"):
        assert set(PARTS) <= names
    else:
        assert names & set(PARTS)
