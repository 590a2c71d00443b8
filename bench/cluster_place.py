"""Placing 200 jobs through a 3-agent cluster, against raw docker-py (and Docker Swarm mode).

- agent: one `POST /cluster/jobs {"jobs": [200 x sleep 300]}` to a fresh 3-agent cluster (real
  agent processes on 127.0.0.2-4, real etcd, one shared dockerd), until every job is `running`,
  seen through each host's long-poll. Three phases, each timed from the POST: accept (the POST
  answered: the jobs durably recorded and assigned), assign (every job's first event on its host:
  the host took it from etcd and recorded it) and start (every job `running`); also when the
  first job ran, which is how long the engine had nothing to start.
- raw: the same 200 containers (the agent's name, labels and environment) created and started
  with docker-py.
- swarm (once, at the end; BENCH_SWARM=0 skips it): `docker swarm init` on the same dockerd, a
  200-replica service, until 200 tasks run; the swarm is left afterwards. Swarm's own
  concurrency cannot be set, so it is shown for information.

Same concurrency on both sides: BENCH_CONCURRENCY (48) container starts at once in total. The raw
side is a pool of 48; each of the 3 agents gets `-task-concurrency 16` (the engine slots: at most
that many creates + starts at once on that agent), and the leader spreads the jobs evenly (the
per-host split is printed), so the engine sees 48 at once from either side. On this 2-core
machine dockerd is saturated from about 12 at once, so the figure is not sensitive to it.

Rounds (BENCH_ROUNDS, 3) alternate which side goes first (raw, agent | agent, raw | raw, agent),
so a change in the load of the shared machine falls on both, and before each side the bench waits
for the machine to settle (the engine cleans up after the previous side's containers for seconds:
raw docker-py run second in a round took 10-20% longer than run first; the agent showed no such
effect, and the rounds still vary by about 10%). The ratio is the median over rounds
of agent / raw within a round (the two runs back to back). Every round starts from an engine
without the previous round's containers, and the agent side from a fresh cluster (its own etcd
prefix), set up outside the timed part. A job that fails to start (an `error` event, or a `stop`
before `start`; a failed create or start on the raw side), a POST that is not answered 200, or a
round over BENCH_TIMEOUT (600 s) is reported as such, never as a time: the ratio is then n/a and
its target not met.
Target: agent <= 1.08x raw. Needs FLYNN_HOST_ETCD_ENDPOINTS and DOCKER_HOST (bench/run).
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import docker  # noqa: E402
import docker.types  # noqa: E402
import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402
import simplejson  # noqa: E402

from bench.report import target  # noqa: E402
from host.discovery.etcd import EtcdDiscovery  # noqa: E402
from host.runtime import labels  # noqa: E402
from tests.support import (TEST_IMAGE, AgentProcess, remove_host_containers,  # noqa: E402
                           require_docker)

JOBS = int(os.environ.get("BENCH_JOBS", 200))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
AGENTS = 3
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", 48))
TIMEOUT_S = float(os.environ.get("BENCH_TIMEOUT", 600))
SWARM = os.environ.get("BENCH_SWARM", "1") != "0"
PEERS = os.environ.get("FLYNN_HOST_ETCD_ENDPOINTS", "")
CMD = ["sleep", "300"]
LIMIT = 1.08


class Failed(Exception):
    """A round that has no time: the reason is what gets reported."""


def shown(reasons: list, first: int = 3) -> str:
    """A few reasons, each cut short, not 200 of the same line."""
    cut = [r if len(r) <= 200 else r[:200] + "..." for r in reasons[:first]]
    more = len(reasons) - first
    return "; ".join(cut) + (f"; and {more} more" if more > 0 else "")


# ---- agent ------------------------------------------------------------------------------------

def start_cluster(agents: list, prefix: str, round_no: int):
    """Into `agents`, as each starts: the caller cleans up even after a failed start."""
    for n in range(1, AGENTS + 1):
        agent = AgentProcess(f"pl{n}-{os.getpid()}-{round_no}", ip=f"127.0.0.{n + 1}",
                             args=["-log-level", "info", "-cpu-shares", "1000000",
                                   "-memory-mb", "1000000",
                                   "-task-concurrency", str(CONCURRENCY // AGENTS)],
                             env={"FLYNN_ETCD_PREFIX": prefix})
        agents.append(agent)
        agent.start()
    deadline = time.monotonic() + 30
    while len(agents[0].client.get("/cluster/hosts").json()) < AGENTS:
        if time.monotonic() > deadline:
            raise Failed("the cluster did not form within 30 s")
        gevent.sleep(0.1)


def through_cluster(runtime, round_no: int) -> dict:
    """{"took", "accept", "assign", "first", "start", "spread"} or Failed: seconds from the
    POST ("first": the first job running, i.e. how long the engine had nothing to start)."""
    prefix = f"/flynn-bench/place-{os.getpid()}-{round_no}"
    agents, followers = [], []
    try:
        start_cluster(agents, prefix, round_no)
        ids = [f"place{round_no}-{n}" for n in range(JOBS)]
        wanted = set(ids)
        first_seen, running, failed, trouble = {}, {}, {}, []
        done = gevent.event.Event()
        cursors = {a.host_id: a.client.get("/host/events").json()["cursor"] for a in agents}

        def follow(agent):
            cursor = cursors[agent.host_id]
            try:
                while not done.is_set():
                    page = agent.client.get("/host/events", params={"since": cursor, "wait": 5},
                                            timeout=30).json()
                    now = time.monotonic()  # one page's events arrived together
                    cursor = page["cursor"]
                    for e in page["events"]:
                        job_id = e["job_id"]
                        if e["type"] != "job" or job_id not in wanted:
                            continue
                        first_seen.setdefault(job_id, now)
                        if e["event"] == "start":
                            running.setdefault(job_id, now)
                        elif e["event"] in ("error", "stop") and job_id not in running:
                            job = e["job"] or {}
                            failed[job_id] = f"{job_id} {job.get('status')}: {job.get('error')}"
                    if len(running) + len(failed) >= JOBS:
                        done.set()
            except Exception as e:  # noqa: BLE001 - any failure of a follower ends the round
                trouble.append(f"following {agent.host_id}: {e!r}")
                done.set()

        followers = [gevent.spawn(follow, a) for a in agents]
        jobs = [{"id": job_id, "config": {"image": TEST_IMAGE, "cmd": CMD}} for job_id in ids]
        started = time.monotonic()
        try:
            resp = agents[1].client.post("/cluster/jobs", json={"jobs": jobs}, timeout=TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - a POST that got no answer is a failed round
            raise Failed(f"POST /cluster/jobs: {e!r}") from e
        accepted = time.monotonic()
        if resp.status_code != 200:
            raise Failed(f"POST /cluster/jobs answered {resp.status_code}: {resp.text[:300]}")
        done.wait(max(0.0, started + TIMEOUT_S - time.monotonic()))
        if trouble:
            raise Failed(shown(trouble))
        if failed:
            raise Failed(f"{len(failed)} jobs failed: {shown(sorted(failed.values()))}")
        if not done.is_set():
            raise Failed(f"timeout after {TIMEOUT_S:g} s, {len(running)}/{JOBS} running, "
                         f"{len(first_seen)}/{JOBS} on their host")
        spread = sorted(sum(1 for p in resp.json()["jobs"] if p["host_id"] == a.host_id)
                        for a in agents)
        return {"took": max(running.values()) - started, "accept": accepted - started,
                "assign": max(first_seen.values()) - started,
                "first": min(running.values()) - started,
                "start": max(running.values()) - started, "spread": spread}
    finally:
        gevent.killall(followers)
        for agent in agents:
            agent.cleanup()  # stops the agent; its containers keep running until removed here
        gevent.joinall([gevent.spawn(remove_host_containers, runtime, a.host_id)
                        for a in agents])
        try:
            EtcdDiscovery(PEERS, prefix)._client.delete(prefix, recursive=True)
        except Exception as e:  # noqa: BLE001 - leftover keys under a unique prefix harm nobody
            print(f"  (could not delete {prefix} in etcd: {e!r})", flush=True)


# ---- raw docker-py ----------------------------------------------------------------------------

def raw_docker(runtime, round_no: int) -> dict:
    """{"took"} or Failed. Each container as the agent makes it (its name, labels, environment),
    so the engine does the same work on both sides."""
    api = runtime._client()
    host_id = f"placeraw{os.getpid()}-{round_no}"
    failures, started_ok = [], []

    def one(n):
        job_id = f"place{round_no}-{n}"
        spec = {"id": job_id, "config": {"image": TEST_IMAGE, "cmd": CMD}}
        try:
            container = api.create_container(
                TEST_IMAGE, CMD, name=labels.container_name(host_id, job_id),
                environment=["EXTERNAL_IP=127.0.0.1", f"FLYNN_HOST_ID={host_id}",
                             f"FLYNN_JOB_ID={job_id}"],
                labels={labels.LABEL_HOST_ID: host_id, labels.LABEL_JOB_ID: job_id,
                        labels.LABEL_JOB_SPEC: simplejson.dumps(spec),
                        labels.LABEL_PORTS: "[]"})
            api.start(container)
            started_ok.append(job_id)
        except Exception as e:  # noqa: BLE001 - reported with the round
            failures.append(f"{job_id}: {e}")

    try:
        pool = gevent.pool.Pool(CONCURRENCY)
        started = time.monotonic()
        with gevent.Timeout(TIMEOUT_S, False):  # False: on timeout, go on below
            pool.map(one, range(JOBS))
        took = time.monotonic() - started
        pool.kill()
        if failures:
            raise Failed(f"{len(failures)} containers failed: {shown(failures)}")
        if len(started_ok) < JOBS:
            raise Failed(f"timeout after {TIMEOUT_S:g} s, {len(started_ok)}/{JOBS} running")
        return {"took": took}
    finally:
        remove_host_containers(runtime, host_id)


# ---- swarm ------------------------------------------------------------------------------------

def swarm_mode() -> float:
    engine = docker.from_env(timeout=120)
    try:
        engine.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    except docker.errors.APIError as e:
        raise Failed(f"swarm init: {e}") from e
    try:
        started = time.monotonic()
        service = engine.services.create(TEST_IMAGE, command=CMD, name=f"place{os.getpid()}",
                                         mode=docker.types.ServiceMode("replicated",
                                                                       replicas=JOBS))
        try:
            while True:
                tasks = service.tasks(filters={"desired-state": "running"})
                up = sum(1 for t in tasks if t["Status"]["State"] == "running")
                if up >= JOBS:
                    return time.monotonic() - started
                if time.monotonic() - started > TIMEOUT_S:
                    raise Failed(f"timeout after {TIMEOUT_S:g} s, {up}/{JOBS} running")
                gevent.sleep(0.5)
        finally:
            service.remove()
    finally:
        engine.swarm.leave(force=True)


# ---- the run ----------------------------------------------------------------------------------

def settle(timeout_s: float = 30.0, busy_below: float = 0.25) -> float:
    """Wait until the machine is quiet (its cores busy less than `busy_below` over a second),
    at most `timeout_s`; the seconds waited. The engine goes on cleaning up after a side's 200
    containers (shims exiting, mounts, network) for seconds after they are removed (raw
    docker-py run second in a round took 10-20% longer than run first)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        before = _cpu_times()
        time.sleep(1.0)
        after = _cpu_times()
        total = sum(after) - sum(before)
        idle = after[3] - before[3]  # (iowait is not idle: a disk writing back is busy)
        if total > 0 and 1 - idle / total < busy_below:
            break
    return time.monotonic() - started


def _cpu_times() -> list:
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:9]]


def attempt(run, *args):
    """(result, None) or (None, reason): one side's round, whatever went wrong in it."""
    try:
        return run(*args), None
    except Failed as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - a crash in one round is reported, not fatal
        return None, f"crashed: {e!r}"


def main():
    if CONCURRENCY % AGENTS:
        raise SystemExit(f"BENCH_CONCURRENCY must be a multiple of {AGENTS} (the agents)")
    runtime = require_docker()
    print(f"cluster_place: {JOBS} jobs on {AGENTS} agents, {CONCURRENCY} container starts at "
          f"once on each side (raw: a pool of {CONCURRENCY}; agents: -task-concurrency "
          f"{CONCURRENCY // AGENTS} each), {ROUNDS} rounds", flush=True)
    raws, agents, ratios, problems = [], [], [], []
    for round_no in range(1, ROUNDS + 1):
        sides = [("raw", raw_docker), ("agent", through_cluster)]
        if round_no % 2 == 0:
            sides.reverse()
        results = {}
        for name, run in sides:
            settled = settle()
            if settled > 5:
                print(f"  (waited {settled:.0f} s for the machine to settle)", flush=True)
            result, problem = attempt(run, runtime, round_no)
            results[name] = result
            if problem:
                problems.append(f"round {round_no} {name}: {problem}")
                print(f"  round {round_no} {name:5s}: {problem}", flush=True)
            elif name == "raw":
                print(f"  round {round_no} raw  : {result['took']:6.2f} s", flush=True)
            else:
                print(f"  round {round_no} agent: {result['took']:6.2f} s (accept "
                      f"{result['accept']:5.2f} s, assign {result['assign']:5.2f} s, first "
                      f"running {result['first']:5.2f} s, start {result['start']:6.2f} s; jobs "
                      f"per host {result['spread']})", flush=True)
        raw, agent = results["raw"], results["agent"]
        if raw:
            raws.append(raw["took"])
        if agent:
            agents.append(agent)
        if raw and agent:
            ratios.append(agent["took"] / raw["took"])
            print(f"  round {round_no} agent / raw {ratios[-1]:4.2f}x", flush=True)

    swarm, swarm_problem = None, None
    if SWARM:
        swarm, swarm_problem = attempt(swarm_mode)
        print(f"  swarm      : {swarm_problem or f'{swarm:6.2f} s'}", flush=True)

    def median(values):
        return f"{statistics.median(values):6.2f} s" if values else "n/a"

    def listed(values):
        return ", ".join(f"{t:.2f}" for t in values) or "none"

    print(f"\ncluster_place: {JOBS} jobs, medians over {ROUNDS} rounds")
    agent_times = [a["took"] for a in agents]
    print(f"  raw docker-py {median(raws)}  (rounds: {listed(raws)})")
    print(f"  agent         {median(agent_times)}  (rounds: {listed(agent_times)})")
    for phase, what in (("accept", "POST answered"), ("assign", "every job on its host"),
                        ("first", "first job running"), ("start", "every job running")):
        print(f"    {phase:6s}      {median([a[phase] for a in agents])}  ({what})")
    if SWARM:
        print(f"  swarm         {swarm_problem or f'{swarm:6.2f} s'}")
    for problem in problems:
        print(f"  FAILED {problem}")
    print(flush=True)

    if problems:
        target("cluster_place agent / raw docker-py", f"n/a ({shown(problems, first=1)})",
               f"<= {LIMIT}x", met=False)
    else:
        ratio = statistics.median(ratios)
        target("cluster_place agent / raw docker-py", ratio, f"<= {LIMIT}x", met=ratio <= LIMIT,
               unit="x")
    if SWARM:
        if swarm_problem or not agents:
            target("cluster_place swarm / agent", f"n/a ({swarm_problem or 'no agent time'})",
                   ">= 1.0x", met=False)
        else:
            ratio = swarm / statistics.median(agent_times)
            target("cluster_place swarm / agent", ratio, ">= 1.0x", met=ratio >= 1.0, unit="x")


if __name__ == "__main__":
    main()
