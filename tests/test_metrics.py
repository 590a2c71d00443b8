"""/metrics in Prometheus' text format, parsed back with prometheus_client's own parser, its
values checked after a known sequence of jobs: on the fake engine, then a real agent process in
a cluster (real engine, real etcd)."""
import os
import unittest

from host.runtime.fake import FakeRuntime
from tests.support import AgentProcess, InProcessAgent, job_body, remove_host_containers, \
    require_docker, wait_until
from tests.test_limits import scrape


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class MetricsOnTheFakeEngineTest(unittest.TestCase):
    def setUp(self):
        self.runtime = FakeRuntime()
        self.host = InProcessAgent(self.runtime)
        self.client = self.host.client

    def tearDown(self):
        self.host.close()

    def test_values_after_a_known_sequence_of_jobs(self):
        for job_id in ("m1", "m2", "m3"):
            self.client.put_job(job_id, {"config": {"image": "busybox", "cmd": ["x"]}})
            self.client.wait_status(job_id, "running")
        self.runtime.exit(self.client.job("m1")["container_id"], 0)
        self.runtime.exit(self.client.job("m2")["container_id"], 3)
        self.client.wait_status("m1", "done")
        self.client.wait_status("m2", "crashed")
        self.client.put_job("m4", {"config": {"image": "not-here:1", "cmd": ["x"]}})
        self.client.wait_status("m4", "failed")
        self.assertEqual(self.client.get("/host/jobs/nope").status_code, 404)
        answer = self.client.get("/metrics")
        self.assertTrue(answer.headers["Content-Type"].startswith("text/plain; version="))
        samples = scrape(self.client)
        self.assertEqual({state: value(samples, "flynn_host_jobs", state=state)
                          for state in ("starting", "running", "done", "crashed", "failed")},
                         {"starting": 0, "running": 1, "done": 1, "crashed": 1, "failed": 1})
        # accepted -> running: the three that ran, none of the one that failed
        self.assertEqual(value(samples, "flynn_host_job_start_seconds_count"), 3)
        self.assertEqual(value(samples, "flynn_host_job_start_seconds_bucket", le="+Inf"), 3)
        self.assertGreater(value(samples, "flynn_host_job_start_seconds_sum"), 0)
        # 4 creates, 3 starts, 2 stops, 1 error
        self.assertEqual(value(samples, "flynn_host_events_total"), 10)
        self.assertEqual(value(samples, "flynn_host_http_requests_total",
                               route="PUT /host/jobs/<job_id:path>", status="202"), 4)
        self.assertEqual(value(samples, "flynn_host_http_requests_total",
                               route="GET /host/jobs/<job_id>", status="404"), 1)
        self.assertEqual(value(samples, "flynn_host_waiters", kind="longpoll"), 0)
        self.assertEqual(value(samples, "flynn_host_docker_events_connected"), 1)
        self.assertNotIn(("flynn_host_is_leader", ()), samples)  # no cluster without etcd


class MetricsOffTest(unittest.TestCase):
    def test_without_metrics_the_route_is_not_there_and_nothing_is_counted(self):
        host = InProcessAgent(FakeRuntime(), flags=["-metrics=false"])
        try:
            self.assertEqual(host.client.get("/host/status").status_code, 200)
            answer = host.client.get("/metrics")
            self.assertEqual(answer.status_code, 404)
            self.assertEqual(answer.json()["code"], "not_found")
            self.assertEqual(host.server.application.answered, {})
            self.assertIn("X-Request-Id", answer.headers)
        finally:
            host.close()


class MetricsOfAClusterAgentTest(unittest.TestCase):
    def test_a_real_agent_in_a_cluster(self):
        from tests.test_cluster import require_etcd
        runtime = require_docker()
        require_etcd()
        agent = AgentProcess(f"metrics{os.getpid()}", args=["-heartbeat-ttl", "3"])
        try:
            agent.start()
            client = agent.client
            client.put_job("ok", job_body(["true"]))
            client.put_job("bad", job_body(["false"]))
            client.wait_status("ok", "done")
            client.wait_status("bad", "crashed")
            wait_until(lambda: value(scrape(client), "flynn_host_mirror_jobs") == 2, 10,
                       "both jobs in the mirror")
            wait_until(lambda: value(scrape(client), "flynn_host_heartbeat_seconds_count") > 0,
                       10, "a heartbeat written")
            samples = scrape(client)
            self.assertEqual(value(samples, "flynn_host_jobs", state="done"), 1)
            self.assertEqual(value(samples, "flynn_host_jobs", state="crashed"), 1)
            self.assertEqual(value(samples, "flynn_host_job_start_seconds_count"), 2)
            self.assertEqual(value(samples, "flynn_host_is_leader"), 1)
            self.assertEqual(value(samples, "flynn_host_mirror_hosts"), 1)
            self.assertEqual(value(samples, "flynn_host_registered"), 1)
            self.assertEqual(value(samples, "flynn_host_heartbeat_failures_total"), 0)
            self.assertEqual(value(samples, "flynn_host_add_jobs_queue_depth"), 0)
            # the host joining, and each job as the mirror first saw it (and then ended)
            self.assertGreaterEqual(value(samples, "flynn_host_cluster_events_total"), 3)
            self.assertLess(value(samples, "flynn_host_docker_event_lag_seconds"), 5)
            # an AddJobs request is timed
            from host.client import ClusterClient
            ClusterClient(client.url).add_jobs([dict(job_body(["true"]), id="placed")])
            samples = scrape(client)
            self.assertEqual(value(samples, "flynn_host_add_jobs_seconds_count"), 1)
        finally:
            agent.cleanup()
            remove_host_containers(runtime, agent.host_id)
