"""TLS end to end: agents serving HTTPS with certificates of the test's own CA, reached by the
Python client, the CLI and the attach WebSocket with -tls-ca, and reaching each other (a
non-leader forwarding to the leader) by https. Real agent processes, the real engine and etcd."""
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import unittest

import requests
import simplejson

from host.client import AgentUnreachable, ClusterClient, HostClient
from tests.support import FLYNN_HOST, AgentProcess, TestCA, job_body, remove_host_containers, \
    require_docker, wait_until
from tests.test_auth import TOKEN, token_file


def attach_output(client: HostClient, job_id: str) -> list:
    attached = client.attach(job_id)
    client.add_job(job_id, job_body(["echo", "over tls"]))
    received = []
    try:
        while not received or received[-1][0] not in ("exit", "error"):
            message = attached.receive(timeout_s=30)
            assert message is not None, received
            received.append(message)
    finally:
        attached.close()
    return received


class ClusterOverTlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from tests.test_cluster import TTL, require_etcd
        cls.runtime = require_docker()
        require_etcd()
        cls.ca = TestCA()
        cls.tmp = tempfile.mkdtemp()
        prefix = f"/flynn-test/tls{os.getpid()}"
        cls.agents = [AgentProcess(f"tls{n}-{os.getpid()}", ip=f"127.0.0.{n + 1}", tls=cls.ca,
                                   args=["-heartbeat-ttl", str(TTL)],
                                   token_file=token_file(cls.tmp),
                                   env={"FLYNN_ETCD_PREFIX": prefix}) for n in (1, 2)]
        for agent in cls.agents:
            agent.start()

    @classmethod
    def tearDownClass(cls):
        for agent in cls.agents:
            agent.cleanup()
            remove_host_containers(cls.runtime, agent.host_id)
        cls.ca.cleanup()

    def cli(self, *args, env=None):
        full = {k: v for k, v in os.environ.items() if not k.startswith("FLYNN_HOST_TLS")}
        full.update({"FLYNN_HOST_TOKEN": TOKEN}, **(env or {}))
        return subprocess.run([sys.executable, FLYNN_HOST, *args], capture_output=True,
                              text=True, timeout=60, env=full)

    def test_the_api_is_https_only_and_verified(self):
        first = self.agents[0]
        addr = f"{first.ip}:{first.port}"
        self.assertEqual(HostClient(addr, token=TOKEN, tls_ca=self.ca.cert).status()["id"],
                         first.host_id)
        # plain HTTP on the TLS port gets no answer of the API's
        with self.assertRaises(requests.RequestException):
            answer = requests.get(f"http://{addr}/healthz", timeout=5)
            self.assertNotEqual(answer.status_code, 200)
        # a client that does not trust the CA refuses the agent's certificate
        with self.assertRaises(AgentUnreachable) as refused:
            HostClient(f"https://{addr}", token=TOKEN).status()
        self.assertIn("CERTIFICATE_VERIFY_FAILED", str(refused.exception))
        # and the agent's certificate is one for its address, served with TLS 1.2 or newer
        context = ssl.create_default_context(cafile=self.ca.cert)
        with context.wrap_socket(socket.create_connection((first.ip, first.port), timeout=5),
                                 server_hostname=first.ip) as sock:
            self.assertIn(sock.version(), ("TLSv1.2", "TLSv1.3"))

    def test_forwarding_to_the_leader_goes_by_https(self):
        second = self.agents[1]
        cluster = ClusterClient(f"{second.ip}:{second.port}", token=TOKEN, tls_ca=self.ca.cert)
        wait_until(lambda: len(cluster.hosts()) == 2, 15, "both hosts, through the non-leader")
        leader = cluster.leader()
        follower = next(a for a in self.agents if a.host_id != leader["id"])
        placed = ClusterClient(f"{follower.ip}:{follower.port}", token=TOKEN,
                               tls_ca=self.ca.cert).add_jobs(
            [dict(job_body(["sleep", "60"]), id="tls-forwarded")])
        self.assertEqual([p["job_id"] for p in placed], ["tls-forwarded"])
        # a redirect names the leader by https too
        answer = follower.client.get("/cluster/hosts", params={"redirect": "true"},
                                     allow_redirects=False)
        self.assertEqual(answer.status_code, 307)
        self.assertTrue(answer.headers["Location"].startswith("https://"), answer.headers)

    def test_the_cli_and_the_attach(self):
        first = self.agents[0]
        addr = f"{first.ip}:{first.port}"
        listed = self.cli("hosts", "--json", "-H", addr, "--tls-ca", self.ca.cert)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertEqual(len(simplejson.loads(listed.stdout)), 2)
        by_env = self.cli("ps", "-H", addr, env={"FLYNN_HOST_TLS_CA": self.ca.cert})
        self.assertEqual(by_env.returncode, 0, by_env.stderr)
        untrusted = self.cli("ps", "-H", f"https://{addr}")
        self.assertEqual(untrusted.returncode, 3, untrusted.stderr)  # unreachable, said so
        self.assertIn("CERTIFICATE_VERIFY_FAILED", untrusted.stderr)
        missing = self.cli("ps", "-H", addr, "--tls-ca", "/nonexistent/ca.pem")
        self.assertEqual(missing.returncode, 2, missing.stderr)
        received = attach_output(HostClient(addr, token=TOKEN, tls_ca=self.ca.cert), "tls-attach")
        self.assertIn(("stdout", b"over tls\n"), received)
        self.assertEqual(received[-1][1]["status"], 0)


class TlsSettingsTest(unittest.TestCase):
    def run_daemon(self, *args):
        return subprocess.run([sys.executable, FLYNN_HOST, "-listen", "127.0.0.1:1", *args],
                              capture_output=True, text=True, timeout=60)

    def test_bad_tls_settings_are_usage_errors(self):
        ca = TestCA()
        try:
            cert, key = ca.issue("127.0.0.1")
            alone = self.run_daemon("-tls-cert", cert)
            self.assertEqual(alone.returncode, 2, alone.stderr)
            self.assertIn("-tls-cert and -tls-key go together", alone.stderr)
            swapped = self.run_daemon("-tls-cert", key, "-tls-key", cert)
            self.assertEqual(swapped.returncode, 2, swapped.stderr)
            self.assertIn("-tls-cert/-tls-key", swapped.stderr)
            missing = self.run_daemon("-tls-cert", cert, "-tls-key", "/nonexistent")
            self.assertEqual(missing.returncode, 2, missing.stderr)
            self.assertIn("no such file", missing.stderr)
        finally:
            ca.cleanup()

