"""Races and clashes on one host or one engine, against the real engine (and etcd for host ids):
concurrent requests never over-commit a host, hosts sharing an engine never touch each other's
containers, one agent per state dir, one live agent per host id."""
import os
import shutil
import time
import unittest

import gevent

from host.discovery.etcd import EtcdDiscovery
from tests.support import AgentProcess, job_body, remove_host_containers, require_docker
from tests.test_cluster import require_etcd


class RaceTestCase(unittest.TestCase):
    def setUp(self):
        self.runtime = require_docker()
        self.agents = []

    def tearDown(self):
        for agent in self.agents:
            agent.cleanup()
            remove_host_containers(self.runtime, agent.host_id)

    def agent(self, host_id, **kwargs) -> AgentProcess:
        agent = AgentProcess(host_id, **kwargs)
        self.agents.append(agent)
        remove_host_containers(self.runtime, host_id)
        return agent


class ConcurrentRequestsTest(RaceTestCase):
    def test_parallel_jobs_never_over_commit_the_host(self):
        agent = self.agent(f"tover{os.getpid()}", args=["-memory-mb", "100"]).start()
        body = dict(job_body(["sleep", "300"]), resources={"memory_mb": 30})
        puts = [gevent.spawn(agent.client.put, f"/host/jobs/big{n}", json=body)
                for n in range(10)]
        statuses = sorted(p.get(timeout=60).status_code for p in puts)
        self.assertEqual(statuses, [202] * 3 + [409] * 7)
        status = agent.client.get("/host/status").json()
        self.assertEqual(status["allocated"]["memory_mb"], 90)
        refused = next(p.value for p in puts if p.value.status_code == 409).json()
        self.assertIn("does not fit on this host", refused["message"])

    def test_the_same_job_sent_concurrently_is_accepted_once(self):
        # below the kernel's ephemeral ports (32768 and up): a client connection of the suite's
        # could hold one of them for a moment, and the range's other port must be free
        low = 25000 + os.getpid() % 1000 * 2
        agent = self.agent(f"tsame{os.getpid()}", args=["-ports", f"{low}-{low + 1}"]).start()
        body = job_body(["sleep", "300"], ports=[{"port": 0}])
        puts = [gevent.spawn(agent.client.put, "/host/jobs/twin", json=body) for _ in range(8)]
        answers = [p.get(timeout=60) for p in puts]
        self.assertEqual(sorted(a.status_code for a in answers), [200] * 7 + [202])
        self.assertEqual(len({a.json()["ports"][0]["port"] for a in answers}), 1)
        agent.client.wait_status("twin", "running")
        self.assertEqual(len(self.runtime.list({"flynn-host.job-id": "twin"})), 1)
        # no reservation leaked: the range's other port is still free for another job
        other = agent.client.put("/host/jobs/other", json=body)
        self.assertEqual(other.status_code, 202, other.text)


class SharedEngineTest(RaceTestCase):
    def test_hosts_whose_ids_run_together_keep_apart(self):
        # host "a" with job "b-c" and host "a-b" with job "c" were both container flynn-a-b-c
        short = self.agent(f"tnm{os.getpid()}").start()
        long = self.agent(f"tnm{os.getpid()}-x").start()
        short.client.put_job("x-y", job_body(["sleep", "300"]))
        long.client.put_job("y", job_body(["sleep", "300"]))
        mine = short.client.wait_status("x-y", "running")
        theirs = long.client.wait_status("y", "running")
        self.assertNotEqual(mine["container_id"], theirs["container_id"])
        for agent, container_id in ((short, mine["container_id"]),
                                    (long, theirs["container_id"])):
            labels = self.runtime.inspect(container_id).labels
            self.assertEqual(labels["flynn-host.id"], agent.host_id)
        # and each stops only its own
        short.client.delete("/host/jobs/x-y?timeout=0")
        short.client.wait_status("x-y", "stopped")
        self.assertTrue(self.runtime.inspect(theirs["container_id"]).running)


class StateDirLockTest(RaceTestCase):
    def test_a_second_agent_on_the_same_state_dir_is_refused(self):
        first = self.agent(f"tlock{os.getpid()}").start()
        second = AgentProcess(f"tlock{os.getpid()}", state_dir=first.state_dir)
        second.start(wait=False)
        self.assertEqual(second.proc.wait(20), 1)
        self.assertIn(f"state dir {first.state_dir} is in use by another flynn-host (pid "
                      f"{first.proc.pid})", second.log())
        self.assertNotIn("Traceback", second.log())
        self.assertEqual(first.client.get("/host/status").status_code, 200)


class HostIdClashTest(RaceTestCase):
    def setUp(self):
        super().setUp()
        self.peers = require_etcd()
        self.prefix = f"/flynn-test/clash-{os.getpid()}-{self._testMethodName}"
        self.etcd = EtcdDiscovery(self.peers, self.prefix)
        self.host_id = f"tclash{os.getpid()}"

    def start(self, state_dir=None, wait=True) -> AgentProcess:
        agent = AgentProcess(self.host_id, state_dir=state_dir, args=["-heartbeat-ttl", "3"],
                             env={"FLYNN_ETCD_PREFIX": self.prefix})
        self.agents.append(agent)
        return agent.start(wait=wait)

    def registration(self):
        return self.etcd.registration(self.host_id)

    def test_a_second_machine_with_the_same_host_id_refuses_to_start(self):
        first = self.start()
        before = self.registration()
        second = self.start(wait=False)  # its own state dir: another machine
        self.assertEqual(second.proc.wait(30), 1)
        self.assertIn(f"host id '{self.host_id}' is in use by another live agent", second.log())
        self.assertNotIn("Traceback", second.log())
        after = self.registration()
        self.assertEqual(after.created_index, before.created_index)
        self.assertEqual(first.client.get("/host/status").json()["etcd"], "ok")
        self.assertIn('"state_id"', after.value)

    def test_a_restart_takes_over_its_own_registration_at_once(self):
        first = self.start()
        before = self.registration()
        first.kill()
        started = time.monotonic()
        again = self.start(state_dir=first.state_dir)
        self.assertLess(time.monotonic() - started, 3)  # no wait for the old key to expire
        self.assertEqual(self.registration().created_index, before.created_index)  # seniority
        self.assertIn("taken over", again.log())

    def test_a_lost_state_dir_waits_for_the_old_key_to_expire(self):
        first = self.start()
        before = self.registration()
        first.kill()
        shutil.rmtree(first.state_dir)  # the machine lost its state dir
        again = self.start()
        self.assertNotEqual(self.registration().created_index, before.created_index)
        self.assertIn("registered from another state dir", again.log())
        self.assertEqual(again.client.get("/host/status").json()["etcd"], "ok")
