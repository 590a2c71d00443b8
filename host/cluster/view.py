"""Every agent's picture of the cluster, mirrored from discoverd's registrations in etcd.

One greenlet reads the whole services directory, then follows a recursive watch from the read's
index, applying each registration into a dict {host_id: RegisteredHost}. When etcd says the
history was cleared, or etcd was unreachable, it reads everything again. The leader is the live
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

import gevent
import gevent.event
import simplejson

from host import errors
from host.clock import rfc3339
from host.discovery.etcd import EtcdDiscovery, HostChange, IndexCleared, Registration
from host.events import EventLog
from host.types import ACTIVE_STATES, EVENT_FOR_STATE, Event

#: cluster event cursors per etcd index: room for that many events from one change
CURSOR_SCALE = 10000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisteredHost:
    id: str
    created_index: int
    modified_index: int
    record: dict                 # the Host record the host published

    @property
    def addr(self) -> str:
        return self.record.get("addr", "")


class ClusterView:
    #: seconds one watch request waits before it is renewed
    watch_timeout_s = 30
    #: seconds to wait before reading again after etcd failed
    retry_s = 0.5

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
    def is_leader(self) -> bool:
        return self._leader_id == self.host_id

    def wait_for_change(self, timeout_s: float) -> bool:
        return self._changed.wait(timeout_s)

    # ---- following etcd ---------------------------------------------------------------------

    def run(self, start_index: Optional[int] = None):
        """Forever: read everything, then follow the watch from the read's index (or from
        `start_index`, where a previous read left off); read again when needed."""
        index = start_index
        while True:
            try:
                if index is None:
                    index = self._resync()
                while True:
                    change = self.discovery.watch_hosts(index, self.watch_timeout_s)
                    if change is not None:
                        index = change.registration.modified_index
                        self._apply(change, index)
            except IndexCleared as e:
                log.info("cluster view: %s; reading every registration again", e)
                index = None
            except errors.Unavailable as e:
                log.warning("cluster view: %s; reading again shortly", e)
                index = None
                gevent.sleep(self.retry_s)

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
        old_jobs = {j["id"]: j for j in before.record.get("jobs", [])} if before else {}
        if after is None:
            emit("host", "remove", before.id)
            for job in old_jobs.values():
                if job.get("status") in ACTIVE_STATES:
                    emit("job", "error", before.id,
                         dict(job, status="lost", error=f"host {before.id} left the cluster"))
            return
        if before is None:
            emit("host", "add", after.id)
        elif _without_jobs(before.record) != _without_jobs(after.record):
            emit("host", "update", after.id)
        for job in after.record.get("jobs", []):
            old = old_jobs.get(job["id"])
            if old is None or old.get("status") != job.get("status"):
                emit("job", EVENT_FOR_STATE.get(job.get("status"), "update"), after.id, job)

    def _parse(self, registration: Registration) -> Optional[RegisteredHost]:
        try:
            record = simplejson.loads(registration.value)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except (TypeError, ValueError) as e:
            log.warning("cluster view: unreadable registration of %s: %s", registration.host_id,
                        e)
            return None
        return RegisteredHost(registration.host_id, registration.created_index,
                              registration.modified_index, record)

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


def _without_jobs(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "jobs" and k != "allocated"}
