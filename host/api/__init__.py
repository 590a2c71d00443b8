"""The agent's WSGI application: create_app(agent) -> Bottle. No module-level app."""
from __future__ import annotations

import collections
import errno
from http import HTTPStatus
import logging
from urllib.parse import unquote_plus

import bottle
import simplejson

from host.api import attach as attach_routes
from host.api import attach_relay as attach_relay_routes
from host.api.browsers import BrowserGuard
from host.api import cluster as cluster_routes
from host.api import dashboard as dashboard_routes
from host.api import cluster_jobs as cluster_jobs_routes
from host.api import health as health_routes
from host.api import host as host_routes
from host.api import metrics as metrics_routes
from host.api import openapi
from host.api.events import events_response
from host.api.waiters import Waiters
from host.api.http import (JSON_TYPE, REQUEST_ID, REQUEST_ID_KEY, json_errors, path_problem,
                           request_id_of, router_error)
from host.auth import OPEN_PATHS, TokenCheck
from host.errors import FlynnError, InternalError, Unauthorized, ValidationError
from host.logsetup import set_request_id
from host.server import UPGRADED

log = logging.getLogger(__name__)
#: status lines, made once (an enum lookup each request costs, on the fast lane's hot path)
_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}

#: environ key naming the route of a request answered without Bottle's routing (for /metrics)
_ROUTE_NAME = "flynn.route"


class AgentApp(bottle.Bottle):
    """The Bottle app, with one fast lane. Every long-poll client re-polls `GET /host/events`
    after every event, so with a thousand clients that route is nearly all of the traffic; it is
    answered here without Bottle's per-request machinery (request binding, routing, plugins),
    by the same events_response() the Bottle route uses."""

    def __init__(self, agent):
        super().__init__(catchall=True)
        self._event_log = agent.table.events
        self._token = TokenCheck(agent.token) if agent.token else None
        self._browsers = BrowserGuard(agent.config.allowed_hosts)
        self.waiters = Waiters(agent.config.max_waits_per_client)
        self.answered = collections.Counter()  # (route, "status") -> count, for /metrics
        self.counting = agent.config.metrics

    def __call__(self, environ, start_response):
        request_id = environ[REQUEST_ID_KEY] = request_id_of(environ)
        set_request_id(request_id)
        if not self.counting:
            def identified(status, headers, exc_info=None):
                headers.append((REQUEST_ID, request_id))
                return start_response(status, headers, exc_info)
            return self._serve(environ, identified)

        def counted(status, headers, exc_info=None):
            # the route object itself: named at scrape time, not on every request
            route = environ.get("bottle.route") or environ.get(_ROUTE_NAME, "(unrouted)")
            self.answered[(route, status[:3])] += 1
            headers.append((REQUEST_ID, request_id))
            return start_response(status, headers, exc_info)
        return self._serve(environ, counted)

    def _serve(self, environ, start_response):
        # before anything else, the fast lane and the attach upgrade included
        if self._token is not None and environ.get("PATH_INFO") not in OPEN_PATHS and \
                not self._token.allows(environ.get("HTTP_AUTHORIZATION", "")):
            return self._unauthorized(environ, start_response)
        problem = self._browsers.problem(environ) or path_problem(environ)
        if problem:
            return self._answer(start_response, ValidationError(problem))
        if environ.get("PATH_INFO") == "/host/events" and environ.get("REQUEST_METHOD") == "GET":
            environ[_ROUTE_NAME] = "GET /host/events"
            return self._events_fast_lane(environ, start_response)
        result = super().__call__(environ, start_response)
        if environ.get(UPGRADED):
            # The connection carried a WebSocket, closed by now: an HTTP response written after
            # it would reach the client as garbage behind the close frame. Both servers we run
            # under (gevent's pywsgi, gunicorn's gevent worker) drop a connection quietly when
            # the application reports it reset.
            raise ConnectionResetError(errno.ECONNRESET, "the WebSocket on this connection ended")
        return result

    def _unauthorized(self, environ, start_response):
        error = Unauthorized("missing or wrong token" if environ.get("HTTP_AUTHORIZATION")
                             else "this agent asks for a token: send Authorization: Bearer "
                             "<token> (FLYNN_HOST_TOKEN, or --token-file with the CLI)")
        return self._answer(start_response, error,
                            [("WWW-Authenticate", 'Bearer realm="flynn-host"')])

    @staticmethod
    def _answer(start_response, error: FlynnError, headers=()):
        """An error answered before routing, in the one JSON shape."""
        body = simplejson.dumps(error.to_dict()).encode()
        start_response(_STATUS_LINES[error.status], [
            ("Content-Type", JSON_TYPE), ("Content-Length", str(len(body))), *headers])
        return [body]

    def _events_fast_lane(self, environ, start_response):
        query = _query_of(environ.get("QUERY_STRING", ""))
        try:
            status, content_type, body = events_response(self._event_log, query, environ,
                                                         self.waiters)
        except FlynnError as e:
            status, content_type, body = e.status, JSON_TYPE, simplejson.dumps(e.to_dict())
        except Exception:
            log.exception("unhandled error serving GET /host/events")
            error = InternalError("internal error (logged by the agent)")
            status, content_type, body = error.status, JSON_TYPE, simplejson.dumps(error.to_dict())
        headers = [("Content-Type", content_type)]
        if isinstance(body, str):
            body = body.encode()
        if isinstance(body, bytes):
            body = [body]
            headers.append(("Content-Length", str(len(body[0]))))
        start_response(_STATUS_LINES[status], headers)
        return body


def create_app(agent) -> bottle.Bottle:
    app = AgentApp(agent)
    app.uninstall(bottle.JSONPlugin)   # we write JSON ourselves, with simplejson
    app.install(json_errors)
    app.default_error_handler = router_error
    health_routes.install(app, agent)
    own_jobs = host_routes.install(app, agent)
    cluster_routes.install(app, agent)
    cluster_jobs_routes.install(app, agent, own_jobs)
    local_attach = attach_routes.install(app, agent)
    attach_relay_routes.install(app, agent, local_attach)
    dashboard_routes.install(app, agent)
    if agent.config.metrics:
        metrics_routes.install(app, agent)
    openapi.install(app)
    return app


def _query_of(text: str) -> dict:
    """name -> last value, as parse_qs(keep_blank_values=True) gives them, for the fast lane:
    its queries are a few plain numbers, and parse_qs costs a seventh of such a request."""
    query = {}
    for part in text.split("&"):
        if part:
            name, _, value = part.partition("=")
            if "%" in part or "+" in part:
                name, value = unquote_plus(name), unquote_plus(value)
            query[name] = value
    return query
