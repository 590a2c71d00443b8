"""Every job route and every state against the real Docker engine, through a real agent process."""
import socket
import time

import gevent
import requests

from tests.support import MISSING_IMAGE, DockerAgentTestCase, job_body


class DockerJobsTest(DockerAgentTestCase):
    agent_args = ("-memory-mb", "1000", "-cpu-shares", "4096", "-attribute", "zone=test")

    def run_to_end(self, job_id, cmd, statuses=("done", "crashed", "failed"), **config):
        self.client.put_job(job_id, job_body(cmd, **config))
        return self.client.wait_status(job_id, statuses)

    def inspect(self, container_id):
        return self.runtime._client().inspect_container(container_id)

    def test_status(self):
        status = self.client.get("/host/status").json()
        self.assertEqual(status["id"], self.host_id)
        self.assertEqual(status["docker"], "ok")
        self.assertEqual(status["attributes"], {"zone": "test"})
        self.assertEqual(status["resources"], {"memory_mb": 1000, "cpu_shares": 4096})
        self.assertEqual(status["addr"], f"127.0.0.1:{self.agent.port}")

    def test_done_and_crashed_from_docker_events(self):
        done = self.run_to_end("done-1", ["true"])
        self.assertEqual((done["status"], done["exit_status"]), ("done", 0))
        crashed = self.run_to_end("crash-1", ["sh", "-c", "exit 3"])
        self.assertEqual((crashed["status"], crashed["exit_status"]), ("crashed", 3))
        for job in (done, crashed):
            self.assertTrue(job["started_at"] and job["ended_at"])
            self.assertGreaterEqual(job["ended_at"], job["started_at"])
            labels = self.inspect(job["container_id"])["Config"]["Labels"]
            self.assertEqual(labels["flynn-host.id"], self.host_id)
            self.assertEqual(labels["flynn-host.job-id"], job["job"]["id"])
        events = self.client.get("/host/events", params={"since": 0, "job_id": "crash-1"}).json()
        self.assertEqual([e["event"] for e in events["events"]], ["create", "start", "stop"])
        self.assertEqual([e["job"]["status"] for e in events["events"]],
                         ["starting", "running", "crashed"])

    def test_running_job_has_address_and_limits(self):
        self.client.put_job("limits", dict(job_body(["sleep", "60"]),
                                           resources={"memory_mb": 64, "cpu_shares": 512}))
        job = self.client.wait_status("limits", "running")
        self.assertTrue(job["internal_ip"])
        host_config = self.inspect(job["container_id"])["HostConfig"]
        self.assertEqual(host_config["Memory"], 64 * 1024 * 1024)
        self.assertEqual(host_config["CpuShares"], 512)
        self.assertEqual(self.client.get("/host/status").json()["allocated"],
                         {"memory_mb": 64, "cpu_shares": 512})
        too_big = self.client.put("/host/jobs/too-big", json=dict(
            job_body(["true"]), resources={"memory_mb": 990}))
        self.assertEqual(too_big.status_code, 409)
        self.assertIn("memory", too_big.json()["message"])
        running = [j["job"]["id"] for j in self.client.get("/host/jobs?status=running").json()]
        self.assertIn("limits", running)
        self.client.delete("/host/jobs/limits?timeout=0")
        self.client.wait_status("limits", "stopped")

    def test_failed_when_the_image_is_missing(self):
        job = self.run_to_end("noimage", ["true"], image=MISSING_IMAGE)
        self.assertEqual(job["status"], "failed")
        self.assertIn(MISSING_IMAGE, job["error"])

    def test_failed_when_the_command_cannot_start(self):
        job = self.run_to_end("nocmd", ["/no/such/binary"])
        self.assertEqual(job["status"], "failed")
        self.assertIn("/no/such/binary", job["error"])
        self.assertIsNone(job["exit_status"])

    def test_oom_kill_is_crashed_with_error_oom(self):
        self.client.put_job("oom", dict(job_body(["sh", "-c", "x=$(yes | head -c 300000000)"]),
                                        resources={"memory_mb": 8}))
        job = self.client.wait_status("oom", ("done", "crashed"), timeout=60)
        self.assertEqual((job["status"], job["error"]), ("crashed", "oom"))

    def test_environment_and_published_port(self):
        script = ("echo \"$EXTERNAL_IP $FLYNN_HOST_ID $FLYNN_JOB_ID $PORT\" > /tmp/index.html; "
                  "exec httpd -f -p $PORT -h /tmp")
        self.client.put_job("web", job_body(["sh", "-c", script], ports=[{"port": 0}]))
        job = self.client.wait_status("web", "running")
        port = job["ports"][0]["port"]
        self.assertTrue(49152 <= port <= 65535)
        self.assertEqual(job["ports"][0]["container_port"], port)
        body = self._get_until_served(f"http://127.0.0.1:{port}/index.html")
        self.assertEqual(body.split(), ["127.0.0.1", self.host_id, "web", str(port)])
        taken = self.client.put("/host/jobs/web2", json=job_body(["true"],
                                                                 ports=[{"port": port}]))
        self.assertEqual(taken.status_code, 409)
        self.client.delete("/host/jobs/web?timeout=0")
        self.client.wait_status("web", "stopped")

    def _get_until_served(self, url, timeout=20):
        """httpd needs a moment after the container starts to listen."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                resp = requests.get(url, timeout=2)
                if resp.status_code == 200:
                    return resp.text
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} never answered")
            gevent.sleep(0.1)

    def test_fixed_port_in_use_on_the_machine(self):
        with socket.socket() as held:
            held.bind(("0.0.0.0", 0))
            held.listen()
            port = held.getsockname()[1]
            resp = self.client.put("/host/jobs/fixed", json=job_body(["true"],
                                                                     ports=[{"port": port}]))
            self.assertEqual(resp.status_code, 409)
            self.assertIn(f"port {port}/tcp is in use", resp.json()["message"])

    def test_stop_term_then_kill(self):
        # a shell that exits on TERM: done, quickly
        self.client.put_job("polite", job_body(
            ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]))
        self.client.wait_status("polite", "running")
        self.assertEqual(self.client.delete("/host/jobs/polite").status_code, 202)
        polite = self.client.wait_status("polite", ("done", "crashed", "stopped"))
        self.assertEqual((polite["status"], polite["exit_status"]), ("stopped", 0))
        # PID 1 without a TERM handler ignores TERM: killed after the timeout
        self.client.put_job("stubborn", job_body(["sleep", "1000"]))
        self.client.wait_status("stubborn", "running")
        started = time.monotonic()
        self.assertEqual(self.client.delete("/host/jobs/stubborn?timeout=1").status_code, 202)
        job = self.client.wait_status("stubborn", ("done", "crashed", "stopped"))
        self.assertEqual((job["status"], job["exit_status"]), ("stopped", 137))
        self.assertGreaterEqual(time.monotonic() - started, 0.9)  # TERM was given its second
        self.assertEqual(self.client.delete("/host/jobs/stubborn").status_code, 200)

    def test_signal_reaches_the_job(self):
        self.client.put_job("hup", job_body(
            ["sh", "-c", "trap 'echo got-hup; exit 0' HUP; echo ready; "
                         "while :; do sleep 0.1; done"]))
        self.client.wait_for_output("hup", b"ready\n")  # the trap is installed
        resp = self.client.post("/host/jobs/hup/signal", json={"signal": "HUP"})
        self.assertEqual(resp.status_code, 202, resp.text)
        self.client.wait_status("hup", "done")
        self.assertIn(b"got-hup", self.client.get("/host/jobs/hup/log").content)

    def test_logs_streams_tail_and_follow(self):
        script = "echo o1; echo e1 >&2; echo o2; sleep 1; echo o3"
        self.client.put_job("logs", job_body(["sh", "-c", script]))
        self.client.wait_status("logs", "running")
        started = time.monotonic()
        followed = self.client.get("/host/jobs/logs/log?follow=true", timeout=60)
        self.assertGreaterEqual(time.monotonic() - started, 0.5)  # it waited for o3
        self.assertEqual(sorted(followed.text.split()), ["e1", "o1", "o2", "o3"])
        self.client.wait_status("logs", "done")
        out = self.client.get("/host/jobs/logs/log?stream=stdout").text
        self.assertEqual(out, "o1\no2\no3\n")
        self.assertEqual(self.client.get("/host/jobs/logs/log?stream=stderr").text, "e1\n")
        self.assertEqual(self.client.get("/host/jobs/logs/log?stream=stdout&tail=1").text, "o3\n")
        self.assertEqual(self.client.get("/host/jobs/logs/log?tail=0").text, "")

    def test_follow_a_job_placed_a_moment_ago(self):
        self.client.put_job("quick", job_body(["echo", "fast"]))
        self.assertEqual(self.client.get("/host/jobs/quick/log?follow=true").text, "fast\n")

    def test_long_poll_wakes_on_the_event(self):
        cursor = self.client.get("/host/events").json()["cursor"]
        poll = gevent.spawn(self.client.get, "/host/events",
                            params={"since": cursor, "wait": 30}, timeout=60)
        gevent.sleep(0.2)
        self.assertFalse(poll.ready())  # it is waiting
        started = time.monotonic()
        self.client.put_job("wake", job_body(["true"]))
        resp = poll.get(timeout=40)
        self.assertLess(time.monotonic() - started, 10)  # woken by the event, not the 30 s wait
        events = resp.json()["events"]
        self.assertEqual((events[0]["job_id"], events[0]["event"], events[0]["cursor"]),
                         ("wake", "create", cursor + 1))
        idle = self.client.get("/host/events", params={"since": resp.json()["cursor"] + 10 ** 6})
        self.assertEqual(idle.status_code, 400)

    def test_event_stream(self):
        cursor = self.client.get("/host/events").json()["cursor"]
        resp = self.client.get("/host/events", params={"stream": "true", "since": cursor,
                                                       "job_id": "streamed"}, stream=True)
        self.assertEqual(resp.headers["Content-Type"], "application/x-ndjson")
        self.client.put_job("streamed", job_body(["true"]))
        seen = []
        with gevent.Timeout(30):
            for line in resp.iter_lines():
                if line:
                    seen.append(requests.models.complexjson.loads(line))
                if len(seen) == 3:
                    break
        resp.close()
        self.assertEqual([e["event"] for e in seen], ["create", "start", "stop"])
        cursors = [e["cursor"] for e in seen]
        self.assertEqual(cursors, sorted(cursors))
