"""The store's group commit: writes run in a worker thread, the serving loop goes on meanwhile,
an event is published only once durable, a burst is one transaction, and a disk that refuses a
write holds the queue instead of losing it."""
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

    def hold_commits(self) -> tuple:
        """Every event insert blocks (in the worker thread) until the returned `release` is set;
        `entered` is set once a commit is blocked."""
        entered, release = NativeEvent(), NativeEvent()

        def block():
            entered.set()
            release.wait(30)
        db = self.local.store._db
        db.create_function("hold_commit", 0, block)
        db.execute("CREATE TEMP TRIGGER hold AFTER INSERT ON events BEGIN "
                   "SELECT hold_commit(); END")
        return entered, release

    def wait_native(self, event):
        """Wait for a native event without blocking the loop (the commit runs in a thread)."""
        with gevent.Timeout(10):
            while not event.is_set():
                gevent.sleep(0.005)

    def test_the_loop_runs_while_a_commit_waits_and_the_event_waits_for_it(self):
        entered, release = self.hold_commits()
        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.001)) for _ in range(10)])
        self.table.add(job("a"))
        self.assertEqual(self.table.get("a").status, "starting")  # in memory at once
        self.wait_native(entered)  # the commit is in the worker thread, held
        ticker.join(5)
        self.assertEqual(len(ticks), 10)  # other greenlets ran all along
        self.assertEqual(self.table.events.since(0), [])  # not durable: not published
        self.assertEqual((self.table.events.last_cursor, self.table.events.pending), (0, 1))
        waiter = gevent.spawn(self.table.events.wait, 0, 30)
        gevent.sleep(0.01)
        self.assertFalse(waiter.ready())
        release.set()
        found, cursor = waiter.get(timeout=5)
        self.assertEqual(([e.event for e, _ in found], cursor), (["create"], 1))

    def test_a_read_with_no_wait_waits_for_pending_events(self):
        """A client that saw a job's new state then reads its events finds the event, even
        when other events are there to be read at once."""
        self.table.add(job("a"))
        self.table.flush()
        entered, release = self.hold_commits()
        self.table.transition("a", RUNNING, started_at="t")
        self.wait_native(entered)
        reader = gevent.spawn(self.table.events.wait, 0, 0)
        gevent.sleep(0.05)
        self.assertFalse(reader.ready())
        release.set()
        found, cursor = reader.get(timeout=5)
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
