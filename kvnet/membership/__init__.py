"""Gossip membership and failure detection (docs/algorithms.md, section 5, docs/membership.md).

- state.py     the gossiped member table as an immutable value: merge, beat, digests, encoding;
               next_generation (the generation file)
- detector.py  phi-accrual arrival windows (pure math) and the two-source liveness rule

Pure parts only: the gossip round task and the syn/ack/ack2 handlers drive these values.
"""
from kvnet.membership.detector import Liveness, PhiDetector
from kvnet.membership.state import (
    STATUSES, Digest, MemberState, MemberTable, beat, diff, digest, merge, next_generation,
)

__all__ = [
    "STATUSES", "Digest", "MemberState", "MemberTable", "beat", "diff", "digest", "merge",
    "next_generation", "PhiDetector", "Liveness",
]
