"""kvnet/testing/writers.py without a cluster."""
import pytest

from kvnet.testing import _Writer


def test_writer_set_ports_replaces_the_ports_between_operations():
    class Recorder(_Writer):
        def step(self, port):
            if self.ops == 5:
                self.set_ports([9, 10])
            self.seen.append(port)

    w = Recorder([1, 2, 3], count=9)
    w.seen = []
    w.run()
    assert w.seen == [1, 2, 3, 1, 2, 3, 9, 10, 9]
    with pytest.raises(ValueError):
        w.set_ports([])
