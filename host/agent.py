"""The agent: wires the parts together and owns every long-lived greenlet.

Start-up: take the state dir (one agent per state dir), load the job table (rebuilt when damaged),
(with -force) clear what a previous instance left, register, then follow the runtime's events
(which reconciles the table with the containers on every (re)connect).
Stopping the agent never stops jobs: it deregisters at once, closes the API, ends its greenlets
and closes the store. A dependency failing (Docker, etcd) is expected: each service retries with
backoff. A long-lived service that dies of anything else is a bug: it is logged and brings the
whole agent down, loudly, rather than leaving it half-alive.
"""
from __future__ import annotations

import functools
import logging
from typing import Optional

import gevent
import gevent.event

import host
from host import errors
from host.auth import read_token
from host.clock import Clock
from host.cluster.assignments import AssignmentWatcher
from host.cluster.scheduler import ClaimRecords, JobScheduler
from host.cluster.view import ClusterView
from host.config import Config
from host.discovery.etcd import EtcdDiscovery, Records
from host.discovery.heartbeat import Heartbeat
from host.errors import FlynnError
from host.layer0.runner import Layer0
from host.logsetup import set_host_id
from host.metrics import Recorded
from host.ports import PortAllocator
from host.retry import Backoff
from host.runtime import Runtime
from host.state import JobTable
from host.statedir import LocalState, open_state
from host.supervisor import JobSupervisor
from host.tasks import Tasks
from host.types import STARTING, HostRecord, HostResources, JobSummary

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, config: Config, runtime: Runtime, clock: Optional[Clock] = None,
                 discovery: Optional[EtcdDiscovery] = None,
                 layer0: Optional[Layer0] = None,
                 local: Optional[LocalState] = None):
        """Without `discovery` the agent runs alone: no registration, no cluster API.
        `local` is the state dir, opened (build_agent); without it the agent opens
        config.state_dir, and raises FatalError when another agent holds it."""
        self.config = config
        self.runtime = runtime
        self.clock = clock or Clock()
        local = local or open_state(config.state_dir, config.id, config.event_buffer)
        self.local = local
        self.host_id, self.state_id, self.store = local.host_id, local.state_id, local.store
        set_host_id(self.host_id)  # on every JSON log line from now on
        self.table = JobTable.load(local, self.clock, config.event_buffer)
        self.ports = PortAllocator(config.ports[0], config.ports[1], config.bind)
        self.capacity = HostResources(memory_mb=config.memory_mb, cpu_shares=config.cpu_shares)
        self.tasks = Tasks(config.task_concurrency)
        self.recorded = Recorded()
        self.services: dict = {}
        self.crashed = gevent.event.AsyncResult()
        self.left = gevent.event.Event()   # the host left the cluster for good: the daemon exits
        #: the API token (None: the API is open); agents of one cluster share it
        self.token = read_token(config.auth_token_file) if config.auth_token_file else None
        self.supervisor = JobSupervisor(
            host_id=self.host_id, external_ip=config.external, bind_ip=config.bind,
            capacity=self.capacity, retain_ended=config.retain_ended, runtime=runtime,
            table=self.table, ports=self.ports, clock=self.clock, tasks=self.tasks,
            on_forgotten=self._forgotten, registries=config.registries,
            start_latency=self.recorded.job_start)
        self.started_at = self.clock.now_text()
        self.discovery = discovery
        self.layer0 = layer0
        self.heartbeat = self.view = self.scheduler = self.assignments = None
        if discovery is not None:
            self.heartbeat = Heartbeat(discovery, self.host_id, config.heartbeat_ttl,
                                       self.host_record, self.state_id)
            self.heartbeat.round_trip = self.recorded.heartbeat
            self.view = ClusterView(discovery, self.host_id, config.event_buffer)
            claims = Records(discovery, "cluster/jobs")
            self.scheduler = JobScheduler(
                self.view, Records(discovery, "cluster/requests"), claims,
                Records(discovery, "cluster/assignments"),
                registration=lambda: self.heartbeat.registration, leads=discovery.leads,
                clock=self.clock, limits=config.job_limits)
            self.scheduler.latency = self.recorded.add_jobs
            self.assignments = AssignmentWatcher(
                self.host_id, Records(discovery, f"cluster/assignments/{self.host_id}"),
                ClaimRecords(claims), self.supervisor, self.heartbeat, self.tasks.spawn)

    # ---- greenlets ------------------------------------------------------------------------

    def start(self):
        """Start the background services (not the HTTP server). Raises FatalError when this
        host id is another live agent's, FlynnError when -force cannot reach Docker."""
        log.info("host %s starting (addr %s, state dir %s, %d jobs in the table)", self.host_id,
                 self.config.addr, self.config.state_dir, len(self.table.list()))
        if self.token is None:
            log.warning("THE API IS OPEN: no -auth-token-file, so anyone who reaches it can run "
                        "containers on this machine and read every job's output and "
                        "environment (it listens on %s:%d)", *self.config.listen)
        if self.config.force:
            self.supervisor.kill_leftovers()  # Unavailable propagates: -force needs Docker
        self.start_service("docker-events", self.supervisor.follow_runtime_events)
        if self.layer0 is not None:
            self.layer0.bring_up(self)  # before registering: etcd is one of them
            self._secure_etcd()
            for service_id in self.layer0.running:
                self.start_service(f"layer0-{service_id}",
                                   functools.partial(self.layer0.supervise, self, service_id))
        if self.discovery is not None:
            try:
                # at once, so that a host id another live agent uses stops us before we serve
                self.heartbeat.register()
            except FlynnError as e:
                log.warning("not registered yet (%s); the heartbeat keeps trying", e)
            self.start_service("heartbeat", self.heartbeat.run)
            self.start_service("cluster-view", self.view.run)
            self.start_service("state-publisher", self._publish_state_changes)
            self.start_service("scheduler", self.scheduler.run)
            self.start_service("leader-duties", self._leader_duties)
            self.start_service("assignments", self.assignments.run)

    def _secure_etcd(self):
        """etcd asks for credentials before this host registers, when layer 0 runs a member
        here and the cluster has a token; without one it stays as open as the API, said as
        loudly."""
        if self.discovery is None or self.layer0.plan is None or not self.layer0.plan.run_member:
            return
        if self.discovery.credentials is None:
            log.warning("ETCD IS OPEN: without -auth-token-file this host's etcd member asks "
                        "for no credentials, and whoever reaches it can run containers on "
                        "every host of the cluster")
            return
        done = Backoff("securing etcd", log).retry(self.discovery.secure, (FlynnError,),
                                                   within_s=60)
        log.info("layer 0: %s (root user from the cluster's token)", done)

    def _leader_duties(self):
        """When this agent takes office, the scheduler finishes at once what an old leader
        accepted (it looks again every few seconds anyway)."""
        term = None
        while True:
            self.view.wait_for_change(60)
            if self.view.is_leader and self.view.leader_since != term:
                term = self.view.leader_since
                self.scheduler.poke()

    def _publish_state_changes(self):
        """Every job event changes what the heartbeat publishes."""
        cursor = self.table.events.last_cursor
        while True:
            found, cursor = self.table.events.wait(cursor, 60)
            if found:
                self.heartbeat.mark_changed()

    def _forgotten(self, job):
        """Retention dropped an ended job: the cluster forgets it too (it publishes no event)."""
        if self.heartbeat is not None:
            self.heartbeat.mark_changed()
            self.assignments.release_claim(job)

    def start_service(self, name: str, run):
        greenlet = gevent.spawn(run)
        greenlet.name = name
        greenlet.link_exception(self._service_died)
        self.services[name] = greenlet

    def _service_died(self, greenlet):
        log.critical("service %s died: %r; stopping the agent", greenlet.name, greenlet.exception)
        self.crashed.set(greenlet.exception)

    def leave_cluster(self):
        """Deregister now (the cluster reacts at once, not after the TTL); idempotent."""
        heartbeat = self.services.get("heartbeat")
        if heartbeat is not None:
            heartbeat.unlink(self._service_died)
            # first, so that it cannot register again behind the deregistration
            heartbeat.kill()
        if self.heartbeat is not None:
            self.heartbeat.deregister()

    def leave(self) -> dict:
        """This host leaves the cluster for good (`flynn-host leave`): it deregisters, its etcd
        member is removed from the cluster and its data deleted, and the daemon exits (0).
        Its jobs keep running, as on any stop: stop them first to take them down."""
        if self.discovery is None:
            raise errors.Conflict("this agent runs without etcd: there is no cluster to leave")
        self.leave_cluster()
        removed = self.layer0.leave_etcd(self) if self.layer0 is not None else None
        log.info("host %s left the cluster for good%s", self.host_id,
                 f" (etcd member {removed} removed)" if removed else "")
        gevent.spawn_later(0.2, self.left.set)  # once the answer is out
        return {"host_id": self.host_id, "etcd_member_removed": removed}

    def end_waits(self):
        """Answer every long-poll and end every event stream now (the agent is about to stop
        serving): their clients resume from their cursors, instead of getting the 500 that a
        request cut off by the server's stop gets."""
        self.table.events.close()
        if self.view is not None:
            self.view.events.close()

    def stop(self):
        """Deregister at once, stop our greenlets, close the store. Jobs keep running."""
        self.leave_cluster()
        for greenlet in self.services.values():
            greenlet.unlink(self._service_died)
        gevent.killall(list(self.services.values()), timeout=1)
        self.tasks.kill(timeout=1)
        if self.layer0 is not None:
            self.layer0.stop()
        self.local.close()
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
            "layer0": self.layer0.status() if self.layer0 is not None else [],
        }

    def readiness(self) -> dict:
        """{check: "ok" or what is wrong} for GET /readyz."""
        checks = {}
        try:
            self.runtime.ping()
            checks["docker"] = "ok" if self.supervisor.events_connected else \
                "not following its events yet"
        except FlynnError as e:
            checks["docker"] = f"unreachable ({e})"
        if self.discovery is not None:
            checks["etcd"] = self._etcd_state()
            checks["registration"] = "ok" if self.heartbeat.registration is not None else \
                "not registered in etcd yet"
        for service in self.layer0.status() if self.layer0 is not None else ():
            if service["running"]:
                checks[f"layer0.{service['id']}"] = "ok" if service["healthy"] else \
                    "not healthy"
        return checks

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
        return HostRecord(
            id=self.host_id, addr=self.config.addr, version=host.__version__,
            attributes=self.config.attributes, resources=self.capacity,
            allocated=self.table.allocated(),
            jobs=tuple(JobSummary.of(j) for j in self.table.list()),
            registered_at=self.started_at, state_id=self.state_id).to_dict()

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
    """The daemon's agent: Docker from the environment, layer 0 from the manifest, etcd as
    planned from the settings. Raises ConfigError or ManifestError (usage: exit 2), FatalError
    when the state dir is another agent's."""
    from host.layer0.bootstrap import (check_etcd_settings, etcd_credentials, layer0_for,
                                       load_services, plan_etcd)
    from host.runtime.docker import DockerRuntime
    check_etcd_settings(config)
    services = load_services(config)  # before the state dir is taken: a usage error, exit 2
    local = open_state(config.state_dir, config.id, config.event_buffer)
    set_host_id(local.host_id)
    try:
        config = config.replace(id=local.host_id)
        runtime = DockerRuntime()
        layer0 = layer0_for(config, local.host_id, services)
        token = read_token(config.auth_token_file) if config.auth_token_file else None
        layer0.etcd_credentials = etcd_credentials(config, token)
        layer0.plan = plan_etcd(config, layer0, runtime)
        log.info("etcd: %s", layer0.plan.reason)
        discovery = EtcdDiscovery(",".join(layer0.plan.endpoints), config.etcd_prefix,
                                  layer0.etcd_credentials)
        return Agent(config, runtime, discovery=discovery, layer0=layer0, local=local)
    except BaseException:
        local.close()
        raise
