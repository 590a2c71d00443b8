"""This host's registration in discoverd: a TTL key whose value is the host's state.

A heartbeat that only keeps the key alive is a TTL refresh (no watcher is woken, so it costs the
leader nothing). The value is rewritten only when the host's state changed, coalesced to at most
one write per `min_publish_interval_s`, or more apart for a large record (see publish_interval_s):
every agent of the cluster reads and parses each write. A key that vanished (expired during a
pause or an etcd outage, deleted) is registered again, and said so in the log. A clean stop
deletes the key so the cluster reacts at once.

Registering finds out who holds our host id. Our own key, left by a run that crashed less than a
TTL ago, carries our state id: we take it over, keeping this host's seniority. A key with another
state id belongs to another state dir: if nobody refreshes it, it expires and we register; if
someone does, another live agent uses our host id (two machines that derived the same id), and
this agent refuses to run (HostIdTaken) rather than share one registration.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import gevent
import gevent.event
import simplejson

from host import errors
from host.discovery.etcd import EtcdDiscovery, Registration, RegistrationLost
from host.retry import Backoff

log = logging.getLogger(__name__)


class HostIdTaken(errors.FatalError):
    """Another live agent, from another state dir, is registered under our host id."""


class Heartbeat:
    #: seconds between two value rewrites at most once per this interval (coalescing)
    min_publish_interval_s = 0.1
    #: ... and a record's bytes written per second at most, so that a host with many jobs
    #: changing (a burst of starts) does not have every agent parsing its whole record ten
    #: times a second: 27 KB (70 jobs) are a write every 0.27 s
    publish_bytes_per_s = 100_000
    #: seconds between two rewrites at most, however large the record
    max_publish_interval_s = 1.0
    #: seconds between two looks at a key another state dir holds, while waiting for it to expire
    foreign_key_poll_s = 0.5

    def __init__(self, discovery: EtcdDiscovery, host_id: str, ttl_s: int,
                 record: Callable[[], dict], state_id: str):
        self.discovery = discovery
        self.host_id = host_id
        self.ttl_s = ttl_s
        self.state_id = state_id
        self._record = record                # builds the Host record to publish
        self._changed = gevent.event.Event()
        self.round_trip = None               # a histogram of write seconds (host.metrics)
        self.failures = 0                    # beats that failed, for /metrics
        self.registration: Optional[Registration] = None
        self._last_publish = 0.0
        self._last_size = 0                  # bytes of the last value written
        self._writes = 0                     # values written so far (register or publish)
        self._writing = False                # a value is being built and written right now
        self._written = gevent.event.Event()  # swapped and set after every write

    def mark_changed(self):
        """The host's state changed: publish it soon."""
        self._changed.set()

    def publish_and_wait(self, timeout_s: float) -> bool:
        """Publish the current state and wait until a value built after this call is in etcd
        (True), or `timeout_s` passed (False)."""
        # a write in progress may have built its value before the caller's change
        target = self._writes + (2 if self._writing else 1)
        self.mark_changed()
        deadline = time.monotonic() + timeout_s
        while self._writes < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._written.wait(remaining)
        return True

    def _write(self, write: Callable[[str], object]):
        """Build the current value and write it with `write(value)`, which returns None when it
        wrote nothing; returns what write returned. A write is counted for publish_and_wait()."""
        self._changed.clear()
        self._writing = True
        try:
            value = simplejson.dumps(self._record())
            result = write(value)
        finally:
            self._writing = False
        if result is None:
            return None
        self._last_publish = time.monotonic()
        self._last_size = len(value)
        self._writes += 1
        written, self._written = self._written, gevent.event.Event()
        written.set()
        return result

    @property
    def publish_interval_s(self) -> float:
        """Seconds from one rewrite of the value to the next at least, from the last one's
        size."""
        return min(self.max_publish_interval_s, max(self.min_publish_interval_s,
                                                    self._last_size / self.publish_bytes_per_s))

    @property
    def refresh_interval_s(self) -> float:
        return self.ttl_s / 3

    def run(self):
        """Forever: keep the registration alive and current, whatever etcd answers."""
        backoff = Backoff("heartbeat", log)
        while True:
            try:
                self._beat()
            except errors.FlynnError as e:
                self.failures += 1
                backoff.failed(e)
                continue
            backoff.succeeded()

    def _beat(self):
        if self.registration is None:
            self.register()
            return
        self._changed.wait(self.refresh_interval_s)
        started = time.monotonic()
        try:
            if self._changed.is_set():
                gevent.sleep(max(0.0, self._last_publish + self.publish_interval_s
                                 - time.monotonic()))
                index = self._write(lambda value: self.discovery.publish(
                    self.host_id, value, self.ttl_s, self.registration.modified_index))
            else:
                index = self.discovery.refresh(self.host_id, self.ttl_s,
                                               self.registration.modified_index)
            self.registration = Registration(self.host_id, None,
                                             self.registration.created_index, index)
            if self.round_trip is not None:
                self.round_trip.observe(time.monotonic() - started)
        except RegistrationLost as e:
            log.warning("registration vanished (%s); registering again", e)
            self.registration = None

    # ---- registering ----------------------------------------------------------------------

    def register(self):
        """Make our registration (see the module's docstring). Raises HostIdTaken, or
        FlynnError when etcd fails (the caller retries)."""
        watched: Optional[Registration] = None   # a key of another state dir we wait out
        deadline = 0.0
        while True:
            created = self._write(lambda value: self.discovery.register(
                self.host_id, value, self.ttl_s))
            if created is not None:
                self.registration = created
                log.info("registered as %s (created index %d, ttl %ds)", self.host_id,
                         created.created_index, self.ttl_s)
                return
            existing = self.discovery.registration(self.host_id)
            if existing is None:
                continue                                  # it expired just now
            if _state_id(existing.value) == self.state_id:
                if self._take_over(existing):
                    return
                continue
            if watched is None or existing.created_index != watched.created_index:
                watched, deadline = existing, time.monotonic() + self.ttl_s + 2
                log.warning("host id %s is registered from another state dir (by %s); waiting "
                            "up to %ds for that key to expire", self.host_id,
                            _addr(existing.value), self.ttl_s + 2)
            elif existing.modified_index != watched.modified_index or \
                    time.monotonic() > deadline:
                raise HostIdTaken(f"host id {self.host_id!r} is in use by another live agent "
                                  f"({_addr(existing.value)}, another state dir); give each "
                                  "machine its own -id")
            gevent.sleep(self.foreign_key_poll_s)

    def _take_over(self, existing: Registration) -> bool:
        try:
            self.registration = self._write(lambda value: self.discovery.take_over(
                self.host_id, value, self.ttl_s, existing.modified_index))
        except RegistrationLost:
            return False
        log.info("registration %s was left by this host's previous run; taken over (created "
                 "index %d kept)", self.host_id, existing.created_index)
        return True

    def deregister(self, timeout_s: float = 2.0):
        """Delete the key if it is still ours (a clean stop). Bounded: a stop does not wait on
        an etcd that does not answer, the key expires by itself."""
        if self.registration is None:
            return
        try:
            with gevent.Timeout(timeout_s, errors.Unavailable(f"no answer in {timeout_s:g}s")):
                self.discovery.deregister(self.host_id, self.registration.modified_index)
            log.info("deregistered %s", self.host_id)
        except errors.FlynnError as e:
            log.warning("could not deregister (the key expires by itself): %s", e)
        self.registration = None


def _parsed(value: Optional[str]) -> dict:
    try:
        parsed = simplejson.loads(value or "")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _state_id(value: Optional[str]) -> str:
    return str(_parsed(value).get("state_id", ""))


def _addr(value: Optional[str]) -> str:
    return str(_parsed(value).get("addr") or "unknown address")
