"""The agent's job life on the in-memory runtime: fast checks of every path, served over real HTTP
in this process. The same paths run against the real engine in test_docker_*.py."""
import os
import shutil
import unittest

import gevent
import gevent.event

from host import errors
from host.runtime.labels import LABEL_HOST_ID
from host.runtime.fake import FakeRuntime
from tests.support import InProcessAgent, wait_until


def body(image="busybox", **extra):
    config = {"image": image, "cmd": ["sleep", "100"]}
    config.update(extra.pop("config", {}))
    return dict({"config": config}, **extra)


class FakeAgentTestCase(unittest.TestCase):
    flags = ()

    def setUp(self):
        self.runtime = FakeRuntime()
        self.host = InProcessAgent(self.runtime, flags=self.flags)
        self.client = self.host.client
        self.agent = self.host.agent

    def tearDown(self):
        self.host.close()

    def container_of(self, job_id):
        return self.client.job(job_id)["container_id"]

    def restart(self, flags=()):
        """Stop this agent (jobs keep running in the fake engine) and start a new one on the
        same state dir."""
        self.host.stop()
        self.host = InProcessAgent(self.runtime, flags=flags, state_dir=self.host.state_dir)
        self.client, self.agent = self.host.client, self.host.agent


class JobLifeTest(FakeAgentTestCase):
    def test_start_run_and_exit_states(self):
        for job_id, code, oom, status in (("ok", 0, False, "done"), ("bad", 3, False, "crashed"),
                                          ("oom", 137, True, "crashed")):
            created = self.client.put(f"/host/jobs/{job_id}", json=body())
            self.assertEqual(created.status_code, 202)
            self.assertEqual(created.json()["status"], "starting")
            running = self.client.wait_status(job_id, "running")
            self.assertTrue(running["started_at"])
            self.assertTrue(running["internal_ip"])
            self.runtime.exit(running["container_id"], code, oom=oom)
            ended = self.client.wait_status(job_id, status)
            self.assertEqual(ended["exit_status"], code)
            self.assertEqual(ended["error"], "oom" if oom else None)
            self.assertGreaterEqual(ended["ended_at"], ended["started_at"])
        events = self.client.get("/host/events", params={"since": 0, "job_id": "bad"}).json()
        self.assertEqual([e["event"] for e in events["events"]], ["create", "start", "stop"])

    def test_events_carry_the_job_summary_not_its_spec(self):
        env = {f"VAR{n}": "x" * 200 for n in range(200)}  # a 40 KB spec, secrets included
        self.client.put_job("big", body(config={"env": env}))
        self.client.wait_status("big", "running")
        answer = self.client.get("/host/events", params={"since": 0, "job_id": "big"})
        self.assertLess(len(answer.content), 2000)
        events = answer.json()["events"]
        self.assertEqual([e["event"] for e in events], ["create", "start"])
        self.assertEqual(set(events[1]["job"]), {
            "id", "status", "image", "spec_digest", "ports", "resources", "exit_status", "error",
            "created_at", "started_at", "ended_at", "container_id", "internal_ip", "command"})
        self.assertEqual(events[1]["job"]["status"], "running")
        self.assertEqual(self.client.job("big")["job"]["config"]["env"], env)  # one GET away

    def test_a_long_error_is_recorded_bounded(self):
        def create(spec):  # the engine quotes a whole spec back
            raise errors.RuntimeFailure("bad spec: " + "x" * 50000)
        self.runtime.create = create
        self.client.put_job("m", body())
        error = self.client.wait_status("m", "failed")["error"]
        self.assertTrue(error.startswith("bad spec: xxx"), error[:40])
        self.assertLessEqual(len(error), 2000)

    def test_missing_image_fails_naming_it(self):
        self.client.put_job("m", body(image="nope:1"))
        job = self.client.wait_status("m", "failed")
        self.assertIn("nope:1", job["error"])
        self.assertIsNone(job["container_id"])

    def test_image_pulled_when_missing(self):
        self.runtime.pullable.add("remote:1")
        self.client.put_job("pulled", body(image="remote:1"))
        self.assertEqual(self.client.wait_status("pulled", "running")["job"]["config"]["image"],
                         "remote:1")
        self.assertIn("remote:1", self.runtime.images)

    def test_idempotent_put(self):
        first = self.client.put("/host/jobs/a", json=body())
        again = self.client.put("/host/jobs/a", json=body())
        self.assertEqual((first.status_code, again.status_code), (202, 200))
        self.assertEqual(again.json()["job"], first.json()["job"])
        other = self.client.put("/host/jobs/a", json=body(config={"cmd": ["true"]}))
        self.assertEqual(other.status_code, 409)
        self.assertEqual(other.json()["code"], "conflict")
        self.assertEqual(len(self.runtime.containers), 1)

    def test_environment_given_to_the_job(self):
        self.client.put_job("e", body(config={"ports": [{"port": 0}],
                                              "env": {"FLYNN_JOB_ID": "mine"}}))
        job = self.client.wait_status("e", "running")
        env = self.runtime.containers[job["container_id"]]["spec"].env
        port = job["ports"][0]["port"]
        self.assertEqual(env["EXTERNAL_IP"], "127.0.0.1")
        self.assertEqual(env["FLYNN_HOST_ID"], "inproc")
        self.assertEqual(env["FLYNN_JOB_ID"], "mine")  # the spec wins
        self.assertEqual((env["PORT"], env["PORT_0"]), (str(port), str(port)))

    def test_resources_must_fit(self):
        self.client.put_job("big", body(resources={"memory_mb": 800, "cpu_shares": 100}))
        resp = self.client.put("/host/jobs/big2", json=body(resources={"memory_mb": 300}))
        self.assertEqual(resp.status_code, 409)
        self.assertIn("memory: needs 300 MiB, 200 MiB free", resp.json()["message"])
        resp = self.client.put("/host/jobs/cpu", json=body(resources={"cpu_shares": 1000}))
        self.assertIn("cpu_shares: needs 1000, 924 free", resp.json()["message"])
        self.assertIsNone(self.agent.table.find("big2"))
        status = self.client.get("/host/status").json()
        self.assertEqual(status["allocated"], {"memory_mb": 800, "cpu_shares": 100})

    def test_ports_are_held_and_released(self):
        job = self.client.wait_status(self.client.put_job("p", body(
            config={"ports": [{"port": 0}, {"port": 0, "proto": "udp"}]}))["job"]["id"], "running")
        fixed = job["ports"][0]["port"]
        resp = self.client.put("/host/jobs/q", json=body(config={"ports": [{"port": fixed}]}))
        self.assertEqual(resp.status_code, 409)
        self.assertIn(f"port {fixed}/tcp is taken", resp.json()["message"])
        self.runtime.exit(job["container_id"], 0)
        self.client.wait_status("p", "done")
        self.client.put_job("q", body(config={"ports": [{"port": fixed}]}))

    def test_stop_and_signal(self):
        job = self.client.wait_status(self.client.put_job("s", body())["job"]["id"], "running")
        resp = self.client.post("/host/jobs/s/signal", json={"signal": "HUP"})
        self.assertEqual(resp.status_code, 202)
        self.assertEqual(self.runtime.signals, [(job["container_id"], "SIGHUP")])
        self.assertEqual(self.client.post("/host/jobs/s/signal", json={"signal": 10}).status_code,
                         202)
        self.assertEqual(self.client.delete("/host/jobs/s").status_code, 202)
        ended = self.client.wait_status("s", "stopped")
        self.assertEqual(ended["exit_status"], 143)
        self.assertEqual(self.client.delete("/host/jobs/s").status_code, 200)
        resp = self.client.post("/host/jobs/s/signal", json={"signal": "HUP"})
        self.assertEqual(resp.status_code, 409)

    def test_stop_before_start(self):
        self.runtime.pullable.add("slow")
        gate = gevent.event.Event()
        original = self.runtime.pull
        self.runtime.pull = lambda image: (gate.wait(5), original(image))
        self.client.put_job("early", body(image="slow"))
        self.assertEqual(self.client.delete("/host/jobs/early").status_code, 202)
        gate.set()
        job = self.client.wait_status("early", "stopped")
        self.assertEqual(job["error"], "stopped before it started")
        self.assertEqual(self.runtime.containers, {})

    def test_remove_an_ended_job_refuse_an_active_one_force_kills_first(self):
        self.client.wait_status(self.client.put_job("r", body())["job"]["id"], "running")
        refused = self.client.delete("/host/jobs/r?remove=true")
        self.assertEqual((refused.status_code, refused.json()["code"]), (409, "conflict"))
        self.assertIn("stop it first", refused.json()["message"])
        self.assertEqual(self.client.job("r")["status"], "running")  # nothing lost
        container = self.container_of("r")
        forced = self.client.delete("/host/jobs/r?remove=true&force=true")
        self.assertEqual((forced.status_code, forced.json()["removed"]), (202, False))
        wait_until(lambda: self.client.get("/host/jobs/r").status_code == 404, 10,
                   "the forced job removed once it ended")
        self.assertNotIn(container, self.runtime.containers)
        stop_events = [e for e in self.client.get("/host/events?since=0").json()["events"]
                       if e["job_id"] == "r" and e["event"] == "stop"]
        self.assertEqual(stop_events[0]["job"]["status"], "stopped")  # its end was published
        self.client.put_job("e", body())
        self.client.wait_status("e", "running")
        self.runtime.exit(self.container_of("e"), 0)
        self.client.wait_status("e", "done")
        removed = self.client.delete("/host/jobs/e?remove=true")
        self.assertEqual((removed.status_code, removed.json()["removed"]), (200, True))
        self.assertEqual(self.client.get("/host/jobs/e").status_code, 404)
        self.assertEqual(self.client.delete("/host/jobs/e?remove=true").status_code, 404)
        bad = self.client.delete("/host/jobs/e?remove=perhaps")
        self.assertEqual(bad.status_code, 400)

    def test_wait_answers_once_the_job_ends(self):
        self.client.wait_status(self.client.put_job("w", body())["job"]["id"], "running")
        early = self.client.get("/host/jobs/w/wait?timeout=0.2").json()
        self.assertEqual(early["status"], "running")  # the timeout ran out first
        waiter = gevent.spawn(self.client.get, "/host/jobs/w/wait?timeout=30")
        gevent.sleep(0.2)
        self.assertFalse(waiter.ready())
        self.runtime.exit(self.container_of("w"), 4)
        answer = waiter.get(timeout=10).json()
        self.assertEqual((answer["status"], answer["exit_status"]), ("crashed", 4))
        self.assertEqual(self.client.get("/host/jobs/nope/wait").status_code, 404)
        self.assertEqual(self.client.get("/host/jobs/w/wait?timeout=-1").status_code, 400)

    def test_retention_removes_oldest_ended(self):
        self.agent.supervisor.retain_ended = 2
        for n in range(4):
            job = self.client.wait_status(self.client.put_job(f"r{n}", body())["job"]["id"],
                                          "running")
            self.runtime.exit(job["container_id"], 0)
            self.client.wait_status(f"r{n}", "done")
        self.agent.tasks.join(timeout=5)
        self.assertEqual([j["job"]["id"] for j in self.client.get("/host/jobs").json()],
                         ["r3", "r2"])
        self.assertEqual(len(self.runtime.containers), 2)
        self.assertEqual(self.client.get("/host/jobs/r0").status_code, 404)


class EngineOutageTest(FakeAgentTestCase):
    def test_unavailable_then_recovers(self):
        job = self.client.wait_status(self.client.put_job("a", body())["job"]["id"], "running")
        with self.assertLogs("host.supervisor", "WARNING") as logged:
            self.runtime.set_available(False)
            resp = self.client.put("/host/jobs/b", json=body())
        self.assertIn("Docker event stream: fake event stream broke", logged.output[0])
        self.assertEqual(resp.status_code, 503)
        self.assertEqual(resp.json()["code"], "unavailable")
        self.assertIs(resp.json()["retry"], True)
        self.assertIsNone(self.agent.table.find("b"))  # nothing half-recorded
        self.assertEqual(self.client.get("/host/jobs").status_code, 200)
        self.assertIn("unavailable", self.client.get("/host/status").json()["docker"])
        # the job exits while the agent cannot see the engine
        self.runtime.available = True
        self.runtime.exit(job["container_id"], 7)
        self.runtime.available = False
        gevent.sleep(0.3)
        self.assertEqual(self.client.job("a")["status"], "running")
        with self.assertLogs("host.supervisor", "INFO") as logged:
            self.runtime.set_available(True)
            self.assertEqual(self.client.wait_status("a", "crashed")["exit_status"], 7)
        self.assertTrue(any("Docker event stream: recovered after" in line
                            for line in logged.output), logged.output)
        self.assertEqual(self.client.put("/host/jobs/b", json=body()).status_code, 202)
        self.client.wait_status("b", "running")


class RestartTest(FakeAgentTestCase):
    def test_restart_readopts_and_records_exits_while_down(self):
        keep = self.client.wait_status(self.client.put_job(
            "keep", body(config={"ports": [{"port": 0}]}))["job"]["id"], "running")
        gone = self.client.wait_status(self.client.put_job("gone", body())["job"]["id"], "running")
        cursor = self.client.get("/host/events").json()["cursor"]
        self.host.stop()
        self.runtime.exit(gone["container_id"], 0)
        started_before = self.runtime.containers[keep["container_id"]]["state"].started_at
        self.restart()
        self.assertEqual(self.client.wait_status("gone", "done")["exit_status"], 0)
        again = self.client.job("keep")
        self.assertEqual(again["status"], "running")
        self.assertEqual(again["container_id"], keep["container_id"])
        self.assertEqual(self.runtime.containers[keep["container_id"]]["state"].started_at,
                         started_before)
        # a client that follows with its old cursor sees the exit, and nothing is missing
        events = self.client.get("/host/events", params={"since": cursor}).json()["events"]
        self.assertEqual([(e["cursor"], e["job_id"], e["event"]) for e in events],
                         [(cursor + 1, "gone", "stop")])
        # the port of the re-adopted running job is still held; the ended job's is free
        self.assertEqual(len(again["ports"]), 1)
        port_job = self.client.put("/host/jobs/x", json=body(
            config={"ports": [{"port": p["port"]} for p in again["ports"]]}))
        self.assertEqual((port_job.status_code, port_job.json()["code"]), (409, "conflict"))
        self.assertIn(f"port {again['ports'][0]['port']}/tcp", port_job.json()["message"])

    def test_lost_table_is_rebuilt_from_labels(self):
        job = self.client.wait_status(self.client.put_job(
            "lost", body(config={"ports": [{"port": 0}]}))["job"]["id"], "running")
        self.host.stop()
        old_dir = self.host.state_dir
        self.host = InProcessAgent(self.runtime)  # a new, empty state dir
        self.addCleanup(shutil.rmtree, old_dir, True)
        self.client, self.agent = self.host.client, self.host.agent
        adopted = self.client.wait_status("lost", "running")
        self.assertEqual(adopted["container_id"], job["container_id"])
        self.assertEqual(adopted["ports"], job["ports"])
        self.assertEqual(adopted["job"], job["job"])

    def test_force_kills_what_a_previous_instance_left(self):
        job = self.client.wait_status(self.client.put_job("old", body())["job"]["id"], "running")
        self.host.stop()
        self.restart(flags=("-force",))
        ended = self.client.job("old")
        self.assertEqual(ended["status"], "crashed")
        self.assertIn("-force", ended["error"])
        self.assertNotIn(job["container_id"], self.runtime.containers)
        self.assertEqual(self.runtime.list({LABEL_HOST_ID: "inproc"}), [])


class SlowPingRuntime(FakeRuntime):
    """An engine whose ping takes a moment, as a real one's does: concurrent requests interleave
    right there."""
    pings = 0

    def ping(self):
        self.pings += 1
        gevent.sleep(0.02)
        super().ping()


class ConcurrentRequestTest(FakeAgentTestCase):
    flags = ("-ports", "30000-30001")

    def setUp(self):
        self.runtime = SlowPingRuntime()
        self.host = InProcessAgent(self.runtime, flags=self.flags)
        self.client, self.agent = self.host.client, self.host.agent

    def put_all(self, count, job_id, job):
        puts = [gevent.spawn(self.client.put, f"/host/jobs/{job_id(n)}", json=job)
                for n in range(count)]
        return [p.get(timeout=30) for p in puts]

    def test_a_burst_shares_a_ping_and_a_gone_engine_is_a_503_at_once(self):
        before = self.runtime.pings
        answers = self.put_all(8, lambda n: f"burst{n}", body())
        self.assertEqual([a.status_code for a in answers], [202] * 8)
        self.assertLessEqual(self.runtime.pings - before, 2)  # a wave, not one a job
        # the engine goes away: the very next job is refused, however recent the last ping
        self.runtime.available = False
        refused = self.client.put("/host/jobs/late", json=body())
        self.assertEqual((refused.status_code, refused.json()["retry"]), (503, True))
        self.assertIsNone(self.agent.table.find("late"))  # nothing recorded
        # and every request waiting on that failed ping is refused with it
        self.runtime.available = False
        refused = self.put_all(4, lambda n: f"late{n}", body())
        self.assertEqual([a.status_code for a in refused], [503] * 4)

    def test_check_and_reservation_are_one_step(self):
        answers = self.put_all(10, lambda n: f"big{n}", body(resources={"memory_mb": 300}))
        self.assertEqual(sorted(a.status_code for a in answers), [202] * 3 + [409] * 7)
        self.assertEqual(self.agent.table.allocated().memory_mb, 900)

    def test_the_same_job_at_once_is_one_job_and_leaks_no_port(self):
        answers = self.put_all(6, lambda n: "twin", body(config={"ports": [{"port": 0}]}))
        self.assertEqual(sorted(a.status_code for a in answers), [200] * 5 + [202])
        self.assertEqual(self.agent.ports.taken(), {(answers[0].json()["ports"][0]["port"],
                                                     "tcp")})


class DamagedStateDirTest(FakeAgentTestCase):
    def test_a_table_that_is_not_a_database_is_rebuilt_from_labels(self):
        job = self.client.wait_status(self.client.put_job(
            "kept", body(config={"ports": [{"port": 0}]}))["job"]["id"], "running")
        cursor = self.client.get("/host/events").json()["cursor"]
        self.host.stop()
        with open(os.path.join(self.host.state_dir, "jobs.sqlite3"), "wb") as f:
            f.write(b"\0garbage\0" * 1000)
        with self.assertLogs("host.statedir", "WARNING") as logged:
            self.restart()
        self.assertTrue(any("moved aside" in line for line in logged.output), logged.output)
        adopted = self.client.wait_status("kept", "running")
        self.assertEqual((adopted["container_id"], adopted["ports"], adopted["job"]),
                         (job["container_id"], job["ports"], job["job"]))
        old = self.client.get("/host/events", params={"since": cursor})
        self.assertEqual((old.status_code, old.json()["code"]), (410, "cursor_expired"))
        # the port is held again: a job asking for it is refused
        clash = self.client.put("/host/jobs/clash", json=body(
            config={"ports": [{"port": job["ports"][0]["port"]}]}))
        self.assertEqual(clash.status_code, 409, clash.text)


class RegistryAllowListTest(FakeAgentTestCase):
    flags = ("-registries", "registry.example:5000,docker.io")

    def test_pulls_only_from_allowed_registries(self):
        for image in ("127.0.0.1:5000/x:1", "internal.corp/app:2", "localhost/y"):
            self.runtime.pullable.add(image)
        for n, image in enumerate(("127.0.0.1:5000/x:1", "internal.corp/app:2", "localhost/y")):
            self.client.put_job(f"no{n}", body(image=image))
            job = self.client.wait_status(f"no{n}", "failed")
            self.assertIn("is not one this host pulls from", job["error"])
            self.assertNotIn(image, self.runtime.images)  # never pulled
        self.runtime.pullable |= {"registry.example:5000/app:1", "library-app:1"}
        for n, image in enumerate(("registry.example:5000/app:1", "library-app:1")):
            self.client.put_job(f"ok{n}", body(image=image))
            self.client.wait_status(f"ok{n}", "running")
        # an image on the engine already is used whatever its name
        self.runtime.images.add("internal.corp/present:1")
        self.client.put_job("here", body(image="internal.corp/present:1"))
        self.client.wait_status("here", "running")

    def test_the_registry_of_an_image(self):
        from host.supervisor import image_registry
        self.assertEqual([image_registry(i) for i in (
            "busybox", "flynn/etcd:3.5.1", "Registry.Example:5000/a/b", "localhost/x",
            "10.0.0.1/x", "a.b/c@sha256:00")],
            ["docker.io", "docker.io", "registry.example:5000", "localhost", "10.0.0.1", "a.b"])


class StubbornRuntime(FakeRuntime):
    """An engine whose stops hang (a job that ignores SIGTERM, stopped with a long timeout) and
    whose pulls wait for the test, counting how many are made."""

    def __init__(self):
        super().__init__()
        self.stops_in_flight = 0
        self.pulls = []
        self.release_pulls = gevent.event.Event()

    def stop(self, container_id, timeout_s):
        self.stops_in_flight += 1
        try:
            gevent.sleep(timeout_s)
        finally:
            self.stops_in_flight -= 1

    def pull(self, image):
        self.pulls.append(image)
        self.release_pulls.wait()
        super().pull(image)


class SlowTasksTest(FakeAgentTestCase):
    """Stops and pulls wait; they must hold up neither starts, nor recording exits, nor the
    API (a shared pool that blocked when full froze all three)."""
    flags = ("-task-concurrency", "2")

    def setUp(self):
        self.runtime = StubbornRuntime()
        self.host = InProcessAgent(self.runtime, flags=self.flags)
        self.client, self.agent = self.host.client, self.host.agent

    def test_hanging_stops_block_nothing(self):
        for n in range(3):
            self.client.put_job(f"j{n}", body())
            self.client.wait_status(f"j{n}", "running")
        for _ in range(32):  # the same caller, again and again, on two jobs
            for job_id in ("j0", "j1"):
                answer = self.client.delete(f"/host/jobs/{job_id}", params={"timeout": 3600})
                self.assertEqual(answer.status_code, 202)
        wait_until(lambda: self.runtime.stops_in_flight == 2, 5, "both stops under way")
        gevent.sleep(0.05)
        self.assertEqual(self.runtime.stops_in_flight, 2)  # one a job, however often asked
        # the API answers, a new job starts, and an exit is recorded, with both stops hanging
        self.client.put_job("after", body())
        self.client.wait_status("after", "running", timeout=5)
        self.runtime.exit(self.container_of("j2"), 7)
        self.assertEqual(self.client.wait_status("j2", "crashed", timeout=5)["exit_status"], 7)
        # a shorter timeout than the pending stop's is a new stop: it kills sooner
        self.client.delete("/host/jobs/j0", params={"timeout": 0})
        wait_until(lambda: self.runtime.stops_in_flight == 2, 5, "the short stop done")

    def test_a_pull_takes_no_start_slot_and_one_image_is_pulled_once(self):
        self.runtime.pullable.add("remote:1")
        for n in range(3):  # more jobs waiting on the pull than there are start slots
            self.client.put_job(f"pulling{n}", body(image="remote:1"))
        wait_until(lambda: self.runtime.pulls, 5, "the pull under way")
        self.client.put_job("local", body())
        self.client.wait_status("local", "running", timeout=5)
        self.runtime.release_pulls.set()
        for n in range(3):
            self.client.wait_status(f"pulling{n}", "running", timeout=5)
        self.assertEqual(self.runtime.pulls, ["remote:1"])
