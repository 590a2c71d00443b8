"""The layer-0 runner on the in-memory runtime: a service becomes a job of the host (on the host's
network, its data in a volume), is started anew when it dies, and is re-adopted, not started
again, by the next agent. tests/test_layer0_docker.py proves the same on the real engine."""
import shutil
import tempfile
import unittest

from host.agent import Agent
from host.config import load_config
from host.layer0.manifest import parse_manifest
from host.layer0.runner import JOB, PROCESS, SERVICE_ATTRIBUTE, Layer0
from host.runtime.fake import FakeRuntime
from tests.support import wait_until

MANIFEST = [{"id": "svc", "image": "busybox", "args": ["sleep", "{ports.p}"],
             "ports": {"p": 100}, "env": {"WHO": "{host_id}"}, "data": True},
            {"id": "local", "image": "busybox", "command": ["/bin/true"]}]


class Layer0JobsTest(unittest.TestCase):
    def setUp(self):
        self.runtime = FakeRuntime()
        self.state_dir = tempfile.mkdtemp(prefix="flynn-layer0-")
        self.agent = None

    def tearDown(self):
        if self.agent is not None:
            self.agent.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def start_agent(self, all_jobs=True, manifest=MANIFEST[:1]) -> Agent:
        config = load_config(["-id", "h1", "-state-dir", self.state_dir, "-external", "127.0.0.1",
                              "-memory-mb", "1000", "-cpu-shares", "1024"], environ={})
        layer0 = Layer0(parse_manifest(manifest), host_id="h1", external_ip="127.0.0.1",
                        listen_port=1113, state_dir=self.state_dir, etcd_client_port=2379,
                        etcd_peer_port=2380, all_jobs=all_jobs, environ={})
        self.agent = Agent(config, self.runtime, layer0=layer0)
        self.agent.start()
        return self.agent

    def service_job(self):
        [running] = self.agent.layer0.running.values()
        return self.agent.table.get(running.job_id)

    def test_a_service_is_a_job_of_the_host(self):
        agent = self.start_agent()
        job = self.service_job()
        self.assertEqual(job.status, "running")
        self.assertTrue(job.id.startswith("flynn-svc-"))
        config = job.job.config
        self.assertEqual((config.cmd, dict(config.env), config.network),
                         (("sleep", "100"), {"WHO": "h1"}, "host"))
        [volume] = config.volumes
        self.assertEqual(volume.target, "/data")
        self.assertTrue(volume.name.startswith("flynn-h1-svc-"))
        self.assertEqual(dict(job.job.attributes), {SERVICE_ATTRIBUTE: "svc"})
        spec = self.runtime.containers[job.container_id]["spec"]
        self.assertEqual((spec.network, spec.volumes), ("host", config.volumes))
        self.assertEqual([(s["id"], s["mode"], s["running"]) for s in agent.status()["layer0"]],
                         [("svc", "job", True)])

    def test_a_service_that_dies_is_started_anew(self):
        self.start_agent()
        first = self.service_job()
        self.runtime.exit(first.container_id, 1)
        wait_until(lambda: self.service_job().id != first.id and
                   self.service_job().status == "running", 10, "a new job of the service")
        self.assertEqual(self.agent.table.get(first.id).status, "crashed")

    def test_the_next_agent_re_adopts_the_running_service(self):
        self.start_agent()
        first = self.service_job()
        self.agent.stop()
        self.start_agent()
        self.assertEqual(self.service_job().id, first.id)
        self.assertEqual(len([c for c in self.runtime.containers.values()
                              if c["state"].running]), 1)

    def test_how_each_service_runs(self):
        services = parse_manifest(MANIFEST)
        auto = Layer0(services, host_id="h1", external_ip="127.0.0.1", listen_port=1113,
                      state_dir=self.state_dir, etcd_client_port=2379, etcd_peer_port=2380,
                      all_jobs=False, environ={})
        self.assertEqual([auto.mode(s) for s in services], [JOB, PROCESS])
        self.assertEqual(auto.data_dir(services[0]), "/data")
        jobs = Layer0(services, host_id="h1", external_ip="127.0.0.1", listen_port=1113,
                      state_dir=self.state_dir, etcd_client_port=2379, etcd_peer_port=2380,
                      all_jobs=True, environ={})
        self.assertEqual([jobs.mode(s) for s in services], [JOB, JOB])
