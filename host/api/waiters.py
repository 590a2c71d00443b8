"""Requests that stay open (long-polls, event streams, log follows, attaches), counted per client
address and bounded: one client cannot hold every greenlet and socket of the agent. Over the
limit is 429 `too_many_requests` (retry: true). The counts are also what /metrics reports.

A held response body releases its place when the server closes it, as WSGI servers do with a
response iterable's close(), whether it was read to the end or the client left.
"""
from __future__ import annotations

import collections
import contextlib

from host.errors import TooManyRequests

#: the kinds of waits, as /metrics names them
KINDS = ("longpoll", "stream", "log_follow", "attach")


class Waiters:
    def __init__(self, per_client: int):
        self.per_client = per_client
        self.by_client = collections.Counter()
        self.by_kind = collections.Counter({kind: 0 for kind in KINDS})

    def take(self, environ, kind: str) -> str:
        """A place for `kind` (its client's address, for give_back); raises TooManyRequests."""
        client = environ.get("REMOTE_ADDR") or "?"
        if self.by_client[client] >= self.per_client:
            raise TooManyRequests(
                f"{client} already holds {self.by_client[client]} open long-polls, streams, "
                f"log follows and attaches, the most one client may (-max-waits-per-client "
                f"{self.per_client}): close some, or wait for one to end")
        self.by_client[client] += 1
        self.by_kind[kind] += 1
        return client

    def give_back(self, client: str, kind: str):
        self.by_kind[kind] -= 1
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]

    @contextlib.contextmanager
    def held(self, environ, kind: str):
        """A place for the duration of the block (a long-poll's wait)."""
        client = self.take(environ, kind)
        try:
            yield
        finally:
            self.give_back(client, kind)

    def holding(self, environ, kind: str, body) -> "HeldBody":
        """`body` (an iterable response) holding a place until it is closed or exhausted.
        Raises TooManyRequests at once, before any response is started."""
        return HeldBody(self, self.take(environ, kind), kind, body)


class HeldBody:
    def __init__(self, waiters: Waiters, client: str, kind: str, body):
        self._waiters, self._client, self._kind = waiters, client, kind
        self._body = iter(body)
        self._open = True

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._body)
        except BaseException:
            self.close()
            raise

    def close(self):
        if self._open:
            self._open = False
            self._waiters.give_back(self._client, self._kind)
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
