"""The process's interval syncer thread (kvcore/storage/syncer.py)."""
import importlib.util
import threading


def _fresh_syncer():
    """A private copy of the module: a regression here must not stop the suite's syncer."""
    spec = importlib.util.find_spec("kvcore.storage.syncer")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_store_finalized_while_the_syncer_holds_its_lock_does_not_wait_for_itself():
    """The garbage collector can run in the syncer's thread while it holds its lock and
    finalize a store nobody closed; the store's close() unregisters it. That once deadlocked
    the syncer, and every store opened after it (seen as a hung test_replica open_all)."""
    syncer = _fresh_syncer()

    class Dying:
        def __del__(self):
            syncer.unregister(self)

    done = threading.Event()

    def holding_the_lock():
        with syncer._lock:
            store = Dying()
            syncer._stores.add(store)
            del store                   # finalized here, in the lock holder's thread
        done.set()

    t = threading.Thread(target=holding_the_lock, daemon=True)
    t.start()
    assert done.wait(10), "unregister() from a finalizer waited for the lock its thread holds"
    assert len(syncer._stores) == 0


def test_register_and_unregister_from_many_threads_keep_the_set_exact():
    syncer = _fresh_syncer()

    class Store:
        def _sync_due(self):
            return None

    stores = [Store() for _ in range(200)]

    def churn(part):
        for s in part:
            syncer.register(s)
        for s in part[::2]:
            syncer.unregister(s)

    threads = [threading.Thread(target=churn, args=(stores[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert set(syncer._stores) == {s for i in range(4) for s in stores[i::4][1::2]}
