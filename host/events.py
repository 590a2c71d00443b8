"""A bounded log of recent events with increasing cursors, and long-poll waiting on it.

A host's cursors are contiguous (N, N+1, ...), so a client can tell it missed nothing. The
cluster's cursors come from etcd's index (see host.cluster.view), so they increase with gaps but
mean the same on every agent, and a client keeps its cursor across a change of leader.
The log keeps the last `capacity` events; a client whose cursor is older than that gets
CursorExpired (it must re-list state). Waiters sleep on one gevent Event that is swapped and set
on every append, so a long-poll wakes within milliseconds without any polling loop.
"""
from __future__ import annotations

import bisect
import time
from typing import Callable, Iterable, Optional

import gevent.event
import simplejson

from host.errors import CursorExpired, ValidationError
from host.types import Event


class EventLog:
    def __init__(self, capacity: int, last_cursor: int = 0, backlog: Iterable[Event] = ()):
        """`last_cursor` and `backlog` come from persistence, so cursors keep increasing across
        restarts of the agent and a client resuming after a restart misses nothing."""
        self.capacity = capacity
        self._cursors: list = []    # ascending
        self._entries: list = []    # (Event, json text), parallel to _cursors
        self._floor = last_cursor   # history at or below this cursor is not held
        self._last = last_cursor
        self._changed = gevent.event.Event()
        self.appended = 0           # events appended since this log was made (for /metrics)
        backlog = list(backlog)
        if backlog:
            self._floor = backlog[0].cursor - 1
            self._last = self._floor
            for event in backlog:
                self._store(event)
            if self._last != last_cursor:
                raise ValueError("backlog does not end at last_cursor")

    @property
    def last_cursor(self) -> int:
        return self._last

    @property
    def next_cursor(self) -> int:
        return self._last + 1

    @property
    def oldest_cursor(self) -> int:
        """The oldest cursor still held (last+1 when empty)."""
        return self._cursors[0] if self._cursors else self._last + 1

    def _store(self, event: Event):
        if event.cursor <= self._last:
            raise ValueError(f"cursor {event.cursor} does not follow {self._last}")
        self._cursors.append(event.cursor)
        self._entries.append((event, simplejson.dumps(event.to_dict())))
        self._last = event.cursor
        excess = len(self._cursors) - self.capacity
        if excess >= max(1, self.capacity // 8):  # trim in batches, not on every append
            self._floor = self._cursors[excess - 1]
            del self._cursors[:excess]
            del self._entries[:excess]

    def append(self, event: Event):
        """Add the event (its cursor above every earlier one) and wake every waiter."""
        self._store(event)
        self.appended += 1
        self._wake()

    def restart_at(self, cursor: int):
        """Forget everything: history before `cursor` is gone (a cluster view that read
        everything again). Waiters are woken and see CursorExpired."""
        if cursor < self._last:
            raise ValueError(f"cursor {cursor} is below {self._last}")
        self._cursors, self._entries = [], []
        self._floor = self._last = cursor
        self._wake()

    def _wake(self):
        changed, self._changed = self._changed, gevent.event.Event()
        changed.set()

    def check_cursor(self, since: int):
        if since > self._last:
            raise ValidationError(f"since: cursor {since} is ahead of the newest event "
                                  f"({self._last})")
        if since < self._floor:
            raise CursorExpired(f"since: cursor {since} is older than the retained events "
                                f"(oldest {self.oldest_cursor}); list the current state, then "
                                f"follow from cursor {self._last}",
                                earliest=self._floor, cursor=self._last)

    def since(self, since: int) -> list:
        """[(Event, json text)] for every event with a cursor above `since`."""
        self.check_cursor(since)
        return self._entries[bisect.bisect_right(self._cursors, since):]

    def wait(self, since: int, timeout: float,
             match: Optional[Callable[[Event], bool]] = None) -> tuple:
        """Events after `since` (only those `match` accepts), waiting up to `timeout` seconds for
        one. Returns ([(Event, json)], cursor) where cursor is the newest cursor examined: the
        client's next `since`, even when a filter dropped everything."""
        deadline = time.monotonic() + timeout
        while True:
            changed = self._changed  # taken before reading, so no append can slip between
            found = self.since(since)
            since = self._last
            if match is not None:
                found = [item for item in found if match(item[0])]
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found, since
            changed.wait(remaining)
