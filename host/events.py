"""A bounded log of recent events with increasing cursors, and long-poll waiting on it.

A host's cursors are contiguous (N, N+1, ...), so a client can tell it missed nothing. The
cluster's cursors come from etcd's index (see host.cluster.view), so they increase with gaps but
mean the same on every agent, and a client keeps its cursor across a change of leader.
The log keeps the last `capacity` events; a client whose cursor is older than that gets
CursorExpired (it must re-list state). Waiters sleep on one gevent Event that is swapped and set
on every publication, so a long-poll wakes within milliseconds without any polling loop.

A host's events are written to disk after the change they announce (host.store_writer groups
the writes of one turn of the loop into one commit), so an event is first held *pending* and
published only once durable: no client ever sees a cursor that a crash before the commit would
hand out again. `last_cursor` is the
newest published one. A read first waits for the events pending when it began to be published
(a commit takes milliseconds), even with `wait=0`: a client that saw a job's new state, in an
answer or a listing, then reads the events finds the event announcing it.
"""
from __future__ import annotations

import bisect
import time
from typing import Callable, Iterable, Optional

import gevent.event
import simplejson

from host.errors import CursorExpired, ValidationError
from host.types import Event

#: longest a read waits past its own `wait` for pending events to become durable
PENDING_GRACE_S = 1.0
#: with at least this many waiters, a publication waits for the next before waking them:
#: WAKE_BATCH_S_PER_WAITER a waiter (about a quarter of what answering one costs), at most
#: WAKE_BATCH_MAX_S (see _wake)
WAKE_BATCH_WAITERS = 64
WAKE_BATCH_S_PER_WAITER = 0.00001
WAKE_BATCH_MAX_S = 0.02


class EventLog:
    def __init__(self, capacity: int, last_cursor: int = 0, backlog: Iterable[Event] = ()):
        """`last_cursor` and `backlog` come from persistence, so cursors keep increasing across
        restarts of the agent and a client resuming after a restart misses nothing."""
        self.capacity = capacity
        self._cursors: list = []    # ascending
        self._entries: list = []    # (Event, json text or None), parallel to _cursors
        self._encoded = 0           # entries before this position have their text (_encode)
        self._floor = last_cursor   # history at or below this cursor is not held
        self._last = last_cursor    # the newest held, pending included
        self._durable = last_cursor  # the newest published: every cursor up to it is durable
        self._changed = gevent.event.Event()
        self._sleepers = 0          # waits asleep on _changed now
        self._wake_due = None       # the timer of a batched wake-up, see _wake
        self._closed = False  # close(): the agent is stopping
        self._pages: dict = {}      # key -> an answer's bytes, see shared()
        self.appended = 0           # events appended since this log was made (for /metrics)
        backlog = list(backlog)
        if backlog:
            self._floor = backlog[0].cursor - 1
            self._last = self._floor
            for event in backlog:
                self._store(event)
            if self._last != last_cursor:
                raise ValueError("backlog does not end at last_cursor")
            self._durable = self._last

    @property
    def last_cursor(self) -> int:
        """The newest published cursor."""
        return self._durable

    @property
    def next_cursor(self) -> int:
        """The cursor the next event takes (above the pending ones)."""
        return self._last + 1

    @property
    def pending(self) -> int:
        return self._last - self._durable

    @property
    def oldest_cursor(self) -> int:
        """The oldest cursor still held (last+1 when empty)."""
        return self._cursors[0] if self._cursors else self._durable + 1

    def _store(self, event: Event, trim: bool = True):
        if event.cursor <= self._last:
            raise ValueError(f"cursor {event.cursor} does not follow {self._last}")
        self._cursors.append(event.cursor)
        self._entries.append((event, None))  # its text is made when first read (_encode)
        self._last = event.cursor
        if trim:
            self._trim()

    def _trim(self):
        """Drop the oldest beyond capacity, in batches rather than on every append, and never
        an event still pending."""
        excess = len(self._cursors) - self.capacity
        if excess < max(1, self.capacity // 8):
            return
        excess = min(excess, bisect.bisect_right(self._cursors, self._durable))
        if excess > 0:
            self._floor = self._cursors[excess - 1]
            del self._cursors[:excess]
            del self._entries[:excess]
            self._encoded = max(0, self._encoded - excess)

    def append(self, event: Event):
        """Add the event (its cursor above every earlier one), published at once, and wake every
        waiter."""
        self.extend((event,))

    def extend(self, events):
        """append() each of `events`, waking the waiters once for all of them (the cluster
        events of one change in etcd)."""
        if not events:
            return
        for event in events:
            self._store(event, trim=False)  # (trimmed once for all: the view's heartbeats
            #                                 bring dozens of events each, hundreds a second)
        self.appended += len(events)
        self._durable = events[-1].cursor
        self._trim()
        self._wake()

    def append_pending(self, event: Event):
        """Add the event, held back until publish(its cursor)."""
        self._store(event)

    def publish(self, cursor: int):
        """Every event up to `cursor` is durable: readers see them now. (Pending events are a
        host's, whose cursors are contiguous.)"""
        cursor = min(cursor, self._last)
        if cursor > self._durable:
            self.appended += cursor - self._durable
            self._durable = cursor
            self._trim()
            self._wake()

    def restart_at(self, cursor: int):
        """Forget everything: history before `cursor` is gone (a cluster view that read
        everything again). Waiters are woken and see CursorExpired."""
        if cursor < self._last:
            raise ValueError(f"cursor {cursor} is below {self._last}")
        self._cursors, self._entries, self._encoded = [], [], 0
        self._floor = self._last = self._durable = cursor
        self._wake()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self):
        """The agent is stopping: every client's wait answers now with what it has (at worst
        nothing and the client's own cursor, from which it resumes on the next instance), and
        no later one waits. A long-poll cut off by the server's stop would get a 500 instead.
        The agent's own waits (its heartbeat's) are not affected."""
        self._closed = True
        self._wake()

    def _wake(self):
        """Wake every waiter, a few milliseconds later when they are many. A wake-up costs a
        wave of answers, one a waiter (at a thousand long-polls or streams, tens of
        milliseconds of the loop), and a job's events come in bursts: `created`, then `failed`
        or `running` one engine call later. Woken at once for each, the waiters answered first
        see only the first event and are in the next wave for the second, which reaches the
        last of them two waves late (measured: twice the latency of evenly spaced events).
        Waiting a fraction of what the wave costs lets that call come back first, so the burst
        goes out in one wave. A few waiters are woken at once: their wave costs less than the
        wait would."""
        if self._sleepers < WAKE_BATCH_WAITERS or self._closed:
            self._wake_now()
        elif self._wake_due is None:
            delay = min(WAKE_BATCH_MAX_S, self._sleepers * WAKE_BATCH_S_PER_WAITER)
            self._wake_due = gevent.get_hub().loop.timer(delay)
            self._wake_due.start(self._wake_now)

    def _wake_now(self):
        if self._wake_due is not None:
            self._wake_due.close()
            self._wake_due = None
        changed, self._changed = self._changed, gevent.event.Event()
        changed.set()
        self._pages.clear()  # the pages of the cursor before are asked for no more

    def _sleep(self, changed: gevent.event.Event, timeout: float):
        self._sleepers += 1
        try:
            changed.wait(timeout)
        finally:
            self._sleepers -= 1

    def shared(self, key: tuple, build: Callable[[], bytes]) -> bytes:
        """An answer made of the events published so far, built once for every reader that asks
        for the same `key` (e.g. (kind, since, cursor)) until the next publication. One
        publication wakes every waiter, and they mostly ask from the same cursor: each answer
        is joined and encoded once and shared by all of them."""
        body = self._pages.get(key)
        if body is None:
            body = build()
            if len(self._pages) < 64:  # a wake-up clears it; clients far behind are few
                self._pages[key] = body
        return body

    def check_cursor(self, since: int):
        if since > self._durable:
            raise ValidationError(f"since: cursor {since} is ahead of the newest event "
                                  f"({self._durable})")
        if since < self._floor:
            raise CursorExpired(f"since: cursor {since} is older than the retained events "
                                f"(oldest {self.oldest_cursor}); list the current state, then "
                                f"follow from cursor {self._durable}",
                                earliest=self._floor, cursor=self._durable)

    def since(self, since: int) -> list:
        """[(Event, json text)] for every published event with a cursor above `since`."""
        self.check_cursor(since)
        start = bisect.bisect_right(self._cursors, since)
        end = len(self._cursors) if self._last == self._durable else \
            bisect.bisect_right(self._cursors, self._durable)
        if end > self._encoded:
            self._encode(end)
        return self._entries[start:end]

    def _encode(self, end: int):
        """Give the entries up to position `end` their JSON text, made once and shared by
        every reader. An event's text is made when it is first read, not when it is added: the
        cluster view adds an event for every job whose state changed in every heartbeat (at
        5,000 hosts, thousands a second), most of which nobody may read before they are
        trimmed. The text is the same whenever it is made: an event is not changed once added."""
        entries = self._entries
        for position in range(self._encoded, end):
            event = entries[position][0]
            entries[position] = (event, simplejson.dumps(event.to_dict()))
        self._encoded = end

    def wait(self, since: int, timeout: float,
             match: Optional[Callable[[Event], bool]] = None, for_client: bool = False) -> tuple:
        """Events after `since` (only those `match` accepts), waiting up to `timeout` seconds for
        one. Returns ([(Event, json)], cursor) where cursor is the newest cursor examined: the
        client's next `since`, even when a filter dropped everything. A wait `for_client` (an
        API long-poll or stream) answers at once once the log is closed."""
        deadline = time.monotonic() + timeout
        # read your writes: what is pending now is published before this answers (a commit
        # takes milliseconds; a disk that hangs holds a read no longer than the grace)
        settled, grace = self._last, time.monotonic() + PENDING_GRACE_S
        while True:
            changed = self._changed  # taken before reading, so no append can slip between
            now = time.monotonic()
            if self._durable < settled and now < grace:
                self._sleep(changed, grace - now)
                continue
            found = self.since(since)
            since = self._durable
            if match is not None:
                found = [item for item in found if match(item[0])]
            remaining = deadline - time.monotonic()
            if found or remaining <= 0 or (for_client and self._closed):
                return found, since
            self._sleep(changed, remaining)
