"""The cluster on real etcd and real agent processes: registration, leader = oldest host, the
mirror, forwarding, and what happens when hosts (the leader among them) stop or die."""
import os
import signal
import subprocess
import time
import unittest

import gevent
import requests
import simplejson

from host.client import FORWARDED_BY
from host.cluster.view import ClusterView
from host.discovery.etcd import EtcdDiscovery, EtcdUnavailable, Records
from host.jobspec import parse_job
from host.runtime.docker import DockerRuntime
from tests.support import (AgentProcess, free_port, job_body, remove_host_containers,
                           require_docker, wait_until)

TTL = 3


def require_etcd() -> str:
    peers = os.environ.get("FLYNN_HOST_ETCD_ENDPOINTS")
    if not peers:
        raise AssertionError("FLYNN_HOST_ETCD_ENDPOINTS must name the test etcd; run the suite "
                             "with bin/test, which starts one")
    EtcdDiscovery(peers).ping()
    return peers


class ClusterTestCase(unittest.TestCase):
    """Agents sharing one etcd prefix: a cluster of their own on 127.0.0.2, .3, .4."""

    def setUp(self):
        self.peers = require_etcd()
        self.runtime = require_docker()
        self.prefix = f"/flynn-test/cluster-{os.getpid()}-{self._testMethodName}"
        self.agents = []

    def tearDown(self):
        for agent in self.agents:
            agent.cleanup()
            remove_host_containers(self.runtime, agent.host_id)

    def start_agent(self, n: int) -> AgentProcess:
        agent = AgentProcess(f"c{n}-{os.getpid()}", ip=f"127.0.0.{n + 1}",
                             args=["-heartbeat-ttl", str(TTL)],
                             env={"FLYNN_ETCD_PREFIX": self.prefix})
        self.agents.append(agent)
        agent.start()
        wait_until(lambda: self.leader_seen_by(agent) is not None, 10, f"{agent.host_id} joined")
        return agent

    def start_three(self):
        return [self.start_agent(n) for n in (1, 2, 3)]

    @staticmethod
    def leader_seen_by(agent):
        resp = agent.client.get("/cluster/leader")
        return resp.json()["id"] if resp.status_code == 200 else None

    def hosts_seen_by(self, agent) -> set:
        resp = agent.client.get("/cluster/hosts")
        return {h["id"] for h in resp.json()} if resp.status_code == 200 else set()

    @staticmethod
    def status_in_mirror(agent, job_id: str):
        """The job's status in the leader's mirror, through `agent` (None if not there)."""
        resp = agent.client.get("/cluster/hosts")
        jobs = [j for h in resp.json() for j in h["jobs"]] if resp.status_code == 200 else []
        return next((j["status"] for j in jobs if j["id"] == job_id), None)


class ClusterTest(ClusterTestCase):
    def test_leader_is_the_first_started_and_everyone_agrees(self):
        first, second, third = self.start_three()
        for agent in (first, second, third):
            wait_until(lambda a=agent: self.hosts_seen_by(a) == {h.host_id for h in self.agents},
                       10, f"{agent.host_id} seeing all three hosts")
            self.assertEqual(self.leader_seen_by(agent), first.host_id)
            status = agent.client.get("/host/status").json()
            self.assertEqual(status["leader"], {"id": first.host_id, "addr": first.client.url[7:]})
            self.assertEqual(status["is_leader"], agent is first)
            self.assertEqual(status["etcd"], "ok")

    def test_non_leaders_forward_or_redirect(self):
        first, second, _ = self.start_three()
        wait_until(lambda: len(self.hosts_seen_by(first)) == 3, 10, "three hosts")
        direct = first.client.get("/cluster/hosts").json()
        forwarded = second.client.get("/cluster/hosts").json()
        self.assertEqual([h["id"] for h in forwarded], [h["id"] for h in direct])
        self.assertEqual([h["leader"] for h in forwarded], [True, False, False])
        self.assertEqual(forwarded[0]["addr"], f"127.0.0.2:{first.port}")
        redirect = second.client.get("/cluster/hosts/x?redirect=true", allow_redirects=False)
        self.assertEqual(redirect.status_code, 307)
        self.assertEqual(redirect.headers["Location"],
                         f"http://127.0.0.2:{first.port}/cluster/hosts/x?redirect=true")
        missing = second.client.get("/cluster/hosts/nope")  # the leader's 404, forwarded
        self.assertEqual((missing.status_code, missing.json()["code"]), (404, "not_found"))
        bad = second.client.get("/cluster/events?since=abc")
        self.assertEqual((bad.status_code, bad.json()["code"]), (400, "validation_error"))
        wrong = second.client.post("/cluster/hosts")
        self.assertEqual((wrong.status_code, wrong.json()["code"]), (405, "method_not_allowed"))
        # a request another agent forwarded is served by the leader, never forwarded again by a
        # non-leader (two views that disagree for a moment would pass it back and forth)
        hop = {FORWARDED_BY: "somebody"}
        self.assertEqual(first.client.get("/cluster/hosts", headers=hop).json(), direct)
        again = second.client.get("/cluster/hosts", headers=hop)
        self.assertEqual((again.status_code, again.json()["code"], again.json()["retry"],
                          again.json()["leader"]),
                         (503, "not_leader", True, f"127.0.0.2:{first.port}"), again.text)
        self.assertIn("forwarded here by somebody", again.json()["message"])
        # a non-leader reads no more of a body than the limit (1 MiB) before it forwards
        big = b'{"jobs": [' + b" " * (2 << 20) + b"]}"
        for data in (big, iter([big[:1 << 20], big[1 << 20:]])):  # with a length, and chunked
            over = second.client.post("/cluster/jobs", data=data,
                                      headers={"Content-Type": "application/json"})
            self.assertEqual((over.status_code, over.json()["code"]), (413, "too_large"))

    def test_mirror_follows_a_hosts_jobs(self):
        first, second = self.start_agent(1), self.start_agent(2)
        second.client.put_job("m1", job_body(["true"]))
        second.client.wait_status("m1", "done")

        def mirrored():
            host = first.client.get(f"/cluster/hosts/{second.host_id}").json()
            return {j["id"]: j["status"] for j in host.get("jobs", [])}
        wait_until(lambda: mirrored() == {"m1": "done"}, 10, "the leader mirroring m1 as done")
        own = {j["job"]["id"]: j["status"] for j in second.client.get("/host/jobs").json()}
        self.assertEqual(mirrored(), own)

    def test_leader_killed_next_oldest_takes_over_after_the_ttl(self):
        first, second, third = self.start_three()
        wait_until(lambda: len(self.hosts_seen_by(first)) == 3, 10, "three hosts")
        first.kill()
        killed = time.monotonic()
        wait_until(lambda: self.leader_seen_by(third) == second.host_id, TTL + 5,
                   "the next-oldest taking over")
        self.assertLessEqual(time.monotonic() - killed, TTL + 2)
        self.assertEqual(self.hosts_seen_by(third), {second.host_id, third.host_id})

    def test_leader_stopped_cleanly_hands_over_at_once(self):
        first, second, third = self.start_three()
        self.assertEqual(first.stop(), 0)
        stopped = time.monotonic()
        wait_until(lambda: self.leader_seen_by(third) == second.host_id, TTL,
                   "the next-oldest taking over")
        self.assertLess(time.monotonic() - stopped, 1.5)  # the key was deleted, not expired

    def test_cluster_events_follow_jobs_and_hosts_across_a_leader_change(self):
        first, second, third = self.start_three()
        wait_until(lambda: len(self.hosts_seen_by(first)) == 3, 10, "three hosts")
        cursor = second.client.get("/cluster/events").json()["cursor"]  # forwarded
        third.client.put_job("ev1", job_body(["sleep", "60"]))
        third.client.wait_status("ev1", "running")
        # published, not only running: the kill must not beat the heartbeat that tells it
        wait_until(lambda: self.status_in_mirror(first, "ev1") == "running", 10,
                   "ev1 running in the leader's mirror")
        third.kill()  # its running job is lost with it

        def events_since(agent, since):
            seen, cursor_now = [], since
            deadline = time.monotonic() + TTL + 10
            while time.monotonic() < deadline:
                page = agent.client.get("/cluster/events", params={"since": cursor_now,
                                                                   "wait": 2}).json()
                seen += page["events"]
                cursor_now = page["cursor"]
                if any(e["type"] == "host" and e["event"] == "remove" for e in seen):
                    return seen, cursor_now
            raise AssertionError(f"no host remove event: {seen}")
        seen, cursor = events_since(second, cursor)
        job_events = [(e["event"], e["job"]["status"]) for e in seen if e["job_id"] == "ev1"]
        self.assertEqual(job_events[:2], [("create", "starting"), ("start", "running")])
        self.assertEqual(job_events[-1], ("error", "lost"))
        self.assertEqual([e["host_id"] for e in seen if e["type"] == "host"], [third.host_id])
        cursors = [e["cursor"] for e in seen]
        self.assertEqual(cursors, sorted(cursors))
        # the leader stops; the same cursor goes on at the new leader
        self.assertEqual(first.stop(), 0)
        wait_until(lambda: self.leader_seen_by(second) == second.host_id, TTL, "takeover")
        page = second.client.get("/cluster/events", params={"since": cursor, "wait": 5}).json()
        self.assertEqual([(e["type"], e["event"], e["host_id"]) for e in page["events"]],
                         [("host", "remove", first.host_id)])

    def test_unreachable_leader_is_503_not_leader_and_streams_go_to_the_leader(self):
        first, second = self.start_agent(1), self.start_agent(2)
        stream = second.client.get("/cluster/events?stream=true", allow_redirects=False)
        self.assertEqual(stream.status_code, 307)
        self.assertTrue(stream.headers["Location"].startswith(f"http://127.0.0.2:{first.port}/"))
        with first.client.get("/cluster/events", params={"stream": "true"}, stream=True) as live:
            self.assertEqual(live.headers["Content-Type"], "application/x-ndjson")
        first.kill()  # its key lives on for most of a TTL: the leader is known but unreachable
        resp = second.client.get("/cluster/hosts")
        self.assertEqual(self.leader_seen_by(second), first.host_id)  # still within the TTL
        self.assertEqual(resp.status_code, 503, resp.text)
        body = resp.json()
        self.assertEqual((body["code"], body["retry"]), ("not_leader", True))
        self.assertEqual(body["leader"], f"127.0.0.2:{first.port}")

    def test_vanished_registration_is_registered_again(self):
        first, second = self.start_agent(1), self.start_agent(2)
        discovery = EtcdDiscovery(self.peers, self.prefix)
        discovery._client.delete(discovery._key(second.host_id))
        wait_until(lambda: second.host_id in {r.host_id for r in discovery.list_hosts()[1]},
                   TTL + 3, "the host registering again")
        self.assertIn("registering again", second.log())
        self.assertEqual(self.leader_seen_by(second), first.host_id)


class WatchIndexClearedTest(unittest.TestCase):
    def test_a_watcher_that_fell_behind_reads_everything_again(self):
        peers = require_etcd()
        prefix = f"/flynn-test/cleared-{os.getpid()}"
        discovery = EtcdDiscovery(peers, prefix)
        view = ClusterView(discovery, "observer")
        stale_index = view._resync()
        # while the watcher is paused: more than etcd's 1,000 retained events, then a new host
        for n in range(1100):
            discovery._client.write(f"{prefix}/noise", str(n))
        discovery.register("late-host", '{"id": "late-host", "addr": "127.0.0.9:1"}', 30)
        with self.assertLogs("host.cluster.view", "INFO") as logged:
            watcher = gevent.spawn(view.run, stale_index)
            try:
                wait_until(lambda: "late-host" in view.hosts, 10, "the view catching up")
            finally:
                watcher.kill()
        self.assertTrue(any("reading every registration again" in line
                            for line in logged.output), logged.output)
        self.assertEqual(view.leader().id, "late-host")
        discovery._client.delete(prefix, recursive=True)


class EmbeddedEtcdTest(unittest.TestCase):
    def test_without_etcd_peers_the_agent_runs_its_own_etcd(self):
        require_docker()
        client_port, peer_port = free_port(), free_port()
        agent = AgentProcess(f"emb-{os.getpid()}", env={"FLYNN_HOST_ETCD_ENDPOINTS": ""},
                             args=["-etcd-client-port", str(client_port),
                                   "-etcd-peer-port", str(peer_port)])
        try:
            agent.start()
            wait_until(lambda: agent.client.get("/cluster/leader").status_code == 200, 15,
                       "the agent leading its one-host cluster")
            status = agent.client.get("/host/status").json()
            self.assertEqual((status["etcd"], status["is_leader"]), ("ok", True))
            own = EtcdDiscovery(f"http://127.0.0.1:{client_port}", f"/flynn-test/{agent.host_id}")
            self.assertEqual([r.host_id for r in own.list_hosts()[1]], [agent.host_id])
            self.assertTrue(os.path.isdir(os.path.join(agent.state_dir, "etcd", "data")))
            # the member dies: the agent starts it again
            member = int(subprocess.check_output(["pgrep", "-P", str(agent.proc.pid),
                                                  "etcd"]).split()[0])
            os.kill(member, signal.SIGKILL)
            wait_until(lambda: subprocess.run(["pgrep", "-P", str(agent.proc.pid), "etcd"],
                                              capture_output=True).stdout.strip() not in
                       (b"", str(member).encode()), 15, "the member started again")
            wait_until(lambda: agent.client.get("/host/status").json()["etcd"] == "ok", 15,
                       "etcd answering again")
            self.assertIn("starting it again", agent.log())
            self.assertEqual(agent.stop(signal.SIGTERM), 0)
            with self.assertRaises(EtcdUnavailable):
                own.ping()  # the embedded member went with the agent
        finally:
            agent.cleanup()


def count_containers(runtime, job_id: str) -> int:
    return len(runtime.list({"flynn-host.job-id": job_id}))


class AddJobsTest(ClusterTestCase):
    def start_three_small(self):
        """Three hosts with 100 MiB each, all seen by the leader."""
        agents = []
        for n in (1, 2, 3):
            agent = AgentProcess(f"c{n}-{os.getpid()}", ip=f"127.0.0.{n + 1}",
                                 args=["-heartbeat-ttl", str(TTL), "-memory-mb", "100"],
                                 env={"FLYNN_ETCD_PREFIX": self.prefix})
            self.agents.append(agent)
            agent.start()
            agents.append(agent)
        wait_until(lambda: len(self.hosts_seen_by(agents[0])) == 3, 10, "three hosts")
        return agents

    def post_jobs(self, agent, body):
        return agent.client.post("/cluster/jobs", json=body)

    def test_explicit_placement_through_a_non_leader(self):
        first, second, third = self.start_three_small()
        resp = self.post_jobs(third, {second.host_id: [dict(job_body(["true"]), id="e1")]})
        self.assertEqual(resp.status_code, 200, resp.text)
        self.assertEqual(resp.json(), {"jobs": [{"host_id": second.host_id, "job_id": "e1",
                                                 "host_addr": f"{second.ip}:{second.port}"}]})
        self.assertEqual(second.client.wait_status("e1", "done")["exit_status"], 0)
        # the same request again (a client that lost the answer retries): answered where the
        # job went, as before, though it has ended meanwhile; never run a second time. Sent
        # right after the end (the mirror may not show it yet: the claim answers) and once the
        # mirror shows it done, so that both ways the leader knows the id answer alike.
        same = {second.host_id: [dict(job_body(["true"]), id="e1")]}
        early = self.post_jobs(first, same)
        self.assertEqual((early.status_code, early.json()), (200, resp.json()), early.text)
        wait_until(lambda: self.status_in_mirror(first, "e1") == "done", 10,
                   "e1 done in the mirror")
        late = self.post_jobs(third, same)
        self.assertEqual((late.status_code, late.json()), (200, resp.json()), late.text)
        self.assertEqual(count_containers(self.runtime, "e1"), 1)
        self.assertEqual(second.client.get("/host/jobs/e1").json()["status"], "done")
        other = self.post_jobs(first, {second.host_id: [dict(job_body(["false"]), id="e1")]})
        self.assertEqual((other.status_code, other.json()["code"]), (409, "conflict"))

    def test_placement_spreads_and_respects_resources_and_ports(self):
        first, second, third = self.start_three_small()
        jobs = [dict(job_body(["sleep", "60"]), id=f"p{n}", resources={"memory_mb": 80})
                for n in range(3)]
        resp = self.post_jobs(second, {"jobs": jobs})
        self.assertEqual(resp.status_code, 200, resp.text)
        placed = {p["job_id"]: p["host_id"] for p in resp.json()["jobs"]}
        self.assertEqual(sorted(placed.values()), sorted(a.host_id for a in self.agents))
        # jobs that reserve nothing spread by count
        light = self.post_jobs(third, {"jobs": [dict(job_body(["sleep", "60"]), id=f"l{n}")
                                                for n in range(6)]})
        self.assertEqual(light.status_code, 200, light.text)
        per_host = [p["host_id"] for p in light.json()["jobs"]]
        self.assertEqual(sorted(per_host.count(a.host_id) for a in self.agents), [2, 2, 2])
        full = self.post_jobs(first, {"jobs": [dict(job_body(["true"]), id="p9",
                                                    resources={"memory_mb": 80})]})
        self.assertEqual((full.status_code, full.json()["code"]), (422, "no_capacity"))
        # a fixed port held on one host sends the next job with that port elsewhere
        port = 20000 + os.getpid() % 10000  # below the ephemeral ports a client may hold
        a = self.post_jobs(first, {first.host_id: [dict(job_body(["sleep", "60"], ports=[
            {"port": port}]), id="port-a")]})
        self.assertEqual(a.status_code, 200, a.text)
        clash = self.post_jobs(first, {first.host_id: [dict(job_body(["true"], ports=[
            {"port": port}]), id="port-b")]})
        self.assertEqual((clash.status_code, clash.json()["code"]), (409, "conflict"))
        self.assertIn(f"port {port}/tcp", clash.json()["message"])
        # the jobs of one request that take that port go to the two other hosts, one each;
        # then no host is left for it
        spread = self.post_jobs(second, {"jobs": [dict(job_body(["sleep", "60"], ports=[
            {"port": port}]), id=f"port-{n}") for n in range(2)]})
        self.assertEqual(spread.status_code, 200, spread.text)
        self.assertEqual(sorted(p["host_id"] for p in spread.json()["jobs"]),
                         sorted(a.host_id for a in (second, third)))
        none_left = self.post_jobs(third, {"jobs": [dict(job_body(["true"], ports=[
            {"port": port}]), id="port-c")]})
        self.assertEqual((none_left.status_code, none_left.json()["code"]),
                         (422, "no_capacity"), none_left.text)
        self.assertEqual(none_left.json()["message"].count(f"port {port}/tcp is taken"), 3)

    def test_same_request_twice_is_idempotent_and_a_reused_id_conflicts(self):
        first, second, _ = self.start_three_small()
        body = {second.host_id: [dict(job_body(["sleep", "60"]), id="idem")]}
        one, two = self.post_jobs(first, body), self.post_jobs(first, body)
        self.assertEqual((one.status_code, two.status_code), (200, 200))
        self.assertEqual(one.json(), two.json())
        other = self.post_jobs(first, {"jobs": [dict(job_body(["true"], image="other"),
                                                     id="idem")]})
        self.assertEqual((other.status_code, other.json()["code"]), (409, "conflict"))
        second.client.wait_status("idem", "running")
        self.assertEqual(count_containers(self.runtime, "idem"), 1)

    def test_bad_requests(self):
        first, *_ = self.start_three_small()
        cases = [
            (b"not json", 400, "validation_error"),
            (b"[]", 400, "validation_error"),
            (b'{"jobs": []}', 400, "validation_error"),
            (b'{"jobs": [{"config": {}}]}', 400, "validation_error"),
            (b'{"nohost": [{"config": {"image": "x"}}]}', 404, "not_found"),
            (b'{"jobs": [{"id": "d", "config": {"image": "x"}}, {"id": "d", "config": '
             b'{"image": "x"}}]}', 400, "validation_error"),
        ]
        for raw, status, code in cases:
            with self.subTest(raw=raw):
                resp = first.client.post("/cluster/jobs", data=raw)
                self.assertEqual((resp.status_code, resp.json()["code"]), (status, code),
                                 resp.text)
        resp = first.client.post("/cluster/jobs", data=b'{"jobs": [{"config": {}}]}')
        self.assertIn("jobs[0]: job.config.image: required", resp.json()["message"])
        # the leader holds AddJobs to the same limits as a host's PUT
        privileged = first.client.post("/cluster/jobs", json={"jobs": [{"config": {
            "image": "x", "ports": [{"port": 80}]}}]})
        self.assertEqual(privileged.status_code, 400, privileged.text)
        self.assertIn("jobs[0]: job.config.ports[0].port: 80 is outside the fixed ports",
                      privileged.json()["message"])

    def test_stop_a_job_through_the_leader(self):
        first, second, third = self.start_three_small()
        self.post_jobs(third, {second.host_id: [dict(job_body(["sleep", "60"]), id="stopme")]})
        second.client.wait_status("stopme", "running")
        # an id with a `?` must not become a query of the forwarded request (it stopped "stopme")
        sneaky = third.client.delete(f"/cluster/hosts/{second.host_id}/jobs/stopme%3Ftimeout=0")
        self.assertEqual((sneaky.status_code, sneaky.json()["code"]), (400, "validation_error"))
        self.assertIn("job id", sneaky.json()["message"])
        self.assertEqual(second.client.job("stopme")["status"], "running")
        resp = third.client.delete(f"/cluster/hosts/{second.host_id}/jobs/stopme?timeout=0")
        self.assertEqual(resp.status_code, 202, resp.text)
        second.client.wait_status("stopme", "stopped")
        self.assertEqual(third.client.delete("/cluster/hosts/nohost/jobs/x").status_code, 404)

    def test_leader_killed_after_acknowledging_every_job_runs_once(self):
        first, second, third = self.start_three_small()
        # the target host cannot pick its assignments up while the leader acknowledges and dies
        third.proc.send_signal(signal.SIGSTOP)
        try:
            resp = self.post_jobs(second, {third.host_id: [
                dict(job_body(["sleep", "60"]), id=f"once{n}") for n in range(3)]})
            self.assertEqual(resp.status_code, 200, resp.text)
            first.kill()
        finally:
            third.proc.send_signal(signal.SIGCONT)
        for n in range(3):
            third.client.wait_status(f"once{n}", "running", timeout=TTL + 20)
        wait_until(lambda: self.leader_seen_by(second) == second.host_id, TTL + 5,
                   "the next-oldest taking over")
        for n in range(3):
            self.assertEqual(count_containers(self.runtime, f"once{n}"), 1)

    def test_new_leader_finishes_a_request_the_old_one_recorded(self):
        first, second, third = self.start_three_small()
        # as if the leader died right after recording the request, before any assignment
        requests = Records(EtcdDiscovery(self.peers, self.prefix), "cluster/requests")
        job = parse_job(dict(job_body(["sleep", "60"]), id="orphan"))
        requests.put("r1", simplejson.dumps({"id": "r1", "created_at": "2026-01-01T00:00:00Z",
                                             "jobs": [{"host_id": third.host_id,
                                                       "job": job.to_dict()}]}))
        first.kill()
        third.client.wait_status("orphan", "running", timeout=TTL + 20)
        self.assertEqual(count_containers(self.runtime, "orphan"), 1)
        wait_until(lambda: requests.read_dir()[1] == [], 10, "the request record removed")


class EtcdDiscoveryTest(unittest.TestCase):
    def test_three_agents_form_an_etcd_cluster_through_discovery_and_survive_losing_one(self):
        peers = require_etcd()  # the test etcd doubles as the discovery service
        require_docker()
        token = f"t{os.getpid()}"
        discovery_client = EtcdDiscovery(peers, "/discovery")
        discovery_client._client.write(f"/discovery/{token}/_config/size", "3")
        url = f"{peers}/v2/keys/discovery/{token}"
        agents = []
        for n in (1, 2, 3):
            client_port, peer_port = free_port(), free_port()
            agent = AgentProcess(f"d{n}-{os.getpid()}", ip=f"127.0.0.{n + 1}",
                                 env={"FLYNN_HOST_ETCD_ENDPOINTS": "", "ETCD_DISCOVERY": url,
                                      "FLYNN_ETCD_PREFIX": f"/flynn-test/discovery-{token}"},
                                 args=["-heartbeat-ttl", str(TTL), "-etcd-client-port",
                                       str(client_port), "-etcd-peer-port", str(peer_port)])
            agent.etcd_url = f"http://127.0.0.1:{client_port}"
            agents.append(agent)
        try:
            for agent in agents:  # together: each member waits for the other two
                agent.start(wait=False)
            for agent in agents:
                agent.wait_ready(timeout=60)
            members = requests.get(agents[0].etcd_url + "/v2/members", timeout=5).json()
            self.assertEqual(len(members["members"]), 3)
            for agent in agents:
                wait_until(lambda a=agent: a.client.get("/cluster/hosts").status_code == 200 and
                           len(a.client.get("/cluster/hosts").json()) == 3, 15,
                           f"{agent.host_id} seeing all three")
            leader = agents[0].client.get("/cluster/leader").json()["id"]
            self.assertTrue(all(a.client.get("/cluster/leader").json()["id"] == leader
                                for a in agents))
            # one machine goes: the agent and, with it, its etcd member
            lost = next(a for a in agents if a.host_id != leader)
            lost.kill()
            survivors = [a for a in agents if a is not lost]
            wait_until(lambda: {h["id"] for h in survivors[0].client.get(
                "/cluster/hosts").json()} == {a.host_id for a in survivors}, TTL + 10,
                "the cluster going on with two members")
            survivors[1].client.put_job("after-loss", job_body(["true"]))
            self.assertEqual(survivors[1].client.wait_status("after-loss", "done")["status"],
                             "done")
        finally:
            for agent in agents:  # all at once: the last members must not wait for a quorum
                if agent.proc is not None and agent.proc.poll() is None:
                    agent.proc.send_signal(signal.SIGTERM)
            for agent in agents:
                agent.cleanup()
                remove_host_containers(DockerRuntime(), agent.host_id)
