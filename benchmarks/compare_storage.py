"""ringkv's LogStore side by side with lmdb, RocksDB (rocksdict) and SQLite (WAL).

One process per engine, one run, the same keys and values for all; prints a
table and the ratios to lmdb. No engine syncs to disk (ringkv fsync="never",
lmdb sync=False/metasync=False, RocksDB default WAL without sync, SQLite
synchronous=OFF), so the comparison measures the engines, not the disk.

    python benchmarks/compare_storage.py --keys 1000000 --value-size 100
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ENGINES = ["ringkv", "lmdb", "rocksdict", "sqlite"]
BATCH = 1000


def rss_anon():
    """Private resident memory of this process (excludes mapped file pages)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def workload(n, key_size, value_size, seed=42):
    rnd = random.Random(seed)
    keys = [rnd.randbytes(key_size) for _ in range(n)]
    blob = rnd.randbytes(value_size * 1024 + value_size)
    values = [blob[(i * 37) % (value_size * 1024):(i * 37) % (value_size * 1024) + value_size]
              for i in range(n)]
    order = list(range(n))
    rnd.shuffle(order)
    return keys, values, [keys[i] for i in order]


# ---- one driver per engine: open, put, put_batch, get, close ---------------------------

class RingKV:
    name = "ringkv"

    def open(self, path):
        from kvcore.storage import LogStore

        self.s = LogStore(path, fsync="never")

    def put_each(self, keys, values):
        put = self.s.put
        for k, v in zip(keys, values):
            put(k, v)

    def put_batches(self, keys, values):
        for i in range(0, len(keys), BATCH):
            self.s.put_many(zip(keys[i:i + BATCH], values[i:i + BATCH]))

    def get_each(self, keys):
        get = self.s.get
        for k in keys:
            get(k)

    def close(self):
        self.s.close()

    def index_bytes(self):
        return self.s.stats()["index_bytes"]


class Lmdb:
    name = "lmdb"

    def open(self, path):
        import lmdb

        self.env = lmdb.open(path, map_size=1 << 36, sync=False, metasync=False)

    def put_each(self, keys, values):
        begin = self.env.begin
        for k, v in zip(keys, values):
            with begin(write=True) as txn:
                txn.put(k, v)

    def put_batches(self, keys, values):
        for i in range(0, len(keys), BATCH):
            with self.env.begin(write=True) as txn:
                put = txn.put
                for k, v in zip(keys[i:i + BATCH], values[i:i + BATCH]):
                    put(k, v)

    def get_each(self, keys):
        with self.env.begin() as txn:
            get = txn.get
            for k in keys:
                get(k)

    def close(self):
        self.env.close()

    def index_bytes(self):
        return None


class Rocks:
    name = "rocksdict"

    def open(self, path):
        from rocksdict import Rdict

        self.db = Rdict(path)

    def put_each(self, keys, values):
        put = self.db.put
        for k, v in zip(keys, values):
            put(k, v)

    def put_batches(self, keys, values):
        from rocksdict import WriteBatch

        for i in range(0, len(keys), BATCH):
            wb = WriteBatch()
            for k, v in zip(keys[i:i + BATCH], values[i:i + BATCH]):
                wb.put(k, v)
            self.db.write(wb)

    def get_each(self, keys):
        get = self.db.get
        for k in keys:
            get(k)

    def close(self):
        self.db.close()

    def index_bytes(self):
        return None


class Sqlite:
    name = "sqlite"

    def open(self, path):
        import sqlite3

        os.makedirs(path, exist_ok=True)
        self.db = sqlite3.connect(os.path.join(path, "db.sqlite"), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")

    def put_each(self, keys, values):
        ex = self.db.execute
        for k, v in zip(keys, values):
            ex("INSERT OR REPLACE INTO kv VALUES (?, ?)", (k, v))

    def put_batches(self, keys, values):
        for i in range(0, len(keys), BATCH):
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)",
                                zip(keys[i:i + BATCH], values[i:i + BATCH]))
            self.db.execute("COMMIT")

    def get_each(self, keys):
        ex = self.db.execute
        for k in keys:
            ex("SELECT v FROM kv WHERE k = ?", (k,)).fetchone()

    def close(self):
        self.db.close()

    def index_bytes(self):
        return None


DRIVERS = {d.name: d for d in (RingKV, Lmdb, Rocks, Sqlite)}


def run_engine(name, n, key_size, value_size, workdir):
    keys, values, shuffled = workload(n, key_size, value_size)
    drv = DRIVERS[name]()
    a, b = os.path.join(workdir, "each"), os.path.join(workdir, "batch")
    out = {"engine": name}
    warm = os.path.join(workdir, "warm")        # load the engine's modules before measuring RSS
    drv.open(warm)
    drv.close()
    base = rss_anon()
    drv.open(a)
    t = time.perf_counter()
    drv.put_each(keys, values)
    out["puts_per_s"] = n / (time.perf_counter() - t)
    out["rss_per_key"] = (rss_anon() - base) / n
    out["index_per_key"] = (drv.index_bytes() or 0) / n or None
    t = time.perf_counter()
    drv.get_each(shuffled)
    out["gets_per_s"] = n / (time.perf_counter() - t)
    drv.close()
    out["disk_bytes"] = dir_bytes(a)
    t = time.perf_counter()
    drv.open(a)
    drv.get_each(shuffled[:1])
    out["reopen_s"] = time.perf_counter() - t
    drv.close()
    drv.open(b)
    t = time.perf_counter()
    drv.put_batches(keys, values)
    out["put_many_per_s"] = n / (time.perf_counter() - t)
    drv.close()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--key-size", type=int, default=16)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--dir", default=None, help="where to put the stores (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(run_engine(args.worker, args.keys, args.key_size, args.value_size, args.dir)))
        return 0

    engines = [e for e in args.engines.split(",") if e]
    for e in engines:
        if e not in DRIVERS:
            ap.error(f"unknown engine {e!r} (choose from {', '.join(ENGINES)})")
    top = tempfile.mkdtemp(prefix="ringkv-bench-", dir=args.dir)
    rows = []
    try:
        for e in engines:
            wd = os.path.join(top, e)
            os.makedirs(wd)
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", e, "--dir", wd,
                   "--keys", str(args.keys), "--key-size", str(args.key_size),
                   "--value-size", str(args.value_size)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{e}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            shutil.rmtree(wd, ignore_errors=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    print_table(rows, args)
    if args.json:
        print(json.dumps(rows))
    return 0


def print_table(rows, args):
    print(f"{args.keys:,} random {args.key_size}-byte keys, {args.value_size}-byte values; "
          "one process per engine, no fsync")
    cols = [("puts/s", "puts_per_s", "{:,.0f}"), ("put_many/s", "put_many_per_s", "{:,.0f}"),
            ("gets/s", "gets_per_s", "{:,.0f}"), ("RSS B/key", "rss_per_key", "{:.1f}"),
            ("index B/key", "index_per_key", "{:.1f}"), ("disk MB", "disk_bytes", "{:.1f}"),
            ("reopen s", "reopen_s", "{:.3f}")]
    head = f"{'engine':<10}" + "".join(f"{c[0]:>14}" for c in cols)
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = []
        for _, key, fmt in cols:
            v = r.get(key)
            if key == "disk_bytes" and v is not None:
                v = v / 1e6
            cells.append(f"{fmt.format(v) if v is not None else '-':>14}")
        print(f"{r['engine']:<10}" + "".join(cells))
    ref = next((r for r in rows if r["engine"] == "lmdb"), None)
    ring = next((r for r in rows if r["engine"] == "ringkv"), None)
    if ref and ring:
        print("\nringkv / lmdb:  puts {:.2f}x   put_many {:.2f}x   gets {:.2f}x   reopen {:.2f}x".format(
            ring["puts_per_s"] / ref["puts_per_s"], ring["put_many_per_s"] / ref["put_many_per_s"],
            ring["gets_per_s"] / ref["gets_per_s"], ref["reopen_s"] / ring["reopen_s"]))
        print("(above 1 means ringkv is faster; reopen is lmdb's time over ringkv's)")


if __name__ == "__main__":
    sys.exit(main())
