"""Every agent's picture of the cluster, mirrored from discoverd's registrations in etcd.

One greenlet reads the whole services directory, then follows a recursive watch from the read's
index, applying each registration into a dict {host_id: RegisteredHost}. When etcd fails for a
while (unreachable, or answering errors), the watch resumes from the last index seen, so followers
of the cluster events notice nothing; only when etcd says that history was cleared does it read
everything again (and cursors from before then get 410). The leader is the live
registration with the lowest createdIndex: no other election. On the leader this dict is the
cluster mirror the cluster API serves.

Each applied change also becomes cluster events (host add/remove/update, and a job event for every
job whose state changed; the active jobs of a host that left are reported lost). A cluster event's
cursor is etcd's index of the change times CURSOR_SCALE plus its place within the change, so
every agent numbers the same event alike and a client keeps its cursor when the leader changes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import gevent.event
import simplejson

from host import errors
from host.clock import rfc3339
from host.discovery.etcd import EtcdDiscovery, HostChange, IndexCleared, Registration
from host.events import EventLog
from host.retry import Backoff
from host.types import EVENT_FOR_STATE, Event, HostRecord

#: cluster event cursors per etcd index: room for that many events from one change
CURSOR_SCALE = 10000

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegisteredHost:
    id: str
    created_index: int
    modified_index: int
    record: HostRecord           # what the host published

    @property
    def addr(self) -> str:
        return self.record.addr


class ClusterView:
    #: seconds one watch request waits before it is renewed
    watch_timeout_s = 30

    def __init__(self, discovery: EtcdDiscovery, host_id: str, event_capacity: int = 10000):
        self.discovery = discovery
        self.host_id = host_id
        self.hosts: dict = {}
        self.events = EventLog(event_capacity)
        self.synced = gevent.event.Event()       # set once the first full read is applied
        self._changed = gevent.event.Event()     # swapped and set on every change
        self._leader_id: Optional[str] = None
        self.leader_since: Optional[int] = None  # etcd index at which the leader took office
        self.leader_since_time: Optional[str] = None  # when this agent saw it take office

    # ---- reading the view -------------------------------------------------------------------

    def leader(self) -> Optional[RegisteredHost]:
        return self.hosts.get(self._leader_id) if self._leader_id else None

    @property
    def leader_id(self) -> Optional[str]:
        return self._leader_id

    @property
    def is_leader(self) -> bool:
        return self._leader_id == self.host_id

    def wait_for_change(self, timeout_s: float) -> bool:
        return self._changed.wait(timeout_s)

    # ---- following etcd ---------------------------------------------------------------------

    def run(self, start_index: Optional[int] = None):
        """Forever: read everything, then follow the watch from the read's index (or from
        `start_index`, where a previous read left off). etcd failing makes it try again from
        where it was, with backoff; only a cleared history makes it read everything again."""
        index = start_index
        backoff = Backoff("cluster view", log)
        while True:
            try:
                if index is None:
                    index = self._resync()
                change = self.discovery.watch_hosts(index, self.watch_timeout_s)
            except IndexCleared as e:
                log.info("cluster view: %s; reading every registration again", e)
                index = None
                continue
            except errors.FlynnError as e:
                backoff.failed(e)
                continue
            backoff.succeeded()
            if change is not None:
                index = change.registration.modified_index
                self._apply(change, index)

    def _resync(self) -> int:
        index, registrations = self.discovery.list_hosts()
        fresh = {}
        for registration in registrations:
            host = self._parse(registration)
            if host is not None:
                fresh[host.id] = host
        previous, self.hosts = self.hosts, fresh
        # history before this read is unknown here: clients with older cursors re-list
        self.events.restart_at(max(index * CURSOR_SCALE, self.events.last_cursor))
        if self.synced.is_set():  # not the first read: tell what changed meanwhile
            emit = self._emitter(index)
            for host_id in sorted(set(previous) | set(fresh)):
                self._diff(emit, previous.get(host_id), fresh.get(host_id))
        self._elect(index)
        self.synced.set()
        self._notify()
        return index

    def _apply(self, change: HostChange, index: int):
        registration = change.registration
        before = self.hosts.get(registration.host_id)
        if change.action == "remove":
            after = None
            if self.hosts.pop(registration.host_id, None) is not None:
                log.info("cluster view: host %s left", registration.host_id)
        else:
            after = self._parse(registration)
            if after is None:
                return
            if before is None:
                log.info("cluster view: host %s joined (created index %d)", after.id,
                         after.created_index)
            self.hosts[after.id] = after
        self._diff(self._emitter(index), before, after)
        self._elect(index)
        self._notify()

    def _emitter(self, index: int):
        """A function publishing cluster events numbered within etcd change `index`."""
        position = [max(index * CURSOR_SCALE, self.events.last_cursor)]
        now = rfc3339(datetime.now(timezone.utc))

        def emit(kind: str, name: str, host_id: str, job: Optional[dict] = None):
            position[0] += 1
            self.events.append(Event(cursor=position[0], type=kind, event=name, host_id=host_id,
                                     job_id=job["id"] if job else None, job=job, time=now))
        return emit

    @staticmethod
    def _diff(emit, before: Optional[RegisteredHost], after: Optional[RegisteredHost]):
        """Cluster events for one host's change from `before` to `after` (None = absent)."""
        old_jobs = {j.id: j for j in before.record.jobs} if before else {}
        if after is None:
            emit("host", "remove", before.id)
            for job in old_jobs.values():
                if job.is_active:
                    emit("job", "error", before.id,
                         dict(job.to_dict(), status="lost",
                              error=f"host {before.id} left the cluster"))
            return
        if before is None:
            emit("host", "add", after.id)
        elif before.record.without_jobs() != after.record.without_jobs():
            emit("host", "update", after.id)
        for job in after.record.jobs:
            old = old_jobs.get(job.id)
            if old is None or old.status != job.status:
                emit("job", EVENT_FOR_STATE.get(job.status, "update"), after.id, job.to_dict())

    def _parse(self, registration: Registration) -> Optional[RegisteredHost]:
        try:
            record = HostRecord.from_dict(simplejson.loads(registration.value))
        except (TypeError, ValueError, KeyError) as e:
            log.warning("cluster view: unreadable registration of %s: %r", registration.host_id,
                        e)
            return None
        if record.id != registration.host_id:
            log.warning("cluster view: the registration under %s names host %s; ignored",
                        registration.host_id, record.id)
            return None
        return RegisteredHost(registration.host_id, registration.created_index,
                              registration.modified_index, record)

    def job_summaries(self) -> dict:
        """{job id: (host id, JobSummary)} of every job every host reports."""
        return {job.id: (host.id, job) for host in self.hosts.values()
                for job in host.record.jobs}

    def _elect(self, index: int):
        oldest = min(self.hosts.values(), key=lambda h: h.created_index, default=None)
        new_id = oldest.id if oldest else None
        if new_id != self._leader_id:
            self._leader_id = new_id
            self.leader_since = index
            self.leader_since_time = rfc3339(datetime.now(timezone.utc))
            if new_id == self.host_id:
                log.info("cluster view: this host (%s) is the leader now", new_id)
            else:
                log.info("cluster view: the leader is %s", new_id)

    def _notify(self):
        changed, self._changed = self._changed, gevent.event.Event()
        changed.set()

