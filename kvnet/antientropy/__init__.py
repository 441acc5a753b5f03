"""Anti-entropy: Merkle-tree exchanges that repair replicas of a partition, and tombstone reaping
(docs/algorithms.md, sections 4 and 6; docs/antientropy.md).

`exchange` holds the message functions of one exchange (no I/O) and `run_exchange`, an
in-process driver between two LocalReplicas; `service.AntiEntropy` is the node service that runs
exchanges over the peer protocol on a schedule; `reaper.Reaper` reaps tombstones.
"""
from kvnet.antientropy.exchange import ExchangeStats, keys_in_segment, keys_in_segments, run_exchange
from kvnet.antientropy.reaper import Reaper
from kvnet.antientropy.service import AntiEntropy

__all__ = ["AntiEntropy", "ExchangeStats", "Reaper", "keys_in_segment", "keys_in_segments",
           "run_exchange"]
