"""The host side of AddJobs: jobs the leader assigned to this host, under
<prefix>/cluster/assignments/<host_id>/<job_id>.

An assignment is started only if the job id's claim (<prefix>/cluster/jobs/<job_id>, which etcd
lets exactly one leader create) names this host and the same spec: an assignment no claim backs,
written by an agent that only believed it led, is ignored. A job this host cannot take (it does not
fit, a port is taken) is recorded as failed with the reason, so that the cluster sees the refusal.
The key is deleted only once this host's heartbeat shows the job, so a job is never lost between
the leader's word and the mirror. When retention drops an ended job, its claim is released and
the id may be used again.
"""
from __future__ import annotations

import logging

import gevent.pool

from host import errors
from host.cluster.scheduler import Assignment, ClaimRecords
from host.discovery.etcd import IndexCleared, Record, Records
from host.discovery.heartbeat import Heartbeat
from host.retry import Backoff
from host.supervisor import JobSupervisor
from host.types import ActiveJob

log = logging.getLogger(__name__)


class AssignmentWatcher:
    #: seconds one watch request waits before it is renewed
    watch_timeout_s = 30
    #: seconds to wait for the heartbeat to publish a job before saying so in the log
    publish_wait_s = 10
    #: assignments taken at once: each waits on etcd for its claim, and one at a time a burst
    #: of 70 took the host seconds, its engine idle meanwhile
    intake_concurrency = 8

    def __init__(self, host_id: str, records: Records, claims: ClaimRecords,
                 supervisor: JobSupervisor, heartbeat: Heartbeat, spawn):
        self.host_id = host_id
        self.records = records
        self.claims = claims
        self.supervisor = supervisor
        self.heartbeat = heartbeat
        self._spawn = spawn
        self._intake = gevent.pool.Pool(self.intake_concurrency)
        self._take_backoff = Backoff("assignments: taking", log)

    def run(self):
        """Forever: take every assignment there is, then each new one, from one streamed watch
        (a request for many changes). etcd failing makes it read them all again, with backoff;
        a take that fails (etcd, Docker) is tried again by itself (an assignment is only
        deleted once taken)."""
        try:
            self._follow()
        finally:  # stopped (the agent is stopping): so are the takes under way
            self._intake.kill()

    def _follow(self):
        index = None
        backoff = Backoff("assignments", log)
        while True:
            try:
                if index is None:
                    index, found = self.records.read_dir()
                    for record in found:
                        self._take_soon(record)
                for record in self.records.stream_dir(index, self.watch_timeout_s):
                    index = record.modified_index
                    if not record.removed:
                        self._take_soon(record)
            except IndexCleared:
                index = None
                continue
            except errors.FlynnError as e:
                index = None
                backoff.failed(e)
                continue
            backoff.succeeded()

    def _take_soon(self, record: Record):
        """Take `record` in a greenlet of the intake's (waiting for a free one: backpressure)."""
        self._intake.spawn(self._take_until_done, record)

    def _take_until_done(self, record: Record):
        while True:
            try:
                self._take(record)
            except errors.FlynnError as e:
                self._take_backoff.failed(e)
                continue
            self._take_backoff.succeeded()
            return

    def _take(self, record: Record):
        job_id = record.name
        try:
            assignment = Assignment.loads(record.value)
            if assignment.job.id != job_id:
                raise ValueError(f"it holds job {assignment.job.id!r}")
        except (ValueError, KeyError, TypeError, errors.ValidationError) as e:
            log.error("assignment %s is unreadable, dropping it: %s", job_id, e)
            self.records.delete(job_id, prev_index=record.modified_index)
            return
        job = assignment.job
        claim = self.claims.get(job_id)
        if claim is None or claim.host_id != self.host_id or \
                claim.spec_digest != job.spec_digest():
            log.warning("job %s: ignoring an assignment from %s that the cluster's claim does "
                        "not back (claim: %s)", job_id, assignment.leader_id, claim)
            self.records.delete(job_id, prev_index=record.modified_index)
            return
        try:
            _, created = self.supervisor.submit(job)
            log.info("job %s: %s from the leader's assignment", job_id,
                     "accepted" if created else "already here")
        except errors.Conflict as e:
            if self.supervisor.refuse(job, e.message) is None:
                log.error("job %s: assignment refused, and the id is taken here: %s", job_id, e)
                self.records.delete(job_id, prev_index=record.modified_index)
                return
            log.error("job %s: assignment refused (recorded as failed): %s", job_id, e)
        # delete the assignment only once the cluster can see the job in our registration
        self._spawn(self._release_when_published, job_id, record.modified_index)

    def _release_when_published(self, job_id: str, index: int):
        waited = 0
        while not self.heartbeat.publish_and_wait(timeout_s=self.publish_wait_s):
            waited += self.publish_wait_s
            if waited == self.publish_wait_s:  # once, not every wait
                log.warning("job %s: heartbeat not published yet; keeping its assignment", job_id)
        # unless rewritten meanwhile (a replay): then it is taken again, idempotently
        self.records.delete(job_id, prev_index=index)

    def release_claim(self, job: ActiveJob):
        """Retention dropped an ended job: release its id in the cluster, if we hold it."""
        try:
            claim = self.claims.get(job.id)
            if claim is not None and claim.host_id == self.host_id and \
                    claim.spec_digest == job.job.spec_digest():
                self.claims.release(job.id, claim)
                log.debug("job %s: claim released", job.id)
        except errors.FlynnError as e:
            log.warning("job %s: could not release its claim (the id stays taken in the "
                        "cluster): %s", job.id, e)
