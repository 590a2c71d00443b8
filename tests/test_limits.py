"""What one client can make the agent hold is bounded, each by a setting, each answered in the
error shape: open long-polls and streams per client address and attaches per job (429), how
slowly headers may arrive (408) and how long a connection may stay silent, the header count,
and connections served at once. A followed log whose client left ends (a silent job kept its
greenlet and Docker connection for as long as it ran), and attach output to a slow reader
arrives whole. On the fake engine, then a real agent process on the real engine."""
import socket
import time
import unittest

import gevent
import requests

from host.runtime.fake import FakeRuntime
from tests.support import DockerAgentTestCase, InProcessAgent, job_body, wait_until


def scrape(client) -> dict:
    """{(name, sorted label pairs): value} of an agent's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples}


def connect(port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class WaitsPerClientTest(unittest.TestCase):
    def setUp(self):
        self.host = InProcessAgent(FakeRuntime(), flags=["-max-waits-per-client", "3",
                                                         "-max-attaches-per-job", "1"])
        self.client = self.host.client
        self.waiters = self.host.server.application.waiters

    def tearDown(self):
        self.host.close()

    def test_a_client_holds_at_most_its_share_of_waits(self):
        polls = [gevent.spawn(self.client.get, "/host/events", params={"wait": 30})
                 for _ in range(2)]
        # its answer starts at once, before any event or keep-alive line (15 s)
        stream = self.client.get("/host/events", params={"stream": "true"}, stream=True,
                                 timeout=5)
        wait_until(lambda: sum(self.waiters.by_kind.values()) == 3, 5, "three waits held")
        self.assertEqual(dict(self.waiters.by_kind), {"longpoll": 2, "stream": 1,
                                                      "log_follow": 0, "attach": 0})
        for params in ({"wait": 5}, {"stream": "true"}):
            refused = self.client.get("/host/events", params=params)
            self.assertEqual(refused.status_code, 429, refused.text)
            body = refused.json()
            self.assertEqual((body["code"], body["retry"]), ("too_many_requests", True))
            self.assertIn("-max-waits-per-client 3", body["message"])
        # answers that do not wait are not waits: they are never refused
        self.assertEqual(self.client.get("/host/events").status_code, 200)
        self.assertEqual(self.client.get("/host/status").status_code, 200)
        # a place comes back when a wait ends: a long-poll answered, a stream closed
        self.client.put_job("wake", {"config": {"image": "busybox", "cmd": ["true"]}})
        for poll in polls:
            self.assertEqual(poll.get(timeout=10).status_code, 200)
        stream.close()
        wait_until(lambda: sum(self.waiters.by_kind.values()) == 0, 5, "every place back")
        self.assertEqual(self.waiters.by_client, {})

    def test_a_job_has_at_most_its_share_of_attaches(self):
        from tests.test_attach_limits import HANDSHAKE
        first = connect(self.host.server.server_port)
        first.sendall(HANDSHAKE.encode())
        self.assertIn(b" 101 ", read_answer(first).split(b"\r\n")[0])
        second = connect(self.host.server.server_port)
        second.sendall(HANDSHAKE.encode())
        answer = read_answer(second)
        self.assertIn(b" 429 ", answer.split(b"\r\n")[0])
        if b"max-attaches" not in answer:
            answer += second.recv(4096)
        self.assertIn(b"-max-attaches-per-job 1", answer)
        second.close()
        first.close()
        wait_until(lambda: self.waiters.by_kind["attach"] == 0, 15, "the attach ended")


class SlowClientsTest(unittest.TestCase):
    def setUp(self):
        self.host = InProcessAgent(FakeRuntime(), flags=[
            "-header-timeout", "0.5", "-read-timeout", "1", "-max-headers", "10"])
        self.port = self.host.server.server_port

    def tearDown(self):
        self.host.close()

    def test_headers_that_trickle_get_408(self):
        with connect(self.port) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /host/status HTTP/1.1\r\n")
            for _ in range(20):  # one header line every 0.1 s: each read alone is quick
                try:
                    sock.sendall(b"X-Slow: 1\r\n"[:5])
                except OSError:
                    break
                gevent.sleep(0.1)
            answer = read_answer(sock)
        self.assertTrue(answer.startswith(b"HTTP/1.1 408"), answer[:60])
        self.assertLess(time.monotonic() - started, 1.9)

    def test_a_silent_connection_is_closed_after_the_read_timeout(self):
        with connect(self.port) as sock:
            started = time.monotonic()
            self.assertEqual(sock.recv(100), b"")  # closed by the agent, nothing sent
            self.assertGreaterEqual(time.monotonic() - started, 0.9)
        # a body that stops half way: the agent answers 408 in the error shape and goes on
        with connect(self.port) as sock:
            sock.sendall(b"PUT /host/jobs/half HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"con")
            answer = read_answer(sock)
            answer += sock.recv(4096)
        self.assertTrue(answer.startswith(b"HTTP/1.1 408"), answer[:80])
        self.assertIn(b'"code": "request_timeout"', answer)
        self.assertEqual(self.host.client.get("/host/jobs/half").status_code, 404)

    def test_the_header_count_is_a_setting(self):
        with connect(self.port) as sock:
            sock.sendall(b"GET /host/status HTTP/1.1\r\n" +
                         b"".join(b"H%d: v\r\n" % n for n in range(11)) + b"\r\n")
            self.assertTrue(read_answer(sock).startswith(b"HTTP/1.1 400"))
        ok = requests.get(f"http://127.0.0.1:{self.port}/host/status", timeout=5,
                          headers={f"H{n}": "v" for n in range(4)})
        self.assertEqual(ok.status_code, 200)


class StopTest(unittest.TestCase):
    def test_a_stop_closes_idle_connections_at_once(self):
        host = InProcessAgent(FakeRuntime())
        with connect(host.server.server_port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            self.assertTrue(read_answer(sock).startswith(b"HTTP/1.1 200"))
            started = time.monotonic()
            host.server.stop(timeout=5)  # kept alive, idle: not a request in flight
            self.assertLess(time.monotonic() - started, 4)
            self.assertEqual(sock.recv(100), b"")
        host.close()


class ConnectionCapTest(unittest.TestCase):
    def test_connections_past_the_cap_wait_their_turn(self):
        host = InProcessAgent(FakeRuntime(), flags=["-max-connections", "4",
                                                    "-read-timeout", "30"])
        try:
            idle = [connect(host.server.server_port) for _ in range(4)]
            gevent.sleep(0.2)
            with self.assertRaises(requests.Timeout):  # queued in the kernel, not served
                requests.get(host.client.url + "/healthz", timeout=1)
            idle.pop().close()
            self.assertEqual(requests.get(host.client.url + "/healthz", timeout=5).status_code,
                             200)
            for sock in idle:
                sock.close()
        finally:
            host.close()


class StreamsOnTheRealEngineTest(DockerAgentTestCase):
    agent_args = ("-max-waits-per-client", "2")

    def open_follows(self) -> float:
        return scrape(self.client)[("flynn_host_waiters", (("kind", "log_follow"),))]

    def test_a_followed_log_ends_when_its_client_leaves(self):
        self.client.put_job("silent", job_body(["sleep", "600"]))
        self.client.wait_status("silent", "running")
        request = (b"GET /host/jobs/silent/log?follow=true HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for _ in range(3):  # more than the two places: each must come back
            follows = [connect(self.agent.port) for _ in range(2)]
            for sock in follows:
                sock.sendall(request)
            wait_until(lambda: self.open_follows() == 2, 10, "two follows open")
            with connect(self.agent.port) as third:
                third.sendall(request)
                self.assertIn(b" 429 ", read_answer(third).split(b"\r\n")[0])
            for sock in follows:
                sock.close()
            # the job says nothing: only noticing the client gone ends a follow
            wait_until(lambda: self.open_follows() == 0, 10, "both follows ended")
        self.client.delete("/host/jobs/silent", params={"timeout": 0})

    def test_attach_output_to_a_slow_reader_arrives_whole(self):
        from tests.support import raw_attach
        size = 4_000_000
        gevent.spawn_later(0.5, self.client.put_job, "loud",
                           job_body(["head", "-c", str(size), "/dev/zero"]))
        status, frames, trailing = raw_attach(self.client.url, "loud", timeout_s=30,
                                              stall_s=2.0)
        self.assertIn("101", status)
        output = b"".join(payload[1:] for opcode, payload in frames if opcode == 2)
        self.assertEqual(len(output), size)
        self.assertEqual(trailing, b"")
        self.assertIn(b'"type": "exit"', b"".join(p for o, p in frames if o == 1))


class HangingStopsOnTheRealEngineTest(DockerAgentTestCase):
    """The starvation reproduced on the real engine: a job that ignores SIGTERM, stopped again
    and again with a timeout of an hour, holds up neither a new job nor the recording of an
    exit nor the API (a shared task pool that blocked when full froze all three)."""
    agent_args = ("-task-concurrency", "2")

    def test_stops_that_hang_block_nothing(self):
        stubborn = job_body(["sh", "-c", "trap '' TERM; while true; do sleep 1; done"])
        self.client.put_job("stubborn", stubborn)
        self.client.wait_status("stubborn", "running")
        for _ in range(64):
            answer = self.client.delete("/host/jobs/stubborn", params={"timeout": 3600},
                                        timeout=5)
            self.assertEqual(answer.status_code, 202, answer.text)
        started = time.monotonic()
        self.client.put_job("after", job_body(["sleep", "60"]))
        self.client.wait_status("after", "running", timeout=20)
        self.assertLess(time.monotonic() - started, 20)
        self.assertEqual(self.client.get("/host/status").status_code, 200)
        # an exit is recorded while the stops hang: a job that ends on its own
        self.client.put_job("quick", job_body(["sh", "-c", "exit 4"]))
        self.assertEqual(self.client.wait_status("quick", "crashed", timeout=20)["exit_status"],
                         4)
        # and a shorter stop still kills it
        self.client.delete("/host/jobs/stubborn", params={"timeout": 0})
        self.assertEqual(self.client.wait_status("stubborn", "stopped", timeout=20)["status"],
                         "stopped")
