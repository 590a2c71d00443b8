"""One way to retry a dependency that failed (etcd, Docker): growing pauses with jitter, and a log
that tells the first failure and the recovery rather than every attempt (as Patroni's Retry does
with its _has_failed flag).

A long-lived loop holds a Backoff and reports each attempt's outcome:

    backoff = Backoff("heartbeat", log)
    while True:
        try:
            beat()
        except errors.FlynnError as e:
            backoff.failed(e)      # logs the first failure, then sleeps
            continue
        backoff.succeeded()        # logs the recovery, if there was a failure
"""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, Optional

import gevent


class Backoff:
    #: seconds of the first pause; each failure doubles it up to the max
    min_s = 0.2
    max_s = 5.0

    def __init__(self, what: str, logger: logging.Logger, *, min_s: Optional[float] = None,
                 max_s: Optional[float] = None, sleep: Callable[[float], None] = gevent.sleep):
        self.what = what
        self._log = logger
        self.min_s = self.min_s if min_s is None else min_s
        self.max_s = self.max_s if max_s is None else max_s
        self._sleep = sleep
        self.failures = 0            # consecutive failures, 0 once recovered
        self._delay = self.min_s
        self._failing_since = 0.0

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self, error: object, sleep: bool = True) -> float:
        """Note a failure (logged when it is the first of a run) and pause before the next try.
        Returns the pause in seconds. Full jitter (a random pause up to the current bound), so
        that agents that lost etcd together do not come back in lockstep."""
        if self.failures == 0:
            self._failing_since = time.monotonic()
            self._log.warning("%s: %s; retrying with backoff", self.what, error)
        else:
            self._log.debug("%s: still failing (%d): %s", self.what, self.failures + 1, error)
        self.failures += 1
        pause = random.uniform(self.min_s / 2, self._delay)
        self._delay = min(self._delay * 2, self.max_s)
        if sleep:
            self._sleep(pause)
        return pause

    def retry(self, call: Callable, retry_on: tuple, within_s: Optional[float] = None,
              clock: Callable[[], float] = time.monotonic):
        """call() until it returns (its result), each failure in `retry_on` noted and paused
        for as above; past `within_s` seconds (None: never) the last one is raised."""
        deadline = None if within_s is None else clock() + within_s
        while True:
            try:
                result = call()
            except retry_on as e:
                if deadline is not None and clock() > deadline:
                    raise
                self.failed(e)
                continue
            self.succeeded()
            return result

    def succeeded(self):
        """Note a success; the first after failures is logged with how long they lasted."""
        if self.failures:
            self._log.info("%s: recovered after %d failed attempt(s) over %.1fs", self.what,
                           self.failures, time.monotonic() - self._failing_since)
        self.failures = 0
        self._delay = self.min_s
