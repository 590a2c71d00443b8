"""The agent's background tasks: spawning one never blocks whoever spawns it.

Starting containers loads the engine, so at most `engine_slots` starts run at once and the rest
wait their turn, each in its own greenlet. Everything else (a stop waiting out its timeout, an
image pull, pruning, waiting for a publication) mostly waits, and takes no slot: a caller who
sends 64 `DELETE ?timeout=3600` to jobs that ignore SIGTERM must not hold up the starts, the
recording of Docker's events, or the API, as a shared pool that blocks when full did.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

import gevent
import gevent.lock
import gevent.pool

from host.errors import FlynnError

log = logging.getLogger(__name__)


class Tasks:
    def __init__(self, engine_slots: int):
        self.engine_slots = engine_slots
        self._slots = gevent.lock.BoundedSemaphore(engine_slots)
        self._holders: set = set()       # greenlets holding an engine slot now
        self._group = gevent.pool.Group()
        self.waiting_for_slot = 0

    def spawn(self, run: Callable, *args) -> gevent.Greenlet:
        """A task that mostly waits (stops, pulls, pruning): it runs at once."""
        return self._group.spawn(self._guarded, run, args)

    def spawn_engine_work(self, run: Callable, *args) -> gevent.Greenlet:
        """A task that loads the engine (a container start): it runs when a slot is free."""
        return self._group.spawn(self._in_slot, run, args)

    @contextlib.contextmanager
    def outside_slot(self):
        """Give the caller's slot back while it waits on something slow that is not the
        engine's work (an image pull from a registry), and take one again after."""
        me = gevent.getcurrent()
        if me not in self._holders:
            yield
            return
        self._holders.discard(me)
        self._slots.release()
        try:
            yield
        finally:
            self._take_slot()

    @property
    def running(self) -> int:
        return len(self._group)

    @property
    def busy_slots(self) -> int:
        return len(self._holders)

    def join(self, timeout: float) -> bool:
        """Wait for every task (those they spawn too) to end; False on timeout."""
        return self._group.join(timeout=timeout)

    def kill(self, timeout: float):
        self._group.kill(timeout=timeout)

    def _take_slot(self):
        self.waiting_for_slot += 1
        try:
            self._slots.acquire()
        finally:
            self.waiting_for_slot -= 1
        self._holders.add(gevent.getcurrent())

    def _in_slot(self, run, args):
        self._take_slot()
        try:
            self._guarded(run, args)
        finally:
            me = gevent.getcurrent()
            if me in self._holders:
                self._holders.discard(me)
                self._slots.release()

    @staticmethod
    def _guarded(run, args):
        """A bug in one task is logged with its traceback; the agent goes on."""
        try:
            run(*args)
        except FlynnError as e:
            log.warning("task %s: %s", getattr(run, "__name__", run), e)
        except Exception:
            log.exception("task %s%r failed", getattr(run, "__name__", run), args)
