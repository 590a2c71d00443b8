"""GET /host/events: the long-poll and the stream, independent of Bottle so that the app's fast
lane and the Bottle route answer from the same code."""
from __future__ import annotations

import simplejson

from host import errors
from host.api.http import JSON_TYPE, bool_param, float_param, int_param
from host.api.streams import UntilClientLeaves
from host.api.waiters import Waiters
from host.events import EventLog

#: seconds between keep-alive blank lines on a streamed event response
STREAM_KEEPALIVE_S = 15.0
#: longest a long-poll may wait, seconds
MAX_WAIT_S = 60.0
NDJSON_TYPE = "application/x-ndjson"


def events_response(log: EventLog, query, environ, waiters: Waiters) -> tuple:
    """(status, content type, body) for a query mapping of name -> value. The body is bytes for a
    long-poll, an iterator of bytes for a stream. Raises FlynnError for bad parameters, and
    TooManyRequests when the client holds as many waits as it may."""
    since = int_param(query, "since", None, 0, 1 << 62)
    wait = float_param(query, "wait", 0.0, 0, MAX_WAIT_S)
    job_filter = query.get("job_id") or None
    match = (lambda e: e.job_id == job_filter) if job_filter else None
    stream = bool_param(query, "stream")
    since = log.last_cursor if since is None else since
    log.check_cursor(since)
    if stream:
        return 200, NDJSON_TYPE, waiters.holding(
            environ, "stream", UntilClientLeaves(_stream(log, since, match), environ))
    if wait > 0:
        client = waiters.take(environ, "longpoll")  # (not `with waiters.held`: the hot path)
        try:
            found, cursor = log.wait(since, wait, match, for_client=True)
        finally:
            waiters.give_back(client, "longpoll")
    else:
        found, cursor = log.wait(since, wait, match, for_client=True)
    if not found and log.closed:
        # no answer at once again and again to a client that asks at once again: it backs off
        raise errors.Unavailable("the agent is stopping; ask again from the same cursor once "
                                 "it is back", retry=True)
    # events are serialized once, when published; an answer only joins them, and the answers
    # without a filter are joined once for every waiter that asked from the same cursor
    def page() -> bytes:
        return ('{"events": [%s], "cursor": %d}' % (",".join(j for _, j in found),
                                                     cursor)).encode()
    return 200, JSON_TYPE, log.shared(("page", since, cursor), page) if match is None else page()


def _stream(log: EventLog, since: int, match):
    """Newline-delimited events, a blank line first and every STREAM_KEEPALIVE_S when idle. A
    consumer so slow that its cursor leaves the retained window gets a last line with the
    error."""
    cursor = since
    yield b"\n"  # at once: the answer's headers go out now, not with the first event
    while True:
        try:
            before = cursor
            found, cursor = log.wait(cursor, STREAM_KEEPALIVE_S, match, for_client=True)
        except errors.CursorExpired as e:
            yield (simplejson.dumps({"error": e.to_dict()}) + "\n").encode()
            return
        if match is None:
            yield log.shared(("lines", before, cursor), lambda found=found: _lines(found))
        else:
            yield _lines(found)
        if log.closed:
            return  # the agent is stopping: the stream ends; its consumer resumes elsewhere


def _lines(found: list) -> bytes:
    return ("".join(j + "\n" for _, j in found) or "\n").encode()
