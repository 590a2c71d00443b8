"""AddJobs on the leader: one greenlet takes requests one at a time, validates them against the
mirror (all or nothing), places them, records them durably, and hands each job to its host.

Exactly once, even with a leader that dies or only believes it leads (paused, partitioned):
1. before anything is recorded, the leader asks etcd's quorum whether its registration is still
   the oldest (else 503 not_leader: the client retries at the new leader);
2. the accepted request is written to <prefix>/cluster/requests/<id>;
3. each new job id is claimed with a create-only key <prefix>/cluster/jobs/<job id> naming its
   host and spec digest. etcd creates a key once, so two leaders can never place one job id
   twice: the second finds the claim, and either answers where the job is (the same spec: a
   retry) or 409 (another spec under that id);
4. each job goes to <prefix>/cluster/assignments/<host>/<job id>. A host starts an assignment
   only if the claim names it with the same spec (so an assignment no claim backs, from a
   leader that lost its place, is ignored), and deletes it once its heartbeat shows the job;
5. the request record is deleted, and the request answered.
A request record left behind (the leader died, or etcd failed, midway) is replayed, claims and
all, until it is complete: when a leader takes office, on every request, and every
`replay_interval_s`. A replay is idempotent: claims tell where each job went.
"""
from __future__ import annotations

import heapq
import logging
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

import gevent
import gevent.event
import gevent.pool
import gevent.queue
import simplejson

from host.clock import Clock
from host.cluster.registered import port_key
from host.cluster.view import ClusterView, RegisteredHost
from host.discovery.etcd import Records, Registration
from host.errors import (Conflict, FlynnError, NoCapacity, NotFound, NotLeader, Unavailable,
                         ValidationError)
from host.jobspec import JobLimits, check_limits, parse_job
from host.retry import Backoff
from host.types import Job, job_from_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Claim:
    """Who runs a job id, as etcd settled it: the value of <prefix>/cluster/jobs/<job id>."""
    host_id: str
    spec_digest: str
    request_id: str

    def dumps(self) -> str:
        return simplejson.dumps({"host_id": self.host_id, "spec_digest": self.spec_digest,
                                 "request_id": self.request_id})

    @classmethod
    def loads(cls, text: str) -> "Claim":
        """Raises ValueError, KeyError or TypeError on a value that is not a claim."""
        d = simplejson.loads(text)
        return cls(str(d["host_id"]), str(d["spec_digest"]), str(d["request_id"]))


@dataclass(frozen=True, slots=True)
class Assignment:
    """A job handed to a host: the value of <prefix>/cluster/assignments/<host>/<job id>."""
    job: Job
    leader_id: str
    request_id: str

    def dumps(self) -> str:
        return simplejson.dumps({"job": self.job.to_dict(), "leader_id": self.leader_id,
                                 "request_id": self.request_id})

    @classmethod
    def loads(cls, text: str) -> "Assignment":
        """Raises ValueError, KeyError or TypeError (or ValidationError) on a bad value."""
        d = simplejson.loads(text)
        return cls(parse_job(d["job"]), str(d["leader_id"]), str(d["request_id"]))


class ClaimRecords:
    """The job id claims under <prefix>/cluster/jobs."""

    def __init__(self, records: Records):
        self.records = records

    #: tries when a claim vanishes between our create and our read (it was being released)
    claim_attempts = 3

    def claim(self, job_id: str, claim: Claim) -> Claim:
        """Claim `job_id` for `claim.host_id`; the claim that holds it (ours, or an earlier
        one: then the caller compares)."""
        for _ in range(self.claim_attempts):
            if self.records.create(job_id, claim.dumps()):
                return claim
            existing = self.get(job_id)
            if existing is not None:
                return existing
        raise Unavailable(f"job {job_id}: its claim keeps changing in etcd; retry")

    def get(self, job_id: str) -> Optional[Claim]:
        record = self.records.get(job_id)
        if record is None:
            return None
        try:
            return Claim.loads(record.value)
        except (ValueError, KeyError, TypeError):
            log.error("claim of job %s is unreadable (%r); treating it as absent", job_id,
                      record.value)
            return None

    def release(self, job_id: str, claim: Claim) -> bool:
        """Delete the claim if it is still `claim` (compare-and-delete)."""
        record = self.records.get(job_id)
        if record is None or record.value != claim.dumps():
            return False
        return self.records.delete(job_id, prev_index=record.modified_index)


@dataclass
class Capacity:
    """What a host has left, as the leader sees it: its registration minus what is pending."""
    host: RegisteredHost
    memory_mb: int
    cpu_shares: int
    ports: frozenset = frozenset()                # {"port/proto"} taken (port_key)
    jobs: int = 0                                 # active jobs, pending ones included

    @classmethod
    def of(cls, host: RegisteredHost) -> "Capacity":
        """(From what the view takes out of every heartbeat: no job summary is built, no job
        counted and no port set copied: made for every host on every placement, at 5,000
        hosts of 100 jobs that was half a million status checks a request.)"""
        header = host.header
        return cls(host, header.resources.memory_mb - header.allocated.memory_mb,
                   header.resources.cpu_shares - header.allocated.cpu_shares,
                   host.active_ports, host.active_jobs)

    def shortfall(self, job: Job) -> str:
        """Why the job does not fit here ("" when it does)."""
        want = job.resources
        if want.memory_mb > self.memory_mb:
            return f"memory: needs {want.memory_mb} MiB, {self.memory_mb} MiB free"
        if want.cpu_shares > self.cpu_shares:
            return f"cpu_shares: needs {want.cpu_shares}, {self.cpu_shares} free"
        for spec in job.config.ports:
            if spec.port and port_key(spec.port, spec.proto) in self.ports:
                return f"port {spec.port}/{spec.proto} is taken"
        return ""

    def take(self, job: Job):
        self.memory_mb -= job.resources.memory_mb
        self.cpu_shares -= job.resources.cpu_shares
        fixed = [port_key(p.port, p.proto) for p in job.config.ports if p.port]
        if fixed:  # (a new set: the host's own is shared, and most jobs take no fixed port)
            self.ports = self.ports.union(fixed)
        self.jobs += 1

    @property
    def load(self) -> tuple:
        """Least allocated first: the larger share of memory or CPU in use, then the number of
        jobs (jobs without reservations spread too), then the host id (a deterministic
        tie-break)."""
        total = self.host.header.resources
        memory = 1 - self.memory_mb / total.memory_mb if total.memory_mb else 0
        cpu = 1 - self.cpu_shares / total.cpu_shares if total.cpu_shares else 0
        return max(memory, cpu), self.jobs, self.host.id


class LeastLoaded:
    """A request's hosts by load, least first (Capacity.load), for its jobs to go each to the
    first that fits. Weighing every host for each job was most of a placement at 5,000 hosts;
    a heap weighs each host once a request, and then the few a job looks at.

    An entry may be older than its capacity: a job taken since (placed here, or sent to that
    host by name) only adds to a host's load, so an entry never weighs more than its host does
    now. Popped, it is weighed again; if it is still the least it is the least, or else it
    goes back with its weight of now."""
    #: hosts named, at most, in the error when none can take a job
    reasons_shown = 10

    def __init__(self, capacity: dict):
        self._capacity = capacity  # {host id: Capacity}, taken from by the caller too
        self._heap = [c.load for c in capacity.values()]  # (the host id comes last)
        heapq.heapify(self._heap)

    def place(self, job: Job) -> str:
        """The id of the least loaded host that can take `job` (the caller takes it there);
        NoCapacity naming why, if none can."""
        passed = []  # weighed now: back into the heap once this job is placed (or is not)
        try:
            while self._heap:
                load = heapq.heappop(self._heap)
                capacity = self._capacity[load[-1]]
                if capacity.load != load:
                    heapq.heappush(self._heap, capacity.load)
                    continue
                passed.append(load)  # (back after it; the host chosen too, its entry older
                #                       once the job is taken there)
                if not capacity.shortfall(job):
                    return capacity.host.id
        finally:
            for load in passed:
                heapq.heappush(self._heap, load)
        raise NoCapacity(f"no host can take job {job.id!r} ({self._reasons(job)})")

    def _reasons(self, job: Job) -> str:
        if not self._capacity:
            return "no hosts"
        # (none fits: only the hosts named are asked why, not all 5,000)
        shown = heapq.nsmallest(self.reasons_shown, self._capacity.values(),
                                key=lambda c: c.host.id)
        more = len(self._capacity) - len(shown)
        return "; ".join(f"{c.host.id}: {c.shortfall(job)}" for c in shown) + \
            (f"; and {more} more hosts" if more > 0 else "")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one job of a request goes."""
    host_id: str
    job: Job
    already_there: bool          # the cluster knows this very job: nothing to record
    targeted: bool               # the client named the host


@dataclass(frozen=True, slots=True)
class Pending:
    """A job assigned to a host whose heartbeat does not show it yet."""
    host_id: str
    job: Job


class JobScheduler:
    #: seconds a request may wait in the queue and be processed before the caller gives up
    request_timeout_s = 30
    #: seconds between two looks for request records left incomplete
    replay_interval_s = 5.0

    def __init__(self, view: ClusterView, requests: Records, claims: Records,
                 assignments: Records, registration: Callable[[], Optional[Registration]],
                 leads: Callable[[str, int], bool], clock: Clock,
                 limits: Optional[JobLimits] = None):
        """`registration()` is this agent's own registration (None while it has none);
        `leads(host_id, created_index)` asks etcd's quorum whether that registration leads."""
        self.view = view
        self.requests = requests
        self.claims = ClaimRecords(claims)
        self.assignments = assignments
        self._registration = registration
        self._leads = leads
        self.clock = clock
        self.limits = limits or JobLimits()  # what one job may ask for (the settings)
        self._queue = gevent.queue.Queue()
        self.latency = None         # a histogram of AddJobs seconds (host.metrics)
        self.pending: dict = {}     # job id -> Pending
        self._term = None           # the leader_since index pending was rebuilt for

    # ---- the API side ------------------------------------------------------------------------

    def add_jobs(self, body) -> dict:
        """Queue a request and wait for its answer (raises what processing raised)."""
        answer = gevent.event.AsyncResult()
        started = self.clock.monotonic()
        self._queue.put((body, answer))
        try:
            return answer.get(timeout=self.request_timeout_s)
        except gevent.Timeout:
            raise Unavailable("the leader did not process the request in time; it may still "
                              "be placed: retry with the same job ids") from None
        finally:
            if self.latency is not None:
                self.latency.observe(self.clock.monotonic() - started)

    @property
    def queue_depth(self) -> int:
        """AddJobs requests waiting for the scheduler's greenlet (for /metrics)."""
        return self._queue.qsize()

    def poke(self):
        """This agent took office: finish recorded requests now, not at the next tick."""
        self._queue.put((None, None))

    # ---- the one greenlet --------------------------------------------------------------------

    def run(self):
        backoff = Backoff("replaying recorded requests", log)
        while True:
            try:
                body, answer = self._queue.get(timeout=self.replay_interval_s)
            except gevent.queue.Empty:
                body, answer = None, None
            if answer is not None:
                try:
                    answer.set(self._process(body))
                except Exception as e:  # the caller's greenlet re-raises it
                    answer.set_exception(e)
                continue
            if not self.view.is_leader:
                continue
            try:
                self._catch_up()
            except FlynnError as e:
                backoff.failed(e, sleep=False)  # the next tick is the retry
                continue
            backoff.succeeded()

    def _process(self, body) -> dict:
        if not self.view.is_leader:
            raise NotLeader("this agent stopped being the leader", retry=True)
        self._catch_up()
        self._forget_mirrored()
        placements = self._validate_and_place(body)
        new = [p for p in placements if not p.already_there]
        placed = {p.job.id: p.host_id for p in placements}
        if new:
            self._confirm_leadership()
            request_id = uuid.uuid4().hex
            record = {"id": request_id, "created_at": self.clock.now_text(),
                      "leader_id": self.view.host_id,
                      "jobs": [{"host_id": p.host_id, "job": p.job.to_dict()} for p in new]}
            self.requests.put(request_id, simplejson.dumps(record))  # durable before claims
            try:
                claimed = self._claim(record, strict=True,
                                      targeted=frozenset(p.job.id for p in new if p.targeted))
            except Conflict:
                self.requests.delete(request_id)
                raise
            self._assign(record, claimed)
            self.requests.delete(request_id)
            placed.update({job_id: host_id for job_id, (host_id, _) in claimed.items()})
            log.info("request %s: %d job(s) assigned: %s", request_id, len(claimed),
                     ", ".join(f"{job_id}@{host_id}" for job_id, (host_id, _) in claimed.items()))
        return {"jobs": [{"host_id": placed[p.job.id], "job_id": p.job.id,
                          "host_addr": self._addr_of(placed[p.job.id])} for p in placements]}

    def _addr_of(self, host_id: str):
        """The address the chosen host serves its API at (what a client attaches to)."""
        host = self.view.hosts.get(host_id)
        return host.addr if host is not None else None

    def _catch_up(self):
        """Know what is recorded in etcd before deciding anything: jobs assigned but not yet
        reported (once per term), and request records left incomplete."""
        self._take_office()
        self.replay_requests()

    def _confirm_leadership(self):
        """Fencing: etcd's quorum, not our view, says whether we still lead."""
        mine = self._registration()
        if mine is None or not self._leads(self.view.host_id, mine.created_index):
            raise NotLeader("this agent is not the leader any more (its registration is not "
                            "the oldest in etcd); retry: the request goes to the new leader",
                            retry=True)

    def _claim(self, record: dict, strict: bool, targeted: frozenset = frozenset()) -> dict:
        """Claim every job of a request record: {job id: (host id, Job)}, where each job runs.
        A job id claimed already with the same spec runs where that claim says (a retry, or a
        leader that lost its place got there first), unless the client named another host for
        it. Anything else is a Conflict when `strict` (a new request: our own claims are
        released again, all or nothing); when replaying, that job is dropped with an error in
        the log (whoever holds the id runs their job)."""
        claimed = {}
        jobs = [(job_from_dict(item["job"]), item["host_id"]) for item in record["jobs"]]
        wanted = [(job, Claim(host_id, job.spec_digest(), record["id"])) for job, host_id in jobs]
        holders = _at_once(lambda pair: self.claims.claim(pair[0].id, pair[1]), wanted)
        for (job, ours), holder in zip(wanted, holders):
            if holder.spec_digest != ours.spec_digest:
                problem = f"job id {job.id!r} is already used on host {holder.host_id!r} " \
                          "with another spec"
            elif holder.host_id != ours.host_id and job.id in targeted:
                problem = f"job {job.id!r} already runs on host {holder.host_id!r}, not " \
                          f"{ours.host_id!r}"
            else:
                claimed[job.id] = (holder.host_id, job)
                continue
            if not strict:
                log.error("request %s: job %s not placed: %s", record["id"], job.id, problem)
                continue
            for job_id, (host_id, placed_job) in claimed.items():
                self.claims.release(job_id, Claim(host_id, placed_job.spec_digest(),
                                                  record["id"]))
            raise Conflict(problem)
        return claimed

    def _assign(self, record: dict, claimed: dict):
        def assign(item):
            job_id, (host_id, job) = item
            assignment = Assignment(job, self.view.host_id, record["id"])
            self.assignments.put(f"{host_id}/{job_id}", assignment.dumps())
            self.pending[job_id] = Pending(host_id, job)
        _at_once(assign, list(claimed.items()))

    def replay_requests(self):
        """Finish every request a leader recorded but did not complete (it died, or etcd
        failed midway): claim, assign, then delete the record. Safe to repeat at any time."""
        _, records = self.requests.read_dir(quorum=True)
        for stored in records:
            try:
                record = simplejson.loads(stored.value)
                jobs = record["jobs"]
            except (ValueError, KeyError, TypeError):
                log.error("request record %s is unreadable; deleting it", stored.name)
                self.requests.delete(stored.name, prev_index=stored.modified_index)
                continue
            log.info("request %s: finishing what a leader recorded (%d job(s))", record["id"],
                     len(jobs))
            self._assign(record, self._claim(record, strict=False))
            self.requests.delete(stored.name, prev_index=stored.modified_index)

    def _take_office(self):
        """Once per term: jobs an earlier leader assigned that their hosts do not show yet
        count as pending here too (their resources and ports are spoken for)."""
        if self._term == self.view.leader_since:
            return
        _, records = self.assignments.read_dir(quorum=True)
        pending = {}
        for record in records:
            host_id, _, job_id = record.name.partition("/")
            try:
                pending[job_id] = Pending(host_id, Assignment.loads(record.value).job)
            except (ValueError, KeyError, TypeError, ValidationError):
                continue  # its host drops it
        self.pending, self._term = pending, self.view.leader_since

    def _forget_mirrored(self):
        """Pending jobs that their host now reports are the mirror's business."""
        for job_id, pending in list(self.pending.items()):
            host = self.view.hosts.get(pending.host_id)
            if host is None or job_id in host.jobs:
                del self.pending[job_id]

    # ---- validation and placement ----------------------------------------------------------

    def _validate_and_place(self, body) -> list:
        """[Placement] for every job, or an error naming the first problem. Nothing is placed
        unless everything fits."""
        explicit = self._parse(body)
        capacity = {h.id: Capacity.of(h) for h in self.view.hosts.values()}
        for pending in self.pending.values():
            if pending.host_id in capacity:
                capacity[pending.host_id].take(pending.job)
        least_loaded = LeastLoaded(capacity)
        known_jobs = self.view.find_jobs(job.id for _, job in explicit)
        placements = []
        for target, job in explicit:
            known = known_jobs.get(job.id)
            if known is not None or job.id in self.pending:
                host_id = self._same_job(job, target, *self._known(job.id, known))
                placements.append(Placement(host_id, job, True, target is not None))
                continue
            if target is None:
                host_id = least_loaded.place(job)
            elif target not in capacity:
                raise NotFound(f"no host {target!r} in the cluster")
            else:
                host_id = target
                short = capacity[target].shortfall(job)
                if short:
                    raise Conflict(f"job {job.id!r} does not fit on host {target!r}: {short}")
            capacity[host_id].take(job)
            placements.append(Placement(host_id, job, False, target is not None))
        return placements

    def _known(self, job_id: str, known: Optional[tuple]) -> tuple:
        """(host id, spec digest) of a job id the cluster knows: `known`, what the mirror
        has of it (view.find_jobs), or else a pending assignment."""
        if known is not None:
            host_id, summary = known
            return host_id, summary.spec_digest
        pending = self.pending[job_id]
        return pending.host_id, pending.job.spec_digest()

    @staticmethod
    def _same_job(job: Job, target, host_id: str, digest: str) -> str:
        """A job id the cluster knows: the same job (the whole spec) again is answered where it
        is (idempotent), whatever its state: a retry of a request whose answer was lost gets
        the answer it would have got, even if its job has ended meanwhile (the claim answers
        the same when the mirror does not show the job yet). Anything else under that id is a
        conflict, until retention drops the ended job and releases its id."""
        if digest != job.spec_digest():
            raise Conflict(f"job id {job.id!r} is already used on host {host_id!r} with "
                           "another spec")
        if target not in (None, host_id):
            raise Conflict(f"job {job.id!r} already runs on host {host_id!r}, not {target!r}")
        return host_id

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
                    check_limits(job, self.limits)
                except ValidationError as e:
                    raise ValidationError(f"{where}[{n}]: {e.message}") from None
                if job.id in seen:
                    raise ValidationError(f"{where}[{n}].id: {job.id!r} appears twice")
                seen.add(job.id)
                parsed.append((None if key == "jobs" else key, job))
        return parsed


#: etcd writes a request's claims (then its assignments) make at once: one at a time, 200 jobs
#: were 400 round trips in a row, seconds before the last host heard of its jobs
WRITES_AT_ONCE = 16


def _at_once(write, items: list) -> list:
    """[write(item) for item in items], up to WRITES_AT_ONCE at a time, in items' order. The
    first failure is raised (the writes already on their way complete: the request record,
    written first, is replayed, and claiming and assigning again are idempotent)."""
    if len(items) <= 1:
        return [write(item) for item in items]

    def attempt(item):  # caught here, raised in the caller (not logged by the hub as a crash)
        try:
            return True, write(item)
        except Exception as e:
            return False, e
    results = gevent.pool.Pool(min(WRITES_AT_ONCE, len(items))).map(attempt, items)
    for ok, value in results:
        if not ok:
            raise value
    return [value for _, value in results]
