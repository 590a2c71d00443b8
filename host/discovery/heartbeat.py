"""This host's registration in discoverd: a TTL key whose value is the host's state.

A heartbeat that only keeps the key alive is a TTL refresh (no watcher is woken, so it costs the
leader nothing). The value is rewritten only when the host's state changed, coalesced to at most
one write per `min_publish_interval_s`. A key that vanished (expired during a pause, deleted) is
registered again, and said so in the log. A clean stop deletes the key so the cluster reacts at
once.
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

log = logging.getLogger(__name__)


class Heartbeat:
    #: seconds between two value rewrites at most once per this interval (coalescing)
    min_publish_interval_s = 0.1
    #: seconds to wait before trying etcd again after it failed
    retry_s = 0.5

    def __init__(self, discovery: EtcdDiscovery, host_id: str, ttl_s: int,
                 record: Callable[[], dict]):
        self.discovery = discovery
        self.host_id = host_id
        self.ttl_s = ttl_s
        self._record = record                # builds the Host record to publish
        self._changed = gevent.event.Event()
        self.registration: Optional[Registration] = None
        self._last_publish = 0.0
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

    def _wrote(self):
        self._writes += 1
        written, self._written = self._written, gevent.event.Event()
        written.set()

    @property
    def refresh_interval_s(self) -> float:
        return self.ttl_s / 3

    def run(self):
        """Forever: keep the registration alive and current."""
        while True:
            try:
                self._beat()
            except errors.Unavailable as e:
                log.warning("heartbeat: %s; retrying", e)
                gevent.sleep(self.retry_s)

    def _beat(self):
        if self.registration is None:
            self._changed.clear()
            self._writing = True
            try:
                self.registration = self.discovery.register(self.host_id, self._value(),
                                                            self.ttl_s)
            finally:
                self._writing = False
            self._last_publish = time.monotonic()
            self._wrote()
            log.info("registered as %s (created index %d, ttl %ds)", self.host_id,
                     self.registration.created_index, self.ttl_s)
            return
        self._changed.wait(self.refresh_interval_s)
        try:
            if self._changed.is_set():
                gevent.sleep(max(0.0, self._last_publish + self.min_publish_interval_s
                                 - time.monotonic()))
                self._changed.clear()
                self._writing = True
                try:
                    index = self.discovery.publish(self.host_id, self._value(), self.ttl_s,
                                                   self.registration.modified_index)
                finally:
                    self._writing = False
                self._last_publish = time.monotonic()
                self._wrote()
            else:
                index = self.discovery.refresh(self.host_id, self.ttl_s,
                                               self.registration.modified_index)
            self.registration = Registration(self.host_id, None,
                                             self.registration.created_index, index)
        except RegistrationLost as e:
            log.warning("registration vanished (%s); registering again", e)
            self.registration = None

    def _value(self) -> str:
        return simplejson.dumps(self._record())

    def deregister(self):
        """Delete the key if it is still ours (a clean stop)."""
        if self.registration is None:
            return
        try:
            self.discovery.deregister(self.host_id, self.registration.modified_index)
            log.info("deregistered %s", self.host_id)
        except errors.FlynnError as e:
            log.warning("could not deregister (the key expires by itself): %s", e)
        self.registration = None
