"""The client library against canned answers: every error code becomes its typed exception,
retries and resumption behave, and nothing waits without a timeout."""
import socket
import time
import unittest

import gevent
import simplejson

from host import errors
from host.client import (AgentUnreachable, ClusterClient, HostClient, error_from_body)
from host.errors import STATUS_FOR_CODE
from host.server import wsgi_server
from tests.support import free_port


class CannedAgent:
    """Answers each request with the next canned (status, body) and records the requests."""

    def __init__(self, port: int = 0):
        self.answers, self.requests = [], []
        self.server = wsgi_server(self.app, "127.0.0.1", port)
        self.addr = f"127.0.0.1:{self.server.server_port}"

    def app(self, environ, start_response):
        self.requests.append((environ["REQUEST_METHOD"], environ["PATH_INFO"],
                              environ.get("QUERY_STRING", "")))
        status, body = self.answers.pop(0) if self.answers else (200, {})
        text = body if isinstance(body, str) else simplejson.dumps(body)
        start_response(f"{status} X", [("Content-Type", "application/json")])
        return [text.encode()]

    def close(self):
        self.server.stop(timeout=1)


class ClientErrorTest(unittest.TestCase):
    def setUp(self):
        self.agent = CannedAgent()
        self.host = HostClient(self.agent.addr, timeout_s=5)

    def tearDown(self):
        self.agent.close()

    def test_every_error_code_is_a_typed_exception(self):
        for code, status in STATUS_FOR_CODE.items():
            if code == "unauthorized":
                continue  # no auth yet: the agent never answers it
            with self.subTest(code=code):
                retry = status == 503
                self.agent.answers.append((status, {"code": code, "message": f"m-{code}",
                                                    "retry": retry}))
                with self.assertRaises(errors.FlynnError) as caught:
                    self.host.job("x")
                self.assertEqual(caught.exception.code, code)
                self.assertEqual(caught.exception.message, f"m-{code}")
                self.assertEqual(caught.exception.retry, retry)
                self.assertEqual(caught.exception.http_status, status)

    def test_extra_fields_and_non_json_errors(self):
        self.agent.answers.append((503, {"code": "not_leader", "message": "gone", "retry": True,
                                         "leader": "10.0.0.1:1113"}))
        with self.assertRaises(errors.NotLeader) as caught:
            HostClient(self.agent.addr).status()
        self.assertEqual(caught.exception.extra["leader"], "10.0.0.1:1113")
        self.agent.answers.append((502, "<html>bad gateway</html>"))
        with self.assertRaises(errors.FlynnError) as caught:
            self.host.status()
        self.assertIn("HTTP 502", caught.exception.message)

    def test_unreachable(self):
        with self.assertRaises(AgentUnreachable) as caught:
            HostClient(f"127.0.0.1:{free_port()}", timeout_s=2).status()
        self.assertTrue(caught.exception.retry)

    def test_an_attach_that_gets_no_handshake_answer_times_out(self):
        with socket.create_server(("127.0.0.1", 0)) as silent:
            addr = "127.0.0.1:%d" % silent.getsockname()[1]
            started = time.monotonic()
            with self.assertRaises(AgentUnreachable):
                HostClient(addr, timeout_s=0.5).attach("j")
            self.assertLess(time.monotonic() - started, 5)

    def test_ids_stay_inside_the_path(self):
        self.host.job("a?b#c")
        self.assertEqual(self.agent.requests[-1], ("GET", "/host/jobs/a?b#c", ""))

    def test_add_job_reports_whether_it_was_created(self):
        self.agent.answers += [(202, {"status": "starting"}), (200, {"status": "running"})]
        self.assertEqual(self.host.add_job("j", {"config": {"image": "x"}})[1], True)
        self.assertEqual(self.host.add_job("j", {"config": {"image": "x"}})[1], False)
        self.assertEqual(self.agent.requests[0][:2], ("PUT", "/host/jobs/j"))


class ClusterRetryTest(unittest.TestCase):
    def setUp(self):
        self.agent = CannedAgent()
        self.cluster = ClusterClient(self.agent.addr, timeout_s=5)

    def tearDown(self):
        self.agent.close()

    def test_retry_true_errors_are_retried_a_bounded_number_of_times(self):
        not_leader = (503, {"code": "not_leader", "message": "electing", "retry": True})
        self.agent.answers += [not_leader, not_leader, (200, {"id": "h1", "addr": "a"})]
        self.assertEqual(self.cluster.leader()["id"], "h1")
        self.assertEqual(len(self.agent.requests), 3)
        self.agent.answers += [not_leader] * 10
        with self.assertRaises(errors.NotLeader):
            self.cluster.leader()
        self.assertEqual(len(self.agent.requests), 3 + ClusterClient.attempts)

    def test_an_agent_that_does_not_answer_is_not_retried(self):
        from tests.support import free_port
        down = ClusterClient(f"127.0.0.1:{free_port()}", timeout_s=5)
        started = time.monotonic()
        with self.assertRaises(AgentUnreachable) as raised:
            down.hosts()
        self.assertLess(time.monotonic() - started, 1.0)  # no 3 s of backoff for a dead agent
        self.assertEqual(raised.exception.extra["reason"], "connection refused")

    def test_other_errors_are_not_retried(self):
        self.agent.answers.append((409, {"code": "conflict", "message": "used", "retry": False}))
        with self.assertRaises(errors.Conflict):
            self.cluster.add_jobs([{"config": {"image": "x"}}], host_id="h2")
        self.assertEqual(len(self.agent.requests), 1)
        self.assertEqual(self.agent.requests[0][:2], ("POST", "/cluster/jobs"))


class FollowEventsTest(unittest.TestCase):
    def test_resumes_from_its_cursor_after_the_agent_comes_back(self):
        port = free_port()
        client = HostClient(f"127.0.0.1:{port}", timeout_s=5)
        agents = []

        def come_up_later():
            agent = CannedAgent(port)
            agent.answers += [
                (200, {"events": [{"cursor": 8}, {"cursor": 9}], "cursor": 9}),
                (410, {"code": "cursor_expired", "message": "re-list", "retry": False})]
            agents.append(agent)
        gevent.spawn_later(0.3, come_up_later)
        stream = client.follow_events(since=7, wait_s=1, max_backoff_s=0.2)
        try:
            self.assertEqual([next(stream)["cursor"], next(stream)["cursor"]], [8, 9])
            with self.assertRaises(errors.CursorExpired):
                next(stream)
            queries = [q for _, _, q in agents[0].requests]
            self.assertIn("since=7", queries[0])
            self.assertIn("since=9", queries[1])
        finally:
            for agent in agents:
                agent.close()


class ErrorFromBodyTest(unittest.TestCase):
    def test_unknown_code_is_still_a_flynn_error(self):
        body = simplejson.dumps({"code": "teapot", "message": "short and stout", "retry": False})
        error = error_from_body(418, body.encode(), "u")
        self.assertIsInstance(error, errors.FlynnError)
        self.assertEqual((error.message, error.http_status), ("short and stout", 418))
