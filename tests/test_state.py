"""The job table: one method per change, persisted with its event, reloaded after a restart."""
import shutil
import tempfile
import unittest

from host.clock import FakeClock
from host.errors import NotFound
from host.jobspec import parse_job
from host.state import JobTable
from host.statedir import open_state
from host.types import CRASHED, DONE, FAILED, RUNNING, STARTING, PortBinding


def job(job_id, **resources):
    return parse_job({"config": {"image": "busybox"}, "resources": resources}, job_id)


def open_table(state_dir: str, clock) -> tuple:
    """(LocalState, JobTable) as an agent opens them."""
    local = open_state(state_dir, "h1", events_kept=100)
    return local, JobTable.load(local, clock, 100)


class JobTableTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.clock = FakeClock()
        self.local, self.table = open_table(self.dir, self.clock)

    def tearDown(self):
        self.local.close()
        shutil.rmtree(self.dir)

    def reload(self):
        self.local.close()
        self.local, table = open_table(self.dir, self.clock)
        return table

    def test_add_publishes_create_with_timestamp(self):
        active = self.table.add(job("a"), (PortBinding(49152, 49152, "tcp"),))
        self.assertEqual(active.status, STARTING)
        self.assertEqual(active.created_at, "2026-01-01T00:00:00.000000Z")
        self.table.flush()
        (event, text), = self.table.events.since(0)
        self.assertEqual((event.cursor, event.event, event.job_id), (1, "create", "a"))
        self.assertIn('"status": "starting"', text)

    def test_transitions_are_checked(self):
        self.table.add(job("a"))
        self.assertTrue(self.table.transition("a", RUNNING, started_at="t1"))
        self.assertTrue(self.table.transition("a", DONE, exit_status=0))
        self.assertFalse(self.table.transition("a", CRASHED, exit_status=1))
        self.assertFalse(self.table.transition("a", RUNNING))
        self.assertEqual(self.table.get("a").status, DONE)
        self.assertEqual(self.table.get("a").exit_status, 0)
        self.table.flush()
        self.assertEqual([e.event for e, _ in self.table.events.since(0)],
                         ["create", "start", "stop"])

    def test_list_newest_first_and_filter(self):
        for name in ("a", "b", "c"):
            self.table.add(job(name))
        self.table.transition("b", FAILED, error="x")
        self.assertEqual([j.id for j in self.table.list()], ["c", "b", "a"])
        self.assertEqual([j.id for j in self.table.list(FAILED)], ["b"])
        self.assertEqual(self.table.counts(), {STARTING: 2, FAILED: 1})
        with self.assertRaises(NotFound):
            self.table.get("zzz")

    def test_allocated_counts_only_active_jobs(self):
        self.table.add(job("a", memory_mb=100, cpu_shares=10))
        self.table.add(job("b", memory_mb=50))
        self.table.transition("b", FAILED, error="x")
        alloc = self.table.allocated()
        self.assertEqual((alloc.memory_mb, alloc.cpu_shares), (100, 10))

    def test_state_and_cursors_survive_a_restart(self):
        self.table.add(job("a"), (PortBinding(49152, 80, "tcp"),))
        self.table.update("a", container_id="c1", stop_requested=True)
        self.table.transition("a", RUNNING, started_at="t")
        table = self.reload()
        again = table.get("a")
        self.assertEqual((again.status, again.container_id, again.ports, again.stop_requested),
                         (RUNNING, "c1", (PortBinding(49152, 80, "tcp"),), True))
        self.assertEqual(table.events.last_cursor, 2)
        self.assertEqual([e.cursor for e, _ in table.events.since(0)], [1, 2])
        table.add(job("b"))
        table.flush()
        self.assertEqual(table.events.last_cursor, 3)
        self.assertEqual([j.id for j in table.list()], ["b", "a"])

    def test_forget_only_final_jobs(self):
        self.table.add(job("a"))
        with self.assertRaises(ValueError):
            self.table.forget("a")
        self.table.transition("a", FAILED, error="x")
        self.table.forget("a")
        self.assertIsNone(self.reload().find("a"))
