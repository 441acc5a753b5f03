"""Anti-entropy: Merkle-tree exchanges that repair replicas of a partition (ALGORITHMS.md 4).

`exchange` holds the message functions of one exchange (no I/O) and `run_exchange`, an
in-process driver between two LocalReplicas.
"""
from kvnet.antientropy.exchange import ExchangeStats, keys_in_segment, keys_in_segments, run_exchange

__all__ = ["ExchangeStats", "keys_in_segment", "keys_in_segments", "run_exchange"]
