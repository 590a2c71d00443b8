"""Fuzzing, bounded to fit the suite (bench/fuzz.py runs a longer campaign): every route of the
OpenAPI document with schemathesis, and the attach WebSocket's messages with hypothesis, against
a real agent on the real engine in a cluster, with auth on. Zero 5xx, every answer as documented,
and afterwards the agent alive and its job table consistent with Docker's containers."""
import os
import tempfile
import unittest

import simplejson
from hypothesis import HealthCheck, given, settings, strategies as st

from host.client import HostClient
from host.runtime import labels
from tests.fuzzing import fuzz
from tests.support import AgentProcess, job_body, remove_host_containers, require_docker
from tests.test_auth import TOKEN, token_file

#: cases per operation in the suite (bench/fuzz.py: BENCH_EXAMPLES)
EXAMPLES = int(os.environ.get("FLYNN_TEST_FUZZ_EXAMPLES", 25))


class FuzzTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from tests.test_cluster import require_etcd
        cls.runtime = require_docker()
        require_etcd()
        cls.tmp = tempfile.mkdtemp()
        # nothing may be pulled (a generated image name must not send the engine to a
        # registry), and generated jobs may ask for any resources
        cls.agent = AgentProcess(f"fuzz{os.getpid()}", token_file=token_file(cls.tmp), args=[
            "-registries", "localhost:1", "-heartbeat-ttl", "5", "-retain-ended", "20",
            "-max-attaches-per-job", "64"]).start()

    @classmethod
    def tearDownClass(cls):
        cls.agent.cleanup()
        remove_host_containers(cls.runtime, cls.agent.host_id)

    def assert_alive_and_consistent(self):
        client = self.agent.client
        self.assertEqual(client.get("/healthz").status_code, 200)
        jobs = client.get("/host/jobs").json()
        containers = {c.labels.get(labels.LABEL_JOB_ID): c
                      for c in self.runtime.list(labels.host_filter(self.agent.host_id))}
        for job in jobs:
            container = containers.get(job["job"]["id"])
            if job["container_id"] is None:
                self.assertIsNone(container, job)
                continue
            self.assertIsNotNone(container, job)
            self.assertEqual(container.id, job["container_id"])
            self.assertEqual(container.running, job["status"] == "running", job)
        self.assertLessEqual(set(containers), {j["job"]["id"] for j in jobs})

    def test_every_route_from_the_document(self):
        report = fuzz(self.agent.client.url, TOKEN, EXAMPLES)
        print("\n" + "\n".join(report.lines()))
        self.assertEqual(report.failed_checks(), [], "\n".join(report.lines()))
        self.assertFalse([s for s in report.statuses if s >= 500])
        self.assertNotIn(401, report.statuses)  # the token was sent: the routes were reached
        self.assertGreaterEqual(len(report.tried), 17)
        self.assert_alive_and_consistent()

    @settings(max_examples=30, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(messages=st.lists(st.one_of(
        st.binary(max_size=64),
        st.text(max_size=64),
        st.builds(lambda kind, extra: simplejson.dumps(dict(extra, type=kind)),
                  st.sampled_from(["eof", "signal", "resize", "other", ""]),
                  st.dictionaries(st.sampled_from(["signal", "height", "width"]),
                                  st.one_of(st.integers(-5, 20000), st.text(max_size=8),
                                            st.none()), max_size=3))),
        min_size=1, max_size=5))
    def fuzz_attach(self, messages):
        attached = HostClient(self.agent.client.url, token=TOKEN).attach("fuzz-cat")
        try:
            for message in messages:
                attached._ws.send(message)
            while True:
                received = attached.receive(timeout_s=0.3)
                if received is None:
                    break
                kind, body = received
                if kind in ("error", "exit"):
                    if kind == "error":
                        self.assertEqual(set(body) >= {"code", "message", "retry"}, True, body)
                        self.assertLess(self.error_status(body["code"]), 500, body)
                    break
        except Exception as e:  # the agent closing the attach after an error is an answer
            if "closed" not in str(e):
                raise
        finally:
            attached.close()

    @staticmethod
    def error_status(code: str) -> int:
        from host.errors import STATUS_FOR_CODE
        return STATUS_FOR_CODE[code]

    def test_attach_messages(self):
        body = job_body(["cat"])
        body["config"]["stdin"] = True
        client = HostClient(self.agent.client.url, token=TOKEN)
        first = client.attach("fuzz-cat")  # stdin jobs start once attached
        client.add_job("fuzz-cat", body)
        self.agent.client.wait_status("fuzz-cat", "running")
        try:
            self.fuzz_attach()
        finally:
            first.close()
        job = self.agent.client.job("fuzz-cat")
        self.assertIn(job["status"], ("running", "done", "crashed"))
        self.assert_alive_and_consistent()
        self.agent.client.delete("/host/jobs/fuzz-cat", params={"timeout": 0})
