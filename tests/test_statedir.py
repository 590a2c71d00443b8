"""The state dir: one agent at a time, and every kind of damage survived (set aside, rebuilt, event
cursors restarted visibly). The agent-level rebuild from labels is in test_agent_fake and, against
the real engine, in test_faults."""
import glob
import logging
import os
import sqlite3
import stat
import tempfile
import unittest

from host.clock import FakeClock
from host.errors import CursorExpired
from host.jobspec import parse_job
from host.state import JobTable
from host.statedir import StateDirInUse, derive_host_id, open_state
from host.types import id_problem


def open_table(state_dir, given_id="h1"):
    local = open_state(state_dir, given_id, events_kept=100)
    table = JobTable.load(local, FakeClock(), 100)
    return local, table


class StateDirTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="flynn-statedir-")
        self.db = os.path.join(self.dir, "jobs.sqlite3")

    def used_table(self, jobs=3) -> int:
        """A state dir in use: `jobs` jobs with their events. Returns the last event cursor."""
        local, table = open_table(self.dir)
        for n in range(jobs):
            table.add(parse_job({"config": {"image": "busybox"}}, f"j{n}"))
        table.flush()
        last = table.events.last_cursor
        local.close()
        return last

    def set_aside(self) -> list:
        return glob.glob(self.db + ".damaged-*")


class LockAndModesTest(StateDirTestCase):
    def test_one_agent_at_a_time(self):
        local = open_state(self.dir, "h1", 100)
        with self.assertRaises(StateDirInUse) as refused:
            open_state(self.dir, "h1", 100)
        self.assertIn(f"in use by another flynn-host (pid {os.getpid()})", str(refused.exception))
        self.assertIn(self.dir, str(refused.exception))
        local.close()
        open_state(self.dir, "h1", 100).close()  # released with the first

    def test_the_job_table_is_readable_by_its_owner_only(self):
        self.used_table()
        local = open_state(self.dir, "h1", 100)
        try:
            for path in (self.db, self.db + "-wal", self.db + "-shm"):
                self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        finally:
            local.close()

    def test_an_older_world_readable_table_is_tightened(self):
        self.used_table()
        os.chmod(self.db, 0o644)
        open_state(self.dir, "h1", 100).close()
        self.assertEqual(stat.S_IMODE(os.stat(self.db).st_mode), 0o600)


class HostIdTest(StateDirTestCase):
    def test_derived_once_and_kept(self):
        local = open_state(self.dir, None, 100)
        self.assertEqual(local.host_id, derive_host_id())
        self.assertIsNone(id_problem(local.host_id))
        local.close()
        with open(os.path.join(self.dir, "host-id"), "w") as f:
            f.write("kept-id\n")  # e.g. the hostname changed since: the kept id wins
        local = open_state(self.dir, None, 100)
        self.assertEqual(local.host_id, "kept-id")
        local.close()

    def test_a_damaged_host_id_file_is_set_aside_and_the_id_recovered_from_the_table(self):
        open_state(self.dir, "the-host", 100).close()  # the id given once, kept since
        path = os.path.join(self.dir, "host-id")
        for damage in (b"the-ho", b"\xff\xfe\x00garbage\n", b"two words\n", b"", None):
            with self.subTest(damage=damage):
                os.remove(path)
                if damage is None:
                    os.mkdir(path)  # not even a file
                else:
                    with open(path, "wb") as f:
                        f.write(damage)
                with self.assertLogs("host.statedir", "WARNING") as logged:
                    local = open_state(self.dir, None, 100)
                local.close()
                self.assertEqual(local.host_id, "the-host")
                with open(path) as f:
                    self.assertEqual(f.read(), "the-host\n")
                self.assertTrue(any("host id file" in line and "moved aside" in line
                                    for line in logged.output), logged.output)
        self.assertEqual(len(glob.glob(path + ".damaged-*")), 5)  # each one kept


class DamagedTableTest(StateDirTestCase):
    """Each kind of damage: the agent's table opens (empty, to be rebuilt from the containers'
    labels), the damaged file is kept aside, one warning says so, and the cursors a client held
    get 410 instead of meaning other events."""

    def check_rebuilt(self, last_cursor: int, kept_aside: bool = True):
        with self.assertLogs("host.statedir", "WARNING") as logged:
            local, table = open_table(self.dir)
        try:
            self.assertEqual(table.list(), [])
            self.assertEqual(bool(self.set_aside()), kept_aside)
            self.assertGreater(table.events.last_cursor, last_cursor + 10 ** 12)
            with self.assertRaises(CursorExpired) as expired:
                table.events.since(last_cursor)
            self.assertEqual(expired.exception.extra["cursor"], table.events.last_cursor)
            rebuilt = [line for line in logged.output if "rebuilding it from" in line]
            self.assertEqual(len(rebuilt), 1, logged.output)
            # and it works: new jobs are recorded and survive a restart
            table.add(parse_job({"config": {"image": "busybox"}}, "after"))
            table.flush()
            after = table.events.last_cursor
        finally:
            local.close()
        with self.assertNoLogs("host.statedir", "WARNING"):
            local, table = open_table(self.dir)
        self.assertEqual([j.id for j in table.list()], ["after"])
        self.assertEqual(table.events.last_cursor, after)
        local.close()

    def test_a_file_that_is_not_a_database(self):
        last = self.used_table()
        with open(self.db, "wb") as f:
            f.write(b"this is not an SQLite database, just some text\n" * 100)
        self.check_rebuilt(last)

    def test_a_half_written_file(self):
        last = self.used_table()
        with open(self.db, "rb") as f:
            head = f.read(100)
        with open(self.db, "wb") as f:
            f.write(head)
        self.check_rebuilt(last)

    def test_a_truncated_file(self):
        last = self.used_table(jobs=200)  # several pages
        size = os.path.getsize(self.db)
        with open(self.db, "r+b") as f:
            f.truncate(size // 2)
        self.check_rebuilt(last)

    def test_a_zero_length_file(self):
        last = self.used_table()
        open(self.db, "wb").close()
        self.check_rebuilt(last, kept_aside=False)

    def test_a_missing_file(self):
        last = self.used_table()
        os.remove(self.db)
        self.check_rebuilt(last, kept_aside=False)

    def test_a_directory_in_place_of_the_file(self):
        last = self.used_table()
        os.remove(self.db)
        os.mkdir(self.db)
        self.check_rebuilt(last)

    def test_rows_that_do_not_read(self):
        last = self.used_table()
        db = sqlite3.connect(self.db)
        db.execute("UPDATE jobs SET data = '{\"job\": {\"id\": \"j0\"' WHERE id = 'j0'")
        db.commit()
        db.close()
        self.check_rebuilt(last)

    def test_a_healthy_table_is_left_alone(self):
        last = self.used_table()
        with self.assertNoLogs("host.statedir", "WARNING"):
            local, table = open_table(self.dir)
        self.assertEqual(len(table.list()), 3)
        self.assertEqual(table.events.last_cursor, last)
        self.assertEqual(table.events.since(0)[0][0].cursor, 1)
        local.close()
        self.assertEqual(self.set_aside(), [])


if __name__ == "__main__":
    logging.basicConfig()
    unittest.main()
