"""Every agent's picture of the cluster, mirrored from discoverd's registrations in etcd.

One greenlet reads the whole services directory, then follows a recursive watch from the read's
index, applying each registration into a dict {host_id: RegisteredHost}; a second one (_Feed)
fetches the watch's changes for it, from before the read on, so that the watch keeps up with etcd
while a change is applied and while everything is read. When etcd fails for a
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

import contextlib
import dataclasses
import gc
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Optional

import gevent
import gevent.event
import gevent.queue
import simplejson

from host import errors
from host.clock import rfc3339
from host.discovery.etcd import (EtcdDiscovery, EtcdUnavailable, HostChange, IndexCleared,
                                  Registration)
from host.events import EventLog
from host.retry import Backoff
from host.types import EVENT_FOR_STATE, Event, HostRecord, JobSummary

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
        where it was, with backoff; only a cleared history makes it read everything again.

        The watch is followed from before the read, by a _Feed: etcd keeps only its last 1,000
        changes, which at 5,000 hosts is a second of heartbeats, and reading, parsing and
        applying them all takes several; a watch started from the read's index afterwards would
        find that history gone, read again, and never catch up. Nor does it start from an
        index read first: etcd hands a watch the changes it has in its history one a request,
        and at 500 changes a second a watch a few behind might never catch up either; it starts
        from now, and the read comes after etcd took it."""
        index = start_index
        backoff = Backoff("cluster view", log)
        while True:
            feed = None
            try:
                if index is None:  # the watch from now on, then the read
                    feed = _Feed(self.discovery, None, self.watch_timeout_s)
                    feed.started(self.discovery.request_timeout_s * 2)
                    index = self._resync(feed)
                    backoff.succeeded()
                else:
                    feed = _Feed(self.discovery, index, self.watch_timeout_s)
                self._follow(feed, index)
            except IndexCleared as e:
                log.info("cluster view: %s; reading every registration again", e)
                index = None
            except errors.FlynnError as e:  # the read failed: again, from a new index
                backoff.failed(e)
            finally:
                if feed is not None:
                    feed.stop()

    def _follow(self, feed: "_Feed", index: int):
        """Apply the feed's changes above `index` (those at or below it are in what was read)
        until it raises IndexCleared."""
        while True:
            change = feed.next()
            if change.registration.modified_index > index:
                index = change.registration.modified_index
                self._apply(change, index)
            gevent.sleep(0)  # with changes queued, the feed (and everything else) runs between

    def _resync(self, feed: Optional["_Feed"] = None) -> int:
        """Read and apply every registration; the index they were read at, or that of the
        last change `feed` queued meanwhile: those are folded into what was read, without
        events of their own (as for the read itself, what came before is unknown here). At
        thousands of hosts they are several seconds of heartbeats, and applied one by one
        afterwards, events and all, they would keep the view that far behind etcd for long.
        Other greenlets run meanwhile (read_hosts decodes as it goes); the view changes at
        once, at the end."""
        index, registrations = self.discovery.read_hosts()
        fresh = {}
        with _collections_paused():
            try:
                for registration in registrations:
                    host = self._parse(registration, self.hosts.get(registration.host_id))
                    if host is not None:
                        fresh[host.id] = host
                if feed is not None:
                    index = self._fold(fresh, feed, index)
            except BaseException:
                fresh.clear()  # freed now, not walked by the first collection once resumed
                raise
        _fit_collections(sum(len(host.record.jobs) for host in fresh.values()))
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

    def _fold(self, hosts: dict, feed: "_Feed", index: int) -> int:
        """Apply to `hosts` the changes `feed` has queued above `index`, until none is left,
        without events; the index of the last. Only each host's last change needs parsing:
        the queue holds as many seconds of heartbeats as the read took."""
        while True:
            changes = [change for change in feed.queued()
                       if change.registration.modified_index > index]  # else in what was read
            if not changes:
                return index
            index = changes[-1].registration.modified_index
            by_host: dict = {}
            for change in changes:
                by_host.setdefault(change.registration.host_id, []).append(change)
            for host_id, host_changes in by_host.items():
                self._fold_host(hosts, host_id, host_changes)
                gevent.sleep(0)  # the feed goes on reading etcd meanwhile

    def _fold_host(self, hosts: dict, host_id: str, changes: list):
        """Where _apply would leave the host after `changes`, its in order: the last removal
        or readable record (an unreadable one is ignored, as _apply ignores it)."""
        for change in reversed(changes):
            if change.action == "remove":
                hosts.pop(host_id, None)
                return
            host = self._parse(change.registration, hosts.get(host_id))
            if host is not None:
                hosts[host_id] = host
                return

    def _apply(self, change: HostChange, index: int):
        registration = change.registration
        before = self.hosts.get(registration.host_id)
        if change.action == "remove":
            after = None
            if self.hosts.pop(registration.host_id, None) is None:
                return  # a host never seen (its registration was unreadable): nothing to tell
            log.info("cluster view: host %s left", registration.host_id)
        else:
            after = self._parse(registration, before)
            if after is None:
                return
            if before is None:
                log.info("cluster view: host %s joined (created index %d)", after.id,
                         after.created_index)
            self.hosts[after.id] = after
        self._diff(self._emitter(index), before, after)
        self._elect_after(index, registration.host_id, before, after)
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

    def _parse(self, registration: Registration,
               before: Optional[RegisteredHost] = None) -> Optional[RegisteredHost]:
        """The host a registration's value describes (None if it is not one); `before`, the
        same host as the view holds it now, lends the job summaries that did not change."""
        try:
            record = _host_record(simplejson.loads(registration.value), before)
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
        """The leader is the live registration with the lowest createdIndex."""
        oldest = min(self.hosts.values(), key=lambda h: h.created_index, default=None)
        self._appoint(oldest.id if oldest else None, index)

    def _elect_after(self, index: int, host_id: str, before: Optional[RegisteredHost],
                     after: Optional[RegisteredHost]):
        """_elect after one host changed from `before` to `after`, without looking at every
        host (thousands, on every heartbeat): a host other than the leader can only take the
        office from it by being older; only the leader leaving or registering anew (a new
        createdIndex) calls for a look at all of them."""
        leader = self.hosts.get(self._leader_id) if self._leader_id else None
        if host_id != self._leader_id and leader is not None:
            if after is not None and after.created_index < leader.created_index:
                self._appoint(after.id, index)
        elif after is None or before is None or after.created_index != before.created_index:
            self._elect(index)

    def _appoint(self, new_id: Optional[str], index: int):
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


class _Feed:
    """The registrations' changes after an etcd index, fetched by a greenlet of its own as
    fast as etcd gives them, and queued for the view to apply. etcd failing is retried here,
    with backoff, from the last index fetched; anything else (IndexCleared) is raised by
    next() once the changes fetched before it are taken."""
    #: changes queued at most (each holds a record: about 40 KB at 100 jobs); a feed that far
    #: ahead of the view waits, and may then find etcd's history gone
    capacity = 10000
    #: seconds between two tries at most while etcd fails: the mirror is served meanwhile, and
    #: it should not stay stale for long once etcd answers again (a retry costs etcd one request)
    retry_max_s = 1.0

    def __init__(self, discovery: EtcdDiscovery, after_index: Optional[int], timeout_s: float):
        """From `after_index` on, or (None) from when etcd takes the first request."""
        self._queue = gevent.queue.Queue(self.capacity)
        self._start = gevent.event.AsyncResult()  # etcd's index when it took the first request
        self._greenlet = gevent.spawn(self._fetch, discovery, after_index, timeout_s)

    def started(self, timeout_s: float) -> int:
        """Wait until etcd took the watch: what changes after the index it tells will come."""
        try:
            return self._start.get(timeout=timeout_s)
        except gevent.Timeout:
            raise EtcdUnavailable(f"etcd did not take the watch within {timeout_s:.0f} s") \
                from None

    def _opened(self, index: int):
        if not self._start.ready():
            self._start.set(index)

    def _fetch(self, discovery: EtcdDiscovery, index: Optional[int], timeout_s: float):
        backoff = Backoff("cluster view", log, max_s=self.retry_max_s)
        try:
            while True:
                try:
                    for change in discovery.follow_hosts(index, timeout_s, self._opened):
                        index = change.registration.modified_index
                        self._queue.put(change)
                    backoff.succeeded()
                except errors.FlynnError as e:
                    if isinstance(e, IndexCleared):
                        raise
                    backoff.failed(e)
                if index is None and self._start.ready():  # taken, and ended without a change
                    index = self._start.get()
        except Exception as e:  # IndexCleared, or a bug: the view's greenlet raises it
            self._queue.put(e)

    def next(self) -> HostChange:
        return self._unpack(self._queue.get())

    def queued(self) -> Iterator[HostChange]:
        """The changes queued now (and those queued while they are taken), without waiting."""
        while not self._queue.empty():
            yield self._unpack(self._queue.get())

    @staticmethod
    def _unpack(item) -> HostChange:
        if isinstance(item, Exception):
            try:
                raise item
            finally:  # a frame holding the exception it raises makes a cycle with it, which
                del item  # would keep the read's frames and records until a full collection
        return item

    def stop(self):
        self._greenlet.kill()


@contextlib.contextmanager
def _collections_paused():
    """No garbage collection while the records read are parsed, nor after to walk them: they
    are millions of new objects, none of them garbage, which every collection would walk again
    (at 5,000 hosts, a fifth of the parse's time while it runs, then a pause of a second, long
    enough for etcd to drop the watch's stream). Once they are parsed, gc.freeze() leaves them,
    and everything else alive then, to reference counting alone: a record is freed as soon as
    the host's next heartbeat replaces it (records hold no cycles), but cyclic garbage among the
    frozen objects is never collected (what is alive at the end of a read: the mirror, and the
    greenlets of the moment)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()  # (not after a failure: its exception's frames are garbage to collect)
    finally:
        if enabled:
            gc.enable()


def _fit_collections(jobs: int):
    """Make the interpreter's young collections rarer as the mirror grows (to one per
    jobs / 10 objects allocated and not freed, never fewer than they are). Each young collection
    moves the objects alive, records being parsed among them, to an older generation, and once
    those moved make up a quarter of the oldest one, a full collection walks every object
    alive: at 500,000 jobs about two million, a pause of most of a second, every few seconds
    of heartbeats. A heartbeat's record replaces the one before, so few collections come due
    at all with this threshold."""
    threshold, *older = gc.get_threshold()
    if jobs // 10 > threshold:
        gc.set_threshold(jobs // 10, *older)


def _host_record(d, before: Optional[RegisteredHost]) -> HostRecord:
    """HostRecord.from_dict(d), with the job summaries of `before` (the host's previous record)
    in place of those that did not change: a heartbeat mostly repeats the last one, comparing a
    job with its summary costs a fifth of building a new one, and the new one would only make
    the old one garbage."""
    if before is None or not isinstance(d, dict):
        return HostRecord.from_dict(d)
    record = HostRecord.from_dict(dict(d, jobs=()))  # everything else, checked as ever
    old = {job.id: job for job in before.record.jobs}
    return dataclasses.replace(record, jobs=tuple(_job_summary(j, old)
                                                  for j in d.get("jobs") or ()))


def _job_summary(d, old: dict) -> JobSummary:
    """JobSummary.from_dict(d), or the summary in `old` that it would equal: one that gives
    back `d` exactly."""
    same = old.get(d.get("id")) if isinstance(d, dict) else None
    if same is not None and same.matches(d):
        return same  # (a status that changed, the usual change, fails the first comparison)
    return JobSummary.from_dict(d)
