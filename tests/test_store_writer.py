"""The store's group commit: an event is published only once durable, a burst of changes is one
transaction, checkpoints (the disk's waits) run in a worker thread while the loop and the commits
go on, and a disk that refuses a write holds the queue instead of losing it."""
import shutil
import sqlite3
import tempfile
import unittest

import gevent
from gevent import monkey

from host.clock import FakeClock
from host.jobspec import parse_job
from host.state import JobTable
from host.statedir import open_state
from host.types import RUNNING

NativeEvent = monkey.get_original("threading", "Event")


def job(job_id):
    return parse_job({"config": {"image": "busybox"}}, job_id)


class GroupCommitTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.open()

    def open(self):
        self.local = open_state(self.dir, "h1", events_kept=100)
        self.table = JobTable.load(self.local, FakeClock(), 100)
        self.writer = self.local.store.writer

    def tearDown(self):
        self.local.close()
        shutil.rmtree(self.dir)

    def hold_checkpoints(self) -> tuple:
        """Every checkpoint (in the worker thread) blocks until the returned `release` is set;
        `entered` is set once one is blocked. A checkpoint after every commit."""
        entered, release = NativeEvent(), NativeEvent()
        real_checkpoint = self.writer._checkpoint

        def held():
            entered.set()
            release.wait(30)
            return real_checkpoint()
        self.writer._checkpoint = held
        self.writer.checkpoint_every = 1
        return entered, release

    def wait_native(self, event):
        """Wait for a native event without blocking the loop."""
        with gevent.Timeout(10):
            while not event.is_set():
                gevent.sleep(0.005)

    def test_an_event_is_published_once_durable(self):
        self.table.add(job("a"))
        self.assertEqual(self.table.get("a").status, "starting")  # in memory at once
        self.assertEqual(self.table.events.since(0), [])  # not committed: not published
        self.assertEqual((self.table.events.last_cursor, self.table.events.pending), (0, 1))
        self.assertEqual(self.writer.pending, 1)
        found, cursor = self.table.events.wait(0, 30)  # yields: the writer commits, publishes
        self.assertEqual(([e.event for e, _ in found], cursor), (["create"], 1))
        self.assertEqual(self.writer.pending, 0)

    def test_checkpoints_wait_on_the_disk_in_a_thread_not_on_the_loop(self):
        entered, release = self.hold_checkpoints()
        self.table.add(job("a"))
        self.assertTrue(self.table.flush(5))
        self.wait_native(entered)  # a checkpoint is in the worker thread, held
        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.001)) for _ in range(10)])
        for n in range(20):  # commits carry on meanwhile, and their events are published
            self.table.transition("a", RUNNING, started_at="t") if n == 0 else \
                self.table.add(job(f"more{n}"))
            self.assertTrue(self.table.flush(5))
        ticker.join(5)
        self.assertEqual(len(ticks), 10)
        self.assertEqual(self.table.events.last_cursor, 21)
        self.assertEqual(self.writer.checkpoints, 0)
        release.set()
        with gevent.Timeout(10):
            while self.writer.checkpoints < 1:
                gevent.sleep(0.01)
        # and the loop's own connection never checkpoints by itself
        self.assertEqual(self.local.store._db.execute("PRAGMA wal_autocheckpoint").fetchone(),
                         (0,))

    def test_a_read_with_no_wait_waits_for_pending_events(self):
        """A client that saw a job's new state then reads its events finds the event, even
        when other events are there to be read at once."""
        self.table.add(job("a"))
        self.table.flush()
        self.table.transition("a", RUNNING, started_at="t")  # pending
        found, cursor = self.table.events.wait(0, 0)
        self.assertEqual(([e.event for e, _ in found], cursor), (["create", "start"], 2))

    def test_a_burst_of_changes_is_one_transaction(self):
        before = self.writer.transactions
        for n in range(100):
            self.table.add(job(f"j{n}"))
            self.table.transition(f"j{n}", RUNNING, started_at="t")
        self.assertTrue(self.table.flush(10))
        self.assertEqual(self.writer.transactions - before, 1)
        self.assertEqual(self.table.events.last_cursor, 200)
        self.local.close()
        self.open()
        self.assertEqual(len(self.table.list(RUNNING)), 100)
        self.assertEqual(self.table.events.last_cursor, 200)

    def test_a_disk_that_refuses_holds_the_writes_and_retries(self):
        real_commit, refusals = self.writer._commit, []

        def refusing(batch):
            if len(refusals) < 2:
                refusals.append(len(batch))
                raise sqlite3.OperationalError("disk I/O error")
            return real_commit(batch)
        self.writer._commit = refusing
        with self.assertLogs("host.store_writer", "ERROR") as logged:
            self.table.add(job("a"))
            gevent.sleep(0.05)  # the first refusal; more changes arrive meanwhile
            self.assertEqual(self.table.events.last_cursor, 0)
            self.table.transition("a", RUNNING, started_at="t")
            self.assertTrue(self.table.flush(10))
        self.assertEqual(len(refusals), 2)
        self.assertIn("disk I/O error", logged.output[0])
        self.assertEqual([e.event for e, _ in self.table.events.since(0)], ["create", "start"])
        self.local.close()
        self.open()
        self.assertEqual((self.table.get("a").status, self.table.events.last_cursor), (RUNNING, 2))

    def test_a_write_that_is_wrong_fails_alone(self):
        self.table.add(job("a"))
        bad = self.writer.submit([("INSERT INTO events (cursor, data) VALUES (?, ?)", (1, "x"))])
        self.table.add(job("b"))
        with self.assertLogs("host.store_writer", "ERROR") as logged:
            self.assertTrue(self.table.flush(10))
        self.assertTrue(bad.done.is_set())
        self.assertIn("UNIQUE constraint failed", logged.output[0])
        self.assertEqual(self.table.events.last_cursor, 2)
        self.local.close()
        self.open()
        self.assertEqual(sorted(j.id for j in self.table.list()), ["a", "b"])


if __name__ == "__main__":
    unittest.main()
