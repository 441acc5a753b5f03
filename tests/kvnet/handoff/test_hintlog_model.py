"""HintLog against a dict model across random add / batch / ack / reopen / crash / reassign."""
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvcore import versions as V
from kvnet.handoff import HintLog

TARGETS = st.sampled_from(["n1", "n2", "n3"])
PARTITIONS = st.integers(0, 1)     # few keys: adds often land on a hint in flight
KEYS = st.sampled_from([b"a", b"\xff\x00"])
ACTORS = st.sampled_from(["x", "y", "z"])


def vmerge(a, b):
    return V.encode(V.sync(V.decode(a), V.decode(b)))


class HintLogModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="hintlog-model-")
        self.log = HintLog(self.dir, vmerge, fsync="never")
        self.model = {}            # (target, partition, key) -> clock bytes
        self.sent = []             # (target, partition, key, clock bytes) handed out by batch
        self.counter = 0

    def teardown(self):
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(node=TARGETS, partition=PARTITIONS, key=KEYS, actor=ACTORS)
    def add(self, node, partition, key, actor):
        self.counter += 1
        clock = V.encode(V.update(V.new(V.sibling(b"v%d" % self.counter, self.counter)), None, actor))
        k = (node, partition, key)
        expected = clock if k not in self.model else vmerge(self.model[k], clock)
        assert self.log.add(node, partition, key, clock) == expected
        self.model[k] = expected

    @rule(node=TARGETS, max_items=st.integers(1, 5))
    def batch(self, node, max_items):
        got = self.log.batch(node, max_items=max_items)
        assert len(got) <= max_items
        assert bool(got) == any(k[0] == node for k in self.model)
        for p, key, clock in got:
            assert self.model[(node, p, key)] == clock
            self.sent.append((node, p, key, clock))

    @rule(data=st.data())
    def ack_sent(self, data):
        if not self.sent:
            return
        target, p, key, clock = self.sent.pop(data.draw(st.integers(0, len(self.sent) - 1)))
        k = (target, p, key)
        deleted = self.log.ack(target, p, key, clock)
        assert deleted == (self.model.get(k) == clock)    # stale or already acked: kept / False
        if deleted:
            del self.model[k]

    @rule(node=TARGETS, partition=PARTITIONS, key=KEYS)
    def ack_unknown_clock(self, node, partition, key):
        assert self.log.ack(node, partition, key, b"\x93\x01\x90\x90") is False

    @rule(crash=st.booleans())
    def reopen(self, crash):
        if crash:
            self.log.sync()
            self.log._abandon()
        else:
            self.log.close()
        self.log = HintLog(self.dir, vmerge, fsync="never")

    @rule(gone=TARGETS, owners=st.lists(TARGETS, min_size=2, max_size=2))
    def reassign(self, gone, owners):
        owners = [o if o != gone else "n4" for o in owners]
        self.log.reassign(gone, lambda p: owners[p])
        for (t, p, key), clock in sorted(self.model.items()):
            if t == gone:
                del self.model[(t, p, key)]
                k = (owners[p], p, key)
                self.model[k] = clock if k not in self.model else vmerge(self.model[k], clock)

    @invariant()
    def matches_model(self):
        for t in ["n1", "n2", "n3", "n4"]:
            want = {(p, key): c for (tt, p, key), c in self.model.items() if tt == t}
            got = {(p, key): c for p, key, c in self.log.items(t)}
            assert got == want
            assert self.log.pending(t) == len(want)
        assert self.log.targets() == sorted({k[0] for k in self.model})


HintLogModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_hintlog_model = HintLogModel.TestCase
