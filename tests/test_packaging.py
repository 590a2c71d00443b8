"""What an operator installs: the systemd unit (checked by systemd itself) and the readiness
protocol it relies on, against a real agent."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import unittest

from tests.support import FLYNN_HOST, REPO, AgentProcess, remove_host_containers, require_docker

UNIT = os.path.join(REPO, "conf", "flynn-host.service")


def unit_settings() -> dict:
    settings = {}
    with open(UNIT) as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and not line.startswith("#"):
                settings[key] = value
    return settings


class SystemdUnitTest(unittest.TestCase):
    def test_systemd_accepts_the_unit(self):
        if shutil.which("systemd-analyze") is None:
            raise AssertionError("systemd-analyze is missing (Debian's systemd package)")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "flynn-host.service")
            with open(UNIT) as f, open(path, "w") as out:  # ExecStart as installed here
                out.write(f.read().replace("/opt/flynn-host/bin/flynn-host", FLYNN_HOST))
            proc = subprocess.run(["systemd-analyze", "verify", path], capture_output=True,
                                  text=True, timeout=60)
        self.assertEqual((proc.returncode, proc.stderr.strip()), (0, ""), proc.stderr)

    def test_the_unit_keeps_jobs_and_does_not_loop_on_usage_errors(self):
        settings = unit_settings()
        self.assertEqual(settings["Type"], "notify")
        self.assertIn(settings["KillMode"], ("mixed", "process"))  # not the jobs' containers
        self.assertEqual(settings["StateDirectory"], "flynn-host")  # /var/lib/flynn-host
        self.assertEqual(settings["RestartPreventExitStatus"], "2")
        self.assertEqual(settings["ExecStart"], "/opt/flynn-host/bin/flynn-host")  # a venv


class ReadinessTest(unittest.TestCase):
    def test_the_agent_tells_systemd_when_it_serves_and_when_it_stops(self):
        runtime = require_docker()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "notify")
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            listener.bind(path)
            listener.settimeout(20)
            agent = AgentProcess(f"notify{os.getpid()}", env={"NOTIFY_SOCKET": path})
            try:
                agent.start()
                ready = listener.recv(4096).decode()
                self.assertIn("READY=1", ready.splitlines())
                self.assertIn(f"STATUS=serving on 127.0.0.1:{agent.port}", ready)
                self.assertEqual(agent.stop(signal.SIGTERM), 0)
                self.assertEqual(listener.recv(4096).decode(), "STOPPING=1")
            finally:
                listener.close()
                agent.cleanup()
                remove_host_containers(runtime, agent.host_id)
