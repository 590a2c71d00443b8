"""The fault cases of issue 9, each against real processes it starts, breaks and checks: agents,
dockerd, etcd. tests/test_faults.py asserts on what each case returns; bench/faults.py runs them
(longer where a case has a length) and prints the figures.

Each case returns a Figures record: jobs before the fault, jobs after it, how many were lost
(should run and do not) or duplicated (more than one container for one job id), the seconds the
system took to converge once the fault ended, and whether an agent exited on its own; `details`
holds what is particular to the case, for its test to check.
"""
from __future__ import annotations

import os
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import gevent
import requests

from host.client import ClusterClient
from host.cluster.view import CURSOR_SCALE
from host.discovery.etcd import EtcdDiscovery
from host.errors import FlynnError
from host.runtime.labels import LABEL_HOST_ID, LABEL_JOB_ID
from tests.faults import ETCD_ERRORS, EtcdCluster, EtcdFaultProxy, PrivateDockerd
from tests.support import (TEST_IMAGE, AgentProcess, job_body, remove_host_containers,
                           wait_until)

#: a job that says it is ready once its trap is set, and exits with `code` on SIGTERM
def trap_job(code: int) -> dict:
    return job_body(["sh", "-c", f"trap 'exit {code}' TERM; echo ready; "
                                 "while :; do sleep 0.1; done"])


SLEEPER = job_body(["sleep", "3600"])


@dataclass
class Figures:
    case: str
    jobs_before: int = 0
    jobs_after: int = 0
    lost: int = 0
    duplicated: int = 0
    converge_s: float = 0.0
    agent_exited: bool = False
    details: dict = field(default_factory=dict)

    ROW = "{:<34} {:>7} {:>6} {:>5} {:>5} {:>10} {:>7}"

    @classmethod
    def header(cls) -> str:
        return cls.ROW.format("case", "before", "after", "lost", "dup", "converge", "exited")

    def row(self) -> str:
        return self.ROW.format(self.case, self.jobs_before, self.jobs_after, self.lost,
                               self.duplicated, f"{self.converge_s:.1f}s",
                               "yes" if self.agent_exited else "no")


class Scene:
    """What a case starts, so that it is all stopped and removed whatever happens."""

    def __init__(self, runtime, name: str):
        self.runtime = runtime
        self.name = f"{name}{os.getpid()}"
        self.agents: list = []
        self.closers: list = []
        self._host_ids: set = set()

    def agent(self, suffix: str, **kwargs) -> AgentProcess:
        """An agent (not started) for host `suffix`; the first one of a host id starts from an
        engine without its containers, a later one (a restart) finds them."""
        agent = AgentProcess(f"{self.name}-{suffix}", **kwargs)
        if agent.host_id not in self._host_ids:
            self._host_ids.add(agent.host_id)
            remove_host_containers(self.runtime, agent.host_id)
        self.agents.append(agent)
        return agent

    def etcd_env(self, peers: Optional[str] = None) -> dict:
        env = {"FLYNN_ETCD_PREFIX": f"/flynn-test/{self.name}"}
        if peers:
            env["FLYNN_HOST_ETCD_ENDPOINTS"] = peers
        return env

    def close(self):
        for agent in self.agents:
            agent.cleanup()
        for host_id in self._host_ids:
            remove_host_containers(self.runtime, host_id)
        for close in reversed(self.closers):
            close()

    def containers(self, running_only: bool = False, host_ids=None) -> Counter:
        """Containers per job id, on every host of the scene or those given (those running, or
        all)."""
        counts = Counter()
        for host_id in host_ids or self._host_ids:
            for container in self.runtime.list({LABEL_HOST_ID: host_id}):
                if container.running or not running_only:
                    counts[container.labels.get(LABEL_JOB_ID)] += 1
        return counts

    def running_containers(self) -> Counter:
        return self.containers(running_only=True)

    def exited(self, expected_gone=()) -> bool:
        """Whether an agent exited that the case did not stop itself."""
        return any(a.proc.poll() is not None for a in self.agents
                   if a not in expected_gone and a.proc is not None)


def put_all(agent: AgentProcess, jobs: dict) -> dict:
    """PUT every {id: body} at once; the answers by id."""
    puts = {job_id: gevent.spawn(agent.client.put, f"/host/jobs/{job_id}", json=body)
            for job_id, body in jobs.items()}
    return {job_id: put.get(timeout=120) for job_id, put in puts.items()}


def wait_all(agent: AgentProcess, job_ids, statuses, timeout=90.0) -> dict:
    return {job_id: agent.client.wait_status(job_id, statuses, timeout=timeout)
            for job_id in job_ids}


def timed(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `condition()` held (checked every 50 ms)."""
    started = time.monotonic()
    wait_until(condition, timeout, what)
    return time.monotonic() - started


def duplicated(counts: Counter) -> int:
    return sum(n - 1 for n in counts.values() if n > 1)


#: why cluster_view() could not answer, most recent last (a case reports them in its details)
VIEW_FAILURES: list = []


def cluster_view(agent: AgentProcess) -> Optional[dict]:
    """{host id: {job id: status}} from the leader's mirror through `agent`; None if it cannot
    answer now (why is appended to VIEW_FAILURES)."""
    try:
        resp = agent.client.get("/cluster/hosts", timeout=5)
    except requests.RequestException as e:
        VIEW_FAILURES.append(f"{agent.host_id}: {type(e).__name__}: {e}")
        return None
    if resp.status_code != 200:
        VIEW_FAILURES.append(f"{agent.host_id}: {resp.status_code} {resp.text.strip()}")
        return None
    return {h["id"]: {j["id"]: j["status"] for j in h["jobs"]} for h in resp.json()}


def answered_view(agent: AgentProcess, timeout: float = 10.0) -> dict:
    """cluster_view(agent) once it answers, within `timeout` seconds."""
    views = []
    try:
        wait_until(lambda: views.append(cluster_view(agent)) or views[-1] is not None, timeout,
                   f"the cluster view through {agent.host_id} answering")
    except AssertionError as e:
        raise AssertionError(f"{e}; the last answers: {VIEW_FAILURES[-3:]}") from None
    return views[-1]


def converged(agents: list, etcd: EtcdDiscovery, expected: dict) -> bool:
    """The cluster agrees with etcd: every host registered, every agent naming the oldest
    registration as leader, and the leader's mirror caught up with every registration and
    showing every host with `expected` jobs ({host id: {job id: status}}). Caught up, because
    a mirror whose watch is still retrying shows the hosts as they were before etcd went away,
    which can look just like `expected` until it learns that their keys expired meanwhile."""
    _, registrations = etcd.list_hosts()
    if {r.host_id for r in registrations} != set(expected):
        return False
    oldest = min(registrations, key=lambda r: r.created_index).host_id
    newest = max(r.created_index for r in registrations)
    return all(leader_of(a) == oldest for a in agents) and \
        mirror_index(agents[0]) >= newest and cluster_view(agents[0]) == expected


def mirror_index(agent: AgentProcess) -> int:
    """The etcd index up to which the leader's mirror (asked through `agent`) has applied the
    registrations' changes: its cluster events are numbered index x CURSOR_SCALE + place."""
    try:
        resp = agent.client.get("/cluster/events", timeout=5)
    except requests.RequestException:
        return -1
    return resp.json()["cursor"] // CURSOR_SCALE if resp.status_code == 200 else -1


def leader_of(agent: AgentProcess) -> Optional[str]:
    try:
        resp = agent.client.get("/cluster/leader", timeout=5)
    except requests.RequestException:
        return None
    return resp.json()["id"] if resp.status_code == 200 else None


# ---- 1. agent kill -9 and restart ------------------------------------------------------------

def agent_killed_and_restarted(runtime, running=20, exiting=2) -> Figures:
    figures = Figures("1 agent kill -9 and restart")
    scene = Scene(runtime, "fkill")
    try:
        agent = scene.agent("h", args=["-memory-mb", "2000"]).start()
        jobs = {f"run{n}": dict(job_body(["sleep", "3600"], ports=[{"port": 0}]),
                                resources={"memory_mb": 10}) for n in range(running)}
        jobs.update({f"exit{n}": trap_job(3) for n in range(exiting)})
        put_all(agent, jobs)
        before = wait_all(agent, jobs, "running")
        for n in range(exiting):
            agent.client.wait_for_output(f"exit{n}", b"ready\n")
        figures.jobs_before = len(before)
        cursor = agent.client.get("/host/events").json()["cursor"]

        agent.kill()
        for n in range(exiting):  # they end while no agent watches
            container_id = before[f"exit{n}"]["container_id"]
            runtime.signal(container_id, "TERM")
            wait_until(lambda c=container_id: not runtime.inspect(c).running, 10, "the exit")

        restarted = time.monotonic()
        again = scene.agent("h", state_dir=agent.state_dir).start()
        scene.agents.remove(agent)
        after = wait_all(again, jobs, ("running", "done", "crashed", "failed"))
        ended = wait_all(again, [f"exit{n}" for n in range(exiting)], ("done", "crashed"))
        figures.converge_s = time.monotonic() - restarted
        still = {j: a for j, a in after.items() if j.startswith("run")}
        figures.jobs_after = sum(1 for a in still.values() if a["status"] == "running")
        figures.lost = running - figures.jobs_after
        figures.duplicated = duplicated(scene.containers())
        events = again.client.get("/host/events", params={"since": cursor}).json()["events"]
        port = still["run0"]["ports"][0]["port"]
        clash = again.client.put("/host/jobs/clash", json=job_body(["true"], ports=[
            {"port": port}]))
        figures.details = {
            "same_containers": sum(1 for j, a in still.items()
                                   if a["container_id"] == before[j]["container_id"]),
            "same_ports": sum(1 for j, a in still.items() if a["ports"] == before[j]["ports"]),
            "allocated_memory_mb": again.client.get("/host/status").json()["allocated"][
                "memory_mb"],
            "exits": sorted((j, e["status"], e["exit_status"]) for j, e in ended.items()),
            "exit_events": sorted((e["job_id"], e["event"], e["job"]["exit_status"])
                                  for e in events),
            "port_clash_status": clash.status_code,
        }
        figures.agent_exited = scene.exited()
    finally:
        scene.close()
    return figures


# ---- 2. a damaged state dir ------------------------------------------------------------------

def _garbage(path):
    with open(path, "wb") as f:
        f.write(b"\x00not a database\x00" * 512)


def _half_written(path):
    with open(path, "rb") as f:
        head = f.read(100)
    with open(path, "wb") as f:
        f.write(head)


def _zero_length(path):
    open(path, "wb").close()


DAMAGE = {"not a database": _garbage, "half-written": _half_written,
          "zero-length": _zero_length, "missing": os.remove}


def damaged_state_dir(runtime, jobs=3) -> list:
    """For each kind of damage to the job table (and the host-id file with the last one): the
    agent starts, rebuilds the table from the labels, keeps every running job, and never touches
    a container labelled for another host id. One Figures per kind."""
    results = []
    scene = Scene(runtime, "fdamage")
    try:
        agent = scene.agent("h").start()
        ids = [f"keep{n}" for n in range(jobs)]
        put_all(agent, {job_id: SLEEPER for job_id in ids})
        before = wait_all(agent, ids, "running")
        # a container of another host on the same engine: never ours to adopt or stop
        stranger = scene.agent("other")
        stranger.start()
        stranger.client.put_job(ids[0], SLEEPER)  # even under one of our job ids
        stranger_container = stranger.client.wait_status(ids[0], "running")["container_id"]
        stranger.kill()
        scene.agents.remove(stranger)
        for number, (kind, damage) in enumerate(DAMAGE.items()):
            figures = Figures(f"2 damaged state dir: {kind}", jobs_before=jobs)
            agent.stop()
            scene.agents.remove(agent)
            damage(os.path.join(agent.state_dir, "jobs.sqlite3"))
            if number == len(DAMAGE) - 1:
                with open(os.path.join(agent.state_dir, "host-id"), "wb") as f:
                    f.write(b"\xfftrunc")
            started = time.monotonic()
            agent = scene.agent("h", state_dir=agent.state_dir).start()
            after = wait_all(agent, ids, ("running", "done", "crashed", "failed"))
            figures.converge_s = time.monotonic() - started
            figures.jobs_after = sum(1 for a in after.values() if a["status"] == "running")
            figures.lost = jobs - figures.jobs_after
            figures.duplicated = duplicated(scene.containers(host_ids=[agent.host_id]))
            figures.agent_exited = scene.exited()
            figures.details = {
                "same_containers": sum(1 for j, a in after.items()
                                       if a["container_id"] == before[j]["container_id"]),
                "stranger_running": runtime.inspect(stranger_container).running,
                "stranger_host": runtime.inspect(stranger_container).labels[LABEL_HOST_ID],
                "host_id": agent.client.get("/host/status").json()["id"],
                "set_aside": sorted(name.split(".damaged-")[0] for name in
                                    os.listdir(agent.state_dir) if ".damaged-" in name),
                "old_cursor": agent.client.get("/host/events",
                                               params={"since": 1}).status_code,
            }
            results.append(figures)
    finally:
        scene.close()
    return results


# ---- 3. dockerd restarted for real -----------------------------------------------------------

def dockerd_restarted(runtime, live_restore: bool, jobs=4) -> Figures:
    """The agent's engine (a dockerd of the test's own) stops and starts again. With live
    restore the containers survive it; without, they die with the engine (exit 143: a TERM)."""
    figures = Figures(f"3 dockerd restart, live-restore {'on' if live_restore else 'off'}")
    scene = Scene(runtime, "fdockerd")
    engine = PrivateDockerd(tempfile.mkdtemp(prefix="fd", dir="/tmp"), live_restore)
    scene.closers.append(engine.close)
    try:
        engine.start()
        engine.ensure_image(TEST_IMAGE)
        private = type(runtime)(base_url=engine.docker_host)
        scene.runtime = private
        agent = scene.agent("h", env={"DOCKER_HOST": engine.docker_host}).start()
        ids = [f"job{n}" for n in range(jobs)]
        put_all(agent, {job_id: trap_job(143) for job_id in ids})
        before = wait_all(agent, ids, "running")
        for job_id in ids:
            agent.client.wait_for_output(job_id, b"ready\n")
        figures.jobs_before = jobs

        engine.stop()
        during = agent.client.put("/host/jobs/during", json=SLEEPER)
        listed = agent.client.get("/host/jobs")
        status = agent.client.get("/host/status").json()
        engine.start()
        restarted = time.monotonic()
        expected = "running" if live_restore else "crashed"
        after = wait_all(agent, ids, (expected,), timeout=60)
        # converged: the agent follows the engine again and takes new jobs
        answers = []
        wait_until(lambda: answers.append(agent.client.put(
            "/host/jobs/after", json=job_body(["true"]))) or answers[-1].status_code != 503,
            30, "a new job accepted")
        figures.converge_s = time.monotonic() - restarted
        new = answers[-1]
        agent.client.wait_status("after", "done")
        figures.jobs_after = sum(1 for a in after.values() if a["status"] == "running")
        figures.lost = (jobs - figures.jobs_after) if live_restore else 0
        figures.duplicated = duplicated(scene.containers())
        figures.agent_exited = scene.exited()
        figures.details = {
            "during_status": during.status_code,
            "during_body": during.json(),
            "list_during": listed.status_code,
            "docker_during": status["docker"],
            "statuses": sorted({a["status"] for a in after.values()}),
            "exit_statuses": sorted({a["exit_status"] for a in after.values()}, key=str),
            "same_containers": sum(1 for j, a in after.items()
                                   if a["container_id"] == before[j]["container_id"]),
            "after_status": new.status_code,
            "left_starting": sum(1 for j in agent.client.get("/host/jobs").json()
                                 if j["status"] == "starting"),
        }
    finally:
        scene.close()
    return figures


# ---- 4. etcd unavailable for a while, then answering every error -----------------------------

def etcd_outage(runtime, peers: str, outage_s=30.0, error_s=0.5, hang_s=6.0) -> Figures:
    figures = Figures(f"4 etcd away {outage_s:g}s, every error")
    scene = Scene(runtime, "fetcd")
    proxy = EtcdFaultProxy(peers.split(",")[0])
    scene.closers.append(proxy.close)
    try:
        agents = [scene.agent(f"h{n}", ip=f"127.0.0.{n + 2}", args=["-heartbeat-ttl", "3"],
                              env=scene.etcd_env(proxy.url)).start() for n in range(2)]
        first, second = agents
        for agent in agents:
            put_all(agent, {f"{agent.host_id}-j{n}": SLEEPER for n in range(2)})
        expected = {a.host_id: {f"{a.host_id}-j{n}": "running" for n in range(2)}
                    for a in agents}
        wait_until(lambda: cluster_view(second) == expected, 20, "the mirror of both hosts")
        figures.jobs_before = 4
        follower = ClusterFollower(first)
        scene.closers.append(follower.stop)

        proxy.cut()
        outage_started = time.monotonic()
        served = {"list": [], "put": [], "cluster": []}
        n = 0
        while time.monotonic() - outage_started < outage_s:
            gevent.sleep(min(5.0, outage_s / 3))
            for agent in agents:
                served["list"].append(agent.client.get("/host/jobs").status_code)
                job_id = f"{agent.host_id}-during{n}"
                served["put"].append(agent.client.put(f"/host/jobs/{job_id}",
                                                      json=SLEEPER).status_code)
                expected[agent.host_id][job_id] = "running"
                served["cluster"].append(agent.client.get("/cluster/hosts").status_code)
            n += 1
        etcd = EtcdDiscovery(peers, f"/flynn-test/{scene.name}")  # not through the proxy
        proxy.pass_through()
        figures.converge_s = timed(lambda: converged(agents, etcd, expected), 60,
                                   "the cluster converging after the outage")
        expired_keys_remade = sum(a.log(tail=0).count("registering again") for a in agents)
        cut_410s = follower.expired

        for code in sorted(ETCD_ERRORS):
            proxy.answer_errors(code)
            gevent.sleep(error_s)
        proxy.answer_bad_gateway()
        gevent.sleep(error_s)
        proxy.hang()
        gevent.sleep(hang_s)
        proxy.pass_through()
        errors_converge_s = timed(lambda: converged(agents, etcd, expected), 60,
                                  "the cluster converging after the errors")
        try:  # as a scheduler would: ClusterClient retries what says retry
            placed = ClusterClient(second.client.url).add_jobs([dict(job_body(["true"]),
                                                                     id="after-etcd")])
            placed = (200, placed)
        except FlynnError as e:
            placed = (getattr(e, "http_status", None), e.to_dict())
        del VIEW_FAILURES[:]
        # an agent whose watch was still in backoff when etcd came back catches up change by
        # change, and may answer not_leader (retry: true) for a moment, as clients are told
        views = [answered_view(second), answered_view(first)]
        figures.jobs_after = sum(len(jobs) for jobs in views[0].values())
        figures.lost = sum(1 for host, jobs in expected.items() for job_id in jobs
                           if views[1].get(host, {}).get(job_id) != "running")
        figures.duplicated = duplicated(scene.containers())
        figures.agent_exited = scene.exited()
        figures.details = {
            "served_during_outage": {k: sorted(set(v)) for k, v in served.items()},
            "expired_keys_remade": expired_keys_remade,
            "follower_410_during_cut": cut_410s,
            "follower_missed": follower.missed,
            "errors_converge_s": round(errors_converge_s, 1),
            "proxy_error_requests": proxy.stats["errors"]["requests"],
            "addjobs_after": placed,
            "view_not_answered": list(VIEW_FAILURES),
            "jobs_seen": {host: len(jobs) for host, jobs in views[1].items()},
            "heartbeat_failure_warnings": sum(a.log(tail=0).count("WARNING host.discovery."
                                                                  "heartbeat: heartbeat: ")
                                              for a in agents),
            "heartbeat_recoveries": sum(a.log(tail=0).count("heartbeat: recovered")
                                        for a in agents),
        }
    finally:
        scene.close()
    return figures


class ClusterFollower:
    """A client following /cluster/events with its cursor, as a scheduler would: it counts the
    410s it got (each one a re-list) and cursors that went backwards."""

    def __init__(self, agent: AgentProcess):
        self.agent = agent
        self.expired = 0
        self.missed = 0
        self.events = []
        self.cursor = agent.client.get("/cluster/events").json()["cursor"]
        self._greenlet = gevent.spawn(self._run)

    def _run(self):
        while True:
            try:
                resp = self.agent.client.get("/cluster/events",
                                             params={"since": self.cursor, "wait": 5}, timeout=15)
            except requests.RequestException:
                gevent.sleep(0.2)
                continue
            if resp.status_code == 410:
                self.expired += 1
                self.cursor = resp.json()["cursor"]
                continue
            if resp.status_code != 200:
                gevent.sleep(0.2)
                continue
            page = resp.json()
            for event in page["events"]:
                if event["cursor"] <= self.cursor:
                    self.missed += 1
            self.events += page["events"]
            self.cursor = page["cursor"]

    def stop(self):
        self._greenlet.kill()


# ---- 5. a 3-member etcd loses its raft leader, then a member -----------------------------------

def etcd_members_lost(runtime) -> Figures:
    figures = Figures("5 etcd raft leader, member lost")
    scene = Scene(runtime, "fraft")
    cluster = EtcdCluster(3).start()
    scene.closers.append(cluster.close)
    try:
        agents = [scene.agent(f"h{n}", ip=f"127.0.0.{n + 2}", env=scene.etcd_env(
            cluster.client_urls)).start() for n in range(3)]
        wait_until(lambda: len(cluster_view(agents[2]) or {}) == 3, 20, "three hosts")
        counter = iter(range(1000))

        def add_job_works() -> bool:
            job_id = f"raft{next(counter)}"
            try:
                resp = agents[1].client.post("/cluster/jobs", timeout=40, json={
                    "jobs": [dict(SLEEPER, id=job_id)]})
            except requests.RequestException:
                return False
            if resp.status_code == 200:
                placed.append(job_id)
            return resp.status_code == 200

        placed = []
        assert add_job_works()
        figures.jobs_before = len(placed)
        leader = cluster.raft_leader()
        cluster.kill(leader)
        after_leader = timed(add_job_works, 60, "AddJobs after the raft leader died")
        cluster.start_member(leader)
        follower = next(m.name for m in cluster.running_members()
                        if m.name != cluster.raft_leader())
        cluster.kill(follower)
        after_member = timed(add_job_works, 60, "AddJobs after a member died")
        figures.converge_s = max(after_leader, after_member)
        wait_until(lambda: sum(len(j) for j in (cluster_view(agents[0]) or {}).values())
                   == len(placed), 30, "every placed job in the mirror")
        running = scene.running_containers()
        wait_until(lambda: all(scene.running_containers()[j] == 1 for j in placed), 30,
                   "every placed job running")
        running = scene.running_containers()
        figures.jobs_after = sum(1 for j in placed if running[j])
        figures.lost = len(placed) - figures.jobs_after
        figures.duplicated = duplicated(scene.containers())
        figures.agent_exited = scene.exited()
        figures.details = {"addjobs_after_leader_s": round(after_leader, 1),
                           "addjobs_after_member_s": round(after_member, 1),
                           "placed": len(placed)}
    finally:
        scene.close()
    return figures


# ---- 6. leader kill -9 in the middle of 200 jobs ---------------------------------------------

def leader_killed_mid_requests(runtime, requests_count=20, per_request=10) -> Figures:
    figures = Figures(f"6 leader kill -9 mid {requests_count * per_request} jobs")
    scene = Scene(runtime, "fmid")
    try:
        agents = [scene.agent(f"h{n}", ip=f"127.0.0.{n + 2}", args=["-heartbeat-ttl", "3"],
                              env=scene.etcd_env()).start() for n in range(3)]
        leader, via, spare = agents
        wait_until(lambda: len(cluster_view(via) or {}) == 3, 20, "three hosts")
        bodies = [{"jobs": [dict(SLEEPER, id=f"m{r}-{n}") for n in range(per_request)]}
                  for r in range(requests_count)]
        all_ids = [job["id"] for body in bodies for job in body["jobs"]]
        retries = Counter()

        def send(body) -> None:
            """As a client that retries whatever got no answer, with the same ids."""
            deadline = time.monotonic() + 120
            targets = [via, spare]
            while time.monotonic() < deadline:
                target = targets[retries[id(body)] % 2]
                try:
                    resp = target.client.post("/cluster/jobs", json=body, timeout=45)
                    if resp.status_code == 200:
                        return
                    if not resp.json().get("retry"):
                        raise AssertionError(f"AddJobs refused: {resp.text}")
                except requests.RequestException:
                    pass
                retries[id(body)] += 1
                gevent.sleep(0.2)
            raise AssertionError("a request got no answer for 120 s")

        killed_at = None
        for number, body in enumerate(bodies):
            if number == requests_count // 4:
                in_flight = gevent.spawn(send, body)
                gevent.sleep(0.05)
                leader.kill()
                killed_at = time.monotonic()
                # as systemd's Restart= would, once the next-oldest has taken over: jobs the
                # leader acknowledged for its own host are taken when it is back (an assignment
                # waits for its host; started elsewhere, it could run twice)
                restart = gevent.spawn(_restart_after_failover, scene, leader, via)
                in_flight.get()
            else:
                send(body)
        restarted = restart.get(timeout=60)
        figures.jobs_before = len(all_ids)
        wait_until(lambda: set(scene.running_containers()) >= set(all_ids), 180,
                   "every acknowledged job running")
        figures.converge_s = time.monotonic() - killed_at
        running = scene.running_containers()
        figures.jobs_after = sum(1 for j in all_ids if running[j])
        figures.lost = len(all_ids) - figures.jobs_after
        figures.duplicated = duplicated(scene.containers())
        figures.agent_exited = scene.exited()
        figures.details = {"retried_requests": len(retries),
                           "new_leader": leader_of(via), "killed": leader.host_id,
                           "restarted_s": round(restarted, 1)}
    finally:
        scene.close()
    return figures


def _restart_after_failover(scene: Scene, killed: AgentProcess, observer: AgentProcess) -> float:
    """Start the killed agent again once another has taken over; seconds it was down."""
    killed_at = time.monotonic()
    wait_until(lambda: leader_of(observer) not in (None, killed.host_id), 30, "a new leader")
    scene.agents.remove(killed)
    scene.agent(killed.host_id.rsplit("-", 1)[1], ip=killed.ip, args=killed.args,
                state_dir=killed.state_dir, env=scene.etcd_env()).start()
    return time.monotonic() - killed_at


# ---- 7. a paused leader ----------------------------------------------------------------------

def paused_leader(runtime, ttl=3) -> Figures:
    figures = Figures("7 paused leader")
    scene = Scene(runtime, "fpause")
    try:
        agents = [scene.agent(f"h{n}", ip=f"127.0.0.{n + 2}", args=["-heartbeat-ttl", str(ttl)],
                              env=scene.etcd_env()).start() for n in range(3)]
        old, new, third = agents
        wait_until(lambda: len(cluster_view(third) or {}) == 3, 20, "three hosts")
        old.proc.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: leader_of(third) == new.host_id, ttl + 10, "a new leader")
            to_old = gevent.spawn(old.client.post, "/cluster/jobs", timeout=60, json={
                "jobs": [dict(SLEEPER, id="shared"), dict(SLEEPER, id="only-old")]})
            gevent.sleep(0.2)  # queued in the paused leader's socket
            to_new = new.client.post("/cluster/jobs", json={
                "jobs": [dict(SLEEPER, id="shared"), dict(SLEEPER, id="only-new")]})
        finally:
            old.proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        old_answer = to_old.get(timeout=60)
        figures.jobs_before = 3
        wait_until(lambda: leader_of(old) == new.host_id, 30, "the old leader stepping down")
        figures.converge_s = time.monotonic() - resumed
        wait_until(lambda: scene.running_containers()["only-new"] == 1 and
                   scene.running_containers()["shared"] == 1, 30, "the new leader's jobs")
        # anything the old leader's answer acknowledged runs too: wait for it
        if old_answer.status_code == 200:
            wait_until(lambda: scene.running_containers()["only-old"] == 1, 30,
                       "the old leader's acknowledged job")
        counts = scene.containers()
        figures.jobs_after = sum(1 for j in ("shared", "only-new", "only-old") if counts[j])
        figures.lost = 0 if counts["shared"] and counts["only-new"] else 1
        figures.duplicated = duplicated(counts)
        figures.agent_exited = scene.exited()
        figures.details = {"to_new": to_new.status_code, "to_old": old_answer.status_code,
                           "to_old_body": old_answer.json(),
                           "old_is_leader": old.client.get("/host/status").json()["is_leader"],
                           "counts": {j: counts[j] for j in ("shared", "only-new", "only-old")}}
    finally:
        scene.close()
    return figures


# ---- 8. a host lost and back -----------------------------------------------------------------

def host_lost_and_back(runtime, ttl=3, jobs=3) -> Figures:
    figures = Figures("8 host lost and back")
    scene = Scene(runtime, "flost")
    try:
        leader, lost = [scene.agent(f"h{n}", ip=f"127.0.0.{n + 2}",
                                    args=["-heartbeat-ttl", str(ttl)],
                                    env=scene.etcd_env()).start() for n in range(2)]
        ids = [f"l{n}" for n in range(jobs)]
        placed = leader.client.post("/cluster/jobs", json={lost.host_id: [
            dict(SLEEPER, id=job_id) for job_id in ids]})
        assert placed.status_code == 200, placed.text
        before = wait_all(lost, ids, "running")
        figures.jobs_before = jobs
        cursor = leader.client.get("/cluster/events").json()["cursor"]
        lost.proc.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: lost.host_id not in (cluster_view(leader) or {lost.host_id: 1}),
                       ttl + 10, "the host reported lost")
        finally:
            lost.proc.send_signal(signal.SIGCONT)
        back = time.monotonic()
        wait_until(lambda: (cluster_view(leader) or {}).get(lost.host_id) ==
                   {j: "running" for j in ids}, 30, "the host back with its jobs")
        figures.converge_s = time.monotonic() - back
        events = leader.client.get("/cluster/events", params={"since": cursor}).json()["events"]
        after = {j: lost.client.job(j) for j in ids}
        figures.jobs_after = sum(1 for a in after.values() if a["status"] == "running")
        figures.lost = jobs - figures.jobs_after
        figures.duplicated = duplicated(scene.containers())
        figures.agent_exited = scene.exited()
        figures.details = {
            "lost_events": sorted(e["job_id"] for e in events
                                  if e["event"] == "error" and e["job"]["status"] == "lost"),
            "host_events": [e["event"] for e in events if e["type"] == "host"],
            "same_containers": sum(1 for j in ids if after[j]["container_id"] ==
                                   before[j]["container_id"]),
        }
    finally:
        scene.close()
    return figures


# ---- 9. graceful stop ------------------------------------------------------------------------

def graceful_stop(runtime) -> Figures:
    figures = Figures("9 graceful stop")
    scene = Scene(runtime, "fstop")
    try:
        agent = scene.agent("h", env=scene.etcd_env()).start()
        etcd = EtcdDiscovery(os.environ["FLYNN_HOST_ETCD_ENDPOINTS"], f"/flynn-test/{scene.name}")
        wait_until(lambda: etcd.registration(agent.host_id) is not None, 10, "registered")
        put_all(agent, {f"g{n}": SLEEPER for n in range(2)})
        wait_all(agent, ["g0", "g1"], "running")
        figures.jobs_before = 2
        # a long-poll in progress: the stop does not wait for it
        poll = gevent.spawn(_long_poll, agent)
        gevent.sleep(0.2)
        signalled = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        deregistered = timed(lambda: etcd.registration(agent.host_id) is None, 5,
                             "the key deleted")
        code = agent.proc.wait(10)
        figures.converge_s = time.monotonic() - signalled
        poll.kill()
        running = scene.running_containers()
        figures.jobs_after = running["g0"] + running["g1"]
        # again, with etcd hanging (the stop waits on the deregistration) and an operator who
        # does not want to wait: the second signal
        proxy = EtcdFaultProxy(os.environ["FLYNN_HOST_ETCD_ENDPOINTS"].split(",")[0])
        scene.closers.append(proxy.close)
        again = scene.agent("h", state_dir=agent.state_dir, env=scene.etcd_env(proxy.url))
        scene.agents.remove(agent)
        again.start()
        wait_until(lambda: etcd.registration(agent.host_id) is not None, 10, "registered")
        proxy.hang()
        logged = os.path.getsize(again.log_path)  # the state dir's log holds the first run's
        again.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping (signal)" in _log_since(again, logged), 5, "the stop begun")
        second = time.monotonic()
        again.proc.send_signal(signal.SIGTERM)
        second_code = again.proc.wait(10)
        figures.details = {"exit_code": code, "deregistered_s": round(deregistered, 2),
                           "second_signal_code": second_code,
                           "second_signal_s": round(time.monotonic() - second, 2)}
        figures.lost = 2 - figures.jobs_after
        figures.duplicated = duplicated(scene.containers())
    finally:
        scene.close()
    return figures


def _log_since(agent: AgentProcess, offset: int) -> str:
    with open(agent.log_path, errors="replace") as f:
        f.seek(offset)
        return f.read()


def _long_poll(agent: AgentProcess):
    """A client waiting on the agent's events; the agent going away ends it quietly."""
    try:
        agent.client.get("/host/events", params={"wait": 30}, timeout=40)
    except requests.RequestException:
        pass


# ---- 10. soak --------------------------------------------------------------------------------

def soak(runtime, seconds=60.0, jobs_per_s=2.0, followers=3) -> Figures:
    """Steady churn (short jobs, some with a port, some failing) with followers on the event
    stream: RSS and descriptors stay flat, no event is missed, no job is left starting."""
    figures = Figures(f"10 soak {seconds:g}s")
    scene = Scene(runtime, "fsoak")
    try:
        # small bounded buffers, full within seconds: growth after that is a leak
        agent = scene.agent("h", args=["-retain-ended", "20", "-event-buffer", "200"],
                            env=scene.etcd_env()).start()
        pid = agent.proc.pid
        start_cursor = agent.client.get("/host/events").json()["cursor"]
        followers_list = [HostFollower(agent, start_cursor) for _ in range(followers)]
        scene.closers += [f.stop for f in followers_list]
        samples = []
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < seconds:
            kind = n % 4
            body = (job_body(["true"]) if kind == 0 else
                    job_body(["sh", "-c", "exit 2"]) if kind == 1 else
                    job_body(["sh", "-c", "sleep 0.5"], ports=[{"port": 0}]) if kind == 2 else
                    job_body(["x"], image="127.0.0.1:1/flynn-test/missing:latest"))
            gevent.spawn(agent.client.put, f"/host/jobs/s{n}", json=body)
            n += 1
            if n % max(1, int(jobs_per_s * 5)) == 0:
                samples.append(_process_sample(pid))
            gevent.sleep(1 / jobs_per_s)
        figures.jobs_before = n
        settled = time.monotonic()
        wait_until(lambda: not [j for j in agent.client.get("/host/jobs").json()
                                if j["status"] in ("starting", "running")], 60,
                   "every soak job ended")
        figures.converge_s = time.monotonic() - settled
        last = agent.client.get("/host/events").json()["cursor"]
        wait_until(lambda: all(f.cursor >= last for f in followers_list), 20,
                   "followers caught up")
        samples.append(_process_sample(pid))
        warm = samples[len(samples) // 4] if len(samples) > 4 else samples[0]
        created = {e["job_id"] for e in followers_list[0].events if e["event"] == "create"}
        figures.jobs_after = len(created)
        figures.lost = n - len(created)
        figures.duplicated = duplicated(scene.containers())
        figures.agent_exited = scene.exited()
        figures.details = {
            "rss_mib": [round(s[0] / 1024, 1) for s in samples],
            "fds": [s[1] for s in samples],
            "rss_growth_mib": round((samples[-1][0] - warm[0]) / 1024, 1),
            "fd_growth": samples[-1][1] - warm[1],
            "events": last - start_cursor,
            "followers_seen": [len(f.events) for f in followers_list],
            "followers_gaps": [f.gaps for f in followers_list],
            "left_starting": sum(1 for j in agent.client.get("/host/jobs").json()
                                 if j["status"] == "starting"),
        }
    finally:
        scene.close()
    return figures


def _process_sample(pid: int) -> tuple:
    """(RSS in KiB, open descriptors) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class HostFollower:
    """A client following /host/events from a cursor: a host's cursors are contiguous, so a gap
    is a missed event."""

    def __init__(self, agent: AgentProcess, cursor: int):
        self.agent = agent
        self.cursor = cursor
        self.events = []
        self.gaps = 0
        self._greenlet = gevent.spawn(self._run)

    def _run(self):
        while True:
            try:
                resp = self.agent.client.get("/host/events", params={"since": self.cursor,
                                                                     "wait": 10}, timeout=20)
            except requests.RequestException:
                gevent.sleep(0.2)
                continue
            page = resp.json()
            for event in page.get("events", []):
                if event["cursor"] != self.cursor + 1:
                    self.gaps += 1
                self.cursor = event["cursor"]
                self.events.append(event)

    def stop(self):
        self._greenlet.kill()

