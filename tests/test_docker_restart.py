"""Restarting the agent against the real engine: re-adoption, exits while down, -force,
retention."""
import os
import shutil
import unittest

from host.errors import ContainerNotFound

from tests.support import (AgentProcess, job_body, remove_host_containers, require_docker,
                           wait_until)

TERM_EXITS_0 = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]


class DockerRestartTest(unittest.TestCase):
    def setUp(self):
        self.runtime = require_docker()
        self.host_id = f"trestart{os.getpid()}{self._testMethodName[-12:]}"
        remove_host_containers(self.runtime, self.host_id)
        self.agent = AgentProcess(self.host_id).start()
        self.client = self.agent.client
        self.state_dir = self.agent.state_dir

    def tearDown(self):
        self.agent.stop()
        remove_host_containers(self.runtime, self.host_id)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def restart(self, extra_args=()):
        self.assertEqual(self.agent.stop(), 0, self.agent.log())  # a clean stop exits 0
        self.agent = AgentProcess(self.host_id, state_dir=self.state_dir)
        self.agent.start(extra_args)
        self.client = self.agent.client

    def test_restart_readopts_running_jobs_and_records_exits_while_down(self):
        self.client.put_job("keeps", job_body(["sleep", "300"], ports=[{"port": 0}]))
        self.client.put_job("ends", job_body(TERM_EXITS_0))
        keeps = self.client.wait_status("keeps", "running")
        ends = self.client.wait_status("ends", "running")
        cursor = self.client.get("/host/events").json()["cursor"]
        started = self.runtime.inspect(keeps["container_id"]).started_at

        self.assertEqual(self.agent.stop(), 0)
        self.assertTrue(self.runtime.inspect(keeps["container_id"]).running)  # jobs outlive us
        self.runtime.stop(ends["container_id"], 10)                             # exits while down

        self.restart()
        ended = self.client.wait_status("ends", ("done", "crashed"))
        self.assertEqual((ended["status"], ended["exit_status"]), ("done", 0))
        again = self.client.job("keeps")
        self.assertEqual((again["status"], again["container_id"]),
                         ("running", keeps["container_id"]))
        self.assertEqual(self.runtime.inspect(keeps["container_id"]).started_at, started)
        events = self.client.get("/host/events", params={"since": cursor}).json()["events"]
        self.assertEqual([(e["cursor"], e["job_id"], e["event"]) for e in events],
                         [(cursor + 1, "ends", "stop")])
        port = again["ports"][0]["port"]
        clash = self.client.put("/host/jobs/clash", json=job_body(["true"], ports=[{"port": port}]))
        self.assertEqual(clash.status_code, 409)  # the re-adopted job still holds its port

    def test_force_kills_what_the_previous_instance_left(self):
        self.client.put_job("old", job_body(["sleep", "300"]))
        old = self.client.wait_status("old", "running")
        self.restart(["-force"])
        job = self.client.job("old")
        self.assertEqual(job["status"], "crashed")
        self.assertIn("-force", job["error"])
        self.assertEqual(self.runtime.list({"flynn-host.id": self.host_id}), [])
        with self.assertRaises(ContainerNotFound):
            self.runtime.inspect(old["container_id"])

    def test_retention_removes_the_oldest_ended_containers(self):
        self.restart(["-retain-ended", "2"])
        containers = []
        for n in range(3):
            self.client.put_job(f"r{n}", job_body(["true"]))
            containers.append(self.client.wait_status(f"r{n}", "done")["container_id"])
        def remaining():
            return {c.id for c in self.runtime.list({"flynn-host.id": self.host_id})}
        wait_until(lambda: remaining() == set(containers[1:]), 15, "pruning the oldest")
        self.assertEqual(self.client.get("/host/jobs/r0").status_code, 404)
        self.assertEqual(self.client.get("/host/jobs/r2/log").status_code, 200)
