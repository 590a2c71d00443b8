"""Layer 0 as the original runs it: the flynn/host image, run with `docker run` as the README
says, its etcd member a sibling container, hosts joining with ETCD_PEERS. Each host has its own
IP: addresses this test adds to a bridge network it creates, on which the host containers run
(their API published on their own address). The images are built by bin/build-images, which
caches: a second run of the suite does not build them again."""
import json
import os
import subprocess
import tempfile
import time
import unittest

import requests

from tests.support import REPO, remove_host_containers, require_docker, wait_until

IMAGE = "flynn/host:latest"


def docker(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def docker_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise AssertionError(f"DOCKER_HOST={host}: the host containers need the engine's unix "
                             "socket to mount; run the suite with bin/test")
    return host[len("unix://"):]


class HostContainer:
    """One host: a flynn/host container with its own address on the test's bridge."""

    def __init__(self, net: "TestNetwork", n: int):
        self.net = net
        self.host_id = f"l0{os.getpid()}h{n}"
        self.name = f"flynn-test-{self.host_id}"
        self.ip = net.address(n)
        self.url = f"http://{self.ip}:1113"

    def run(self, *flags, env=()) -> "HostContainer":
        """The README's command, on this host's address."""
        args = ["run", "-d", "--name", self.name, "--network", self.net.name,
                "-v", f"{docker_socket()}:/var/run/docker.sock",
                "-p", f"{self.ip}:1113:1113"]
        for item in env:
            args += ["-e", item]
        docker(*args, IMAGE, "-external", self.ip, "-id", self.host_id, "-bind", self.ip,
               "-heartbeat-ttl", "3", *flags)
        return self

    def wait_serving(self, timeout=90.0):
        def serving():
            state = docker("inspect", "-f", "{{.State.Running}}", self.name).stdout.strip()
            if state != "true":
                raise AssertionError(f"{self.name} exited:\n{self.logs()}")
            try:
                return requests.get(f"{self.url}/host/status", timeout=2).status_code == 200
            except requests.RequestException:
                return False
        try:
            wait_until(serving, timeout, f"{self.host_id} serving")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.logs()}") from None
        return self

    def logs(self) -> str:
        return docker("logs", self.name, check=False).stderr[-4000:]

    def get(self, path: str):
        return requests.get(self.url + path, timeout=10).json()

    def post_jobs(self, body: dict) -> requests.Response:
        return requests.post(f"{self.url}/cluster/jobs", json=body, timeout=40)

    def remove(self):
        docker("rm", "-f", self.name, check=False)


class TestNetwork:
    """A bridge network of the test's own, with host addresses added on its bridge: each host's
    API, etcd member and published job ports are on one of them."""

    def __init__(self):
        self.name = f"flynn-l0-{os.getpid()}"
        self.bridge = f"fl0b{os.getpid() % 100000}"
        for attempt in range(20):  # a /24 no other network of the engine uses
            self.prefix = f"10.{200 + attempt % 50}.{os.getpid() % 250}"
            made = docker("network", "create", "--subnet", f"{self.prefix}.0/24", "-o",
                          f"com.docker.network.bridge.name={self.bridge}", self.name, check=False)
            if made.returncode == 0:
                break
        else:
            raise AssertionError(f"no free subnet for the test network: {made.stderr}")
        for n in (1, 2, 3):
            subprocess.run(["ip", "addr", "add", f"{self.address(n)}/32", "dev", self.bridge],
                           check=True)

    def address(self, n: int) -> str:
        return f"{self.prefix}.{100 + n}"

    def remove(self):
        docker("network", "rm", self.name, check=False)


def etcd_members(host: HostContainer) -> list:
    answer = requests.get(f"http://{host.ip}:2379/v2/members", timeout=5).json()
    return sorted(m["name"] for m in answer["members"])


def web_job(job_id: str) -> dict:
    return {"id": job_id, "config": {"image": os.environ.get("FLYNN_TEST_IMAGE", "busybox"),
                                     "cmd": ["sh", "-c", f"echo {job_id} > /tmp/index.html; "
                                             "exec httpd -f -p $PORT -h /tmp"],
                                     "ports": [{"port": 0}]}}


def sleeper(job_id: str) -> dict:
    return {"id": job_id, "config": {"image": os.environ.get("FLYNN_TEST_IMAGE", "busybox"),
                                     "cmd": ["sleep", "3600"]}}


class Layer0DockerTest(unittest.TestCase):
    """The steps build on each other (one cluster, grown and broken in turn), so they are one
    test, in the issue's order."""

    @classmethod
    def setUpClass(cls):
        cls.runtime = require_docker()
        started = time.monotonic()
        built = subprocess.run([os.path.join(REPO, "bin", "build-images")], capture_output=True,
                               text=True, timeout=900)
        if built.returncode != 0:
            raise AssertionError(f"bin/build-images failed:\n{built.stderr[-3000:]}")
        cls.build_s = time.monotonic() - started
        cls.net = TestNetwork()
        cls.hosts = [HostContainer(cls.net, n) for n in (1, 2, 3)]

    @classmethod
    def tearDownClass(cls):
        for host in cls.hosts:
            host.remove()
            remove_host_containers(cls.runtime, host.host_id)
            volumes = docker("volume", "ls", "-q", "--filter", f"name=flynn-{host.host_id}-",
                             check=False).stdout.split()
            if volumes:
                docker("volume", "rm", "-f", *volumes, check=False)
        cls.net.remove()

    def test_layer0_from_the_image(self):
        first, second, third = self.hosts
        print(f"\n  images ready in {self.build_s:.1f}s")

        # 1. the first host, as the README runs it: etcd from the manifest as a sibling
        # container, registered, leader; a job placed through the cluster answers on its port
        started = time.monotonic()
        first.run().wait_serving()
        wait_until(lambda: first.get("/host/status")["is_leader"], 20, "the first leading")
        print(f"  docker run to a serving leader: {time.monotonic() - started:.1f}s")
        status = first.get("/host/status")
        self.assertEqual(status["etcd"], "ok")
        [etcd] = status["layer0"]
        self.assertEqual((etcd["id"], etcd["mode"], etcd["running"], etcd["healthy"]),
                         ("etcd", "job", True, True))
        jobs = {j["job"]["id"]: j for j in first.get("/host/jobs")}
        self.assertEqual(jobs[etcd["job_id"]]["status"], "running")  # in ps, as a job
        self.assertTrue(etcd["job_id"].startswith("flynn-etcd-"))
        self.assertEqual(etcd_members(first), [first.host_id])
        self.assertEqual([h["id"] for h in first.get("/cluster/hosts")], [first.host_id])
        placed = first.post_jobs({"jobs": [web_job("web-1")]})
        self.assertEqual(placed.status_code, 200, placed.text)
        # AddJobs answers once the placement is recorded in etcd; the host takes the job from
        # there a moment later (until then its GET is a 404, without a status)
        wait_until(lambda: first.get("/host/jobs/web-1").get("status") == "running", 30,
                   "web-1 running")
        port = first.get("/host/jobs/web-1")["ports"][0]["port"]
        wait_until(lambda: _answers(f"http://{first.ip}:{port}/", "web-1"), 10,
                   "web-1 answering on its published port")

        # 2. two more hosts join with ETCD_PEERS pointing at the first: three etcd members,
        # one leader for all, jobs spread over the three
        for host in (second, third):
            started = time.monotonic()
            host.run(env=[f"ETCD_PEERS={first.ip}:2380"]).wait_serving()
            print(f"  {host.host_id} joining to serving: {time.monotonic() - started:.1f}s")
        self.assertEqual(etcd_members(first), sorted(h.host_id for h in self.hosts))
        everyone = {h.host_id for h in self.hosts}
        for host in self.hosts:
            wait_until(lambda h=host: _hosts_seen(h) == everyone, 20,
                       f"{host.host_id} seeing three hosts")
            self.assertEqual(host.get("/cluster/leader")["id"], first.host_id)
        spread = third.post_jobs({"jobs": [sleeper(f"s{n}") for n in range(3)]})
        self.assertEqual(spread.status_code, 200, spread.text)
        self.assertEqual({p["host_id"] for p in spread.json()["jobs"]}, everyone)

        # a layer-0 job that dies is started anew (on its data: the same member)
        dead = second.get("/host/status")["layer0"][0]["job_id"]
        docker("kill", _container(dead, second.host_id))
        wait_until(lambda: second.get("/host/status")["layer0"][0]["job_id"] != dead, 30,
                   "a new etcd job on the second host")
        wait_until(lambda: second.get("/host/status")["layer0"][0]["healthy"], 60,
                   "the second's new etcd job healthy")
        self.assertEqual(second.get(f"/host/jobs/{dead}")["status"], "crashed")
        self.assertEqual(etcd_members(second), sorted(everyone))

        # 3. the leader's host container and its etcd member are killed: the cluster carries on
        # (a new leader, AddJobs); back with the same id, it rejoins and re-adopts its jobs
        web_container = first.get("/host/jobs/web-1")["container_id"]
        docker("kill", first.name)
        docker("kill", _container(etcd["job_id"], first.host_id))
        wait_until(lambda: _leader(second) in (second.host_id, third.host_id), 30,
                   "a new leader after the first was killed")
        # etcd elected a new raft leader meanwhile: registrations that expired then (TTL 3 s)
        # are made again within seconds
        wait_until(lambda: _hosts_seen(second) == {second.host_id, third.host_id}, 30,
                   "the two others in the new leader's mirror")
        after = second.post_jobs({second.host_id: [sleeper("after-kill")]})
        self.assertEqual(after.status_code, 200, after.text)
        first.remove()
        first.run().wait_serving()
        wait_until(lambda: _hosts_seen(second) == everyone, 30, "the first back in the cluster")
        self.assertEqual(etcd_members(second), sorted(everyone))
        back = first.get("/host/jobs/web-1")
        self.assertEqual((back["status"], back["container_id"]), ("running", web_container))
        self.assertTrue(_answers(f"http://{first.ip}:{port}/", "web-1"))
        self.assertEqual(first.get("/host/status")["layer0"][0]["healthy"], True)

        # 4. a host container stopped and started: its jobs keep running and are re-adopted
        before = {j["job"]["id"]: j["container_id"] for j in third.get("/host/jobs")
                  if j["status"] == "running"}
        docker("stop", third.name)
        self.assertEqual(set(_running_job_ids(self.runtime, third.host_id)), set(before))
        docker("start", third.name)
        third.wait_serving()
        self.assertEqual({j["job"]["id"]: j["container_id"] for j in third.get("/host/jobs")
                          if j["status"] == "running"}, before)
        wait_until(lambda: _hosts_seen(third) == everyone, 30, "the third back in the cluster")

        # -force from inside (a new container: its table is rebuilt from the engine): the
        # containers a previous instance left are killed and removed, etcd's member comes back
        # on its data, a new job of its own
        third.remove()
        third.run("-force", env=[f"ETCD_PEERS={first.ip}:2380"]).wait_serving()
        left = set(_running_job_ids(self.runtime, third.host_id))
        etcd_now = third.get("/host/status")["layer0"][0]
        self.assertEqual(left, {etcd_now["job_id"]})
        self.assertNotIn(etcd_now["job_id"], before)
        self.assertTrue(etcd_now["healthy"])
        self.assertEqual(etcd_members(third), sorted(everyone))
        wait_until(lambda: _hosts_seen(first) == everyone, 30, "the third back after -force")

    def test_an_invalid_manifest_is_exit_2_naming_the_field(self):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as bad:
            json.dump([{"id": "etcd", "role": "etcd", "image": "flynn/etcd:3.5.1",
                        "health": {"http": "{etcd.clinet_url}/health"}}], bad)
        try:
            proc = docker("run", "--rm", "-v", f"{bad.name}:/etc/flynn-host/manifest.json:ro",
                          IMAGE, "-external", "127.0.0.1", check=False)
        finally:
            os.unlink(bad.name)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        # in a container the address cannot be guessed: it must be given
        guessed = docker("run", "--rm", IMAGE, check=False)
        self.assertEqual(guessed.returncode, 2, guessed.stderr)
        self.assertIn("-external IP is required", guessed.stderr)
        self.assertEqual(proc.stderr.strip().splitlines(), [
            "flynn-host: manifest /etc/flynn-host/manifest.json: [0].health.http: "
            "{etcd.clinet_url}: unknown variable (see docs/LAYER0.md)"])


def _answers(url: str, text: str) -> bool:
    try:
        return requests.get(url, timeout=2).text.strip() == text
    except requests.RequestException:
        return False


def _hosts_seen(host: HostContainer) -> set:
    try:
        return {h["id"] for h in host.get("/cluster/hosts")}
    except (requests.RequestException, ValueError, TypeError):
        return set()


def _leader(host: HostContainer):
    try:
        return host.get("/cluster/leader").get("id")
    except (requests.RequestException, ValueError):
        return None


def _container(job_id: str, host_id: str) -> str:
    return docker("ps", "-q", "--filter", f"label=flynn-host.id={host_id}", "--filter",
                  f"label=flynn-host.job-id={job_id}").stdout.strip()


def _running_job_ids(runtime, host_id: str) -> list:
    return [c.labels.get("flynn-host.job-id") for c in runtime.list({"flynn-host.id": host_id})
            if c.running]
