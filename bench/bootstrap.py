"""Bootstrap: how long layer 0 takes, from nothing to a serving host, in Docker and not.

Figures, each next to a baseline run side by side (the same machine, the same moment):
- image build: `bin/build-images` cold (its images, base image and wheel cache removed first)
  and cached (run again at once);
- `docker run` of flynn/host to a serving leader (its etcd member a sibling job, registered,
  leading), versus `docker run` of the bare flynn/etcd image to a healthy member;
- a host joining with ETCD_PEERS to serving, versus the same done by hand to a bare etcd: a
  learner added through the members API, started, healthy, promoted;
- `bin/run`'s way (flynn-host on the machine, etcd as its child process) to a serving leader,
  versus the bare etcd binary to healthy.
The ratio is the agent's figure over the baseline's: what the agent adds to etcd's own start.

Needs DOCKER_HOST as a unix socket (bench/run provisions). BENCH_COLD=0 skips the cold build
(it removes the base image, which takes ~40 s to make again).
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import requests  # noqa: E402

from host.layer0.process import etcd_binary  # noqa: E402
from tests.support import REPO, AgentProcess, free_port  # noqa: E402
from tests.test_layer0_docker import HostContainer, TestNetwork, docker  # noqa: E402

COLD = os.environ.get("BENCH_COLD", "1") != "0"


def timed(run) -> float:
    started = time.monotonic()
    run()
    return time.monotonic() - started


def until(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.02)


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def serving_leader(url: str) -> bool:
    try:
        return requests.get(f"{url}/host/status", timeout=1).json().get("is_leader") is True
    except (requests.RequestException, ValueError):
        return False


def serving(url: str) -> bool:
    try:
        return requests.get(f"{url}/host/status", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def build_images():
    subprocess.run([os.path.join(REPO, "bin", "build-images")], check=True,
                   capture_output=True)


def etcd_args(name: str, ip: str, client: int, peer: int, cluster: str, state: str) -> list:
    return ["--name", name, "--data-dir", "/data", "--enable-v2=true",
            "--listen-client-urls", f"http://{ip}:{client}",
            "--advertise-client-urls", f"http://{ip}:{client}",
            "--listen-peer-urls", f"http://{ip}:{peer}",
            "--initial-advertise-peer-urls", f"http://{ip}:{peer}",
            "--initial-cluster", cluster, "--initial-cluster-state", state]


def main():
    rows = []
    if COLD:
        docker("rmi", "-f", "flynn/host:latest", "flynn/etcd:3.5.1", "flynn-base/debian:bookworm",
               check=False)
        subprocess.run(["sh", "-c", "rm -rf /var/cache/flynn-host/wheels-*"], check=True)
        cold = timed(build_images)
        rows.append(("image build, cold", cold, None))
    cached = timed(build_images)
    rows.append(("image build, cached", cached, None))

    net = TestNetwork()
    hosts = [HostContainer(net, n) for n in (1, 2)]
    bare = []
    try:
        # the agent in Docker, then the bare etcd image on the third address
        first = hosts[0]
        agent_s = timed(lambda: (first.run(), until(lambda: serving_leader(first.url))))
        ip = net.address(3)
        bare.append(f"bench-etcd-{os.getpid()}-a")
        etcd_s = timed(lambda: (docker(
            "run", "-d", "--name", bare[-1], "--network", "host", "flynn/etcd:3.5.1",
            *etcd_args("a", ip, 2379, 2380, f"a=http://{ip}:2380", "new")),
            until(lambda: healthy(f"http://{ip}:2379"))))
        rows.append(("docker run to a serving leader", agent_s, etcd_s))

        # a host joining, then a bare member joining the bare etcd
        second = hosts[1]
        join_s = timed(lambda: (second.run(env=[f"ETCD_PEERS={first.ip}:2380"]),
                                until(lambda: serving(second.url))))
        bare.append(f"bench-etcd-{os.getpid()}-b")

        def bare_join():  # what the agent does, by hand: add a learner, start it, promote it
            added = requests.post(f"http://{ip}:2379/v3/cluster/member/add", json={
                "peerURLs": [f"http://{ip}:2382"], "isLearner": True}, timeout=5)
            added.raise_for_status()
            docker("run", "-d", "--name", bare[-1], "--network", "host", "flynn/etcd:3.5.1",
                   *etcd_args("b", ip, 2381, 2382,
                              f"a=http://{ip}:2380,b=http://{ip}:2382", "existing"))
            until(lambda: healthy(f"http://{ip}:2381"))
            until(lambda: requests.post(f"http://{ip}:2379/v3/cluster/member/promote", json={
                "ID": added.json()["member"]["ID"]}, timeout=5).status_code == 200)
        rows.append(("a host joining to serving", join_s, timed(bare_join)))
    finally:
        for host in hosts:
            host.remove()
            remove_host_containers_cli(host.host_id)
        for name in bare:
            docker("rm", "-f", name, check=False)
        net.remove()

    # on the machine, as bin/run runs it, versus the bare etcd binary
    port, peer = free_port(), free_port()
    agent = AgentProcess(f"bench-boot-{os.getpid()}", env={"FLYNN_HOST_ETCD_ENDPOINTS": ""},
                         args=["-etcd-client-port", str(port), "-etcd-peer-port", str(peer),
                               "-log-level", "info"])
    try:
        run_s = timed(lambda: (agent.start(wait=False),
                               until(lambda: serving_leader(f"http://127.0.0.1:{agent.port}"))))
    finally:
        agent.cleanup()
    with tempfile.TemporaryDirectory() as data:
        port, peer = free_port(), free_port()
        args = etcd_args("bare", "127.0.0.1", port, peer, f"bare=http://127.0.0.1:{peer}", "new")
        args[args.index("/data")] = data
        started = time.monotonic()
        process = subprocess.Popen([etcd_binary(), *args], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            until(lambda: healthy(f"http://127.0.0.1:{port}"))
            rows.append(("bin/run's way to a serving leader", run_s, time.monotonic() - started))
        finally:
            process.terminate()
            process.wait()

    print("\nbootstrap (seconds; baseline: etcd alone, side by side)")
    print(f"{'':<36} {'agent':>8} {'baseline':>9} {'ratio':>7}")
    for name, value, baseline in rows:
        ratio = f"{value / baseline:.2f}x" if baseline else ""
        print(f"{name:<36} {value:>8.2f} {baseline or 0:>9.2f} {ratio:>7}" if baseline else
              f"{name:<36} {value:>8.2f}")


def remove_host_containers_cli(host_id: str):
    ids = docker("ps", "-aq", "--filter", f"label=flynn-host.id={host_id}",
                 check=False).stdout.split()
    if ids:
        docker("rm", "-f", *ids, check=False)
    volumes = docker("volume", "ls", "-q", "--filter", f"name=flynn-{host_id}-",
                     check=False).stdout.split()
    if volumes:
        docker("volume", "rm", "-f", *volumes, check=False)


if __name__ == "__main__":
    main()
