"""-log-format json: every line an agent writes is one JSON object a log shipper can read, with
the host id, on a job's lines the job id, and on a request's lines its id (X-Request-Id)."""
import os
import signal
import unittest

import simplejson

from tests.support import AgentProcess, job_body, remove_host_containers, require_docker


class JsonLogTest(unittest.TestCase):
    def test_every_line_is_json_with_host_and_job_ids(self):
        runtime = require_docker()
        agent = AgentProcess(f"jsonlog{os.getpid()}", args=["-log-format", "json"])
        try:
            agent.start()
            answer = agent.client.put("/host/jobs/logged", json=job_body(["true"]),
                                      headers={"X-Request-Id": "req-from-the-client.1"})
            self.assertEqual(answer.headers["X-Request-Id"], "req-from-the-client.1")
            made = agent.client.get("/host/status").headers["X-Request-Id"]
            self.assertRegex(made, r"^[0-9a-f]{16}$")  # one of the agent's own when none given
            agent.client.wait_status("logged", "done")
            self.assertEqual(agent.stop(signal.SIGTERM), 0)
            lines = agent.log(tail=0).splitlines()
        finally:
            agent.cleanup()
            remove_host_containers(runtime, agent.host_id)
        self.assertGreater(len(lines), 5)
        entries = [simplejson.loads(line) for line in lines]  # each parses, or this fails
        for entry in entries:
            self.assertLessEqual({"time", "level", "logger", "message"}, set(entry))
            self.assertTrue(entry["time"].endswith("Z"))
        self.assertEqual({e.get("host_id") for e in entries}, {agent.host_id})
        job_lines = [e for e in entries if e.get("job_id") == "logged"]
        self.assertTrue(any("running -> done" in e["message"] for e in job_lines), job_lines)
        self.assertIn("info", {e["level"] for e in entries})
        # the lines written while serving a request name it
        by_request = [e for e in entries if e.get("request_id") == "req-from-the-client.1"]
        self.assertTrue(any("PUT /host/jobs/logged" in e["message"] for e in by_request),
                        by_request)
        self.assertTrue(any(e.get("request_id") == made for e in entries))
