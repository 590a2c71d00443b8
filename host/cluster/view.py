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
import gc
import logging
import time
from datetime import datetime, timezone
from typing import Iterable, Iterator, Optional

import gevent
import gevent.event
import gevent.queue

from host import errors
from host.clock import rfc3339
from host.discovery.etcd import (EtcdDiscovery, EtcdUnavailable, HostChange, IndexCleared,
                                  Registration)
from host.events import EventLog
from host.retry import Backoff
from host.cluster.registered import RegisteredHost
from host.types import EVENT_FOR_STATE, Event

#: cluster event cursors per etcd index: room for that many events from one change
CURSOR_SCALE = 10000

log = logging.getLogger(__name__)


class ClusterView:
    #: seconds one watch request waits before it is renewed
    watch_timeout_s = 30
    #: hosts parsed in a resync between two looks at the changes queued meanwhile
    fold_every = 256

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

        Nothing is parsed until the read and the changes queued during it are folded together:
        at 5,000 hosts the read takes seconds, most hosts beat again meanwhile, and a record
        parsed as it was read was mostly parsed again for its newer one (the fold was as long
        as the read). Each host's newest text is parsed once. What comes during the parse is
        looked at every `fold_every` hosts and whenever every text is parsed (a host not parsed
        yet is then parsed for its newest record only, one parsed already again), until nothing
        more is queued. The hosts that wrote last are parsed first: a host writes again a
        heartbeat's period after its last write, so those parsed first are those least likely
        to write again before the parse ends, and those likely to are still unparsed when they
        do (taken in etcd's order, a fifth of the hosts were parsed twice at 5,000). And while
        etcd makes its answer (it answers once the whole of it is made: seconds at 5,000
        hosts), the records the feed brings are parsed, each host's newest (_ResyncParses).
        Other greenlets run meanwhile (read_hosts decodes as it goes); the view changes at
        once, at the end."""
        started = time.monotonic()
        fresh = {}
        # not the first read: each host's jobs whose status changed since the mirror before,
        # for the events that tell what changed meanwhile
        changed: Optional[dict] = {} if self.synced.is_set() else None
        parses = _ResyncParses(self, relisting=changed is not None)
        with _collections_paused():
            reading = gevent.spawn(_outcome, self.discovery.read_hosts)
            try:
                if feed is not None:  # (the view would only queue what it brings)
                    parses.parse_until(reading, feed)
                index, registrations = _result(reading.get())
                answered_s = time.monotonic() - started  # (etcd makes its whole answer first)
                # each host's changes, oldest first: what was read, then what was queued; the
                # hosts in the order they last wrote, which the parse takes from the end
                texts = {r.host_id: [HostChange("put", r)]
                         for r in sorted(registrations, key=_modified_index)}
                read_index, read_s = index, time.monotonic() - started
                if feed is not None:
                    if parses.meanwhile:
                        log.debug("cluster view: %d changes came while etcd made its answer, "
                                  "indexes %d to %d (the read's: %d)", len(parses.meanwhile),
                                  parses.meanwhile[0].registration.modified_index,
                                  parses.meanwhile[-1].registration.modified_index, read_index)
                    index = self._fold_texts(texts, parses.meanwhile, index)
                    index = self._fold_texts(texts, feed.queued(), index)
                folded = 0
                while texts:  # (popped as parsed: each text is let go once it is parsed)
                    host_id, candidates = texts.popitem()
                    self._fold_host(fresh, host_id, candidates, parses, changed)
                    folded += 1
                    if feed is not None and (folded % self.fold_every == 0 or not texts):
                        index = self._fold_texts(texts, feed.queued(), index)  # meanwhile
                    gevent.sleep(0)  # the feed goes on reading etcd meanwhile
            except BaseException:
                reading.kill()
                fresh.clear()  # freed now, not walked by the first collection once resumed
                raise
            finally:
                parses.clear()
        _fit_collections(sum(len(host.jobs) for host in fresh.values()))
        previous, self.hosts = self.hosts, fresh
        # history before this read is unknown here: clients with older cursors re-list
        self.events.restart_at(max(index * CURSOR_SCALE, self.events.last_cursor))
        if changed is not None:  # not the first read: tell what changed meanwhile
            emit, emitted = self._emitter(index)
            for host_id in sorted(set(previous) | set(fresh)):
                self._diff(emit, previous.get(host_id), fresh.get(host_id),
                           changed.get(host_id))
            self.events.extend(emitted)
        self._elect(index)
        self.synced.set()
        self._notify()
        log.info("cluster view: read %d hosts in %.2f s (the read %.2f s, etcd's answer began "
                 "after %.2f s; %d records parsed, %d while etcd made it, %d of those used; "
                 "caught up %d etcd indexes past it)", len(fresh), time.monotonic() - started,
                 read_s, answered_s, parses.parsed, parses.parsed_early, parses.used,
                 index - read_index)
        return index

    @staticmethod
    def _fold_texts(texts: dict, changes: Iterable[HostChange], index: int) -> int:
        """Add to `texts` ({host id: [HostChange], oldest first}) the `changes` (from the feed,
        in order) above `index`, unparsed (what came before a removal is let go); the index of
        the last."""
        for change in changes:
            registration = change.registration
            if registration.modified_index <= index:
                continue  # in what was read
            index = registration.modified_index
            # (to the end, as the newest: see _resync on the order)
            earlier = texts.pop(registration.host_id, [])
            texts[registration.host_id] = [change] if change.action == "remove" else \
                earlier + [change]
        return index

    @staticmethod
    def _fold_host(hosts: dict, host_id: str, changes: list, parses: "_ResyncParses",
                   changed: Optional[dict] = None):
        """Where _apply would leave the host after `changes`, its in order: the last removal
        or readable record (an unreadable one is ignored, as _apply ignores it). With
        `changed`, {host id: [job summary]} gets the host's jobs whose status is not as in the
        mirror now (self.hosts)."""
        for change in reversed(changes):
            if change.action == "remove":
                hosts.pop(host_id, None)
                if changed is not None:
                    changed.pop(host_id, None)
                return
            host, jobs = parses.parse(change.registration)
            if host is not None:
                hosts[host_id] = host
                if changed is not None:
                    changed[host_id] = jobs
                return

    def _apply(self, change: HostChange, index: int):
        registration = change.registration
        before = self.hosts.get(registration.host_id)
        if change.action == "remove":
            after, changed = None, None
            if self.hosts.pop(registration.host_id, None) is None:
                return  # a host never seen (its registration was unreadable): nothing to tell
            log.info("cluster view: host %s left", registration.host_id)
        else:
            changed: list = []  # the summaries of the jobs whose status changed
            after = self._parse(registration, before, changed)
            if after is None:
                return
            if before is None:
                log.info("cluster view: host %s joined (created index %d)", after.id,
                         after.created_index)
            self.hosts[after.id] = after
        emit, emitted = self._emitter(index)
        self._diff(emit, before, after, changed)
        self.events.extend(emitted)  # (the waiters woken once for the change's events)
        self._elect_after(index, registration.host_id, before, after)
        self._notify()

    def _emitter(self, index: int) -> tuple:
        """(emit, events): a function making cluster events numbered within etcd change
        `index`, and the list it appends them to, for the caller to publish."""
        position = [max(index * CURSOR_SCALE, self.events.last_cursor)]
        now = rfc3339(datetime.now(timezone.utc))
        events: list = []

        def emit(kind: str, name: str, host_id: str, job: Optional[dict] = None):
            position[0] += 1
            events.append(Event(cursor=position[0], type=kind, event=name, host_id=host_id,
                                job_id=job["id"] if job else None, job=job, time=now))
        return emit, events

    @staticmethod
    def _diff(emit, before: Optional[RegisteredHost], after: Optional[RegisteredHost],
              changed: Optional[list] = None):
        """Cluster events for one host's change from `before` to `after` (None = absent).
        `changed`: the summaries of the jobs whose status changed, as RegisteredHost.read
        found them."""
        if after is None:
            emit("host", "remove", before.id)
            for job in before.record.jobs:  # (a host leaving is rare: its record is built)
                if job.is_active:
                    emit("job", "error", before.id,
                         dict(job.to_dict(), status="lost",
                              error=f"host {before.id} left the cluster"))
            return
        if before is None:
            emit("host", "add", after.id)
        elif before.header.without_jobs() != after.header.without_jobs():
            emit("host", "update", after.id)
        for job in changed or ():
            emit("job", EVENT_FOR_STATE.get(job["status"], "update"), after.id, job)

    def _parse(self, registration: Registration, before: Optional[RegisteredHost] = None,
               changed: Optional[list] = None) -> Optional[RegisteredHost]:
        """The host a registration's value describes (None if it is not one). With `changed`,
        the summaries of its jobs whose status is not as in `before` are appended to it."""
        try:
            host = RegisteredHost.read(registration.host_id, registration.created_index,
                                       registration.modified_index, registration.value,
                                       before, changed)
        except (TypeError, ValueError, KeyError) as e:
            log.warning("cluster view: unreadable registration of %s: %r", registration.host_id,
                        e)
            return None
        if host.header.id != registration.host_id:
            log.warning("cluster view: the registration under %s names host %s; ignored",
                        registration.host_id, host.header.id)
            return None
        return host

    def find_jobs(self, job_ids) -> dict:
        """{job id: (host id, JobSummary)} of those of `job_ids` that a host reports (the
        first host that does, in the mirror's order), from one look at each host: a placement
        asks for every job of its request, and at 5,000 hosts a look at each host for each
        job was a tenth of a second for 20 jobs."""
        wanted, found = frozenset(job_ids), {}
        for host in self.hosts.values():
            if not host.jobs.keys().isdisjoint(wanted):  # (a lookup of each wanted id, in C)
                for job_id in wanted & host.jobs.keys():
                    found.setdefault(job_id, (host.id, host.job(job_id)))
        return found

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


class _ResyncParses:
    """A resync's parses of records, each kept by the modified index of the change it was made
    of. Those made while etcd makes its answer to the read (seconds at 5,000 hosts, during
    which the view would only queue what the feed brings) are of each host's newest change
    then: used if that change is still the host's newest once the read and the feed are
    folded together (the answer, or a later change, may hold a newer record)."""
    #: seconds the read's answer is waited for between two looks at the feed, when all it
    #: brought is parsed
    look_every_s = 0.05

    def __init__(self, view: ClusterView, relisting: bool):
        """`relisting`: not the view's first read (each parse tells the jobs whose status is not
        as in the mirror now)."""
        self._view, self._relisting = view, relisting
        self.meanwhile: list = []  # the changes the feed queued meanwhile, in order, to fold
        self._early: dict = {}     # host id -> (modified index, (host or None, changed jobs))
        self.parsed = self.parsed_early = self.used = 0  # (counts, for the resync's log)

    def parse_until(self, reading: gevent.Greenlet, feed: "_Feed"):
        """Parse what `feed` brings until `reading` (the read) has etcd's answer."""
        pending: dict = {}  # host id -> its newest change, not parsed yet (the newest last)
        while not reading.ready():
            for change in feed.queued():
                self.meanwhile.append(change)
                pending.pop(change.registration.host_id, None)
                pending[change.registration.host_id] = change
            if not pending:
                reading.join(self.look_every_s)  # (back at once when the answer comes)
                continue
            host_id, change = pending.popitem()
            if change.action != "remove":
                registration = change.registration
                self._early[host_id] = (registration.modified_index, self._parse(registration))
                self.parsed_early += 1
            gevent.sleep(0)  # the feed, and the read, go on meanwhile

    def parse(self, registration: Registration) -> tuple:
        """(the host it describes or None, the jobs whose status changed or None)."""
        early = self._early.get(registration.host_id)
        if early is not None and early[0] == registration.modified_index:
            self.used += 1
            return early[1]
        return self._parse(registration)

    def _parse(self, registration: Registration) -> tuple:
        self.parsed += 1
        jobs = [] if self._relisting else None
        before = self._view.hosts.get(registration.host_id)
        return self._view._parse(registration, before, jobs), jobs

    def clear(self):
        self._early.clear()
        self.meanwhile.clear()


class _Feed:
    """The registrations' changes after an etcd index, fetched by a greenlet of its own as
    fast as etcd gives them, and queued for the view to apply. etcd failing is retried here,
    with backoff, from the last index fetched; anything else (IndexCleared) is raised by
    next() once the changes fetched before it are taken."""
    #: changes queued at most, and their records' bytes at most (a record is about 40 KB at
    #: 100 jobs: 10,000 of those would be 400 MB beside a mirror of 500 MB, and 20 s behind
    #: at 5,000 hosts); a feed that far ahead of the view waits, and may then find etcd's
    #: history gone: the view then reads everything again, which costs it less than applying
    #: the backlog (each host's newest record once, not every one it wrote)
    capacity = 10000
    capacity_bytes = 64 * 1024 * 1024
    #: seconds between two tries at most while etcd fails: the mirror is served meanwhile, and
    #: it should not stay stale for long once etcd answers again (a retry costs etcd one request)
    retry_max_s = 1.0

    def __init__(self, discovery: EtcdDiscovery, after_index: Optional[int], timeout_s: float):
        """From `after_index` on, or (None) from when etcd takes the first request."""
        self._queue = gevent.queue.Queue(self.capacity)
        self._queued_bytes = 0                     # the queued records' text
        self._room = gevent.event.Event()          # set when a change was taken
        self._etcd_index = 0
        self._start = gevent.event.AsyncResult()  # etcd's index when it took the first request
        self._greenlet = gevent.spawn(self._fetch, discovery, after_index, timeout_s)

    def started(self, timeout_s: float) -> int:
        """Wait until etcd took the watch: what changes after the index it tells will come."""
        try:
            return self._start.get(timeout=timeout_s)
        except gevent.Timeout:
            raise EtcdUnavailable(f"etcd did not take the watch within {timeout_s:.0f} s") \
                from None

    def _fetch(self, discovery: EtcdDiscovery, index: Optional[int], timeout_s: float):
        backoff = Backoff("cluster view", log, max_s=self.retry_max_s)
        crawl = _Crawl()
        try:
            while True:
                behind = 0  # how far etcd was ahead of a change it answered from its history
                try:
                    for change in discovery.follow_hosts(index, timeout_s, self._opened_at):
                        index = change.registration.modified_index
                        behind = self._etcd_index - index
                        self._put(change)
                    backoff.succeeded()
                except errors.FlynnError as e:
                    if isinstance(e, IndexCleared):
                        raise
                    backoff.failed(e)
                    continue  # (no answer: nothing learnt about the crawl)
                if index is None and self._start.ready():  # taken, and ended without a change
                    index = self._start.get()
                crawl.check(behind)
        except Exception as e:  # IndexCleared, or a bug: the view's greenlet raises it
            self._queue.put(e)

    def _opened_at(self, index: int):
        self._etcd_index = index  # etcd's index when it took the latest request
        if not self._start.ready():
            self._start.set(index)

    def _put(self, change: HostChange):
        while self._queued_bytes >= self.capacity_bytes:  # (the count's bound: the queue's)
            self._room.clear()
            self._room.wait()
        self._queued_bytes += _text_size(change)
        self._queue.put(change)

    def next(self) -> HostChange:
        return self._unpack(self._queue.get())

    def queued(self) -> Iterator[HostChange]:
        """The changes queued now (and those queued while they are taken), without waiting."""
        while not self._queue.empty():
            yield self._unpack(self._queue.get())

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def _unpack(self, item) -> HostChange:
        if isinstance(item, Exception):
            try:
                raise item
            finally:  # a frame holding the exception it raises makes a cycle with it, which
                del item  # would keep the read's frames and records until a full collection
        self._queued_bytes -= _text_size(item)
        self._room.set()
        return item

    def stop(self):
        self._greenlet.kill()


class _Crawl:
    """Whether a feed behind etcd catches up. etcd streams a watch only from the present: asked
    from an index it holds in its history (after its stream was dropped, or etcd failed for a
    while), it answers the next change alone, one a request. With changes coming faster than
    those requests, the distance to etcd's index grows with each one, until the index asked for
    leaves etcd's history (its last 1,000 changes) and the view reads everything again anyway;
    at 5,000 hosts that took seconds of crawling, during which the mirror fell further behind.
    Once the distance has grown by `slack` since the crawl began, it ends at once
    (IndexCleared): reading everything is then the quicker way to the present. A crawl that
    gains (a few changes missed in a quiet cluster) goes on: its followers keep their
    cursors."""
    #: etcd indexes the distance may grow by before the crawl is given up
    slack = 200

    def __init__(self):
        self._first: Optional[int] = None  # the distance when the crawl began

    def check(self, distance: int):
        """After a request answered: `distance`, how far etcd's index (when it took the
        request) was ahead of the last change answered; 0 or less when the changes were
        streamed from the present, or none came."""
        if distance <= 0:
            self._first = None
        elif self._first is None:
            self._first = distance
        elif distance > self._first + self.slack:
            raise IndexCleared(f"the watch is {distance} changes behind etcd and losing ground "
                               f"(one change a request from etcd's history)")


def _outcome(call) -> tuple:
    """(what call() returns, None) or (None, what it raised): for a greenlet whose failure its
    caller raises (gevent would also print it, as a greenlet's uncaught error)."""
    try:
        return call(), None
    except Exception as e:
        return None, e


def _result(outcome: tuple):
    value, error = outcome
    if error is not None:
        raise error
    return value


def _text_size(change: HostChange) -> int:
    return len(change.registration.value or "")


def _modified_index(registration: Registration) -> int:
    return registration.modified_index


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
