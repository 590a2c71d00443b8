"""Running jobs on the container runtime and keeping the job table true to it.

The supervisor starts containers for accepted jobs, turns the runtime's event stream into state
transitions (never polling), stops and signals jobs, reconciles the table with the containers after
a restart or a lost event stream, and removes old ended containers.
Each decision is logged on one line with the job id.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import gevent
import gevent.event

from host import errors
from host.clock import Clock
from host.errors import Conflict
from host.ports import PortAllocator
from host.retry import Backoff
from host.runtime import ContainerSpec, ContainerState, Runtime, RuntimeEvent, labels
from host.state import JobTable
from host.tasks import Tasks
from host.types import (CRASHED, DONE, FAILED, RUNNING, STARTING, STOPPED, ActiveJob,
                        HostResources, Job)

log = logging.getLogger(__name__)


def image_registry(image: str) -> str:
    """The registry an image reference names, as Docker reads it: the first component when it
    looks like a host (a dot, a port, or localhost), else Docker Hub."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first.lower()
    return "docker.io"


class AttachSlot:
    """An attach waiting on a job: `created` when its container exists, `attached` when the
    attach holds the container's streams (the job is started only then)."""

    def __init__(self):
        self.created = gevent.event.Event()
        self.attached = gevent.event.Event()
        self.size = None              # (height, width) of the client's terminal, if told


class JobSupervisor:
    #: seconds a start keeps retrying while Docker is unreachable before the job is failed
    start_retry_s = 60.0
    #: seconds a created container waits for its attach before it is started anyway
    attach_wait_s = 30.0

    def __init__(self, *, host_id: str, external_ip: str, bind_ip: str, capacity: HostResources,
                 retain_ended: int, runtime: Runtime, table: JobTable, ports: PortAllocator,
                 clock: Clock, tasks: Tasks,
                 on_forgotten: Optional[Callable[[ActiveJob], None]] = None,
                 registries: tuple = (), start_latency=None):
        self.host_id = host_id
        self.external_ip = external_ip
        self.bind_ip = bind_ip
        self.capacity = capacity
        self.retain_ended = retain_ended
        self.runtime = runtime
        self.table = table
        self.ports = ports
        self.clock = clock
        self._tasks = tasks           # the agent's background tasks (host.tasks)
        self._on_forgotten = on_forgotten  # told of each ended job retention drops
        self._remove_once_ended: set = set()  # job ids `rm -f` stopped: forgotten as they end
        self._removing: dict = {}  # job id -> Event set once its removal is over
        self.registries = tuple(registries)  # registries images may be pulled from; () = any
        self._last_event_nanos: Optional[int] = None
        self.events_connected = False
        self._ping_in_flight = None  # AsyncResult of the engine ping requests are waiting on
        self.reconciled = gevent.event.Event()  # set once the table matched the engine once
        self._starting = set()        # ids with a _start in progress, so none runs twice
        self._attach_slots: dict = {}  # job id -> AttachSlot
        self._pulls: dict = {}        # image -> AsyncResult of the one pull in progress
        self._stop_deadlines: dict = {}  # job id -> when its pending stop kills it
        self._prune_pending = False
        self._start_latency = start_latency  # a histogram: seconds from accepted to running
        self._accepted: dict = {}      # job id -> monotonic time it was accepted
        self.last_event_lag_s = 0.0    # how far behind Docker's own clock its last event came
        ports.mark_taken(b for job in table.active() for b in job.ports)

    @property
    def our_labels(self) -> dict:
        return labels.host_filter(self.host_id)

    # ---- requests from the API ------------------------------------------------------------

    def submit(self, job: Job) -> tuple:
        """Accept a job: (ActiveJob, created). Idempotent by id; a different spec under a known id
        is a Conflict, as is a job that does not fit. Nothing is recorded unless it is accepted."""
        existing = self._known(job)
        if existing is not None:
            return existing, False
        # 503 now beats accepting a job we cannot start or track. The ping also catches an
        # engine gone a moment ago, before the event follower noticed. Requests that arrive
        # while a ping is on its way share it (its answer comes after they arrived): a burst of
        # jobs costs a ping a wave, not one a job.
        if not self.events_connected:
            raise errors.Unavailable("Docker is unreachable (not following its events); "
                                     "retry shortly")
        self._ping_shared()  # yields to other greenlets: everything below must not
        # From here to the record nothing yields, so the check and the reservation are one step
        # for concurrent requests: none can over-commit the host or take the same id or port.
        existing = self._known(job)
        if existing is not None:
            return existing, False
        self._check_fits(job)
        bindings = self.ports.reserve(job.config.ports)
        active = self.table.add(job, bindings)
        self._accepted[job.id] = self.clock.monotonic()
        self._tasks.spawn_engine_work(self._start, job.id)
        return active, True

    def _ping_shared(self):
        """Ping the engine, or wait for the ping already on its way (raising what it raised)."""
        ping = self._ping_in_flight
        if ping is None:
            ping = self._ping_in_flight = gevent.event.AsyncResult()
            try:
                self.runtime.ping()
                ping.set(None)
            except BaseException as e:
                ping.set_exception(e)
                raise
            finally:
                self._ping_in_flight = None
        else:
            ping.get()

    def _known(self, job: Job) -> Optional[ActiveJob]:
        existing = self.table.find(job.id)
        if existing is not None and not existing.job.same_spec(job):
            raise Conflict(f"job {job.id!r} exists with a different spec")
        return existing

    def refuse(self, job: Job, reason: str) -> Optional[ActiveJob]:
        """Record a job the cluster assigned here that this host cannot take (it does not fit,
        a port is taken) as failed with the reason, so that the cluster sees it (an `error`
        event, `failed` in the host's job list) instead of a job that silently never runs.
        A job already known under that id is left as it is (None)."""
        if self.table.find(job.id) is not None:
            return None
        self.table.add(job)
        self._finish(job.id, FAILED, error=f"refused by host {self.host_id}: {reason}")
        return self.table.get(job.id)

    def _check_fits(self, job: Job):
        used = self.table.allocated()
        short = []
        want = job.resources
        if want.memory_mb and used.memory_mb + want.memory_mb > self.capacity.memory_mb:
            short.append(f"memory: needs {want.memory_mb} MiB, "
                         f"{self.capacity.memory_mb - used.memory_mb} MiB free")
        if want.cpu_shares and used.cpu_shares + want.cpu_shares > self.capacity.cpu_shares:
            short.append(f"cpu_shares: needs {want.cpu_shares}, "
                         f"{self.capacity.cpu_shares - used.cpu_shares} free")
        if short:
            raise Conflict(f"job {job.id!r} does not fit on this host: " + "; ".join(short))

    def stop(self, job_id: str, timeout_s: float) -> tuple:
        """Ask a job to stop: (ActiveJob, already_final)."""
        job = self.table.get(job_id)
        if job.is_final:
            return job, True
        self.table.update(job_id, stop_requested=True)
        log.info("job %s: stop requested (kill after %gs)", job_id, timeout_s)
        if job.container_id:
            self._request_stop(job_id, timeout_s)
        # no container yet: _start sees stop_requested and does not start it
        return job, False

    def remove(self, job_id: str, force: bool = False) -> tuple:
        """Forget an ended job, its container and record (`flynn-host rm`): (ActiveJob, removed
        now). An active one is a Conflict, unless `force`: then it is killed and removed as
        soon as it has ended (removed now is False)."""
        job = self.table.get(job_id)
        if not job.is_final:
            if not force:
                raise Conflict(f"job {job_id!r} is {job.status}: stop it first, or remove it "
                               "with force (rm -f), which kills it")
            self._remove_once_ended.add(job_id)
            self.stop(job_id, 0)
            return job, False
        if self._forget(job):
            log.info("job %s: removed", job_id)
        return job, True

    def _forget(self, job: ActiveJob) -> bool:
        """Remove the job's container, then its record; whether this call forgot it (rm, rm -f
        and retention all end a job so). One removal a job at a time: a second one (rm -f
        asking again as the job ends) waits for the first, which the engine would otherwise
        refuse ("removal already in progress"). Raises FlynnError when the engine cannot remove
        the container; the record is then kept."""
        underway = self._removing.get(job.id)
        if underway is not None:
            underway.wait()
            return False
        self._removing[job.id] = done = gevent.event.Event()
        try:
            if job.container_id:
                self.runtime.remove(job.container_id)  # (a container gone already is fine)
            if self.table.find(job.id) is None:
                return False
            self.table.forget(job.id)
            if self._on_forgotten is not None:
                self._on_forgotten(job)
            return True
        finally:
            del self._removing[job.id]
            done.set()

    def _forget_once_ended(self, job_id: str):
        self._remove_once_ended.discard(job_id)
        job = self.table.find(job_id)
        if job is not None:
            try:
                if self._forget(job):
                    log.info("job %s: removed once it ended (rm -f)", job_id)
            except errors.FlynnError as e:  # retention removes it later
                log.warning("job %s: could not remove it: %s", job_id, e)

    def signal(self, job_id: str, signal: str) -> ActiveJob:
        """Signal the job's process. A job still `starting` whose container has started (its
        output may already be out: Docker's start event is on its way to us) is signalled too;
        the engine refuses (409) a container that is not running."""
        job = self.table.get(job_id)
        if job.status != RUNNING and not (job.status == STARTING and job.container_id):
            raise Conflict(f"job {job_id!r} is {job.status}, not running: cannot signal it")
        self.runtime.signal(job.container_id, signal)
        log.info("job %s: sent signal %s", job_id, signal)
        return job

    # ---- starting --------------------------------------------------------------------------

    def container_spec(self, active: ActiveJob) -> ContainerSpec:
        job = active.job
        env = {"EXTERNAL_IP": self.external_ip, "FLYNN_HOST_ID": self.host_id,
               "FLYNN_JOB_ID": job.id}
        for index, binding in enumerate(active.ports):  # as the original: the app reads $PORT
            env.setdefault("PORT", str(binding.container_port))
            env[f"PORT_{index}"] = str(binding.container_port)
        env.update(dict(job.config.env))  # the spec wins
        return ContainerSpec(
            name=labels.container_name(self.host_id, job.id),
            image=job.config.image,
            cmd=list(job.config.cmd) if job.config.cmd is not None else None,
            entrypoint=list(job.config.entrypoint) if job.config.entrypoint is not None else None,
            env=env, working_dir=job.config.working_dir, user=job.config.user,
            tty=job.config.tty, stdin=job.config.stdin,
            labels=labels.job_labels(self.host_id, job, active.ports),
            memory_mb=job.resources.memory_mb, cpu_shares=job.resources.cpu_shares,
            ports=active.ports, bind_ip=self.bind_ip,
            network=job.config.network, volumes=job.config.volumes,
        )

    def _start(self, job_id: str):
        """Create and start the container; the runtime's events move the job on from there."""
        if job_id in self._starting:
            return
        self._starting.add(job_id)
        try:
            self._start_with_retries(job_id)
        finally:
            self._starting.discard(job_id)

    def _start_with_retries(self, job_id: str):
        deadline = self.clock.monotonic() + self.start_retry_s
        backoff = Backoff(f"job {job_id}: starting", log)
        while True:
            try:
                self._create_and_start(job_id)
                backoff.succeeded()
                return
            except errors.RuntimeUnavailable as e:
                if self.clock.monotonic() >= deadline:
                    self._finish(job_id, FAILED, error=str(e))
                    return
                backoff.failed(e)
            except (errors.ImageNotFound, errors.RuntimeFailure, errors.ContainerNotFound) as e:
                self._finish(job_id, FAILED, error=str(e))
                return

    def _create_and_start(self, job_id: str):
        active = self.table.get(job_id)
        if active.status != STARTING or self._ended_by_stop_request(active):
            return
        if not active.container_id:
            spec = self.container_spec(active)
            try:
                container_id = self.runtime.create(spec)
            except errors.ImageNotFound:
                self._check_registry(spec.image)
                with self._tasks.outside_slot():  # a registry's slowness is not the engine's
                    self._pull(spec.image)
                if self._ended_by_stop_request(active):
                    return
                container_id = self.runtime.create(spec)
            self.table.update(job_id, container_id=container_id)
            log.debug("job %s: created container %s", job_id, container_id[:12])
        self._wait_for_attach(active)
        if self._ended_by_stop_request(active):
            return  # the created container goes with the job's retention
        self.runtime.start(active.container_id)
        log.debug("job %s: started container %s", job_id, active.container_id[:12])
        self._look_after_start(job_id, active.container_id)
        slot = self._attach_slots.get(job_id)
        if slot is not None and slot.size and active.job.config.tty:
            self.size_terminal(active.container_id, slot.size)

    def _look_after_start(self, job_id: str, container_id: str):
        """The container's state as soon as the engine says it started: the job is `running`
        one inspect after the start, instead of after Docker's event has come round the event
        stream (which then finds nothing to do). Anything odd is left to that stream."""
        try:
            state = self.runtime.inspect(container_id)
        except errors.FlynnError as e:
            log.debug("job %s: inspect after start: %s (left to Docker's events)", job_id, e)
            return
        job = self.table.find(job_id)
        if job is not None and not job.is_final and job.container_id == container_id:
            self._apply_container_state(job_id, state)

    def _pull(self, image: str):
        """Pull `image`; jobs that want one image at once share one pull (its error too)."""
        pending = self._pulls.get(image)
        if pending is not None:
            pending.get()
            return
        pending = self._pulls[image] = gevent.event.AsyncResult()
        try:
            self.runtime.pull(image)  # may take long
            pending.set(None)
        except BaseException as e:
            pending.set_exception(e)
            raise
        finally:
            del self._pulls[image]

    def _check_registry(self, image: str):
        """A pull goes only to an allowed registry (-registries; none given: any): a pull is
        made with the agent's network position and credentials, so a job's image name must not
        make it reach loopback or internal hosts. Images already on the engine are used as
        they are."""
        if not self.registries:
            return
        registry = image_registry(image)
        if registry not in self.registries:
            raise errors.ImageNotFound(
                f"image {image} is not present, and its registry {registry} is not one this "
                f"host pulls from (-registries {','.join(self.registries)})")

    def size_terminal(self, container_id: str, size: tuple):
        """Give a TTY job's terminal the attached client's (height, width). Done right after
        the start: Docker before API 1.42 (20.10 here) has no create-time console size, so a
        program that asks for its size in its first few milliseconds sees none, as under
        `docker run -t` on those engines; programs that follow SIGWINCH (shells, editors) get
        it, and every later ask is right."""
        try:
            self.runtime.resize(container_id, *size)
        except errors.FlynnError as e:
            log.debug("container %s: resize failed: %s", container_id[:12], e)

    def reserve_attach(self, job_id: str) -> AttachSlot:
        """An attach is coming (it may come before the job exists): start the job only once it
        is attached, so none of its output is missed."""
        slot = self._attach_slots.setdefault(job_id, AttachSlot())
        job = self.table.find(job_id)
        if job is not None and job.container_id:
            slot.created.set()
        return slot

    def release_attach(self, job_id: str):
        slot = self._attach_slots.pop(job_id, None)
        if slot is not None:
            slot.attached.set()  # a start still waiting goes ahead

    def _wait_for_attach(self, active: ActiveJob):
        slot = self._attach_slots.get(active.id)
        if slot is None and active.job.config.stdin:
            slot = self.reserve_attach(active.id)
        if slot is None:
            return
        slot.created.set()
        if not slot.attached.wait(self.attach_wait_s):
            log.warning("job %s: no attach within %gs; starting it anyway", active.id,
                        self.attach_wait_s)

    def _ended_by_stop_request(self, active: ActiveJob) -> bool:
        """A DELETE that arrived before the container started ends the job here."""
        if active.stop_requested:
            self._finish(active.id, STOPPED, error="stopped before it started")
        return active.stop_requested

    def _finish(self, job_id: str, status: str, **fields) -> bool:
        """The one way a job reaches a final state: record it (unless it is final already),
        free its ports, and let retention drop the oldest ended jobs."""
        job = self.table.get(job_id)
        fields.setdefault("ended_at", self.clock.now_text())
        if not self.table.transition(job_id, status, **fields):
            return False
        self._accepted.pop(job_id, None)
        self.ports.release(job.ports)
        if job_id in self._remove_once_ended:
            self._tasks.spawn(self._forget_once_ended, job_id)
        if not self._prune_pending:  # one prune catches up with every job ended before it
            self._prune_pending = True
            self._tasks.spawn(self._prune_soon)
        return True

    def _prune_soon(self):
        self._prune_pending = False
        self.prune_ended()

    # ---- stopping --------------------------------------------------------------------------

    def _request_stop(self, job_id: str, timeout_s: float):
        """One stop at a time per job, and a new one only when it would kill sooner than the
        one pending (`DELETE ?timeout=0` after a long one): a client repeating its DELETE does
        not pile up greenlets and engine connections."""
        deadline = self.clock.monotonic() + timeout_s
        pending = self._stop_deadlines.get(job_id)
        if pending is not None and pending <= deadline:
            return
        self._stop_deadlines[job_id] = deadline
        self._tasks.spawn(self._stop_container, job_id, timeout_s, deadline)

    def _stop_container(self, job_id: str, timeout_s: float, deadline: float = None):
        try:
            self._stop_and_record(job_id, timeout_s)
        finally:
            if self._stop_deadlines.get(job_id) == deadline:
                del self._stop_deadlines[job_id]

    def _stop_and_record(self, job_id: str, timeout_s: float):
        job = self.table.get(job_id)
        try:
            self.runtime.stop(job.container_id, timeout_s)
            state = self.runtime.inspect(job.container_id)
        except errors.ContainerNotFound:
            self._finish(job_id, CRASHED, error="container removed")
            return
        except errors.FlynnError as e:
            log.warning("job %s: stop failed: %s", job_id, e)
            return
        if not state.running and state.started_at is None:
            self._finish(job_id, STOPPED, error="stopped before it started")  # no die event
        elif not state.running:
            self._record_exit(job_id, state)  # normally the die event got here first

    # ---- following the runtime -------------------------------------------------------------

    def follow_runtime_events(self):
        """Run forever: apply the runtime's events; on a broken stream, reconnect (resuming from
        the last event's time) and reconcile, since events may have been missed meanwhile."""
        backoff = Backoff("Docker event stream", log)
        while True:
            try:
                stream = self.runtime.events(self.our_labels, self._last_event_nanos)
                self.events_connected = True
                self.reconcile()
                self.reconciled.set()
                backoff.succeeded()
                for event in stream:
                    if event.time_nanos:
                        self._last_event_nanos = event.time_nanos
                        self.last_event_lag_s = max(0.0, self.clock.now().timestamp() -
                                                    event.time_nanos / 1e9)
                    self.apply_event(event)
            except errors.FlynnError as e:  # gone, or answering errors (a dockerd restarting)
                self.events_connected = False
                backoff.failed(e)

    def apply_event(self, event: RuntimeEvent):
        job_id = event.labels.get(labels.LABEL_JOB_ID)
        job = self.table.find(job_id) if job_id else None
        if job is None or job.is_final:
            return
        if job.container_id and job.container_id != event.container_id:
            return  # an older container of a job id that was reused
        if event.action not in ("start", "die", "destroy"):
            return
        if event.action == "start" and job.status == RUNNING:
            return  # known already (this container, checked above): looked at after the start
        log.debug("job %s: Docker event %s", job_id, event.action)
        try:
            state = self.runtime.inspect(event.container_id)
        except errors.ContainerNotFound:
            self._finish(job_id, CRASHED, error="container removed outside flynn-host")
            return
        self._apply_container_state(job_id, state)

    def _apply_container_state(self, job_id: str, state: ContainerState):
        job = self.table.get(job_id)
        if not job.container_id:
            self.table.update(job_id, container_id=state.id)
        if state.running:
            self._to_running(job_id, state)
        elif state.started_at is not None:
            self._record_exit(job_id, state)
        elif state.error:
            self._finish(job_id, FAILED, error=state.error)

    def _to_running(self, job_id: str, state: ContainerState):
        if self.table.transition(job_id, RUNNING, started_at=state.started_at,
                                 internal_ip=state.ip, container_id=state.id):
            accepted = self._accepted.pop(job_id, None)
            if accepted is not None and self._start_latency is not None:
                self._start_latency.observe(self.clock.monotonic() - accepted)

    def _record_exit(self, job_id: str, state: ContainerState):
        job = self.table.get(job_id)
        if job.status == STARTING:
            # it did run, however briefly: clients see start before stop, always
            self._to_running(job_id, state)
        started = job.started_at or state.started_at
        ended = max(state.finished_at or self.clock.now_text(), started or "")
        if job.stop_requested and not state.oom_killed:
            status = STOPPED  # asked for: the exit status (143, 137) says how it went
        else:
            status = DONE if state.exit_code == 0 and not state.oom_killed else CRASHED
        self._finish(job_id, status, exit_status=state.exit_code,
                     error="oom" if state.oom_killed else None, started_at=started,
                     ended_at=ended, container_id=state.id)

    # ---- reconciliation -------------------------------------------------------------------

    def reconcile(self):
        """Make the table agree with the containers: after a restart of the agent, or after the
        event stream was lost. Jobs never created are started; containers whose table entry was
        lost are adopted from their labels."""
        containers = {c.labels.get(labels.LABEL_JOB_ID): c
                      for c in self.runtime.list(self.our_labels)}
        for job in self.table.active():
            container = containers.get(job.id)
            if container is None or (job.container_id and container.id != job.container_id):
                if job.container_id:
                    self._finish(job.id, CRASHED, error="container disappeared while unobserved")
                else:
                    log.info("job %s: resuming its start", job.id)
                    self._tasks.spawn_engine_work(self._start, job.id)
            elif container.status == "created" and not job.stop_requested:
                self.table.update(job.id, container_id=container.id)
                self._tasks.spawn_engine_work(self._start, job.id)
            else:
                self._apply_container_state(job.id, container)
        for job_id, container in containers.items():
            if job_id and self.table.find(job_id) is None:
                self._adopt(job_id, container)

    def _adopt(self, job_id: str, container: ContainerState):
        try:
            job, ports = labels.job_from_labels(container.labels)
        except ValueError as e:
            log.warning("container %s: not adopting it: %s", container.id[:12], e)
            return
        log.info("job %s: adopting container %s found without a table entry", job_id,
                 container.id[:12])
        self.table.adopt(ActiveJob(job=job, host_id=self.host_id, status=STARTING,
                                   container_id=container.id, ports=ports,
                                   created_at=container.started_at or self.clock.now_text()))
        if container.running:
            self.ports.mark_taken(ports)
        self._apply_container_state(job_id, container)

    def kill_leftovers(self):
        """-force: kill and remove every container a previous instance of this host left, and
        record their jobs as crashed."""
        for container in self.runtime.list(self.our_labels):
            log.info("container %s: removing (-force)", container.id[:12])
            self.runtime.remove(container.id)
        for job in self.table.active():
            self._finish(job.id, CRASHED, error="killed at agent start (-force)")

    def prune_ended(self):
        """Keep the containers (and records) of the newest `retain_ended` ended jobs only."""
        ended = self.table.ended_oldest_first()
        for job in ended[:max(0, len(ended) - self.retain_ended)]:
            try:
                if self._forget(job):
                    log.debug("job %s: pruned (retention)", job.id)
            except errors.FlynnError as e:
                log.warning("job %s: could not remove its container yet: %s", job.id, e)
                return
