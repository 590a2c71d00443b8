"""What the scheduler weighs of a host: its mirror's figures, less what is placed on it."""
import unittest

import simplejson
from hypothesis import given, settings
from hypothesis import strategies as st

from host.cluster.registered import RegisteredHost
from host.cluster.scheduler import Capacity, LeastLoaded
from host.errors import NoCapacity
from host.jobspec import parse_job
from tests.test_view import job, record


def placed(job_id: str, ports=(), memory_mb: int = 0):
    return parse_job({"id": job_id, "config": {"image": "busybox", "cmd": ["true"],
                                               "ports": [{"port": p} for p in ports]},
                      "resources": {"memory_mb": memory_mb}})


class CapacityTest(unittest.TestCase):
    def setUp(self):
        self.host = RegisteredHost.read("h", 1, 1, simplejson.dumps(record("h", [
            job(1), job(2, "starting"), job(3, "done"), job(4, "failed", ports=[])])))

    def test_a_hosts_active_jobs_and_ports_are_what_it_reported(self):
        capacity = Capacity.of(self.host)
        self.assertEqual((capacity.jobs, capacity.ports), (2, {"50001/tcp", "50002/tcp"}))
        self.assertEqual((capacity.memory_mb, capacity.cpu_shares), (1000, 1000))

    def test_what_is_placed_counts_and_holds_its_fixed_ports_without_touching_the_mirror(self):
        capacity = Capacity.of(self.host)
        mirrored = self.host.active_ports
        capacity.take(placed("a", ports=[6000], memory_mb=100))
        self.assertEqual(capacity.shortfall(placed("b", ports=[6000])), "port 6000/tcp is taken")
        self.assertEqual(capacity.shortfall(placed("c", ports=[50001])), "port 50001/tcp is taken")
        self.assertEqual(capacity.shortfall(placed("d", ports=[50003])), "")  # (j3 is done)
        capacity.take(placed("e"))  # no fixed port, no reservation
        self.assertEqual((capacity.jobs, capacity.memory_mb), (4, 900))
        self.assertEqual(self.host.active_ports, {"50001/tcp", "50002/tcp"})
        self.assertIs(self.host.active_ports, mirrored)
        # the next placement starts from the mirror again
        self.assertEqual(Capacity.of(self.host).shortfall(placed("b", ports=[6000])), "")


def host_with(n: int, memory_mb: int, jobs: int, port: bool) -> RegisteredHost:
    return RegisteredHost.read(f"h{n}", n + 1, n + 1, simplejson.dumps(record(
        f"h{n}", [job(j, ports=[]) for j in range(jobs)] + ([job(9)] if port else []),
        resources={"memory_mb": memory_mb, "cpu_shares": 1000})))


class LeastLoadedTest(unittest.TestCase):
    """Placing by the heap gives what weighing every host for each job gives."""

    HOSTS = st.lists(st.tuples(st.sampled_from([0, 200, 1000]), st.integers(0, 3),
                               st.booleans()), max_size=6)
    # (a job's memory, whether it takes port 50009, the host it is sent to by name, if any)
    JOBS = st.lists(st.tuples(st.sampled_from([0, 50, 300]), st.booleans(),
                              st.one_of(st.none(), st.integers(0, 5))), max_size=12)

    @settings(max_examples=300, deadline=None)
    @given(HOSTS, JOBS)
    def test_as_weighing_every_host(self, hosts, jobs):
        registered = [host_with(n, *h) for n, h in enumerate(hosts)]
        by_heap = {h.id: Capacity.of(h) for h in registered}
        by_all = {h.id: Capacity.of(h) for h in registered}
        heap = LeastLoaded(by_heap)
        for n, (memory_mb, port, target) in enumerate(jobs):
            one = placed(f"x{n}", ports=[50009] if port else [], memory_mb=memory_mb)
            if target is not None and f"h{target}" in by_all:  # sent by name: both take it
                by_heap[f"h{target}"].take(one)
                by_all[f"h{target}"].take(one)
                continue
            fitting = [c for c in by_all.values() if not c.shortfall(one)]
            if not fitting:
                with self.assertRaises(NoCapacity):
                    heap.place(one)
                continue
            expected = min(fitting, key=lambda c: c.load).host.id
            self.assertEqual(heap.place(one), expected)
            by_heap[expected].take(one)
            by_all[expected].take(one)

    def test_no_capacity_names_why_for_a_few_hosts(self):
        capacity = {f"h{n}": Capacity.of(host_with(n, 100, 0, False)) for n in range(12)}
        with self.assertRaises(NoCapacity) as caught:
            LeastLoaded(capacity).place(placed("big", memory_mb=500))
        message = str(caught.exception)
        self.assertIn("h0: memory: needs 500 MiB, 100 MiB free", message)
        self.assertTrue(message.endswith("; and 2 more hosts)"), message)
        with self.assertRaises(NoCapacity) as caught:
            LeastLoaded({}).place(placed("any"))
        self.assertIn("(no hosts)", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
