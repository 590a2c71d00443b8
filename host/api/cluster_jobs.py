"""A job anywhere in the cluster, through whichever agent a client reaches (docs/API.md, "Jobs
through any agent"): `GET|DELETE /cluster/jobs/<id>`, `POST .../signal`, `GET .../log` and
`GET .../wait`.

A workstation that reaches one agent can then manage every job, as the dashboard does from the
page one agent serves. Every agent mirrors the cluster (host/cluster/view.py), so it finds the
job's host itself, without the leader: its own table first, then the host whose heartbeat
carries the job (an active one before an ended one, when an id has run on several). The request
is relayed to that host as it came, the answer back as it comes: a followed log streams through.
"""
from __future__ import annotations

import bottle
import requests

from host import client
from host.api.http import REQUEST_ID_KEY, bool_param, checked_id, float_param, read_body
from host.api.streams import UntilClientLeaves
from host.errors import NotFound, Unavailable
from host.types import ACTIVE_STATES

#: seconds to connect to the job's host; reading may take as long as the relayed request does
CONNECT_TIMEOUT_S = 5
#: a followed log may stay quiet for long: read timeout of a relayed follow
FOLLOW_READ_TIMEOUT_S = 24 * 3600


def install(app: bottle.Bottle, agent, own_jobs: dict):
    """`own_jobs`: the host routes' handlers ("get", "delete", "signal", "log"), for the jobs of
    this host."""

    def job_route(action: str, suffix: str = ""):
        def handler(job_id):
            checked_id("job id", job_id)  # it goes into a relayed URL
            addr = host_addr_of(agent, job_id)
            if addr is None:
                return own_jobs[action](job_id)
            return _relay(app, agent, addr, client.route_path("host", "jobs", job_id) + suffix,
                          follow=action == "log" and bool_param(bottle.request.query, "follow"))
        return handler

    app.get("/cluster/jobs/<job_id>", callback=job_route("get"))
    app.delete("/cluster/jobs/<job_id>", callback=job_route("delete"))
    app.post("/cluster/jobs/<job_id>/signal", callback=job_route("signal", "/signal"))
    app.get("/cluster/jobs/<job_id>/log", callback=job_route("log", "/log"))
    app.get("/cluster/jobs/<job_id>/wait", callback=job_route("wait", "/wait"))


def host_addr_of(agent, job_id: str):
    """None when the job is this host's own, else the address of the host that has it."""
    if agent.table.find(job_id) is not None or agent.view is None:
        return None  # ours, or no cluster to look in: the host route answers (404 if unknown)
    holders = [(host.jobs[job_id] in ACTIVE_STATES, host.created_index, host)
               for host in list(agent.view.hosts.values()) if job_id in host.jobs]
    if not holders:
        raise NotFound(f"no job {job_id!r} on this host or elsewhere in the cluster")
    _, _, host = max(holders, key=lambda holder: (holder[0], -holder[1]))
    if host.id == agent.host_id:
        return None  # ours in the mirror, gone from the table since: the host route answers
    return host.addr


def _relay(app, agent, addr: str, path: str, follow: bool) -> bottle.HTTPResponse:
    request = bottle.request
    query = request.query_string
    # `path` is quoted already (route_path): kept as it is
    url = client.agent_url(addr, agent.config.peer_tls) + path + (f"?{query}" if query else "")
    headers = client.forward_headers(agent.host_id, agent.token,
                                     request.environ.get(REQUEST_ID_KEY), request.content_type)
    read_timeout = FOLLOW_READ_TIMEOUT_S if follow else \
        client.FORWARD_TIMEOUT_S + float_param(request.query, "timeout", 0, 0, 3600)
    try:
        answer = requests.request(request.method, url, headers=headers, stream=True,
                                  data=read_body(agent.config.max_body_bytes) or None,
                                  timeout=(CONNECT_TIMEOUT_S, read_timeout),
                                  allow_redirects=False, verify=agent.config.peer_tls or True)
    except requests.RequestException as e:
        raise Unavailable(f"the job's host at {addr} could not be reached: "
                          f"{client.unreachable_reason(e)}") from e
    body = _chunks(answer)
    if follow:
        environ = request.environ
        body = app.waiters.holding(environ, "log_follow", UntilClientLeaves(body, environ))
    headers = {"Content-Type": answer.headers.get("Content-Type", "application/json")}
    if "X-Content-Type-Options" in answer.headers:
        headers["X-Content-Type-Options"] = answer.headers["X-Content-Type-Options"]
    return bottle.HTTPResponse(body, answer.status_code, headers=headers)


def _chunks(answer):
    """The relayed answer's body as it comes; the connection to the host closes with it."""
    try:
        yield from answer.iter_content(chunk_size=None)
    except requests.RequestException:
        return  # the host went away mid-stream: the client sees the answer end
    finally:
        answer.close()
