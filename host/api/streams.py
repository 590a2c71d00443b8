"""Streamed responses (a followed log, an event stream) that end when their client leaves.

A stream writes only when it has something to say: a silent job's followed log writes nothing,
an event stream only a keep-alive line every 15 s, so the server would notice a client gone only
at the next write, or never, holding a greenlet, a socket and (for a log) a Docker connection
for as long as the job runs. A client sends nothing while it reads a streamed response, so its
side of the connection turning readable means it closed it (or broke the protocol): the stream
then ends at once.
"""
from __future__ import annotations

import logging

import gevent
import gevent.socket

from host.server import client_socket

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """Raised inside a stream's body, where it waits, when its client has left."""


class UntilClientLeaves:
    """An iterable response body that ends when the client leaves (see the module)."""

    def __init__(self, body, environ):
        self._body = iter(body)
        self._gone = False
        self._waiting = False        # the server's greenlet is inside next(self._body)
        self._server_greenlet = gevent.getcurrent()
        sock = client_socket(environ)
        self._watcher = gevent.spawn(self._watch, sock) if sock is not None else None

    def __iter__(self):
        return self

    def __next__(self):
        if self._gone:
            self.close()
            raise StopIteration
        self._waiting = True
        try:
            return next(self._body)
        except ClientGone:
            self.close()
            raise StopIteration from None
        finally:
            self._waiting = False

    def _watch(self, sock):
        try:
            gevent.socket.wait_read(sock.fileno())
        except (OSError, ValueError):
            return
        self._gone = True
        log.debug("a stream's client left; ending the stream")
        if self._waiting:  # blocked in the body (not in a write): end it where it waits
            gevent.kill(self._server_greenlet, ClientGone)

    def close(self):
        if self._watcher is not None:
            self._watcher.kill(block=False)
            self._watcher = None
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
