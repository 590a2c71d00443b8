"""The host side of AddJobs: jobs the leader assigned to this host, under
<prefix>/cluster/assignments/<host_id>/<job_id>. Each is started (idempotent by id) and its key
deleted only once this host's heartbeat shows the job, so a job is never lost between the leader's
word and the mirror."""
from __future__ import annotations

import logging

import gevent
import simplejson

from host import errors
from host.discovery.etcd import IndexCleared, Records
from host.discovery.heartbeat import Heartbeat
from host.jobspec import parse_job
from host.supervisor import JobSupervisor

log = logging.getLogger(__name__)


class AssignmentWatcher:
    #: seconds one watch request waits before it is renewed
    watch_timeout_s = 30
    #: seconds to wait before trying again after etcd or Docker failed
    retry_s = 0.5

    def __init__(self, records: Records, supervisor: JobSupervisor, heartbeat: Heartbeat,
                 spawn):
        self.records = records
        self.supervisor = supervisor
        self.heartbeat = heartbeat
        self._spawn = spawn

    def run(self):
        index = None
        while True:
            try:
                if index is None:
                    index, found = self.records.read_dir()
                    for record in found:
                        self._take(record.name, record.value)
                record = self.records.watch_dir(index, self.watch_timeout_s)
                if record is not None:
                    index = record.modified_index
                    if not record.removed:
                        self._take(record.name, record.value)
            except IndexCleared:
                index = None
            except errors.Unavailable as e:
                log.warning("assignments: %s; reading them again shortly", e)
                index = None
                gevent.sleep(self.retry_s)

    def _take(self, job_id: str, value: str):
        try:
            job = parse_job(simplejson.loads(value))
        except (ValueError, errors.ValidationError) as e:
            log.error("assignment %s is unreadable, dropping it: %s", job_id, e)
            self.records.delete(job_id)
            return
        try:
            active, created = self.supervisor.submit(job)
        except errors.Conflict as e:
            log.error("job %s: assignment refused: %s", job_id, e)
            self.records.delete(job_id)  # the leader's mirror shows why; retrying cannot help
            return
        log.info("job %s: %s from the leader's assignment", job_id,
                 "accepted" if created else "already here")
        # delete the assignment only once the cluster can see the job in our registration
        self._spawn(self._release_when_published, job_id)

    def _release_when_published(self, job_id: str):
        while not self.heartbeat.publish_and_wait(timeout_s=10):
            log.warning("job %s: heartbeat not published yet; keeping its assignment", job_id)
        self.records.delete(job_id)
