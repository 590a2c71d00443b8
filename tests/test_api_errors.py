"""Bad input answers one JSON error shape (docs/API.md), never a traceback, never lost state."""
import unittest

from host.runtime.fake import FakeRuntime
from tests.support import InProcessAgent

GOOD = {"config": {"image": "busybox", "cmd": ["sleep", "1"]}}


class ApiErrorTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.runtime = FakeRuntime()
        cls.host = InProcessAgent(cls.runtime, flags=("-event-buffer", "5"))
        cls.client = cls.host.client

    @classmethod
    def tearDownClass(cls):
        cls.host.close()

    def assertError(self, resp, status, code, fragment="", extra=()):
        self.assertEqual(resp.status_code, status, resp.text)
        self.assertTrue(resp.headers["Content-Type"].startswith("application/json"))
        body = resp.json()
        self.assertEqual(set(body), {"code", "message", "retry", *extra}, body)
        self.assertEqual(body["code"], code)
        self.assertIn(fragment, body["message"])
        self.assertNotIn("Traceback", resp.text)
        return body

    def put_raw(self, job_id, data, **headers):
        return self.client.put(f"/host/jobs/{job_id}", data=data, headers=headers)

    def test_bodies(self):
        deep = b"[" * 100000 + b"]" * 100000
        self.assertError(self.put_raw("a", deep), 400, "validation_error", "nested too deeply")
        self.assertError(self.client.post("/host/jobs/a/signal", data=b'{"a":' * 50000), 400,
                         "validation_error")
        self.assertError(self.put_raw("a", b"{not json"), 400, "validation_error", "not valid JSON")
        self.assertError(self.put_raw("a", b""), 400, "validation_error", "body: required")
        self.assertError(self.put_raw("a", b"\xff\xfe"), 400, "validation_error", "not valid JSON")
        self.assertError(self.client.put("/host/jobs/a", json=[1, 2]), 400, "validation_error",
                         "job: must be an object")
        self.assertError(self.client.put("/host/jobs/a", json={"config": {}}), 400,
                         "validation_error", "job.config.image: required")
        self.assertError(self.client.put("/host/jobs/a", json={
            "config": {"image": "busybox", "cmd": "sleep 1"}}), 400, "validation_error",
            "job.config.cmd")
        self.assertError(self.client.put("/host/jobs/a", json=dict(
            GOOD, resources={"memory_mb": "64"})), 400, "validation_error", "memory_mb")
        self.assertError(self.client.put("/host/jobs/a", json=dict(
            GOOD, resources={"memory_mb": -64})), 400, "validation_error", "memory_mb")
        self.assertError(self.client.put("/host/jobs/a", json={
            "config": {"image": "busybox", "ports": [{"port": 70000}]}}), 400,
            "validation_error", "ports[0].port")
        self.assertError(self.client.put("/host/jobs/a", json=dict(GOOD, extra=1, more=2)), 400,
                         "validation_error", "unknown field(s) extra, more")
        self.assertIsNone(self.host.agent.table.find("a"))

    def test_ids(self):
        self.assertError(self.client.put("/host/jobs/a%20b", json=GOOD), 400, "validation_error",
                         "job id")
        self.assertError(self.client.put("/host/jobs/a%2Fb", json=GOOD), 400, "validation_error",
                         "job id")
        self.assertError(self.client.put("/host/jobs/a/b", json=GOOD), 400, "validation_error",
                         "job id")
        self.assertError(self.client.put("/host/jobs/" + "x" * 200, json=GOOD), 400,
                         "validation_error", "128")

    def test_too_large(self):
        big = b'{"config": {"image": "busybox", "env": {"K": "' + b"x" * (1 << 20) + b'"}}}'
        self.assertError(self.put_raw("big", big), 413, "too_large", "limit")

        def chunks():  # no Content-Length: the limit holds while reading
            yield big[: len(big) // 2]
            yield big[len(big) // 2:]
        self.assertError(self.put_raw("big", chunks()), 413, "too_large")
        self.assertIsNone(self.host.agent.table.find("big"))

    def test_conflict_and_not_found(self):
        self.client.put_job("c", GOOD)
        self.assertError(self.client.put("/host/jobs/c", json={"config": {"image": "other"}}),
                         409, "conflict", "different spec")
        for method, path in (("get", "/host/jobs/none"), ("delete", "/host/jobs/none"),
                             ("get", "/host/jobs/none/log")):
            self.assertError(getattr(self.client, method)(path), 404, "not_found", "none")
        self.assertError(self.client.post("/host/jobs/none/signal", json={"signal": "HUP"}), 404,
                         "not_found")

    def test_router_errors(self):
        self.assertError(self.client.get("/nowhere"), 404, "not_found", "no route GET /nowhere")
        self.assertError(self.client.post("/host/status"), 405, "method_not_allowed", "GET")
        self.assertError(self.client.get("/host/jobs/x/signal"), 405, "method_not_allowed")
        self.assertError(self.client.post("/host/events"), 405, "method_not_allowed", "GET")

    def test_query_parameters(self):
        cases = [
            ("/host/events?since=abc", "since"), ("/host/events?wait=-1", "wait"),
            ("/host/events?wait=1000", "wait"), ("/host/events?wait=nan", "wait"),
            ("/host/events?stream=maybe", "stream"), ("/host/jobs?status=sleeping", "status"),
            ("/host/events?since=99999", "ahead of the newest"),
        ]
        for path, fragment in cases:
            with self.subTest(path=path):
                self.assertError(self.client.get(path), 400, "validation_error", fragment)
        self.client.put_job("q", GOOD)
        for path in ("/host/jobs/q/log?tail=-5", "/host/jobs/q/log?stream=both",
                     "/host/jobs/q/log?follow=perhaps", "/host/jobs/q?timeout=x"):
            resp = self.client.get(path) if "timeout" not in path else \
                self.client.delete(path)
            with self.subTest(path=path):
                self.assertError(resp, 400, "validation_error")
        self.assertError(self.client.delete("/host/jobs/q?timeout=-1"), 400, "validation_error",
                         "timeout")

    def test_signals(self):
        self.client.put_job("sig", GOOD)
        self.client.wait_status("sig", "running")
        self.assertError(self.client.post("/host/jobs/sig/signal", json={"signal": "NOPE"}), 400,
                         "validation_error", "unknown signal")
        self.assertError(self.client.post("/host/jobs/sig/signal", json={"signal": 999}), 400,
                         "validation_error", "unknown signal number")
        self.assertError(self.client.post("/host/jobs/sig/signal", json={"sig": "HUP"}), 400,
                         "validation_error")
        self.assertError(self.client.post("/host/jobs/sig/signal", data=b"HUP"), 400,
                         "validation_error", "not valid JSON")

    def test_bad_attach_upgrades(self):
        self.assertError(self.client.get("/host/jobs/j/attach"), 400, "validation_error",
                         "WebSocket upgrade")
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
        self.assertError(self.client.get("/host/jobs/j/attach", headers=upgrade), 400,
                         "validation_error", "Sec-WebSocket")
        self.assertError(self.client.get("/host/jobs/bad%20id/attach", headers=upgrade), 400,
                         "validation_error", "job id")

    def test_expired_cursor(self):
        for n in range(6):  # the buffer holds 5 events
            self.client.put_job(f"exp{n}", dict(GOOD, attributes={"n": str(n)}))
        cursor = self.client.get("/host/events").json()["cursor"]
        body = self.assertError(self.client.get("/host/events", params={"since": cursor - 6}),
                                410, "cursor_expired", "list the current state",
                                extra=("earliest", "cursor"))
        self.assertFalse(body["retry"])
        self.assertEqual(body["cursor"], cursor)
        self.assertEqual(len(self.client.get("/host/events", params={"since": body["earliest"]})
                             .json()["events"]), 5)

    def test_internal_error_hides_the_traceback(self):
        original = self.runtime.ping
        self.runtime.ping = lambda: 1 / 0
        try:
            with self.assertLogs("host.api.http", "ERROR") as logged:
                self.assertError(self.client.get("/host/status"), 500, "internal_error", "logged")
            self.assertIn("ZeroDivisionError", logged.output[0])  # the traceback stays server-side
        finally:
            self.runtime.ping = original
        self.assertEqual(self.client.get("/host/status").status_code, 200)

    def test_job_limits(self):
        def job(**config):
            return {"config": dict({"image": "busybox", "cmd": ["true"]}, **config)}
        cases = [
            (job(env={f"V{n}": "x" for n in range(257)}), "job.config.env: 257 variables",
             "-max-job-env"),
            (job(env={"BIG": "x" * (70 << 10)}), "job.config.env: ", "-max-job-env-bytes"),
            (job(cmd=["x" * (70 << 10)]), "job.config.cmd: cmd and entrypoint", "-max-job-cmd"),
            (job(ports=[{"port": 0} for _ in range(33)]), "job.config.ports: 33 ports",
             "-max-job-ports"),
            (job(ports=[{"port": 0}, {"port": 80}]), "job.config.ports[1].port: 80 is outside",
             "-fixed-ports"),
        ]
        for body, fragment, setting in cases:
            with self.subTest(fragment=fragment):
                resp = self.client.put("/host/jobs/limited", json=body)
                message = self.assertError(resp, 400, "validation_error", fragment)["message"]
                self.assertIn(setting, message)
        self.assertIsNone(self.host.agent.table.find("limited"))  # nothing recorded

    # a path is decoded once, checked, and answered 400 when it cannot be routed as sent

    def raw_request(self, method: str, target: str):
        # requests would re-quote the target: send it as it is
        import http.client
        host, port = self.client.url.split("://", 1)[1].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            conn.putheader("Content-Type", "application/json")
            body = b'{"config": {"image": "busybox", "cmd": ["sleep", "1"]}}'
            conn.putheader("Content-Length", str(len(body) if method == "PUT" else 0))
            conn.endheaders(body if method == "PUT" else None)
            resp = conn.getresponse()
            import simplejson
            return resp.status, simplejson.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def test_escapes_that_would_change_the_route_or_the_id(self):
        cases = [("PUT", "/host/jobs/a%FFb", "not UTF-8"),
                 ("GET", "/host/jobs/x%2Flog", "an escaped /"),
                 ("GET", "/host/jobs/x%2flog", "an escaped /"),
                 ("GET", "/cluster/hosts/a%00b", "a control character"),
                 ("GET", "/host/jobs/a%0Ab", "a control character")]
        for method, target, fragment in cases:
            with self.subTest(target=target):
                status, body = self.raw_request(method, target)
                self.assertEqual((status, body.get("code")), (400, "validation_error"), body)
                self.assertIn(fragment, body["message"])
        self.assertIsNone(self.host.agent.table.find("ab"))  # a%FFb made no job "ab"
        # an escape that decodes to a character ids may hold still reaches the id's own check
        status, body = self.raw_request("GET", "/host/jobs/a%3Fb")
        self.assertEqual((status, body["code"]), (404, "not_found"))
