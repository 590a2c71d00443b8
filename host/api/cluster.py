"""The cluster API (docs/API.md, "Cluster API"), served by the leader from its mirror. Any other
agent forwards the request to the leader and returns its answer unchanged (or answers 307 to the
leader with ?redirect=true); 503 not_leader when no leader is known or it cannot be reached."""
from __future__ import annotations

import functools
from urllib.parse import quote

import bottle

from host import client
from host.api.events import MAX_WAIT_S, events_response
from host.api.http import (REQUEST_ID_KEY, bool_param, checked_id, float_param, json_body,
                           read_body, read_json)
from host.errors import NotFound, NotLeader


def install(app: bottle.Bottle, agent):
    view = agent.view

    def leader_only(handler):
        """Serve on the leader; forward from anywhere else."""
        @functools.wraps(handler)
        def wrapper(*args, **kwargs):
            if view is None:
                raise NotFound("this agent runs without etcd: there is no cluster API")
            if view.is_leader:
                return handler(*args, **kwargs)
            leader = view.leader()
            if leader is None:
                raise NotLeader("no leader is known yet")
            request = bottle.request
            sender = request.get_header(client.FORWARDED_BY)
            if sender is not None:
                # our views of the leader differ for a moment (one of us has not seen the
                # latest change yet): forwarding on could send it back and forth
                raise NotLeader(f"forwarded here by {sender}, but this agent does not lead "
                                f"(it sees {leader.id} as the leader); retry shortly",
                                leader=leader.addr)
            # the path as the client sent it: WSGI decoded it, and a decoded `?` or `#` in an id
            # would start a query or a fragment of the forwarded request
            path = quote(request.fullpath, safe="/")
            # a stream cannot be relayed through a buffered forward: send the client along
            if bool_param(request.query, "redirect") or bool_param(request.query, "stream"):
                location = client.agent_url(leader.addr, agent.config.peer_tls) + path
                if request.query_string:
                    location += "?" + request.query_string
                return bottle.HTTPResponse(status=307, headers={"Location": location})
            answer = client.forward(leader.addr, request.method, path,
                                    request.query_string,
                                    read_body(agent.config.max_body_bytes),
                                    request.content_type, agent.host_id, agent.token,
                                    extra_timeout_s=float_param(request.query, "wait", 0, 0,
                                                                MAX_WAIT_S),
                                    tls=agent.config.peer_tls,
                                    request_id=request.environ.get(REQUEST_ID_KEY))
            return bottle.HTTPResponse(answer.content, answer.status_code, headers={
                "Content-Type": answer.headers.get("Content-Type", "application/json")})
        return wrapper

    def host_entry(registered) -> dict:
        return dict(registered.record.to_dict(), leader=registered.id == view.leader_id)

    @app.get("/cluster/leader")
    def leader():
        if view is None:
            raise NotFound("this agent runs without etcd: there is no cluster API")
        current = view.leader()
        if current is None:
            raise NotLeader("no leader is known yet")
        return json_body({"id": current.id, "addr": current.addr, "since": view.leader_since_time})

    @app.get("/cluster/hosts")
    @leader_only
    def hosts():
        return json_body([host_entry(h) for h in sorted(view.hosts.values(),
                                                         key=lambda h: h.created_index)])

    @app.post("/cluster/jobs")
    @leader_only
    def add_jobs():
        return json_body(agent.scheduler.add_jobs(read_json(agent.config.max_body_bytes)))

    @app.delete("/cluster/hosts/<host_id>/jobs/<job_id>")
    @leader_only
    def stop_job(host_id, job_id):
        # the job id goes into the forwarded URL: checked, and quoted, so that it cannot add a
        # query or a path of its own
        checked_id("job id", job_id)
        registered = view.hosts.get(host_id)
        if registered is None:
            raise NotFound(f"no host {host_id!r} in the cluster")
        request = bottle.request
        answer = client.forward(registered.addr, "DELETE",
                                client.route_path("host", "jobs", job_id),
                                request.query_string, b"", "", agent.host_id, agent.token,
                                tls=agent.config.peer_tls,
                                request_id=request.environ.get(REQUEST_ID_KEY))
        return bottle.HTTPResponse(answer.content, answer.status_code, headers={
            "Content-Type": answer.headers.get("Content-Type", "application/json")})

    @app.get("/cluster/events")
    @leader_only
    def events():
        status, content_type, body = events_response(view.events, bottle.request.query,
                                                     bottle.request.environ, app.waiters)
        return bottle.HTTPResponse(body, status, headers={"Content-Type": content_type})

    @app.get("/cluster/hosts/<host_id>")
    @leader_only
    def one_host(host_id):
        registered = view.hosts.get(host_id)
        if registered is None:
            raise NotFound(f"no host {host_id!r} in the cluster")
        return json_body(host_entry(registered))
