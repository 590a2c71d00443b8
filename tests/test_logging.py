"""-log-format json: every line an agent writes is one JSON object a log shipper can read, with
the host id and, on a job's lines, the job id."""
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
            agent.client.put_job("logged", job_body(["true"]))
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
