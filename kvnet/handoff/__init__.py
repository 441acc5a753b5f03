"""kvnet.handoff: hinted handoff and ownership transfer (docs/handoff.md).

The parts are named by role, as riak_core's ``handoff_*`` modules and Cassandra's ``hints``
package are:

- ``hintlog``: durable hints kept per target node, one kvcore LogStore per target, merged per
  key with the DVV rules; replayed in resumable batches and removed only by compare-and-delete
  once the target acknowledged them. No asyncio, no network: files only. (Built.)
- ``manager`` (next step): watches membership; when a target with pending hints is seen up it
  schedules a replay (rate-limited, a concurrency limit across targets); when a target is removed
  from the cluster it calls ``HintLog.reassign``; it also schedules ownership transfers on ring
  changes.
- ``sender`` (next step): streams a hint log batch (or a whole partition, for ownership handoff)
  to a peer and acknowledges each delivered hint back into the hint log.
- ``receiver`` (next step): applies an incoming stream with the replica's ``sync`` (never refusing
  it), and acknowledges only what is stored.
"""
from kvnet.handoff.hintlog import BadHint, BadTarget, HintError, HintLog

__all__ = ["HintLog", "HintError", "BadTarget", "BadHint"]
