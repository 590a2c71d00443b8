"""Token authentication: every route asks for the token but the liveness route, the answer to a
missing or wrong one is 401 in the error shape, and every caller that must (the CLI, the Python
client, an agent forwarding to the leader, an attach) sends it. On the fake engine for the table
of routes, then real agent processes on the real engine and etcd."""
import logging
import os
import signal
import subprocess
import sys
import tempfile
import unittest

import requests
import simplejson

from host import errors
from host.api.openapi import document
from host.client import ClusterClient, HostClient
from host.runtime.fake import FakeRuntime
from tests.support import FLYNN_HOST, AgentProcess, InProcessAgent, job_body, \
    remove_host_containers, require_docker, wait_until

TOKEN = "s3cret-token-of-the-test-0123456789"


def token_file(tmp: str, text: str = TOKEN) -> str:
    path = os.path.join(tmp, "token")
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return path


def concrete(template: str) -> str:
    """A request path for an OpenAPI path template ({job_id} -> j1)."""
    return template.replace("{job_id}", "j1").replace("{host_id}", "h1")


class TokenOnEveryRouteTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.runtime = FakeRuntime()
        self.host = InProcessAgent(self.runtime, flags=["-auth-token-file",
                                                        token_file(self.tmp)], token=TOKEN)
        self.base = self.host.client.url

    def tearDown(self):
        self.host.close()

    def routes(self):
        """Every route of the OpenAPI document (tests/test_openapi.py checks that it has
        exactly the app's routes)."""
        return sorted({(method.upper(), concrete(path))
                       for path, operations in document()["paths"].items()
                       for method in operations})

    def test_every_route_but_liveness_asks_for_the_token(self):
        routes = self.routes()
        self.assertIn(("GET", "/healthz"), routes)
        self.assertGreater(len(routes), 15)
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            {"Authorization": f"Basic {TOKEN}"},
                            {"Authorization": f"Bearer {TOKEN}x"}):
                with self.subTest(method=method, path=path, headers=headers):
                    resp = requests.request(method, self.base + path, headers=headers,
                                            timeout=10)
                    if path == "/healthz":
                        self.assertEqual(resp.status_code, 200)
                        self.assertEqual(resp.json(), {"status": "ok"})  # nothing else
                        continue
                    self.assertEqual(resp.status_code, 401, resp.text)
                    self.assertEqual(resp.headers["WWW-Authenticate"],
                                     'Bearer realm="flynn-host"')
                    body = resp.json()
                    self.assertEqual((body["code"], body["retry"]), ("unauthorized", False))
                    self.assertNotIn(TOKEN, resp.text)
        # with the token, the routes answer as they do without auth (no 401)
        for method, path in routes:
            resp = requests.request(method, self.base + path, timeout=10,
                                    headers={"Authorization": f"Bearer {TOKEN}"})
            self.assertNotEqual(resp.status_code, 401, (method, path, resp.text))

    def test_the_python_client_and_the_attach_send_it(self):
        with self.assertRaises(errors.Unauthorized):
            HostClient(self.base, token="wrong").status()
        client = HostClient(self.base, token=TOKEN)
        self.assertEqual(client.status()["id"], "inproc")
        with self.assertRaises(errors.Unauthorized):  # the upgrade is refused before anything
            HostClient(self.base, token="wrong").attach("a1")
        # the environment, as the CLI's users set it
        os.environ["FLYNN_HOST_TOKEN"] = TOKEN
        try:
            self.assertEqual(HostClient(self.base).status()["id"], "inproc")
        finally:
            del os.environ["FLYNN_HOST_TOKEN"]

    def test_the_token_is_not_logged(self):
        with self.assertLogs("host", logging.DEBUG) as logged:
            requests.get(self.base + "/host/status", headers={"Authorization": "Bearer nope"},
                         timeout=10)
            requests.get(self.base + "/host/status", timeout=10,
                         headers={"Authorization": f"Bearer {TOKEN}"})
            logging.getLogger("host.test").debug("end")
        self.assertFalse([line for line in logged.output if TOKEN in line])


class OpenApiTest(unittest.TestCase):
    def test_without_a_token_the_agent_says_so_and_stays_on_loopback(self):
        runtime = require_docker()
        agent = AgentProcess(f"open{os.getpid()}")
        try:
            agent.start()
            self.assertIn("THE API IS OPEN", agent.log())
        finally:
            agent.cleanup()
            remove_host_containers(runtime, agent.host_id)
        from host.config import load_config
        self.assertEqual(load_config([], environ={}).listen, ("127.0.0.1", 1113))
        with tempfile.TemporaryDirectory() as tmp:
            self.assertEqual(load_config(["-auth-token-file", token_file(tmp)],
                                         environ={}).listen, ("0.0.0.0", 1113))
            self.assertEqual(load_config([], environ={"FLYNN_HOST_TOKEN_FILE": token_file(tmp),
                                                      "FLYNN_HOST_LISTEN": "127.0.0.1:9"})
                             .listen, ("127.0.0.1", 9))

    def test_a_bad_token_file_is_a_usage_error_that_shows_no_secret(self):
        with tempfile.TemporaryDirectory() as tmp:
            for text, problem in (("", "is empty"), ("two words", "more than one word")):
                path = token_file(tmp, text)
                proc = subprocess.run([sys.executable, FLYNN_HOST, "-auth-token-file", path],
                                      capture_output=True, text=True, timeout=60)
                self.assertEqual(proc.returncode, 2, proc.stderr)
                self.assertIn(problem, proc.stderr)
                self.assertNotIn("words", proc.stderr.replace("word)", ""))
            missing = subprocess.run([sys.executable, FLYNN_HOST, "-auth-token-file",
                                      os.path.join(tmp, "nope")], capture_output=True,
                                     text=True, timeout=60)
            self.assertEqual(missing.returncode, 2)
            self.assertIn("cannot read", missing.stderr)


class ClusterWithTokenTest(unittest.TestCase):
    """Two real agents sharing a token: forwarding to the leader, the CLI, the process list."""

    def setUp(self):
        from tests.test_cluster import TTL, require_etcd
        self.runtime = require_docker()
        require_etcd()
        self.tmp = tempfile.mkdtemp()
        self.path = token_file(self.tmp)
        prefix = f"/flynn-test/auth{os.getpid()}"
        self.agents = [AgentProcess(f"auth{n}-{os.getpid()}", ip=f"127.0.0.{n + 1}",
                                    args=["-heartbeat-ttl", str(TTL)], token_file=self.path,
                                    env={"FLYNN_ETCD_PREFIX": prefix}) for n in (1, 2)]

    def tearDown(self):
        for agent in self.agents:
            agent.cleanup()
            remove_host_containers(self.runtime, agent.host_id)

    def cli(self, *args, env=None):
        full = {k: v for k, v in os.environ.items() if not k.startswith("FLYNN_HOST_TOKEN")}
        full.update(env or {})
        return subprocess.run([sys.executable, FLYNN_HOST, *args], capture_output=True,
                              text=True, timeout=60, env=full)

    def test_forwarding_and_the_cli_carry_the_token(self):
        first, second = [a.start() for a in self.agents]
        wait_until(lambda: len(second.client.get("/cluster/hosts").json()) == 2, 15,
                   "both hosts in the mirror, through the non-leader")
        placed = ClusterClient(second.client.url, token=TOKEN).add_jobs(
            [dict(job_body(["sleep", "60"]), id="auth-job")])
        self.assertEqual([p["job_id"] for p in placed], ["auth-job"])
        addr = f"{second.ip}:{second.port}"
        refused = self.cli("ps", "-H", addr)
        self.assertEqual(refused.returncode, 1, refused.stderr)
        self.assertIn("asks for a token", refused.stderr)
        by_file = self.cli("hosts", "--json", "-H", addr, "--token-file", self.path)
        self.assertEqual(by_file.returncode, 0, by_file.stderr)
        self.assertEqual(len(simplejson.loads(by_file.stdout)), 2)
        by_env = self.cli("stop", "auth-job", "-H", addr, env={"FLYNN_HOST_TOKEN": TOKEN})
        self.assertEqual(by_env.returncode, 0, by_env.stderr)  # found through the mirror
        # the token is in no agent's command line, and in none of their logs
        for agent in self.agents:
            with open(f"/proc/{agent.proc.pid}/cmdline", "rb") as f:
                self.assertNotIn(TOKEN.encode(), f.read())
            self.assertNotIn(TOKEN, agent.log(tail=0))
        # an attach carries it too: the job's output through the WebSocket
        attached = HostClient(first.client.url, token=TOKEN).attach("auth-echo")
        HostClient(first.client.url, token=TOKEN).add_job("auth-echo", job_body(["echo", "hi"]))
        received = []
        while True:
            message = attached.receive(timeout_s=30)
            self.assertIsNotNone(message, received)
            received.append(message)
            if message[0] in ("exit", "error"):
                break
        attached.close()
        self.assertIn(("stdout", b"hi\n"), received)
        self.assertEqual(received[-1][1]["status"], 0)
        self.assertEqual(first.stop(signal.SIGTERM), 0)
