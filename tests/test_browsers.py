"""Browsers are callers too: a page elsewhere, or a rebound DNS name, must not drive the agent
through its visitor's browser; programs are unaffected."""
import unittest

import requests

from host.runtime.fake import FakeRuntime
from tests.support import InProcessAgent

JOB = '{"config": {"image": "busybox", "cmd": ["sleep", "1"]}}'


class BrowserGuardTest(unittest.TestCase):
    def setUp(self):
        self.host = InProcessAgent(FakeRuntime(), flags=["-allowed-hosts", "agent.example"])
        self.base = self.host.client.url
        self.port = self.host.server.server_port

    def tearDown(self):
        self.host.close()

    def assertRefused(self, resp, fragment):
        self.assertEqual((resp.status_code, resp.json()["code"]), (400, "validation_error"),
                         resp.text)
        self.assertIn(fragment, resp.json()["message"])

    def test_form_bodies_a_page_may_send_anywhere_are_refused(self):
        for content_type in ("text/plain", "text/plain;charset=UTF-8",
                             "application/x-www-form-urlencoded", "multipart/form-data; b=x"):
            with self.subTest(content_type=content_type):
                resp = requests.put(f"{self.base}/host/jobs/csrf", data=JOB, timeout=10,
                                    headers={"Content-Type": content_type})
                self.assertRefused(resp, "bodies are application/json")
        self.assertIsNone(self.host.agent.table.find("csrf"))
        ok = requests.put(f"{self.base}/host/jobs/fine", data=JOB, timeout=10,
                          headers={"Content-Type": "application/json"})
        self.assertEqual(ok.status_code, 202, ok.text)

    def test_another_origin_is_refused_the_agents_own_is_not(self):
        foreign = requests.get(f"{self.base}/host/jobs", timeout=10,
                               headers={"Origin": "http://evil.example"})
        self.assertRefused(foreign, "requests from another origin are refused")
        own = requests.get(f"{self.base}/host/jobs", timeout=10,
                           headers={"Origin": f"http://127.0.0.1:{self.port}"})
        self.assertEqual(own.status_code, 200, own.text)
        # the attach WebSocket too: refused before any upgrade
        ws = requests.get(f"{self.base}/host/jobs/x/attach", timeout=10, headers={
            "Origin": "http://evil.example", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        self.assertRefused(ws, "another origin")

    def test_a_name_that_is_not_the_agents_is_refused(self):
        rebound = requests.get(f"{self.base}/host/status", timeout=10,
                               headers={"Host": f"attacker.example:{self.port}"})
        self.assertRefused(rebound, "is not a name of this agent")
        for host in (f"127.0.0.1:{self.port}", f"localhost:{self.port}",
                     f"agent.example:{self.port}", f"[::1]:{self.port}"):
            with self.subTest(host=host):
                resp = requests.get(f"{self.base}/host/status", timeout=10,
                                    headers={"Host": host})
                self.assertEqual(resp.status_code, 200, resp.text)
