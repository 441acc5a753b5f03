"""kvnet.handoff: hinted handoff and ownership transfer (docs/handoff.md).

The parts are named by role, as riak_core's ``handoff_*`` modules and Cassandra's ``hints``
package are:

- ``hintlog``: durable hints kept per target node, one kvcore LogStore per target, merged per
  key with the DVV rules; replayed in resumable batches and removed only by compare-and-delete
  once the target acknowledged them. No asyncio, no network: files only. (Built.)
- ``replay``: the manager, sender and receiver in one service: when a target with pending hints
  is up (at every interval, and at once when gossip sees it come back) it sends that target its
  hints in rate-limited batches; the target syncs them into its replica and answers which it
  stored; only those are deleted (compare-and-delete).

Ownership transfers on ring changes are in ``kvnet.membership.changes``.
"""
from kvnet.handoff.hintlog import BadHint, BadTarget, HintError, HintLog

__all__ = ["HintLog", "HintError", "BadTarget", "BadHint"]
