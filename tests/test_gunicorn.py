"""The same app served by `gunicorn -k gevent -w 1 host.wsgi:app`, settings from the environment."""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import gevent
import requests

from host.client import HostClient
from host.discovery.etcd import EtcdDiscovery
from tests.support import (REPO, AgentClient, free_port, job_body, raw_attach,
                           remove_host_containers, require_docker, wait_until)
from tests.test_cluster import require_etcd


class GunicornTest(unittest.TestCase):
    def setUp(self):
        self.runtime = require_docker()
        self.host_id = f"tgunicorn{os.getpid()}"
        self.state_dir = tempfile.mkdtemp(prefix="flynn-gunicorn-")
        self.port = free_port()
        self.prefix = f"/flynn-test/{self.host_id}-{self._testMethodName}"
        env = dict(os.environ, FLYNN_HOST_ID=self.host_id, FLYNN_HOST_STATE_DIR=self.state_dir,
                   FLYNN_HOST_EXTERNAL="127.0.0.1", FLYNN_HOST_ATTRIBUTE="served=gunicorn",
                   # a cluster of its own: each test's agent is a new state dir under one id
                   FLYNN_ETCD_PREFIX=self.prefix)
        self.log = open(os.path.join(self.state_dir, "gunicorn.log"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1",
             "-b", f"127.0.0.1:{self.port}", "host.wsgi:app"],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = AgentClient(f"http://127.0.0.1:{self.port}")

    def tearDown(self):
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()
        remove_host_containers(self.runtime, self.host_id)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assertIsNone(self.proc.poll(), "gunicorn exited")
            try:
                return self.client.get("/host/status", timeout=2)
            except requests.ConnectionError:
                gevent.sleep(0.1)
        raise AssertionError("gunicorn did not answer")

    def test_serves_status_and_runs_jobs(self):
        status = self.wait_ready()
        self.assertEqual(status.status_code, 200)
        self.assertEqual(status.json()["id"], self.host_id)
        self.assertEqual(status.json()["attributes"], {"served": "gunicorn"})
        # the agent's background greenlets run in the worker: the job reaches done via events
        self.client.put_job("g1", job_body(["true"]))
        self.assertEqual(self.client.wait_status("g1", "done")["exit_status"], 0)
        self.assertEqual(self.client.get("/nowhere").json()["code"], "not_found")

    def test_a_stopped_worker_leaves_the_cluster_at_once(self):
        self.wait_ready()
        etcd = EtcdDiscovery(require_etcd(), self.prefix)
        wait_until(lambda: etcd.registration(self.host_id) is not None, 10, "registered")
        self.proc.terminate()
        self.assertEqual(self.proc.wait(20), 0)
        self.assertIsNone(etcd.registration(self.host_id))  # deleted, not left to expire

    def test_attach_under_gunicorn(self):
        self.wait_ready()
        attachment = HostClient(self.client.url).attach("g-att")
        self.client.put_job("g-att", job_body(["echo", "via-gunicorn"]))
        received = []
        with gevent.Timeout(30):
            while True:
                kind, payload = attachment.receive()
                received.append((kind, payload if kind in ("stdout", "stderr") else
                                 payload["status"]))
                if kind in ("exit", "error"):
                    break
        self.assertEqual(received, [("stdout", b"via-gunicorn\n"), ("exit", 0)])
        # gunicorn, too, writes no HTTP response behind the closed WebSocket
        status, frames, trailing = raw_attach(self.client.url, "g-att")
        self.assertEqual(([opcode for opcode, _ in frames], trailing), ([1, 8], b""))


class UnpatchedWsgiTest(unittest.TestCase):
    def test_refuses_to_run_without_gevent_patching(self):
        proc = subprocess.run([sys.executable, "-c", "import host.wsgi"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("must run under gevent", proc.stderr)
