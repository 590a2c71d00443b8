"""README command 1, `bin/run`, as an operator uses it: it comes up, serves, and Ctrl-C (SIGINT to
its process group, as a terminal sends it) stops the agent while the jobs keep running."""
import os
import shutil
import signal
import subprocess
import tempfile
import unittest

from tests.support import (REPO, AgentClient, free_port, job_body, remove_host_containers,
                           require_docker, wait_until)


class RunCommandTest(unittest.TestCase):
    def test_run_serves_and_ctrl_c_leaves_jobs_running(self):
        runtime = require_docker()  # an engine is reachable, so bin/run uses it as is
        host_id = f"trun{os.getpid()}"
        state_dir = tempfile.mkdtemp(prefix="flynn-run-")
        port = free_port()
        log_path = os.path.join(state_dir, "run.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [os.path.join(REPO, "bin", "run"), "-listen", f"127.0.0.1:{port}",
                 "-state-dir", state_dir, "-id", host_id, "-external", "127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = AgentClient(f"http://127.0.0.1:{port}")
        try:
            def serving():
                self.assertIsNone(proc.poll(), open(log_path).read())
                try:
                    return client.get("/host/status", timeout=2).json()["docker"] == "ok"
                except Exception:
                    return False
            wait_until(serving, 120, "bin/run serving /host/status")
            client.put_job("survivor", job_body(["sleep", "300"]))
            job = client.wait_status("survivor", "running")

            os.killpg(proc.pid, signal.SIGINT)
            self.assertEqual(proc.wait(30), 0, open(log_path).read())
            self.assertTrue(runtime.inspect(job["container_id"]).running)
            self.assertIn("its jobs keep running", open(log_path).read())
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            remove_host_containers(runtime, host_id)
            shutil.rmtree(state_dir, ignore_errors=True)
