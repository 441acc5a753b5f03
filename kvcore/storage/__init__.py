"""kvcore.storage: LogStore, a Bitcask-shaped log store (docs/storage.md)."""
from kvcore._native import select
from kvcore.errors import (CorruptRecord, KeyTooLarge, MergeError, StoreClosed, StoreError,
                           StoreLocked, ValueTooLarge)

_store = select("kvcore.storage.store", "kvcore.storage.store_py")
LogStore = _store.LogStore
MergeJob = _store.MergeJob

__all__ = ["LogStore", "MergeJob", "StoreError", "StoreClosed", "StoreLocked", "KeyTooLarge",
           "ValueTooLarge", "CorruptRecord", "MergeError"]
