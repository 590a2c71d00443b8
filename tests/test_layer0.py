"""Layer 0 with agents on this machine (the etcd member a local process, as `bin/run` runs it):
hosts joining with ETCD_PEERS grow etcd up to -etcd-members, a member restarts from its data, a
host that leaves for good takes its member with it. tests/test_layer0_docker.py runs the same
from the flynn/host image."""
import os
import signal
import unittest

import requests
import simplejson

from host.discovery.etcd import EtcdDiscovery
from tests.support import AgentProcess, free_port, remove_host_containers, require_docker, \
    wait_until
from tests.test_cli import cli
from tests.test_cluster import TTL


def members(client_url: str) -> list:
    return sorted(m["name"] for m in requests.get(f"{client_url}/v2/members",
                                                  timeout=5).json()["members"])


class Layer0HostsTestCase(unittest.TestCase):
    """Agents on loopback addresses of their own, each running its etcd member as a process."""

    def setUp(self):
        self.runtime = require_docker()
        self.prefix = f"/flynn-test/join{os.getpid()}"
        self.agents = []

    def tearDown(self):
        for agent in self.agents:
            agent.cleanup()
            remove_host_containers(self.runtime, agent.host_id)

    def host(self, n: int, *args, peers: str = "") -> AgentProcess:
        """Host n on 127.0.0.(n+1), its etcd member on ports of its own."""
        ports = (free_port(), free_port())
        agent = AgentProcess(f"join{n}-{os.getpid()}", ip=f"127.0.0.{n + 1}",
                             env={"FLYNN_HOST_ETCD_ENDPOINTS": "", "ETCD_PEERS": peers,
                                  "FLYNN_ETCD_PREFIX": self.prefix},
                             args=["-heartbeat-ttl", str(TTL), "-etcd-client-port",
                                   str(ports[0]), "-etcd-peer-port", str(ports[1]), *args])
        agent.client_url = f"http://127.0.0.{n + 1}:{ports[0]}"
        agent.peer_addr = f"127.0.0.{n + 1}:{ports[1]}"
        self.agents.append(agent)
        return agent

    def hosts_seen_by(self, agent) -> set:
        resp = agent.client.get("/cluster/hosts")
        return {h["id"] for h in resp.json()} if resp.status_code == 200 else set()


class JoinTest(Layer0HostsTestCase):
    def test_hosts_join_with_etcd_peers_up_to_the_member_count(self):
        first = self.host(1).start()
        self.assertEqual(members(first.client_url), [first.host_id])
        second = self.host(2, "-etcd-members", "2", peers=first.peer_addr).start()
        # the cluster has its two members now: the third runs none of its own
        third = self.host(3, "-etcd-members", "2", peers=first.peer_addr).start()
        everyone = {a.host_id for a in self.agents}
        for agent in self.agents:
            wait_until(lambda a=agent: self.hosts_seen_by(a) == everyone, 20,
                       f"{agent.host_id} seeing the three hosts")
            self.assertEqual(agent.client.get("/cluster/leader").json()["id"], first.host_id)
        self.assertEqual(members(first.client_url), sorted([first.host_id, second.host_id]))
        self.assertEqual(members(second.client_url), members(first.client_url))
        status = third.client.get("/host/status").json()
        self.assertEqual(status["etcd"], "ok")
        self.assertEqual([(s["id"], s["running"]) for s in status["layer0"]], [("etcd", False)])
        self.assertIn("etcd has 2 members already (-etcd-members 2)",
                      status["layer0"][0]["reason"])
        self.assertIn("joined etcd as member", second.log(tail=0))
        layer0 = second.client.get("/host/status").json()["layer0"]
        self.assertEqual([(s["id"], s["mode"], s["running"], s["healthy"]) for s in layer0],
                         [("etcd", "process", True, True)])

        # the second host's agent is killed (its member goes with it) and comes back: the member
        # starts again from its data, the cluster's membership unchanged
        second.kill()
        second.start(wait=False)
        second.wait_ready(timeout=60)
        self.assertIn("starting it again from its data", second.log(tail=0))
        wait_until(lambda: self.hosts_seen_by(first) == everyone, 30, "the second back")
        self.assertEqual(members(first.client_url), sorted([first.host_id, second.host_id]))

        # the second leaves for good (flynn-host leave): its member is removed, its data
        # deleted, the agent exits 0
        left = cli("leave", "--json", addr=f"{second.ip}:{second.port}")
        self.assertEqual(left.returncode, 0, left.stderr)
        self.assertEqual(simplejson.loads(left.stdout)["host_id"], second.host_id)
        self.assertIsNotNone(simplejson.loads(left.stdout)["etcd_member_removed"])
        self.assertEqual(second.proc.wait(timeout=20), 0)
        self.assertEqual(members(first.client_url), [first.host_id])
        self.assertFalse(os.path.exists(os.path.join(second.state_dir, "etcd", "data")))
        wait_until(lambda: self.hosts_seen_by(first) == {first.host_id, third.host_id}, 20,
                   "the second gone from the cluster at once")
        # the cluster carries on: a job placed through the third host (which uses the first's
        # member) runs
        placed = third.client.post("/cluster/jobs", json={"jobs": [{"id": "after-leave",
                                   "config": {"image": os.environ.get(
                                       "FLYNN_TEST_IMAGE", "busybox"), "cmd": ["true"]}}]})
        self.assertEqual(placed.status_code, 200, placed.text)

    def test_the_last_member_cannot_leave(self):
        first = self.host(1).start()
        resp = first.client.post("/host/leave", timeout=40)
        self.assertEqual((resp.status_code, resp.json()["code"]), (409, "conflict"), resp.text)
        self.assertIn("the cluster's only one", resp.json()["message"])
        # the same through the command line: one line, exit 1, and the agent carries on
        refused = cli("leave", addr=f"{first.ip}:{first.port}")
        self.assertEqual(refused.returncode, 1, refused.stderr)
        self.assertEqual(refused.stderr.strip().splitlines(), [
            "flynn-host leave: this host's etcd member is the cluster's only one: removing it "
            "would remove the cluster's data"])
        self.assertIsNone(first.proc.poll())
        self.assertEqual(first.client.get("/host/status").json()["etcd"], "ok")

    def test_a_host_beyond_the_members_uses_theirs_and_survives_its_agent_restart(self):
        first = self.host(1, "-etcd-members", "1").start()
        second = self.host(2, "-etcd-members", "1", peers=first.peer_addr).start()
        wait_until(lambda: self.hosts_seen_by(first) == {first.host_id, second.host_id}, 20,
                   "two hosts")
        self.assertEqual(members(first.client_url), [first.host_id])
        own = EtcdDiscovery(first.client_url, self.prefix)
        self.assertEqual({r.host_id for r in own.list_hosts()[1]},
                         {first.host_id, second.host_id})
        self.assertEqual(second.stop(signal.SIGTERM), 0)
        second.start()
        wait_until(lambda: self.hosts_seen_by(first) == {first.host_id, second.host_id}, 20,
                   "the second back")
        self.assertEqual(members(first.client_url), [first.host_id])


class EtcdAuthTest(Layer0HostsTestCase):
    """With the cluster's token, the etcd layer 0 runs asks for credentials (its root user's
    password derived from the token): whoever reaches its client port without them can neither
    read nor write a key, an assignment included; hosts with the token join, work and leave."""

    def setUp(self):
        super().setUp()
        import tempfile
        from tests.test_auth import token_file
        self.token_file = token_file(tempfile.mkdtemp())

    def test_etcd_asks_for_credentials_that_hosts_with_the_token_have(self):
        from host.discovery.etcd import Credentials
        from tests.test_auth import TOKEN
        first = self.host(1, "-auth-token-file", self.token_file)
        first.client.http.headers["Authorization"] = f"Bearer {TOKEN}"
        first.start()
        self.assertIn("etcd authentication enabled (v2, v3)", first.log(tail=0))
        key = f"{first.client_url}/v2/keys{self.prefix}/cluster/assignments/{first.host_id}/x"
        for method in ("GET", "PUT"):
            anonymous = requests.request(method, key, data={"value": "{}"}, timeout=5)
            self.assertEqual(anonymous.status_code, 401, anonymous.text)
            self.assertEqual(anonymous.json()["errorCode"], 110)
        # nor, through the v3 API, change the membership
        for path, body in (("/v3/cluster/member/add", {"peerURLs": ["http://127.0.0.9:1"]}),
                           ("/v3/kv/put", {"key": "eA==", "value": "eQ=="})):
            anonymous = requests.post(first.client_url + path, json=body, timeout=5)
            self.assertGreaterEqual(anonymous.status_code, 400, anonymous.text)
            self.assertIn("user name is empty", anonymous.text)
        root = Credentials.from_token(TOKEN)
        self.assertNotIn(TOKEN, root.password)
        listed = requests.get(f"{first.client_url}/v2/keys{self.prefix}/discoverd/services/"
                              "flynn-host", auth=(root.user, root.password), timeout=5)
        self.assertEqual(listed.status_code, 200, listed.text)
        self.assertIn(first.host_id, listed.text)

        second = self.host(2, "-auth-token-file", self.token_file, peers=first.peer_addr)
        second.client.http.headers["Authorization"] = f"Bearer {TOKEN}"
        second.start()
        self.assertIn("etcd asks for credentials", second.log(tail=0))
        for agent in (first, second):
            wait_until(lambda a=agent: self.hosts_seen_by(a) == {first.host_id,
                                                                 second.host_id}, 20,
                       f"{agent.host_id} seeing both hosts")
        placed = first.client.post("/cluster/jobs", json={"jobs": [{
            "id": "secured", "config": {"image": "flynn-test/busybox", "cmd": ["true"]}}]})
        self.assertEqual(placed.status_code, 200, placed.text)
        # leaving removes the member through the v2 members API, which asks for the root user
        left = second.client.post("/host/leave", timeout=40)
        self.assertEqual(left.status_code, 202, left.text)
        wait_until(lambda: members(first.client_url) == [first.host_id], 20,
                   "the second member removed")

    def test_without_a_token_etcd_is_open_and_said_so(self):
        alone = self.host(3).start()
        self.assertIn("ETCD IS OPEN", alone.log(tail=0))
        self.assertEqual(requests.get(f"{alone.client_url}/v2/keys/", timeout=5).status_code,
                         200)
