"""The client subcommands as a subprocess, against a real agent: tables, --json, exit codes."""
import os
import subprocess
import sys
import unittest

import gevent
import simplejson

from host.cli.commands import COMMANDS
from tests.test_cluster import ClusterTestCase
from tests.support import (FLYNN_HOST, REPO, AgentProcess, DockerAgentTestCase, free_port, job_body,
                           remove_host_containers, require_docker, wait_until)


def cli(*args, addr=None, input=None):
    env = dict(os.environ)
    if addr:
        env["FLYNN_HOST_ADDR"] = addr
    return subprocess.run([sys.executable, FLYNN_HOST, *args], capture_output=True, text=True,
                          timeout=60, env=env, input=input)


class CliTest(DockerAgentTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.addr = f"127.0.0.1:{cls.agent.port}"
        cls.client.put_job("cli-run", job_body(["sh", "-c", "echo one; sleep 300"],
                                               ports=[{"port": 0}]))
        cls.client.put_job("cli-done", job_body(["echo", "finished"]))
        cls.client.wait_status("cli-run", "running")
        cls.client.wait_status("cli-done", "done")

    def test_ps_table_quiet_all_and_json(self):
        table = cli("ps", addr=self.addr)
        self.assertEqual(table.returncode, 0, table.stderr)
        lines = table.stdout.splitlines()
        self.assertEqual(lines[0].split(), ["JOB", "ID", "IMAGE", "COMMAND", "CREATED", "STATE",
                                            "HOST", "PORTS"])
        self.assertIn("cli-run", table.stdout)
        self.assertNotIn("cli-done", table.stdout)
        self.assertIn("->", lines[1])  # the published port
        running = cli("ps", "-q", addr=self.addr).stdout.split()
        self.assertIn("cli-run", running)
        self.assertNotIn("cli-done", running)
        self.assertTrue({"cli-done", "cli-run"} <= set(cli("ps", "-a", "-q",
                                                           addr=self.addr).stdout.split()))
        listed = simplejson.loads(cli("ps", "-a", "--json", addr=self.addr).stdout)
        states = {j["id"]: j["status"] for j in listed}
        self.assertEqual((states["cli-run"], states["cli-done"]), ("running", "done"))

    def test_ps_through_the_cluster(self):
        def mirrored():  # the heartbeat publishes job changes within about 100 ms
            jobs = self.client.get(f"/cluster/hosts/{self.host_id}").json().get("jobs", [])
            return {"cli-done", "cli-run"} <= {j["id"] for j in jobs}
        wait_until(mirrored, 10, "the leader's mirror showing both jobs")
        for args in (["--cluster"], ["--host", self.host_id]):
            with self.subTest(args=args):
                listed = cli("ps", "-a", "-q", *args, addr=self.addr)
                self.assertEqual(listed.returncode, 0, listed.stderr)
                self.assertTrue({"cli-done", "cli-run"} <= set(listed.stdout.split()))
        missing = cli("ps", "--host", "nohost", addr=self.addr)
        self.assertEqual((missing.returncode, missing.stderr.strip()),
                         (1, "flynn-host ps: no host 'nohost' in the cluster"))

    def test_inspect_log_status(self):
        job = simplejson.loads(cli("inspect", "cli-done", "-H", self.addr).stdout)
        self.assertEqual((job["status"], job["exit_status"]), ("done", 0))
        self.assertEqual(cli("log", "cli-done", "-H", self.addr).stdout, "finished\n")
        self.assertEqual(cli("log", "--tail", "1", "cli-run", "-H", self.addr).stdout, "one\n")
        status = cli("status", "-H", self.addr)
        self.assertIn(f"id:      {self.host_id}", status.stdout)
        self.assertEqual(simplejson.loads(cli("status", "--json", "-H", self.addr).stdout)["id"],
                         self.host_id)

    def test_log_follow_ends_with_the_job_and_stop_via_xargs_style(self):
        self.client.put_job("cli-follow", job_body(["sh", "-c", "echo a; sleep 1; echo b"]))
        self.assertEqual(cli("log", "-f", "cli-follow", "-H", self.addr).stdout, "a\nb\n")
        self.client.put_job("cli-stop", job_body(["sleep", "300"]))
        self.client.wait_status("cli-stop", "running")
        stopped = cli("stop", "--timeout", "0", "cli-stop", "-H", self.addr)
        self.assertEqual((stopped.returncode, stopped.stdout, stopped.stderr),
                         (0, "cli-stop\n", ""))  # piped: no progress line
        stopped = self.client.job("cli-stop")  # stop waited; asked for, so `stopped`
        self.assertEqual((stopped["status"], stopped["exit_status"]), ("stopped", 137))

    def test_progress_on_a_terminal_only(self):
        self.client.put_job("cli-slow", job_body(["sleep", "300"]))  # PID 1 ignores TERM
        self.client.wait_status("cli-slow", "running")
        # `script` gives the command a terminal; its output is the terminal's
        shown = subprocess.run(["script", "-q", "-e", "-c", f"{sys.executable} {FLYNN_HOST} stop "
                                f"--timeout 2 cli-slow -H {self.addr}", "/dev/null"],
                               capture_output=True, text=True, timeout=60)
        self.assertEqual(shown.returncode, 0, shown.stdout)
        self.assertIn("stopping 1 job(s)...", shown.stdout)
        self.assertIn("cli-slow", shown.stdout)

    def test_leader_and_hosts_of_a_one_host_cluster(self):
        self.assertEqual(cli("leader", "-H", self.addr).stdout.split()[0], self.host_id)
        hosts = cli("hosts", "-H", self.addr)
        self.assertEqual(hosts.stdout.splitlines()[0].split(),
                         ["HOST", "ID", "ADDR", "LEADER", "JOBS", "MEMORY", "CPU", "REGISTERED"])
        self.assertIn(self.host_id, hosts.stdout)

    def test_events(self):
        out = cli("events", "--since", "0", "--json", "-H", self.addr).stdout.splitlines()
        events = [simplejson.loads(line) for line in out]
        self.assertIn(("cli-done", "stop"), [(e["job_id"], e["event"]) for e in events])

    def test_exit_codes(self):
        missing = cli("inspect", "nope", "-H", self.addr)
        self.assertEqual(missing.returncode, 1)
        self.assertEqual(missing.stderr.strip(), "flynn-host inspect: no job 'nope' on this host "
                                                 "or elsewhere in the cluster")
        usage = cli("log", "--tail", "-5", "cli-run", "-H", self.addr)
        self.assertEqual(usage.returncode, 2)
        self.assertEqual(cli("ps", "--bogus", "-H", self.addr).returncode, 2)
        unreachable = cli("ps", "-H", f"127.0.0.1:{free_port()}")
        self.assertEqual(unreachable.returncode, 3)
        for result in (missing, usage, unreachable):
            self.assertNotIn("Traceback", result.stderr)
        helped = cli("ps", "--help")
        self.assertEqual(helped.returncode, 0)
        self.assertIn("examples:", helped.stdout)

    def test_every_usage_error_exits_2_with_one_line_naming_the_problem(self):
        cases = {("frobnicate",): "unknown command", ("inspect",): "JOB",
                 ("run",): "IMAGE is required", ("run", "-e", "X", "img"): "not KEY=VALUE",
                 ("run", "-p", "abc", "img"): "not a port", ("run", "-m", "12x", "img"):
                 "not a memory size", ("run", "--cpu", "x", "img"): "--cpu",
                 ("run", "-d", "-t", "img"): "-d cannot go with", ("stop",): "JOB",
                 ("signal", "x"): "signal", ("events", "--since", "abc"): "--since",
                 ("attach",): "JOB", ("log", "--tail", "-1", "x"): "--tail",
                 ("ps", "--bogus"): "--bogus", ("inspect", "cli-run/log"): "not a job id",
                 ("stop", "ok", "a?b"): "not a job id", ("run", "--id", "a b", "img"):
                 "not a job id"}
        for argv, fragment in cases.items():
            with self.subTest(argv=argv):
                # -H right after the command: after `run`'s IMAGE it would be the job's command
                result = cli(argv[0], "-H", self.addr, *argv[1:])
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn(fragment, result.stderr.strip().splitlines()[-1])
                self.assertNotIn("Traceback", result.stderr)
        for command in COMMANDS:
            with self.subTest(help=command):
                helped = cli(command, "--help")
                self.assertEqual(helped.returncode, 0)
                self.assertIn("examples:", helped.stdout)

    def test_every_command_exits_3_when_the_agent_is_unreachable(self):
        nowhere = f"127.0.0.1:{free_port()}"
        for argv in (("ps",), ("ps", "--cluster"), ("inspect", "x"), ("log", "x"), ("stop", "x"),
                     ("signal", "x", "HUP"), ("status",), ("leader",), ("hosts",),
                     ("events",), ("run", "-d", "img"), ("attach", "x")):
            with self.subTest(argv=argv):
                # -H right after the command: after `run`'s IMAGE it would be the job's command
                # (and the test would pass only because nothing listens on the default address)
                result = cli(argv[0], "-H", nowhere, *argv[1:])
                self.assertEqual(result.returncode, 3, result.stderr)
                self.assertIn(nowhere, result.stderr)
                self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
                self.assertNotIn("Traceback", result.stderr)

    def test_run_prints_output_and_passes_the_exit_status_through(self):
        ran = cli("run", "--id", "cli-r1", os.environ.get("FLYNN_TEST_IMAGE",
                                                          "flynn-test/busybox:latest"),
                  "sh", "-c", "echo out; echo err >&2; exit 3", addr=self.addr)
        self.assertEqual((ran.returncode, ran.stdout, ran.stderr), (3, "out\n", "err\n"))
        self.assertEqual(self.client.job("cli-r1")["exit_status"], 3)

    def test_run_interactive_forwards_stdin_and_the_exit_status(self):
        image = os.environ.get("FLYNN_TEST_IMAGE", "flynn-test/busybox:latest")
        ran = cli("run", "-i", image, "cat", addr=self.addr, input="hi\n")
        self.assertEqual((ran.returncode, ran.stdout), (0, "hi\n"), ran.stderr)
        ran = cli("run", "-i", image, "sh", "-c", "read x; echo $x >&2; exit 7", addr=self.addr,
                  input="to-stderr\n")
        self.assertEqual((ran.returncode, ran.stdout, ran.stderr), (7, "", "to-stderr\n"))
        self.assertEqual(cli("run", "-d", "-i", image, addr=self.addr).returncode, 2)

    def test_run_with_a_terminal_but_no_stdin_loses_none_of_a_fast_job(self):
        image = os.environ.get("FLYNN_TEST_IMAGE", "flynn-test/busybox:latest")
        ran = cli("run", "-t", "--id", "cli-tty", image, "sh", "-c", "echo fast; exit 4",
                  addr=self.addr)
        # (the terminal's CR LF read back as text)
        self.assertEqual((ran.returncode, ran.stdout), (4, "fast\n"), ran.stderr)
        # what makes it lossless: the job waited for the CLI's attach before it started
        self.assertTrue(self.client.job("cli-tty")["job"]["config"]["stdin"])

    def test_run_detached_on_a_named_host_with_limits(self):
        image = os.environ.get("FLYNN_TEST_IMAGE", "flynn-test/busybox:latest")
        ran = cli("run", "-d", "--on", self.host_id, "--id", "cli-d1", "-m", "32m", "-e",
                  "GREETING=hi", "-p", "8080", image, "sleep", "300", addr=self.addr)
        self.assertEqual((ran.returncode, ran.stdout), (0, "cli-d1\n"), ran.stderr)
        job = self.client.wait_status("cli-d1", "running")
        self.assertEqual(job["job"]["resources"]["memory_mb"], 32)
        self.assertEqual(job["job"]["config"]["env"], {"GREETING": "hi"})
        self.assertEqual(job["ports"][0]["container_port"], 8080)
        failed = cli("run", "--id", "cli-f1", "127.0.0.1:1/none", addr=self.addr)
        self.assertEqual(failed.returncode, 125)
        self.assertIn("cli-f1 failed", failed.stderr)
        bad = cli("run", "-m", "lots", image, addr=self.addr)
        self.assertEqual(bad.returncode, 2)


class EventsFollowAcrossRestartTest(unittest.TestCase):
    def test_events_f_resumes_after_the_agent_restarts(self):
        runtime = require_docker()
        agent = AgentProcess(f"tclievents{os.getpid()}").start()
        addr = f"127.0.0.1:{agent.port}"
        follower = subprocess.Popen([sys.executable, FLYNN_HOST, "events", "-f", "--json",
                                     "--since", "0", "-H", addr], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        try:
            agent.client.put_job("before", job_body(["true"]))
            agent.client.wait_status("before", "done")
            self.assertEqual(agent.stop(), 0)
            agent = AgentProcess(agent.host_id, state_dir=agent.state_dir, port=agent.port)
            agent.start()
            agent.client.put_job("after", job_body(["true"]))
            agent.client.wait_status("after", "done")
            seen = []
            with gevent.Timeout(30):
                while ("after", "stop") not in [(e["job_id"], e["event"]) for e in seen]:
                    seen.append(simplejson.loads(follower.stdout.readline()))
            self.assertEqual([e["cursor"] for e in seen], list(range(1, len(seen) + 1)))
            self.assertEqual([(e["job_id"], e["event"]) for e in seen],
                             [("before", "create"), ("before", "start"), ("before", "stop"),
                              ("after", "create"), ("after", "start"), ("after", "stop")])
        finally:
            follower.kill()
            follower.wait()
            agent.cleanup()
            remove_host_containers(runtime, agent.host_id)


class PtyRunTest(unittest.TestCase):
    """`run -i -t` under a pseudo-terminal: raw mode, our terminal's size given to the job as it
    starts, a change of size reaching it, typed input and Ctrl-C reaching it, and the terminal
    restored at the end."""

    def test_run_with_a_terminal(self):
        runtime = require_docker()
        agent = AgentProcess(f"tclipty{os.getpid()}").start()
        try:
            driver = subprocess.run(
                [sys.executable, os.path.join(REPO, "tests", "pty_driver.py"), FLYNN_HOST,
                 f"127.0.0.1:{agent.port}",
                 os.environ.get("FLYNN_TEST_IMAGE", "flynn-test/busybox:latest")],
                capture_output=True, text=True, timeout=120)
            self.assertEqual(driver.returncode, 0, driver.stderr)
            result = simplejson.loads(driver.stdout)
            self.assertEqual(result["steps"], {"sized": True, "resized": True, "stdin": True,
                                               "ctrl-c": True}, result["output"])
            self.assertEqual(result["exit"], 3, result["output"])
            self.assertTrue(result["restored"])
        finally:
            agent.cleanup()
            remove_host_containers(runtime, agent.host_id)


class CliClusterTest(ClusterTestCase):
    """The CLI against three real agents sharing one etcd, always through a host that is not
    the leader: placement, named hosts, attach, and job commands that find a job on any host."""

    def test_cluster_commands_through_a_non_leader(self):
        first, second, third = self.start_three()
        via = f"127.0.0.3:{second.port}"  # the second host: every cluster call is forwarded
        wait_until(lambda: len(self.hosts_seen_by(first)) == 3, 10, "three hosts")
        image = os.environ.get("FLYNN_TEST_IMAGE", "flynn-test/busybox:latest")

        leader = cli("leader", addr=via)
        self.assertEqual(leader.stdout.split(), [first.host_id, f"127.0.0.2:{first.port}"])
        self.assertEqual(simplejson.loads(cli("leader", "--json", addr=via).stdout)["id"],
                         first.host_id)
        table = cli("hosts", addr=via).stdout.splitlines()
        self.assertEqual(table[0].split()[:4], ["HOST", "ID", "ADDR", "LEADER"])
        self.assertEqual([row.split()[0] for row in table[1:]],
                         [first.host_id, second.host_id, third.host_id])
        self.assertEqual(table[1].split()[2], "*")  # the leader's row
        hosts = simplejson.loads(cli("hosts", "--json", addr=via).stdout)
        self.assertEqual([h["leader"] for h in hosts], [True, False, False])

        ran = cli("run", "--on", third.host_id, "--id", "cl-on", image, "sh", "-c",
                  "echo on-third; exit 6", addr=via)
        self.assertEqual((ran.returncode, ran.stdout), (6, "on-third\n"), ran.stderr)
        self.assertEqual(third.client.job("cl-on")["exit_status"], 6)
        piped = cli("run", "-i", "--on", first.host_id, image, "cat", addr=via, input="piped\n")
        self.assertEqual((piped.returncode, piped.stdout), (0, "piped\n"), piped.stderr)

        placed = cli("run", "-d", "--id", "cl-bg", image, "sleep", "300", addr=via)
        self.assertEqual((placed.returncode, placed.stdout), (0, "cl-bg\n"), placed.stderr)
        wait_until(lambda: "cl-bg" in cli("ps", "--cluster", "-q", addr=via).stdout.split(), 15,
                   "cl-bg listed by ps --cluster")
        table = cli("ps", "--cluster", "-a", addr=via).stdout.splitlines()
        self.assertEqual(table[0].split()[:3], ["JOB", "ID", "IMAGE"])
        on_third = next(row for row in table if row.startswith("cl-on "))
        self.assertRegex(on_third, r"crashed \(6\) .* ago")
        self.assertIn(third.host_id, on_third)
        self.assertIn("'echo on-third; exit 6'", on_third)  # the command, from the mirror
        listed = simplejson.loads(cli("ps", "--cluster", "--json", addr=via).stdout)
        bg_host = next(j["host_id"] for j in listed if j["id"] == "cl-bg")

        # job commands through a host that may not run the job: the mirror says where it is
        elsewhere = next(a for a in (first, second, third) if a.host_id != bg_host)
        elsewhere_addr = f"{elsewhere.ip}:{elsewhere.port}"
        inspected = simplejson.loads(cli("inspect", "cl-bg", addr=elsewhere_addr).stdout)
        self.assertEqual((inspected["host_id"], inspected["status"]), (bg_host, "running"))
        stopped = cli("stop", "--timeout", "1", "cl-bg", addr=elsewhere_addr)
        self.assertEqual((stopped.returncode, stopped.stdout), (0, "cl-bg\n"), stopped.stderr)
        self.assertEqual(simplejson.loads(cli("inspect", "cl-bg", addr=elsewhere_addr).stdout)[
            "status"], "stopped")
        # logs, wait and rm of a job on the third host, through the first
        first_addr = f"{first.ip}:{first.port}"
        self.assertEqual(cli("logs", "cl-on", addr=first_addr).stdout, "on-third\n")
        self.assertEqual(cli("logs", "-f", "cl-on", addr=first_addr).stdout, "on-third\n")
        self.assertEqual(cli("wait", "cl-on", addr=first_addr).stdout, "6\n")
        removed = cli("rm", "cl-on", addr=first_addr)
        self.assertEqual((removed.returncode, removed.stdout), (0, "cl-on\n"), removed.stderr)
        self.assertEqual(third.client.get("/host/jobs/cl-on").status_code, 404)
        # attach through the first to a job on the third: the WebSocket relayed both ways
        reader = job_body(["sh", "-c", "read x; echo got $x; exit 2"])
        reader["config"]["stdin"] = True  # it starts once attached
        third.client.put_job("cl-att", reader)
        attached = cli("attach", "-i", "cl-att", addr=first_addr, input="relayed\n")
        self.assertEqual((attached.returncode, attached.stdout), (2, "got relayed\n"),
                         attached.stderr)
        missing = cli("inspect", "no-such-job", addr=elsewhere_addr)
        self.assertEqual(missing.returncode, 1)
        self.assertIn("no-such-job", missing.stderr)

        events = cli("events", "--cluster", "--json", addr=via)
        added = {e["host_id"] for e in map(simplejson.loads, events.stdout.splitlines())
                 if (e["type"], e["event"]) == ("host", "add")}
        self.assertLessEqual({second.host_id, third.host_id}, added, events.stderr)


class GoneHostTest(ClusterTestCase):
    """A job whose host is gone (killed, its registration not expired yet: the mirror still
    names it) is a 503 `unavailable` (retry: true) through any other agent, and one line from
    the CLI: not a hang, a traceback or a 500."""

    def test_a_job_on_a_killed_host(self):
        agents = []
        for n in (1, 2):  # a long TTL: the mirror names the killed host for the whole test
            agent = AgentProcess(f"gone{n}-{os.getpid()}", ip=f"127.0.0.{n + 1}",
                                 args=["-heartbeat-ttl", "60"],
                                 env={"FLYNN_ETCD_PREFIX": self.prefix})
            self.agents.append(agent)
            agents.append(agent.start())
        first, second = agents
        second.client.put_job("on-gone", job_body(["sleep", "300"]))
        second.client.wait_status("on-gone", "running")
        wait_until(lambda: self.status_in_mirror(first, "on-gone") == "running", 15,
                   "the job in the mirror")
        second.proc.kill()
        second.proc.wait(10)
        resp = first.client.get("/cluster/jobs/on-gone")
        body = resp.json()
        self.assertEqual((resp.status_code, body["code"], body["retry"]),
                         (503, "unavailable", True), body)
        self.assertIn(f"{second.ip}:{second.port}", body["message"])
        self.assertEqual(first.client.get("/cluster/jobs/on-gone/log").status_code, 503)
        shown = cli("inspect", "on-gone", addr=f"{first.ip}:{first.port}")
        self.assertNotEqual(shown.returncode, 0)
        self.assertEqual(len(shown.stderr.strip().splitlines()), 1, shown.stderr)
        self.assertIn("could not be reached: connection refused", shown.stderr)


class TerminalSafetyTest(unittest.TestCase):
    """Job fields are the jobs' authors' words: shown to a person, a control sequence in one
    must not reach the terminal (move the cursor, retitle the window, hide a line)."""

    def test_tables_and_messages_show_control_characters_escaped(self):
        import contextlib
        import io

        from host.cli import output
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            output.table([["web\x1b[2J", "busybox\x1b]0;owned\x07", "sh -c \x9bx"]],
                         ["ID", "IMAGE", "COMMAND"])
        text = out.getvalue()
        for raw in ("\x1b", "\x07", "\x9b"):
            self.assertNotIn(raw, text)
        self.assertIn("web\\x1b[2J", text)
        self.assertIn("busybox\\x1b]0;owned\\x07", text)
        self.assertEqual(output.printable("plain é ü"), "plain é ü")
