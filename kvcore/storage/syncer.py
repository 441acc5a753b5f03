"""One daemon thread that syncs every fsync="interval" store of the process.

A node holds one store per partition; a thread each would be hundreds of
threads. Each store is synced at most `interval` after its first unsynced
write, idle or not.
"""
import threading
import time
import weakref

# Reentrant: the garbage collector may run in this module's thread while it holds the lock
# (any allocation can trigger it), and finalize a store nobody closed, whose close() calls
# unregister(): with a plain Lock the syncer then waited for itself, and every store opened
# after it (register) for the syncer.
_lock = threading.RLock()
_wake = threading.Condition(_lock)
_stores = weakref.WeakSet()
_thread = None


def register(store):
    global _thread
    with _lock:
        _stores.add(store)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="ringkv-syncer", daemon=True)
            _thread.start()
        _wake.notify()


def poke():
    """A store just became dirty: recompute the next deadline now."""
    with _lock:
        _wake.notify()


def unregister(store):
    with _lock:
        _stores.discard(store)


def _run():
    while True:
        with _lock:
            stores = list(_stores)
            if not stores:
                _wake.wait(1.0)
                continue
        now = time.monotonic()
        next_due = now + 1.0
        for s in stores:
            try:
                due = s._sync_due()
            except Exception:
                continue
            if due is None:
                continue
            if due <= now:
                try:
                    s._timer_sync()
                except Exception:  # a closed or failing store must not stop the others
                    pass
            else:
                next_due = min(next_due, due)
        with _lock:
            _wake.wait(max(0.001, min(next_due - time.monotonic(), 1.0)))
        del stores
