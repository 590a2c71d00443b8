"""Liveness and readiness: /healthz while the process serves; /readyz 503 naming what is not
ready while Docker or etcd is away, 200 again once they are back."""
import os
import unittest

from host.runtime.fake import FakeRuntime
from tests.faults import EtcdFaultProxy
from tests.support import AgentProcess, InProcessAgent, remove_host_containers, require_docker, \
    wait_until
from tests.test_cluster import require_etcd


class ReadinessFakeTest(unittest.TestCase):
    def test_docker_away_and_back(self):
        runtime = FakeRuntime()
        host = InProcessAgent(runtime)
        try:
            ready = host.client.get("/readyz")
            self.assertEqual(ready.status_code, 200, ready.text)
            self.assertEqual(ready.json(), {"status": "ready", "checks": {"docker": "ok"}})
            runtime.set_available(False)
            wait_until(lambda: host.client.get("/readyz").status_code == 503, 10,
                       "not ready without Docker")
            body = host.client.get("/readyz").json()
            self.assertEqual((body["code"], body["retry"]), ("unavailable", True))
            self.assertIn("docker: unreachable", body["message"])
            self.assertNotEqual(body["checks"]["docker"], "ok")
            self.assertEqual(host.client.get("/healthz").status_code, 200)  # alive all along
            runtime.set_available(True)
            wait_until(lambda: host.client.get("/readyz").status_code == 200, 15,
                       "ready again")
        finally:
            host.close()


class ReadinessEtcdTest(unittest.TestCase):
    def test_etcd_away_and_back(self):
        runtime = require_docker()
        proxy = EtcdFaultProxy(require_etcd().split(",")[0])
        agent = AgentProcess(f"ready{os.getpid()}", args=["-heartbeat-ttl", "3"],
                             env={"FLYNN_HOST_ETCD_ENDPOINTS": proxy.url})
        try:
            agent.start()
            wait_until(lambda: agent.client.get("/readyz").status_code == 200, 15, "ready")
            self.assertEqual(set(agent.client.get("/readyz").json()["checks"]),
                             {"docker", "etcd", "registration"})
            proxy.cut()
            wait_until(lambda: agent.client.get("/readyz").status_code == 503, 15,
                       "not ready without etcd")
            body = agent.client.get("/readyz").json()
            self.assertIn("etcd: unavailable", body["message"])
            self.assertEqual(agent.client.get("/healthz").status_code, 200)
            proxy.pass_through()
            wait_until(lambda: agent.client.get("/readyz").status_code == 200, 30,
                       "ready again, registered")
        finally:
            agent.cleanup()
            proxy.close()
            remove_host_containers(runtime, agent.host_id)
