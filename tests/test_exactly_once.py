"""AddJobs runs every job exactly once, on real etcd and real agents: the whole spec decides
whether a known id is the same job, job ids are claimed atomically in etcd, a request record left
behind is replayed, a refused assignment is reported, and a leader that lost its place cannot
place anything. The crash and pause cases (kill -9, SIGSTOP) are in test_faults."""
import os
import unittest

import gevent
import simplejson

from host.clock import Clock
from host.cluster.scheduler import Assignment, Claim, JobScheduler
from host.cluster.view import RegisteredHost
from host.discovery.etcd import EtcdDiscovery, Records
from host.errors import NotLeader
from host.jobspec import parse_job
from host.types import HostRecord, HostResources
from tests.support import AgentProcess, job_body, wait_until
from tests.test_cluster import TTL, ClusterTestCase, count_containers, require_etcd


def spec(job_id, cmd=("sleep", "60"), **config) -> dict:
    return dict(job_body(list(cmd), **config), id=job_id)


class ExactlyOnceTest(ClusterTestCase):
    def setUp(self):
        super().setUp()
        self.etcd = EtcdDiscovery(self.peers, self.prefix)
        self.claims = Records(self.etcd, "cluster/jobs")
        self.first, self.second, self.third = [
            self.start_agent(n) for n in (1, 2, 3)]
        wait_until(lambda: len(self.hosts_seen_by(self.first)) == 3, 10, "three hosts")

    def post(self, body, via=None):
        return (via or self.first).client.post("/cluster/jobs", json=body)

    def test_a_known_id_is_the_same_job_only_with_the_whole_same_spec(self):
        first = self.post({self.second.host_id: [spec("same")]})
        self.assertEqual(first.status_code, 200, first.text)
        # at once (still pending at the leader) and once the mirror shows it
        for moment in ("pending", "mirrored"):
            if moment == "mirrored":
                self.second.client.wait_status("same", "running")
                wait_until(lambda: "same" in self.mirrored_jobs(), 10, "the mirror showing it")
            for changed in (spec("same", cmd=("sleep", "61")),
                            spec("same", env={"A": "1"}),
                            spec("same", ports=[{"port": 0}]),
                            dict(spec("same"), resources={"memory_mb": 64}),
                            dict(spec("same"), attributes={"k": "v"})):
                with self.subTest(moment=moment, changed=changed):
                    resp = self.post({"jobs": [changed]}, via=self.third)
                    self.assertEqual((resp.status_code, resp.json()["code"]),
                                     (409, "conflict"), resp.text)
                    self.assertIn("another spec", resp.json()["message"])
            again = self.post({"jobs": [spec("same")]}, via=self.third)
            self.assertEqual(again.json(), {"jobs": [{
                "host_id": self.second.host_id, "job_id": "same",
                "host_addr": f"{self.second.ip}:{self.second.port}"}]})
        self.assertEqual(count_containers(self.runtime, "same"), 1)
        self.assertEqual(self.second.client.job("same")["job"]["config"]["cmd"], ["sleep", "60"])

    def mirrored_jobs(self) -> dict:
        return {j["id"]: j for h in self.first.client.get("/cluster/hosts").json()
                for j in h["jobs"]}

    def test_a_request_record_left_behind_is_replayed_in_the_same_term(self):
        # as if a leader that lost its place wrote it after this leader took office
        job = parse_job(spec("late"))
        record = {"id": "r-late", "created_at": "2026-01-01T00:00:00Z", "leader_id": "gone",
                  "jobs": [{"host_id": self.third.host_id, "job": job.to_dict()}]}
        Records(self.etcd, "cluster/requests").put("r-late", simplejson.dumps(record))
        self.third.client.wait_status("late", "running", timeout=20)
        wait_until(lambda: Records(self.etcd, "cluster/requests").read_dir()[1] == [], 10,
                   "the record removed once complete")
        retried = self.post({"jobs": [spec("late")]})  # the client of that leader retries
        self.assertEqual(retried.json()["jobs"][0]["host_id"], self.third.host_id)
        self.assertEqual(count_containers(self.runtime, "late"), 1)

    def test_a_job_id_claimed_elsewhere_runs_where_claimed_and_only_there(self):
        # a leader that only believed it led claimed the id for the third host, then stalled
        job = parse_job(spec("claimed"))
        self.claims.put("claimed", Claim(self.third.host_id, job.spec_digest(), "r0").dumps())
        placed = self.post({"jobs": [spec("claimed")]})
        self.assertEqual(placed.json()["jobs"][0]["host_id"], self.third.host_id, placed.text)
        self.third.client.wait_status("claimed", "running")
        elsewhere = self.post({self.second.host_id: [spec("claimed")]})
        self.assertEqual(elsewhere.status_code, 409, elsewhere.text)
        other_spec = parse_job(spec("other-claimed", cmd=("true",)))
        self.claims.put("other-claimed", Claim(self.third.host_id, other_spec.spec_digest(),
                                               "r0").dumps())
        clash = self.post({"jobs": [spec("claimed-ok"), spec("other-claimed")]})
        self.assertEqual(clash.status_code, 409, clash.text)
        self.assertIsNone(self.claims.get("claimed-ok"))  # all or nothing: released again
        self.assertEqual(count_containers(self.runtime, "claimed"), 1)
        self.assertEqual(count_containers(self.runtime, "claimed-ok"), 0)

    def test_an_assignment_no_claim_backs_is_ignored(self):
        assignments = Records(self.etcd, f"cluster/assignments/{self.second.host_id}")
        stray = Assignment(parse_job(spec("stray")), "stale-leader", "r-stray")
        elsewhere = parse_job(spec("elsewhere"))
        self.claims.put("elsewhere", Claim(self.third.host_id, elsewhere.spec_digest(),
                                           "r1").dumps())
        assignments.put("stray", stray.dumps())
        assignments.put("elsewhere", Assignment(elsewhere, "stale-leader", "r1").dumps())
        wait_until(lambda: assignments.read_dir()[1] == [], 10, "both assignments dropped")
        self.assertEqual(self.second.client.get("/host/jobs/stray").status_code, 404)
        self.assertEqual(self.second.client.get("/host/jobs/elsewhere").status_code, 404)
        self.assertEqual(self.second.log().count("that the cluster's claim does not back"), 2)
        self.assertEqual(count_containers(self.runtime, "stray"), 0)

    def test_a_refused_assignment_is_failed_where_the_cluster_sees_it(self):
        cursor = self.first.client.get("/cluster/events").json()["cursor"]
        # a port the leader cannot know is taken: held on the host by something else
        with socket_holding_a_port() as port:
            resp = self.post({self.second.host_id: [spec("refused", ports=[{"port": port}])]})
            self.assertEqual(resp.status_code, 200, resp.text)
            job = self.second.client.wait_status("refused", "failed")
        self.assertIn(f"refused by host {self.second.host_id}", job["error"])
        self.assertIn(f"port {port}/tcp is in use", job["error"])
        events = []
        while not any(e["event"] == "error" for e in events):
            page = self.first.client.get("/cluster/events",
                                         params={"since": cursor, "wait": 10}).json()
            self.assertTrue(page["events"], "no error event within 10 s")
            events += [e for e in page["events"] if e["job_id"] == "refused"]
            cursor = page["cursor"]
        error = next(e for e in events if e["event"] == "error")
        self.assertEqual((error["host_id"], error["job"]["status"]),
                         (self.second.host_id, "failed"))
        self.assertIn("refused by host", error["job"]["error"])
        wait_until(lambda: Records(self.etcd, "cluster/assignments").read_dir()[1] == [], 10,
                   "the assignment deleted once the failure is published")


class socket_holding_a_port:
    """A listening socket on all addresses: the port is in use on this machine."""

    def __enter__(self) -> int:
        import socket
        self.sock = socket.socket()
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(1)
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


class StubView:
    """A cluster view that believes this agent leads (as a paused leader's view does)."""

    def __init__(self, host_id: str, registration):
        self.host_id = host_id
        self.is_leader = True
        self.leader_since = 1
        record = HostRecord(id=host_id, addr="127.0.0.9:1", resources=HostResources(1000, 1000),
                            allocated=HostResources(0, 0))
        self.hosts = {host_id: RegisteredHost(host_id, registration.created_index,
                                              registration.modified_index, record)}

    def find_jobs(self, job_ids) -> dict:
        return {}


class FencingTest(unittest.TestCase):
    def test_a_leader_whose_registration_is_not_the_oldest_places_nothing(self):
        prefix = f"/flynn-test/fencing-{os.getpid()}"
        etcd = EtcdDiscovery(require_etcd(), prefix)
        self.addCleanup(etcd._client.delete, prefix, recursive=True)
        etcd.register("older", '{"id": "older", "addr": "127.0.0.9:2"}', 30)
        mine = etcd.register("younger", '{"id": "younger", "addr": "127.0.0.9:1"}', 30)
        requests, claims = Records(etcd, "cluster/requests"), Records(etcd, "cluster/jobs")
        assignments = Records(etcd, "cluster/assignments")
        scheduler = JobScheduler(StubView("younger", mine), requests, claims, assignments,
                                 registration=lambda: mine, leads=etcd.leads, clock=Clock())
        worker = gevent.spawn(scheduler.run)
        self.addCleanup(worker.kill)
        with self.assertRaises(NotLeader):
            scheduler.add_jobs({"jobs": [spec("fenced")]})
        for records in (requests, claims, assignments):
            self.assertEqual(records.read_dir()[1], [])
        # the same scheduler, once its registration is the oldest, does place
        etcd._client.delete(f"{prefix}/discoverd/services/flynn-host/older")
        self.assertEqual(scheduler.add_jobs({"jobs": [spec("fenced")]}),
                         {"jobs": [{"host_id": "younger", "job_id": "fenced",
                                    "host_addr": "127.0.0.9:1"}]})
        self.assertEqual([r.name for r in claims.read_dir()[1]], ["fenced"])


class ClaimReleaseTest(ClusterTestCase):
    def test_a_pruned_job_releases_its_id(self):
        agent = AgentProcess(f"c1-{os.getpid()}", ip="127.0.0.2",
                             args=["-heartbeat-ttl", str(TTL), "-retain-ended", "1"],
                             env={"FLYNN_ETCD_PREFIX": self.prefix})
        self.agents.append(agent)
        agent.start()
        wait_until(lambda: self.leader_seen_by(agent) == agent.host_id, 10, "leading")
        claims = Records(EtcdDiscovery(self.peers, self.prefix), "cluster/jobs")
        for job_id in ("once", "twice"):
            resp = agent.client.post("/cluster/jobs", json={"jobs": [spec(job_id, ("true",))]})
            self.assertEqual(resp.status_code, 200, resp.text)
            agent.client.wait_status(job_id, "done")
        wait_until(lambda: claims.get("once") is None, 10, "the pruned job's claim released")
        wait_until(lambda: "once" not in {j["id"] for j in agent.client.get(
            f"/cluster/hosts/{agent.host_id}").json()["jobs"]}, 10, "the mirror forgetting it")
        self.assertIsNotNone(claims.get("twice"))
        again = agent.client.post("/cluster/jobs", json={"jobs": [spec("once", ("true",))]})
        self.assertEqual(again.status_code, 200, again.text)
        agent.client.wait_status("once", "done")
