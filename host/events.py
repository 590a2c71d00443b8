"""A bounded log of recent events with monotonic cursors, and long-poll waiting on it.

Cursors are contiguous integers: the event after cursor N has cursor N+1, so a client can tell it
missed nothing. The log keeps the last `capacity` events; a client whose cursor is older than that
gets CursorExpired (it must re-list state). Waiters sleep on one gevent Event that is swapped and set
on every append, so a long-poll wakes within milliseconds without any polling loop.
"""
from __future__ import annotations

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
        self._ring: list = [None] * capacity  # (Event, json text), at index cursor % capacity
        self._last = last_cursor
        self._count = 0
        self._changed = gevent.event.Event()
        for event in backlog:
            self._store(event)
        if self._count and self._last != last_cursor:
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
        return self._last - self._count + 1

    def _store(self, event: Event):
        if event.cursor != self._last + 1 and self._count:
            raise ValueError(f"cursor {event.cursor} does not follow {self._last}")
        self._ring[event.cursor % self.capacity] = (event, simplejson.dumps(event.to_dict()))
        self._last = event.cursor
        self._count = min(self._count + 1, self.capacity)

    def append(self, event: Event):
        """Add the event (its cursor must be next_cursor) and wake every waiter."""
        self._store(event)
        changed, self._changed = self._changed, gevent.event.Event()
        changed.set()

    def check_cursor(self, since: int):
        if since > self._last:
            raise ValidationError(f"since: cursor {since} is ahead of the newest event "
                                  f"({self._last})")
        if since < self.oldest_cursor - 1:
            raise CursorExpired(f"since: cursor {since} is older than the retained events "
                                f"(oldest {self.oldest_cursor}); list the current state, then "
                                f"follow from cursor {self._last}")

    def since(self, since: int) -> list:
        """[(Event, json text)] for every event with a cursor above `since`."""
        self.check_cursor(since)
        return [self._ring[c % self.capacity] for c in range(since + 1, self._last + 1)]

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
