"""Docker going away and coming back, for real: the agent reaches the engine through a unix-socket
proxy this test can cut and restore."""
import os
import shutil
import tempfile
import unittest

from tests.faults import DockerProxy
from tests.support import AgentProcess, job_body, remove_host_containers, require_docker

TERM_EXITS_0 = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]


class DockerOutageTest(unittest.TestCase):
    def setUp(self):
        self.runtime = require_docker()
        docker_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        self.assertTrue(docker_host.startswith("unix://"), "the outage test needs a unix socket")
        self.dir = tempfile.mkdtemp(prefix="flynn-proxy-")
        self.proxy = DockerProxy(docker_host[len("unix://"):], os.path.join(self.dir, "d.sock"))
        self.proxy.restore()
        self.host_id = f"toutage{os.getpid()}"
        self.agent = AgentProcess(self.host_id, env={"DOCKER_HOST": f"unix://{self.proxy.path}"})
        self.agent.start()
        self.client = self.agent.client

    def tearDown(self):
        self.agent.cleanup()
        if self.proxy.server is not None:
            self.proxy.server.close()
        remove_host_containers(self.runtime, self.host_id)
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_unavailable_while_docker_is_gone_then_recovers(self):
        self.client.put_job("before", job_body(TERM_EXITS_0))
        before = self.client.wait_status("before", "running")

        self.proxy.cut()
        resp = self.client.put("/host/jobs/during", json=job_body(["true"]))
        self.assertEqual(resp.status_code, 503, resp.text)
        self.assertEqual(resp.json()["code"], "unavailable")
        self.assertIs(resp.json()["retry"], True)
        self.assertEqual(self.client.get("/host/jobs/during").status_code, 404)  # not recorded
        listed = self.client.get("/host/jobs")
        self.assertEqual(listed.status_code, 200)
        self.assertEqual([j["job"]["id"] for j in listed.json()], ["before"])
        self.assertIn("unavailable", self.client.get("/host/status").json()["docker"])
        self.assertEqual(self.client.get("/host/jobs/before/log").status_code, 503)
        # the job ends while the agent cannot see Docker
        self.runtime.stop(before["container_id"], 10)

        self.proxy.restore()
        ended = self.client.wait_status("before", ("done", "crashed"))
        self.assertEqual((ended["status"], ended["exit_status"]), ("done", 0))
        self.assertEqual(self.client.get("/host/status").json()["docker"], "ok")
        self.assertEqual(self.client.put("/host/jobs/after", json=job_body(["true"])).status_code,
                         202)
        self.client.wait_status("after", "done")
        self.assertIsNone(self.agent.proc.poll())  # the agent kept running throughout
