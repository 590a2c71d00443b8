"""Attach to a job on any host through this agent (docs/API.md, "Jobs through any agent"):
`/cluster/jobs/<id>/attach` finds the job's host, `/cluster/hosts/<host_id>/jobs/<id>/attach`
names it (for `run`, which attaches before the job exists anywhere). The job's own host is
attached to as a WebSocket client and every message is relayed both ways unchanged, so the
framing, the wait for a job not there yet, and the start once attached are the host's own.

The host's refusal (404, 429, ...) comes back before the client's upgrade, as its JSON error.
"""
from __future__ import annotations

import contextlib
import logging

import bottle
import gevent
import simple_websocket

from host import client, errors
from host.api.attach import CLOSE_WAIT_S, upgrade
from host.api.cluster_jobs import host_addr_of
from host.api.http import checked_id, int_param

log = logging.getLogger(__name__)

#: seconds to connect to the job's host and have its answer to the upgrade
UPSTREAM_CONNECT_S = 10.0


def install(app: bottle.Bottle, agent, local_attach):
    """`local_attach(job_id)`: the host route's handler, for this host's own jobs."""

    @app.get("/cluster/jobs/<job_id>/attach")
    def attach_anywhere(job_id):
        checked_id("job id", job_id)
        addr = host_addr_of(agent, job_id)
        return local_attach(job_id) if addr is None else _relay(app, agent, addr, job_id)

    @app.get("/cluster/hosts/<host_id>/jobs/<job_id>/attach")
    def attach_on(host_id, job_id):
        checked_id("job id", job_id)
        if host_id == agent.host_id:
            return local_attach(job_id)
        registered = agent.view.hosts.get(host_id) if agent.view is not None else None
        if registered is None:
            raise errors.NotFound(f"no host {host_id!r} in the cluster")
        return _relay(app, agent, registered.addr, job_id)


def _relay(app, agent, addr: str, job_id: str):
    environ = bottle.request.environ
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
        raise errors.ValidationError("attach needs a WebSocket upgrade (RFC 6455)")
    query = bottle.request.query
    size = (int_param(query, "height", None, 1, 9999), int_param(query, "width", None, 1, 9999))
    tls = agent.config.peer_tls
    url = (client.agent_url(addr, tls).replace("http", "ws", 1) +
           client.route_path("host", "jobs", job_id, "attach") +
           (f"?height={size[0]}&width={size[1]}" if all(size) else ""))
    with app.waiters.held(environ, "attach"):
        try:
            upstream = client.AttachSocket(url, UPSTREAM_CONNECT_S, agent.token,
                                           tls if isinstance(tls, str) else None)
        except OSError as e:
            raise errors.Unavailable(f"the job's host at {addr} could not be reached: "
                                     f"{client.unreachable_reason(e)}") from e
        try:
            return _serve(environ, upstream, job_id)
        finally:
            with contextlib.suppress(simple_websocket.ConnectionClosed, OSError):
                upstream.close()  # (closed already, unless the client's upgrade failed)


def _serve(environ, upstream, job_id: str):
    ws = upgrade(environ)
    pumps = [gevent.spawn(_pump, upstream, ws), gevent.spawn(_pump, ws, upstream)]
    gevent.wait(pumps, count=1)  # either side closed: so does the other
    gevent.killall(pumps)
    for side in (ws, upstream):
        try:
            side.close()
        except simple_websocket.ConnectionClosed:
            pass
    ws.thread.join(CLOSE_WAIT_S)
    log.debug("job %s: relayed attach ended", job_id)
    return bottle.HTTPResponse(status=101)  # never written (see AgentApp.__call__)


def _pump(source, target):
    """Messages from one side to the other, as they are (bytes: output or stdin; text:
    controls, exit, errors), until either side closes."""
    try:
        while True:
            message = source.receive()
            if message is None:
                continue
            target.send(message)
    except simple_websocket.ConnectionClosed:
        return
