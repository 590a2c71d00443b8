"""The agent: wires the parts together and owns every long-lived greenlet.

Start-up: load the job table, (with -force) clear what a previous instance left, then follow the
runtime's events (which reconciles the table with the containers on every (re)connect).
Stopping the agent never stops jobs: it closes the API, ends its greenlets and closes the store.
A long-lived service that dies unexpectedly is logged and brings the whole agent down, loudly,
rather than leaving it half-alive.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from typing import Optional

import gevent
import gevent.event
import gevent.pool

import host
from host.clock import Clock
from host.cluster.assignments import AssignmentWatcher
from host.cluster.scheduler import JobScheduler
from host.cluster.view import ClusterView
from host.config import Config
from host.discovery.embedded import EmbeddedEtcd
from host.discovery.etcd import EtcdDiscovery, Records
from host.discovery.heartbeat import Heartbeat
from host.errors import FlynnError
from host.ports import PortAllocator
from host.runtime import Runtime
from host.state import JobTable
from host.store import Store
from host.supervisor import JobSupervisor
from host.types import STARTING, HostResources, id_problem

log = logging.getLogger(__name__)


def job_summary(job) -> dict:
    """A job as the heartbeat carries it: state, image, ports and reservations, not the spec."""
    return {"id": job.id, "status": job.status, "image": job.job.config.image,
            "ports": [p.to_dict() for p in job.ports], "resources": job.job.resources.to_dict(),
            "exit_status": job.exit_status, "error": job.error, "created_at": job.created_at,
            "started_at": job.started_at, "ended_at": job.ended_at}


def load_or_create_host_id(state_dir: str) -> str:
    """The id kept in the state dir, or a new one derived from the hostname (kept from then on,
    so renaming the machine does not turn it into a different host)."""
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, "host-id")
    try:
        with open(path) as f:
            kept = f.read().strip()
        if not id_problem(kept):
            return kept
    except FileNotFoundError:
        pass
    derived = re.sub(r"[^A-Za-z0-9_.-]", "", socket.gethostname())[:128]
    if id_problem(derived):
        derived = uuid.uuid4().hex
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(derived + "\n")
    os.replace(tmp, path)
    return derived


class Agent:
    def __init__(self, config: Config, runtime: Runtime, clock: Optional[Clock] = None,
                 discovery: Optional[EtcdDiscovery] = None,
                 embedded_etcd: Optional[EmbeddedEtcd] = None):
        """Without `discovery` the agent runs alone: no registration, no cluster API."""
        self.config = config
        self.runtime = runtime
        self.clock = clock or Clock()
        os.makedirs(config.state_dir, exist_ok=True)
        self.host_id = config.id or load_or_create_host_id(config.state_dir)
        self.store = Store.in_dir(config.state_dir, config.event_buffer)
        self.table = JobTable.load(self.host_id, self.store, self.clock, config.event_buffer)
        self.ports = PortAllocator(config.ports[0], config.ports[1], config.bind)
        self.capacity = HostResources(memory_mb=config.memory_mb, cpu_shares=config.cpu_shares)
        self.tasks = gevent.pool.Pool(config.task_concurrency)
        self.services: dict = {}
        self.crashed = gevent.event.AsyncResult()
        self.supervisor = JobSupervisor(
            host_id=self.host_id, external_ip=config.external, bind_ip=config.bind,
            capacity=self.capacity, retain_ended=config.retain_ended, runtime=runtime,
            table=self.table, ports=self.ports, clock=self.clock, spawn=self.spawn_task)
        self.started_at = self.clock.now_text()
        self.discovery = discovery
        self.embedded_etcd = embedded_etcd
        self.heartbeat = self.view = self.scheduler = self.assignments = None
        if discovery is not None:
            self.heartbeat = Heartbeat(discovery, self.host_id, config.heartbeat_ttl,
                                       self.host_record)
            self.view = ClusterView(discovery, self.host_id, config.event_buffer)
            self.scheduler = JobScheduler(self.view, Records(discovery, "cluster/requests"),
                                          Records(discovery, "cluster/assignments"), self.clock)
            self.assignments = AssignmentWatcher(
                Records(discovery, f"cluster/assignments/{self.host_id}"), self.supervisor,
                self.heartbeat, self.spawn_task)

    # ---- greenlets ------------------------------------------------------------------------

    def start(self):
        """Start the background services (not the HTTP server)."""
        log.info("host %s starting (addr %s, state dir %s, %d jobs in the table)", self.host_id,
                 self.config.addr, self.config.state_dir, len(self.table.list()))
        if self.config.force:
            self.supervisor.kill_leftovers()  # Unavailable propagates: -force needs Docker
        self.start_service("docker-events", self.supervisor.follow_runtime_events)
        if self.embedded_etcd is not None:
            self.embedded_etcd.start(self.discovery.ping)
            self.start_service("etcd", lambda: self.embedded_etcd.supervise(self.discovery.ping))
        if self.discovery is not None:
            self.start_service("heartbeat", self.heartbeat.run)
            self.start_service("cluster-view", self.view.run)
            self.start_service("state-publisher", self._publish_state_changes)
            self.start_service("scheduler", self.scheduler.run)
            self.start_service("leader-duties", self._leader_duties)
            self.start_service("assignments", self.assignments.run)

    def _leader_duties(self):
        """On every change of the cluster view, let the scheduler see whether it just took
        office (and must finish what an old leader accepted)."""
        while True:
            self.view.wait_for_change(60)
            if self.view.is_leader:
                self.scheduler.poke()

    def _publish_state_changes(self):
        """Every job event changes what the heartbeat publishes."""
        cursor = self.table.events.last_cursor
        while True:
            found, cursor = self.table.events.wait(cursor, 60)
            if found:
                self.heartbeat.mark_changed()

    def start_service(self, name: str, run):
        greenlet = gevent.spawn(run)
        greenlet.name = name
        greenlet.link_exception(self._service_died)
        self.services[name] = greenlet

    def _service_died(self, greenlet):
        log.critical("service %s died: %r; stopping the agent", greenlet.name, greenlet.exception)
        self.crashed.set(greenlet.exception)

    def spawn_task(self, run, *args):
        """A short background task. A bug in one is logged with its traceback; the agent goes on."""
        def task():
            try:
                run(*args)
            except FlynnError as e:
                log.warning("task %s: %s", getattr(run, "__name__", run), e)
            except Exception:
                log.exception("task %s%r failed", getattr(run, "__name__", run), args)
        return self.tasks.spawn(task)

    def stop(self):
        """Stop our greenlets and close the store. Jobs keep running."""
        for greenlet in self.services.values():
            greenlet.unlink(self._service_died)
        gevent.killall(list(self.services.values()), timeout=5)
        self.tasks.kill(timeout=5)
        if self.heartbeat is not None:
            self.heartbeat.deregister()  # the cluster reacts at once, not after the TTL
        if self.embedded_etcd is not None:
            self.embedded_etcd.stop()
        self.store.close()
        log.info("host %s stopped; its jobs keep running", self.host_id)

    # ---- what the API asks --------------------------------------------------------------

    def status(self) -> dict:
        try:
            self.runtime.ping()
            docker_state = "ok" if self.supervisor.events_connected else \
                "unavailable: not following Docker's events yet"
        except FlynnError as e:
            docker_state = f"unavailable: {e}"
        allocated = self.table.allocated()
        leader = self.view.leader() if self.view is not None else None
        return {
            "id": self.host_id,
            "addr": self.config.addr,
            "version": host.__version__,
            "leader": {"id": leader.id, "addr": leader.addr} if leader else None,
            "is_leader": self.view is not None and self.view.is_leader,
            "docker": docker_state,
            "etcd": self._etcd_state(),
            "jobs": self.table.counts(),
            "attributes": self.config.attributes,
            "resources": self.capacity.to_dict(),
            "allocated": allocated.to_dict(),
            "started_at": self.started_at,
            "events_cursor": self.table.events.last_cursor,
        }

    def _etcd_state(self) -> str:
        if self.discovery is None:
            return "disabled"
        try:
            self.discovery.ping()
            return "ok"
        except FlynnError as e:
            return f"unavailable: {e}"

    def host_record(self) -> dict:
        """What this host publishes in its registration: what the leader needs to place jobs and
        to report them. A job's full spec stays here and in its assignment."""
        return {
            "id": self.host_id,
            "addr": self.config.addr,
            "version": host.__version__,
            "attributes": self.config.attributes,
            "resources": self.capacity.to_dict(),
            "allocated": self.table.allocated().to_dict(),
            "jobs": [job_summary(j) for j in self.table.list()],
            "registered_at": self.started_at,
        }

    def wait_for_job(self, job_id: str, done, timeout_s: float):
        """The job (None while it does not exist) once `done(job)` holds, or as it is after
        `timeout_s`. Woken by the job's own events, never by polling."""
        deadline = self.clock.monotonic() + timeout_s
        cursor = self.table.events.last_cursor
        job = self.table.find(job_id)
        while not done(job):
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                break
            _, cursor = self.table.events.wait(cursor, min(remaining, 15.0),
                                               lambda e: e.job_id == job_id)
            job = self.table.find(job_id)
        return job

    def wait_until_final(self, job_id: str, timeout_s: float):
        return self.wait_for_job(job_id, lambda job: job.is_final, timeout_s)

    def wait_until_started(self, job_id: str, timeout_s: float = 3600.0):
        """The job once its container has started or the job has ended, for a followed log of
        a job still being created: Docker ends a follow on a container not yet started at once,
        with nothing in it."""
        return self.wait_for_job(job_id, lambda job: job.status != STARTING, timeout_s)

def build_agent(config: Config) -> Agent:
    """The daemon's agent: Docker from the environment, etcd from the configuration."""
    from host.discovery import discovery_from_config
    from host.runtime.docker import DockerRuntime
    host_id = config.id or load_or_create_host_id(config.state_dir)
    discovery, embedded = discovery_from_config(config, host_id)
    return Agent(config.replace(id=host_id), DockerRuntime(), discovery=discovery,
                 embedded_etcd=embedded)
