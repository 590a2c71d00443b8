"""Placing 200 jobs through the cluster, against raw docker-py and Docker Swarm mode, in one run.

- agent: one `POST /cluster/jobs {"jobs": [200 x sleep]}` to a 3-agent cluster (real agent
  processes on 127.0.0.2-4, real etcd, one shared dockerd), until every job is `running`, seen
  through each host's long-poll;
- raw: the same 200 containers created and started with docker-py, 50 at a time;
- swarm: `docker swarm init` on the same dockerd, a 200-replica service, until 200 tasks run; the
  swarm is left afterwards.
Targets: agent <= 1.15x raw, and faster than Swarm. Needs FLYNN_HOST_ETCD_ENDPOINTS and
DOCKER_HOST (bench/run).
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import docker  # noqa: E402
import docker.types  # noqa: E402
import gevent  # noqa: E402
import gevent.pool  # noqa: E402

from tests.support import (TEST_IMAGE, AgentProcess, remove_host_containers,  # noqa: E402
                           require_docker)

JOBS = int(os.environ.get("BENCH_JOBS", 200))
CMD = ["sleep", "300"]


def through_cluster(runtime) -> float:
    prefix = f"/flynn-bench/place-{os.getpid()}"
    agents = []
    try:
        for n in (1, 2, 3):
            agent = AgentProcess(f"pl{n}-{os.getpid()}", ip=f"127.0.0.{n + 1}",
                                 args=["-log-level", "info", "-cpu-shares", "1000000",
                                       "-memory-mb", "1000000", "-task-concurrency",
                                       os.environ.get("BENCH_TASK_CONCURRENCY", "64")],
                                 env={"FLYNN_ETCD_PREFIX": prefix})
            agent.start()
            agents.append(agent)
        deadline = time.monotonic() + 20
        while len(agents[0].client.get("/cluster/hosts").json()) < 3:
            assert time.monotonic() < deadline, "cluster did not form"
            gevent.sleep(0.1)
        cursors = {a.host_id: a.client.get("/host/events").json()["cursor"] for a in agents}
        running = set()

        def follow(agent):
            cursor = cursors[agent.host_id]
            while len(running) < JOBS:
                page = agent.client.get("/host/events", params={"since": cursor, "wait": 5},
                                        timeout=30).json()
                cursor = page["cursor"]
                running.update(e["job_id"] for e in page["events"] if e["event"] == "start")
        followers = [gevent.spawn(follow, a) for a in agents]
        jobs = [{"id": f"place-{n}", "config": {"image": TEST_IMAGE, "cmd": CMD}}
                for n in range(JOBS)]
        started = time.monotonic()
        resp = agents[1].client.post("/cluster/jobs", json={"jobs": jobs}, timeout=120)
        assert resp.status_code == 200, resp.text
        gevent.joinall(followers, raise_error=True, timeout=600)
        took = time.monotonic() - started
        spread = sorted(sum(1 for p in resp.json()["jobs"] if p["host_id"] == a.host_id)
                        for a in agents)
        print(f"agent  {JOBS} jobs running after {took:6.2f}s (per host: {spread})", flush=True)
        return took
    finally:
        for agent in agents:
            agent.cleanup()
            remove_host_containers(runtime, agent.host_id)


def raw_docker(runtime) -> float:
    api = runtime._client()
    label = f"placeraw{os.getpid()}"

    def one(n):
        container = api.create_container(TEST_IMAGE, CMD, labels={"flynn-host.id": label,
                                                                  "flynn-host.job-id": str(n)})
        api.start(container)
    started = time.monotonic()
    gevent.pool.Pool(50).map(one, range(JOBS))
    took = time.monotonic() - started
    print(f"raw    {JOBS} containers started after {took:6.2f}s", flush=True)
    remove_host_containers(runtime, label)
    return took


def swarm_mode() -> float:
    engine = docker.from_env(timeout=120)
    engine.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    try:
        started = time.monotonic()
        service = engine.services.create(TEST_IMAGE, command=CMD, name=f"place{os.getpid()}",
                                         mode=docker.types.ServiceMode("replicated",
                                                                       replicas=JOBS))
        while True:
            tasks = service.tasks(filters={"desired-state": "running"})
            if sum(1 for t in tasks if t["Status"]["State"] == "running") >= JOBS:
                break
            assert time.monotonic() - started < 900, "swarm did not get there"
            gevent.sleep(0.5)
        took = time.monotonic() - started
        print(f"swarm  {JOBS} tasks running after {took:6.2f}s", flush=True)
        service.remove()
        return took
    finally:
        engine.swarm.leave(force=True)


def main():
    runtime = require_docker()
    raw = raw_docker(runtime)
    agent = through_cluster(runtime)
    swarm = swarm_mode()
    print(f"\ncluster_place: {JOBS} jobs")
    print(f"  agent {agent:6.2f}s  raw docker-py {raw:6.2f}s  swarm {swarm:6.2f}s")
    print(f"  agent / raw {agent / raw:4.2f}x (target <= 1.15x)   swarm / agent "
          f"{swarm / agent:4.2f}x (target >= 2.5x)")


if __name__ == "__main__":
    main()
