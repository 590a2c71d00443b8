"""The local job table: the one place a job's state changes.

Every change goes through one method that checks the transition is allowed, persists the job and
its event in one transaction, and only then publishes the event to waiting clients. The store
groups the writes of one turn of the loop into one commit: a change is made in memory and
queued for the disk in one step, without yielding, and its event is held pending until the
commit, then published (host.events).
"""
from __future__ import annotations

import logging
from typing import Optional

from host.clock import Clock
from host.errors import NotFound
from host.events import EventLog
from host.statedir import LocalState
from host.store import Store
from host.types import (ACTIVE_STATES, EVENT_FOR_STATE, FINAL_STATES, STARTING, ActiveJob, Event,
                        HostResources, Job, JobSummary, can_transition)

log = logging.getLogger(__name__)

#: longest `error` a job records: Docker's messages can quote whole specs back
MAX_ERROR_CHARS = 2000


def bounded_error(text: str) -> str:
    text = str(text)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 1] + "…"


def event_job(job: ActiveJob) -> dict:
    """What a job event carries: the job's summary (as the cluster's events carry it) and
    where it runs, never its spec. A spec can be a megabyte of environment; every long-poll
    answer, the retained buffer and its reload at start-up would carry it with every event,
    and the environment is a secret besides. The spec is one GET /host/jobs/ID away."""
    return dict(JobSummary.of(job).to_dict(), container_id=job.container_id,
                internal_ip=job.internal_ip)


class JobTable:
    def __init__(self, host_id: str, store: Store, events: EventLog, clock: Clock):
        self.host_id = host_id
        self.events = events
        self._store = store
        self._clock = clock
        self._jobs: dict = {}    # id -> ActiveJob
        self._seq: dict = {}     # id -> creation order, for "newest first"
        self._next_seq = 1

    @classmethod
    def load(cls, local: LocalState, clock: Clock, event_capacity: int) -> "JobTable":
        """The table as the state dir holds it, with the event log resuming at the last cursor
        (or above the cursor floor, where a lost table left the cursors)."""
        backlog = local.snapshot.events
        last = backlog[-1].cursor if backlog else local.cursor_floor
        table = cls(local.host_id, local.store, EventLog(event_capacity, last, backlog), clock)
        for seq, job in local.snapshot.jobs:
            table._jobs[job.id] = job
            table._seq[job.id] = seq
            table._next_seq = seq + 1
        return table

    # ---- reading ---------------------------------------------------------------------------

    def find(self, job_id: str) -> Optional[ActiveJob]:
        return self._jobs.get(job_id)

    def get(self, job_id: str) -> ActiveJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} on this host")
        return job

    def list(self, status: Optional[str] = None) -> list:
        """Jobs newest first, optionally only those in `status`."""
        jobs = sorted(self._jobs.values(), key=lambda j: self._seq[j.id], reverse=True)
        return [j for j in jobs if status is None or j.status == status]

    def active(self) -> list:
        return [j for j in self._jobs.values() if j.status in ACTIVE_STATES]

    def ended_oldest_first(self) -> list:
        """Final jobs in the order they ended."""
        ended = [j for j in self._jobs.values() if j.status in FINAL_STATES]
        return sorted(ended, key=lambda j: (j.ended_at or "", self._seq[j.id]))

    def allocated(self) -> HostResources:
        """What the jobs that are not final have reserved."""
        active = self.active()
        return HostResources(memory_mb=sum(j.job.resources.memory_mb for j in active),
                             cpu_shares=sum(j.job.resources.cpu_shares for j in active))

    def counts(self) -> dict:
        counts = {}
        for job in self._jobs.values():
            counts[job.status] = counts.get(job.status, 0) + 1
        return counts

    # ---- changing --------------------------------------------------------------------------

    def add(self, job: Job, ports: tuple = ()) -> ActiveJob:
        """Record a new job in `starting` and publish its create event. The caller has checked
        that the id is free."""
        if job.id in self._jobs:
            raise ValueError(f"job {job.id} exists")  # a bug in the caller, not bad input
        active = ActiveJob(job=job, host_id=self.host_id, status=STARTING, ports=ports,
                           created_at=self._clock.now_text())
        self._seq[job.id] = self._next_seq
        self._next_seq += 1
        self._jobs[job.id] = active
        self._save(active, publish=True)
        log.info("job %s: created (image %s)", job.id, job.config.image)
        return active

    def adopt(self, active: ActiveJob) -> ActiveJob:
        """Record a job rebuilt from a container's labels (its table entry was lost)."""
        self._seq[active.id] = self._next_seq
        self._next_seq += 1
        self._jobs[active.id] = active
        self._save(active, publish=True)
        return active

    def update(self, job_id: str, **fields) -> ActiveJob:
        """Change fields that are not the state (container id, stop request): persisted, no
        event."""
        job = self.get(job_id)
        for name, value in fields.items():
            setattr(job, name, value)
        self._save(job, publish=False)
        return job

    def transition(self, job_id: str, status: str, **fields) -> bool:
        """Move a job to `status`, setting `fields` with it. Returns False (and changes nothing)
        if the move is not allowed from the job's current state: e.g. a repeated Docker event
        for a job that is already final."""
        job = self.get(job_id)
        if not can_transition(job.status, status):
            log.debug("job %s: ignoring %s -> %s", job_id, job.status, status)
            return False
        previous = job.status
        job.status = status
        if fields.get("error"):
            fields["error"] = bounded_error(fields["error"])
        for name, value in fields.items():
            setattr(job, name, value)
        self._save(job, publish=True)
        detail = f" (exit {job.exit_status})" if job.exit_status is not None else ""
        detail += f": {job.error}" if job.error else ""
        log.info("job %s: %s -> %s%s", job_id, previous, status, detail)
        return True

    def forget(self, job_id: str):
        """Drop a final job from the table (retention)."""
        job = self.get(job_id)
        if not job.is_final:
            raise ValueError(f"job {job_id} is not final")
        del self._jobs[job_id]
        del self._seq[job_id]
        self._store.delete_job(job_id)

    def _save(self, job: ActiveJob, publish: bool):
        data = job.to_dict()
        stored = dict(data, stop_requested=job.stop_requested)
        if not publish:
            self._store.save(self._seq[job.id], stored)
            return
        event = Event(cursor=self.events.next_cursor, type="job", event=EVENT_FOR_STATE[job.status],
                      host_id=self.host_id, job_id=job.id, job=event_job(job),
                      time=self._clock.now_text())
        self.events.append_pending(event)
        self._store.save(self._seq[job.id], stored, event.to_dict(),
                         on_commit=lambda: self.events.publish(event.cursor))

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every change so far is durable (and its event published)."""
        return self._store.flush(timeout)
