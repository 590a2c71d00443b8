"""How long a job change waits for its commit while the serving loop is busy: the store's group
commit on the loop (host.store_writer) against the same transaction sent to a worker thread, side
by side in alternating batches.

A greenlet keeps the loop busy in 2 ms slices (a loop serving a thousand long-polls). Each sample
saves one job and its event and measures until the commit is done. The thread side needs the GIL
for each statement and waits for the interpreter's switch interval at every hand-over while the
loop is busy; that is why the store's commits stay on the loop and only its checkpoints (the
fsyncs) go to the thread. Also printed: one inline transaction's cost on an idle loop.
`python bench/store_commit.py` (BENCH_SAMPLES, 200 a side).
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sqlite3  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent  # noqa: E402
from gevent.threadpool import ThreadPool  # noqa: E402

from bench.report import target  # noqa: E402
from host.store import Store  # noqa: E402

SAMPLES = int(os.environ.get("BENCH_SAMPLES", 200))
BATCH = 20
JOB = {"job": {"id": "j"}, "spec": "y" * 600}


def busy_loop():
    while True:
        started = time.perf_counter()
        while time.perf_counter() - started < 0.002:
            pass
        gevent.sleep(0)


def through_the_store(store: Store, n: int) -> float:
    done = []
    started = time.perf_counter()
    store.save(n, dict(JOB, job={"id": f"j{n}"}), {"cursor": n, "time": "t"},
               on_commit=lambda: done.append(time.perf_counter()))
    while not done:
        gevent.sleep(0.0005)
    return done[0] - started


def through_a_thread(pool: ThreadPool, db: sqlite3.Connection, n: int) -> float:
    def commit():
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR REPLACE INTO jobs (id, seq, data) VALUES (?, ?, ?)",
                   (f"j{n}", n, "y" * 600))
        db.execute("INSERT INTO events (cursor, data) VALUES (?, ?)", (n, "y" * 600))
        db.execute("COMMIT")
    started = time.perf_counter()
    pool.apply(commit)
    return time.perf_counter() - started


def percentile(values: list, p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    directory = tempfile.mkdtemp()
    store = Store(os.path.join(directory, "store.sqlite3"), 1000)
    db = sqlite3.connect(os.path.join(directory, "thread.sqlite3"), isolation_level=None,
                         check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript("CREATE TABLE jobs (id TEXT PRIMARY KEY, seq INTEGER, data TEXT);"
                     "CREATE TABLE events (cursor INTEGER PRIMARY KEY, data TEXT)")
    pool = ThreadPool(1)
    busy = gevent.spawn(busy_loop)
    sides = {"store": [], "thread": []}
    n = 0
    for round_no in range(SAMPLES // BATCH):
        for side in (("store", "thread") if round_no % 2 == 0 else ("thread", "store")):
            for _ in range(BATCH):
                n += 1
                sides[side].append(through_the_store(store, n) if side == "store" else
                                   through_a_thread(pool, db, n))
    busy.kill()
    started = time.perf_counter()
    for _ in range(1000):
        n += 1
        store._db.execute("BEGIN IMMEDIATE")
        store._db.execute("INSERT OR REPLACE INTO jobs (id, seq, data) VALUES (?, ?, ?)",
                          (f"j{n}", n, "y" * 600))
        store._db.execute("INSERT INTO events (cursor, data) VALUES (?, ?)", (n, "y" * 600))
        store._db.execute("COMMIT")
    inline_us = (time.perf_counter() - started) / 1000 * 1e6
    print(f"store_commit: {SAMPLES} commits a side with the loop busy in 2 ms slices")
    for side, label in (("store", "group commit on the loop"), ("thread", "a worker thread")):
        print(f"  {label:<25} p50 {percentile(sides[side], 0.5) * 1000:7.2f} ms   "
              f"p99 {percentile(sides[side], 0.99) * 1000:7.2f} ms")
    ratio = percentile(sides["store"], 0.5) / percentile(sides["thread"], 0.5)
    print(f"  store / thread p50 {ratio:.3f}x;  one inline transaction, idle loop: "
          f"{inline_us:.0f} us")
    target("store_commit p50 on the loop / in a thread", ratio, "< 1.0x", ratio < 1.0, "x")
    store.close()
    pool.kill()


if __name__ == "__main__":
    main()
