"""AddJobs on the leader: one greenlet takes requests one at a time, validates them against the
mirror (all or nothing), places them, records them durably, and hands each job to its host.

Durability and exactly-once: before answering, the accepted request is written to
<prefix>/cluster/requests/<id>, then each job to <prefix>/cluster/assignments/<host>/<job>. A host
starts an assigned job (idempotent by id) and deletes the assignment once its heartbeat shows the
job. A leader that takes office first finishes every request an old leader recorded (writing its
assignments again is harmless: the host's start is idempotent), so an acknowledged job runs
exactly once even if the leader dies in the middle.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import gevent
import gevent.event
import gevent.queue
import simplejson

from host.clock import Clock
from host.cluster.view import ClusterView, RegisteredHost
from host.discovery.etcd import Records
from host.errors import (Conflict, NoCapacity, NotFound, NotLeader, Unavailable,
                         ValidationError)
from host.jobspec import parse_job
from host.types import ACTIVE_STATES, FINAL_STATES, Job, job_from_dict

log = logging.getLogger(__name__)


@dataclass
class Capacity:
    """What a host has left, as the leader sees it: its registration minus what is pending."""
    host: RegisteredHost
    memory_mb: int
    cpu_shares: int
    ports: set = field(default_factory=set)       # {(port, proto)} taken
    jobs: int = 0                                 # active jobs, pending ones included

    @classmethod
    def of(cls, host: RegisteredHost) -> "Capacity":
        record = host.record
        total, used = record.get("resources", {}), record.get("allocated", {})
        active = [j for j in record.get("jobs", []) if j.get("status") in ACTIVE_STATES]
        ports = {(p["port"], p["proto"]) for j in active for p in j.get("ports", [])}
        return cls(host, total.get("memory_mb", 0) - used.get("memory_mb", 0),
                   total.get("cpu_shares", 0) - used.get("cpu_shares", 0), ports, len(active))

    def shortfall(self, job: Job) -> str:
        """Why the job does not fit here ("" when it does)."""
        want = job.resources
        if want.memory_mb > self.memory_mb:
            return f"memory: needs {want.memory_mb} MiB, {self.memory_mb} MiB free"
        if want.cpu_shares > self.cpu_shares:
            return f"cpu_shares: needs {want.cpu_shares}, {self.cpu_shares} free"
        for spec in job.config.ports:
            if spec.port and (spec.port, spec.proto) in self.ports:
                return f"port {spec.port}/{spec.proto} is taken"
        return ""

    def take(self, job: Job):
        self.memory_mb -= job.resources.memory_mb
        self.cpu_shares -= job.resources.cpu_shares
        self.ports |= {(p.port, p.proto) for p in job.config.ports if p.port}
        self.jobs += 1

    @property
    def load(self) -> tuple:
        """Least allocated first: the larger share of memory or CPU in use, then the number of
        jobs (jobs without reservations spread too), then the host id (a deterministic
        tie-break)."""
        record = self.host.record.get("resources", {})
        memory = 1 - self.memory_mb / record["memory_mb"] if record.get("memory_mb") else 0
        cpu = 1 - self.cpu_shares / record["cpu_shares"] if record.get("cpu_shares") else 0
        return max(memory, cpu), self.jobs, self.host.id


class JobScheduler:
    #: seconds a request may wait in the queue and be processed before the caller gives up
    request_timeout_s = 30

    def __init__(self, view: ClusterView, requests: Records, assignments: Records,
                 clock: Clock):
        self.view = view
        self.requests = requests
        self.assignments = assignments
        self.clock = clock
        self._queue = gevent.queue.Queue()
        self.pending: dict = {}     # job id -> (host id, Job): assigned, not yet in the mirror
        self._recovered_for = None  # the leader_since index we recovered requests for

    # ---- the API side ------------------------------------------------------------------------

    def add_jobs(self, body) -> dict:
        """Queue a request and wait for its answer (raises what processing raised)."""
        answer = gevent.event.AsyncResult()
        self._queue.put((body, answer))
        try:
            return answer.get(timeout=self.request_timeout_s)
        except gevent.Timeout:
            raise Unavailable("the leader did not process the request in time; it may still "
                              "be placed: retry with the same job ids") from None

    def poke(self):
        """The view changed: a new leader finishes recorded requests before taking new ones."""
        self._queue.put((None, None))

    # ---- the one greenlet --------------------------------------------------------------------

    def run(self):
        while True:
            body, answer = self._queue.get()
            if answer is None:
                if self.view.is_leader:
                    try:
                        self.recover_requests()
                    except Unavailable as e:
                        log.warning("recovering requests: %s", e)
                continue
            try:
                answer.set(self._process(body))
            except Exception as e:  # the caller's greenlet re-raises it
                answer.set_exception(e)

    def _process(self, body) -> dict:
        if not self.view.is_leader:
            raise NotLeader("this agent stopped being the leader", retry=True)
        self.recover_requests()
        self._forget_mirrored()
        placements = self._validate_and_place(body)
        request_id = uuid.uuid4().hex
        record = {"id": request_id, "created_at": self.clock.now_text(),
                  "jobs": [{"host_id": host_id, "job": job.to_dict()}
                           for host_id, job, already_there in placements if not already_there]}
        if record["jobs"]:
            self.requests.put(request_id, simplejson.dumps(record))  # durable before any answer
            self._assign(record)
            self.requests.delete(request_id)
            log.info("request %s: %d job(s) assigned: %s", request_id, len(record["jobs"]),
                     ", ".join(f"{p['job']['id']}@{p['host_id']}" for p in record["jobs"]))
        return {"jobs": [{"host_id": host_id, "job_id": job.id} for host_id, job, _ in placements]}

    def _assign(self, record: dict):
        for item in record["jobs"]:
            job = job_from_dict(item["job"])
            self.assignments.put(f"{item['host_id']}/{job.id}", simplejson.dumps(item["job"]))
            self.pending[job.id] = (item["host_id"], job)

    def recover_requests(self):
        """Once per term: finish every request a previous leader recorded but may not have
        handed out completely."""
        if self._recovered_for == self.view.leader_since:
            return
        _, records = self.requests.read_dir()
        for stored in records:
            record = simplejson.loads(stored.value)
            log.info("request %s: finishing what the previous leader accepted", record["id"])
            self._assign(record)
            self.requests.delete(record["id"])
        self._recovered_for = self.view.leader_since

    def _forget_mirrored(self):
        """Pending jobs that their host now reports are the mirror's business."""
        for job_id, (host_id, _) in list(self.pending.items()):
            host = self.view.hosts.get(host_id)
            if host is None or any(j["id"] == job_id for j in host.record.get("jobs", [])):
                del self.pending[job_id]

    # ---- validation and placement ----------------------------------------------------------

    def _validate_and_place(self, body) -> list:
        """[(host_id, Job, already_there)] for every job, or an error naming the first problem.
        Nothing is placed unless everything fits."""
        explicit = self._parse(body)
        capacity = {h.id: Capacity.of(h) for h in self.view.hosts.values()}
        for host_id, job in self.pending.values():
            if host_id in capacity:
                capacity[host_id].take(job)
        existing = {j["id"]: (h.id, j) for h in self.view.hosts.values()
                    for j in h.record.get("jobs", [])}
        placements = []
        for target, job in explicit:
            known = existing.get(job.id) or self._pending_summary(job.id)
            if known is not None:
                placements.append(self._same_job(job, target, *known))
                continue
            if target is None:
                target = self._place(job, capacity)
            elif target not in capacity:
                raise NotFound(f"no host {target!r} in the cluster")
            else:
                short = capacity[target].shortfall(job)
                if short:
                    raise Conflict(f"job {job.id!r} does not fit on host {target!r}: {short}")
            capacity[target].take(job)
            placements.append((target, job, False))
        return placements

    def _pending_summary(self, job_id: str):
        if job_id not in self.pending:
            return None
        host_id, job = self.pending[job_id]
        return host_id, {"id": job.id, "image": job.config.image,
                         "resources": job.resources.to_dict(), "status": "starting"}

    @staticmethod
    def _same_job(job: Job, target, host_id: str, summary: dict) -> tuple:
        """A job id the cluster knows: the same job again is answered where it is (idempotent);
        anything else under that id is a conflict."""
        same = (summary.get("image") == job.config.image
                and summary.get("resources") == job.resources.to_dict()
                and target in (None, host_id)
                and summary.get("status") not in FINAL_STATES)
        if not same:
            raise Conflict(f"job id {job.id!r} is already used on host {host_id!r}")
        return host_id, job, True

    @staticmethod
    def _place(job: Job, capacity: dict) -> str:
        fitting = [c for c in capacity.values() if not c.shortfall(job)]
        if not fitting:
            reasons = "; ".join(f"{c.host.id}: {c.shortfall(job)}" for c in capacity.values())
            raise NoCapacity(f"no host can take job {job.id!r}" +
                             (f" ({reasons})" if reasons else " (no hosts)"))
        return min(fitting, key=lambda c: c.load).host.id

    def _parse(self, body) -> list:
        """[(host_id or None, Job)] from {"jobs": [Job]} or {"<host_id>": [Job], ...}."""
        if not isinstance(body, dict) or not body:
            raise ValidationError('body: must be {"jobs": [Job, ...]} or {"<host_id>": [Job, ...]}')
        parsed, seen = [], set()
        for key, jobs in body.items():
            where = "jobs" if key == "jobs" else key
            if not isinstance(jobs, list) or not jobs:
                raise ValidationError(f"{where}: must be a non-empty list of jobs")
            for n, raw in enumerate(jobs):
                if isinstance(raw, dict) and raw.get("id") is None:
                    raw = dict(raw, id=uuid.uuid4().hex)
                try:
                    job = parse_job(raw)
                except ValidationError as e:
                    raise ValidationError(f"{where}[{n}]: {e.message}") from None
                if job.id in seen:
                    raise ValidationError(f"{where}[{n}].id: {job.id!r} appears twice")
                seen.add(job.id)
                parsed.append((None if key == "jobs" else key, job))
        return parsed
