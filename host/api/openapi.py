"""The HTTP contract as an OpenAPI 3.1 document: every route, its parameters and bodies, and every
error it answers. Served at GET /openapi.json; docs/openapi.json is this document, written by
`bin/openapi > docs/openapi.json` (a test fails when the two differ, or when a
route exists that the document lacks, or the other way round).
"""
from __future__ import annotations

import bottle
import simplejson

import host
from host.api.http import JSON_TYPE
from host.errors import STATUS_FOR_CODE


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict) -> dict:
    return {"oneOf": [schema, {"type": "null"}]}


STRING = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
TIME = nullable({"type": "string", "format": "date-time"})
ID = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"}
STR_MAP = {"type": "object", "additionalProperties": STRING}
STATES = ["starting", "running", "done", "crashed", "failed", "stopped"]

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["code", "message", "retry"],
        "properties": {"code": {"type": "string", "enum": sorted(STATUS_FOR_CODE)},
                       "message": STRING, "retry": BOOL,
                       "leader": nullable(STRING), "earliest": INT, "cursor": INT,
                       "checks": STR_MAP},
    },
    "PortSpec": {
        "type": "object", "additionalProperties": False,
        "properties": {"port": {"type": "integer", "minimum": 0, "maximum": 65535},
                       "proto": {"type": "string", "enum": ["tcp", "udp"]},
                       "container_port": nullable({"type": "integer", "minimum": 1,
                                                   "maximum": 65535})},
    },
    "VolumeSpec": {
        "type": "object", "additionalProperties": False, "required": ["name", "target"],
        "properties": {"name": STRING, "target": STRING},
    },
    "JobConfig": {
        "type": "object", "additionalProperties": False, "required": ["image"],
        "properties": {
            "image": STRING, "cmd": nullable({"type": "array", "items": STRING}),
            "entrypoint": nullable({"type": "array", "items": STRING}),
            "env": nullable(STR_MAP), "working_dir": nullable(STRING), "user": nullable(STRING),
            "tty": BOOL, "stdin": BOOL, "ports": {"type": "array", "items": ref("PortSpec")},
            "network": {"type": "string", "enum": ["bridge", "host"]},
            "volumes": {"type": "array", "items": ref("VolumeSpec")},
        },
    },
    "Resources": {
        "type": "object", "additionalProperties": False,
        "properties": {"memory_mb": {"type": "integer", "minimum": 0},
                       "cpu_shares": {"type": "integer", "minimum": 0}},
    },
    "HostResources": {
        "type": "object", "required": ["memory_mb", "cpu_shares"],
        "properties": {"memory_mb": INT, "cpu_shares": INT},
    },
    "JobSpec": {
        "description": "A job as a client sends it (PUT /host/jobs/<id>: the id comes from the "
                       "path, and `id` may be left out)",
        "type": "object", "additionalProperties": False, "required": ["config"],
        "properties": {"id": ID, "config": ref("JobConfig"), "resources": ref("Resources"),
                       "attributes": nullable(STR_MAP)},
    },
    "Job": {
        "type": "object", "required": ["id", "config", "resources", "attributes"],
        "properties": {"id": ID, "config": ref("JobConfig"), "resources": ref("Resources"),
                       "attributes": STR_MAP},
    },
    "PortBinding": {
        "type": "object", "required": ["port", "container_port", "proto"],
        "properties": {"port": INT, "container_port": INT, "proto": STRING},
    },
    "ActiveJob": {
        "type": "object",
        "required": ["job", "host_id", "container_id", "internal_ip", "ports", "status",
                     "exit_status", "error", "created_at", "started_at", "ended_at"],
        "properties": {
            "job": ref("Job"), "host_id": ID, "container_id": nullable(STRING),
            "internal_ip": nullable(STRING), "ports": {"type": "array",
                                                       "items": ref("PortBinding")},
            "status": {"type": "string", "enum": STATES}, "exit_status": nullable(INT),
            "error": nullable(STRING), "created_at": TIME, "started_at": TIME,
            "ended_at": TIME,
        },
    },
    "JobSummary": {
        "type": "object",
        "required": ["id", "status", "image", "spec_digest", "ports", "resources",
                     "exit_status", "error", "created_at", "started_at", "ended_at"],
        "properties": {
            "id": ID, "status": {"type": "string", "enum": STATES + ["lost"]},
            "image": STRING, "spec_digest": STRING,
            "ports": {"type": "array", "items": ref("PortBinding")},
            "resources": ref("Resources"), "exit_status": nullable(INT),
            "error": nullable(STRING), "created_at": TIME, "started_at": TIME,
            "ended_at": TIME, "command": STRING, "container_id": nullable(STRING),
            "internal_ip": nullable(STRING),
        },
    },
    "Event": {
        "type": "object",
        "required": ["cursor", "type", "event", "host_id", "job_id", "job", "time"],
        "properties": {
            "cursor": INT, "type": {"type": "string", "enum": ["job", "host"]},
            "event": {"type": "string", "enum": ["create", "start", "stop", "error", "add",
                                                 "remove", "update"]},
            "host_id": ID, "job_id": nullable(ID), "job": nullable(ref("JobSummary")),
            "time": {"type": "string", "format": "date-time"},
        },
    },
    "EventsPage": {
        "type": "object", "required": ["events", "cursor"],
        "properties": {"events": {"type": "array", "items": ref("Event")}, "cursor": INT},
    },
    "Host": {
        "type": "object",
        "required": ["id", "addr", "version", "attributes", "resources", "allocated", "jobs",
                     "registered_at", "state_id", "leader"],
        "properties": {
            "id": ID, "addr": STRING, "version": STRING, "attributes": STR_MAP,
            "resources": ref("HostResources"), "allocated": ref("HostResources"),
            "jobs": {"type": "array", "items": ref("JobSummary")}, "registered_at": TIME,
            "state_id": STRING, "leader": BOOL,
        },
    },
    "Leader": {
        "type": "object", "required": ["id", "addr"],
        "properties": {"id": ID, "addr": STRING, "since": TIME},
    },
    "HostStatus": {
        "type": "object",
        "required": ["id", "addr", "version", "leader", "is_leader", "docker", "etcd", "jobs",
                     "attributes", "resources", "allocated", "started_at", "events_cursor",
                     "layer0"],
        "properties": {
            "id": ID, "addr": STRING, "version": STRING,
            "leader": nullable({"type": "object", "required": ["id", "addr"],
                                "properties": {"id": ID, "addr": STRING}}),
            "is_leader": BOOL, "docker": STRING, "etcd": STRING,
            "jobs": {"type": "object", "additionalProperties": INT},
            "attributes": STR_MAP, "resources": ref("HostResources"),
            "allocated": ref("HostResources"), "started_at": TIME, "events_cursor": INT,
            "layer0": {"type": "array", "items": {"type": "object"}},
        },
    },
    "AddJobsRequest": {
        "description": '{"jobs": [JobSpec]} to be placed, or {"<host_id>": [JobSpec]} for named '
                       "hosts",
        "type": "object", "minProperties": 1,
        "additionalProperties": {"type": "array", "minItems": 1, "items": ref("JobSpec")},
    },
    "AddJobsAnswer": {
        "type": "object", "required": ["jobs"],
        "properties": {"jobs": {"type": "array", "items": {
            "type": "object", "required": ["host_id", "job_id", "host_addr"],
            "properties": {"host_id": ID, "job_id": ID, "host_addr": nullable(STRING)}}}},
    },
}

#: what each error status means, and its error codes
ERRORS = {
    400: "validation_error: a parameter, the path or the body is not what the route takes "
         "(the message names it)",
    401: "unauthorized: -auth-token-file is set and the request has no token, or a wrong one",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout: the body stopped arriving for -read-timeout",
    409: "conflict",
    410: "cursor_expired: `earliest` is the lowest `since` still answered",
    413: "too_large: the body is over -max-body-bytes",
    422: "no_capacity: no host can take a placed job",
    429: "too_many_requests: the client holds -max-waits-per-client waits open (or the job "
         "-max-attaches-per-job attaches); retry once one ended",
    503: "unavailable or not_leader (retry: true)",
}

#: every route answers these (checked before routing)
COMMON_ERRORS = (400, 401)


def _responses(ok: dict, *errors: int) -> dict:
    responses = dict(ok)
    for status in sorted(set(COMMON_ERRORS + errors)):
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    return responses


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _path(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": STRING}


JOB_ID, HOST_ID = _path("job_id"), _path("host_id")
SINCE = _query("since", {"type": "integer", "minimum": 0},
               "the last cursor the client saw (default: now)")
WAIT = _query("wait", {"type": "number", "minimum": 0, "maximum": 60},
              "seconds to wait for an event (default 0: answer at once)")
STREAM = _query("stream", {"type": "boolean"}, "newline-delimited events, kept open")
EVENTS_OK = {"description": "events after `since` (a stream: one event a line)",
             "content": {"application/json": {"schema": ref("EventsPage")},
                         "application/x-ndjson": {"schema": STRING}}}
REDIRECT = _query("redirect", {"type": "boolean"},
                  "a non-leader answers 307 to the leader instead of forwarding")


def _cluster(operation: dict) -> dict:
    """A cluster route: served by the leader, forwarded (or redirected) by other agents."""
    operation = dict(operation)
    operation["parameters"] = operation.get("parameters", []) + [REDIRECT]
    operation["responses"] = dict(operation["responses"],
                                  **{"307": {"description": "to the leader (?redirect=true, "
                                                            "or a stream)"}})
    return _without_etcd(operation)


def _without_etcd(operation: dict) -> dict:
    """A cluster route: an agent run without etcd has no cluster API (404)."""
    return dict(operation, responses=dict(operation["responses"],
                                          **{"404": {"$ref": "#/components/responses/E404"}}))


def _anywhere(operation: dict) -> dict:
    """A job route of /cluster/jobs: any agent serves it for a job on any host, relaying it to
    that host (503 when the host cannot be reached)."""
    return dict(operation, summary=operation["summary"] + ", on whichever host has the job",
                responses=dict(operation["responses"],
                               **{"404": {"$ref": "#/components/responses/E404"},
                                  "503": {"$ref": "#/components/responses/E503"}}))


TIMESTAMP = {"oneOf": [{"type": "number", "minimum": 0}, STRING]}
JOB_GET = {"summary": "One job", "parameters": [JOB_ID],
           "responses": _responses({"200": _json(ref("ActiveJob"))}, 404)}
JOB_DELETE = {
    "summary": "Stop a job: SIGTERM, then SIGKILL after `timeout`; with remove=true, forget an "
               "ended one (its container and record; force=true kills an active one first)",
    "parameters": [JOB_ID, _query("timeout", {"type": "number", "minimum": 0, "maximum": 3600},
                                  "seconds before SIGKILL (default 10)"),
                   _query("remove", {"type": "boolean"}, "remove the ended job"),
                   _query("force", {"type": "boolean"}, "with remove: kill an active job, "
                                                        "removed as it ends")],
    "responses": _responses({"200": _json(ref("ActiveJob"), "already ended (or removed: "
                                                            "`removed: true`)"),
                             "202": _json(ref("ActiveJob"), "stopping")}, 404, 409)}
JOB_SIGNAL = {
    "summary": "Signal a running job", "parameters": [JOB_ID],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["signal"], "additionalProperties": False,
        "properties": {"signal": {"oneOf": [STRING, INT]}}}}}},
    "responses": _responses({"202": _json(ref("ActiveJob"))}, 404, 408, 409, 413, 503)}
JOB_LOG = {
    "summary": "A job's output", "parameters": [
        JOB_ID, _query("follow", {"type": "boolean"}, "keep open until the job ends"),
        _query("tail", {"type": "integer", "minimum": 0}, "the last N lines"),
        _query("stream", {"type": "string", "enum": ["stdout", "stderr"]}, "one stream"),
        _query("since", TIMESTAMP, "lines from this time on: Unix seconds, RFC 3339, or a "
                                   "duration ago (10m)"),
        _query("until", TIMESTAMP, "lines before this time (the same forms)"),
        _query("timestamps", {"type": "boolean"}, "each line starts with its RFC 3339 time")],
    "responses": _responses({"200": {"description": "the output", "content": {
        "text/plain": {"schema": STRING}}}}, 404, 429, 503)}
JOB_ATTACH = {
    "summary": "stdin, stdout, stderr, signals and TTY size over a WebSocket (RFC 6455); "
               "docs/API.md has the framing",
    "parameters": [JOB_ID,
                   _query("height", {"type": "integer", "minimum": 1, "maximum": 9999},
                          "the terminal's rows"),
                   _query("width", {"type": "integer", "minimum": 1, "maximum": 9999},
                          "the terminal's columns")],
    "responses": _responses({"101": {"description": "upgraded to a WebSocket"}}, 429)}
JOB_WAIT = {
    "summary": "The job once it has ended, or as it is after `timeout` seconds",
    "parameters": [JOB_ID, _query("timeout", {"type": "number", "minimum": 0, "maximum": 3600},
                                  "seconds to wait (default 60)")],
    "responses": _responses({"200": _json(ref("ActiveJob"))}, 404, 429)}

PATHS = {
    "/healthz": {"get": {
        "summary": "Liveness: the process serves (the one route without a token)",
        "security": [],
        "responses": {"200": _json({"type": "object", "required": ["status"],
                                    "properties": {"status": {"const": "ok"}}})}}},
    "/readyz": {"get": {
        "summary": "Readiness: Docker, etcd, the registration and layer 0 are up",
        "responses": _responses({"200": _json({
            "type": "object", "required": ["status", "checks"],
            "properties": {"status": {"const": "ready"}, "checks": STR_MAP}})}, 503)}},
    "/metrics": {"get": {
        "summary": "Prometheus text format",
        "responses": _responses({"200": {"description": "metrics", "content": {
            "text/plain": {"schema": STRING}}}})}},
    "/openapi.json": {"get": {
        "summary": "This document",
        "responses": _responses({"200": _json({"type": "object"})})}},
    "/host/status": {"get": {"summary": "This agent", "responses": _responses(
        {"200": _json(ref("HostStatus"))})}},
    "/host/leave": {"post": {
        "summary": "This host leaves the cluster for good; the agent then exits",
        "responses": _responses({"202": _json({
            "type": "object", "required": ["host_id", "etcd_member_removed"],
            "properties": {"host_id": ID, "etcd_member_removed": nullable(STRING)}})},
            409, 503)}},
    "/host/jobs": {"get": {
        "summary": "This host's jobs, newest first",
        "parameters": [_query("status", {"type": "string", "enum": STATES}, "only this state")],
        "responses": _responses({"200": _json({"type": "array", "items": ref("ActiveJob")})})}},
    "/host/jobs/{job_id}": {
        "get": JOB_GET,
        "put": {"summary": "Run a job here (idempotent by id)", "parameters": [JOB_ID],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": ref("JobSpec")}}},
                "responses": _responses({"200": _json(ref("ActiveJob"), "the same job, known"),
                                         "202": _json(ref("ActiveJob"), "accepted")},
                                        408, 409, 413, 503)},
        "delete": JOB_DELETE,
    },
    "/host/jobs/{job_id}/signal": {"post": JOB_SIGNAL},
    "/host/jobs/{job_id}/log": {"get": JOB_LOG},
    "/host/jobs/{job_id}/wait": {"get": JOB_WAIT},
    "/host/jobs/{job_id}/attach": {"get": JOB_ATTACH},
    "/host/events": {"get": {
        "summary": "This host's job events: a long-poll, or a stream",
        "parameters": [SINCE, WAIT, STREAM, _query("job_id", STRING, "only this job's")],
        "responses": _responses({"200": EVENTS_OK}, 410, 429)}},
    "/cluster/jobs/{job_id}": {"get": _anywhere(JOB_GET), "delete": _anywhere(JOB_DELETE)},
    "/cluster/jobs/{job_id}/signal": {"post": _anywhere(JOB_SIGNAL)},
    "/cluster/jobs/{job_id}/log": {"get": _anywhere(JOB_LOG)},
    "/cluster/jobs/{job_id}/wait": {"get": _anywhere(JOB_WAIT)},
    "/cluster/jobs/{job_id}/attach": {"get": _anywhere(JOB_ATTACH)},
    "/cluster/hosts/{host_id}/jobs/{job_id}/attach": {"get": dict(
        _anywhere(JOB_ATTACH), summary=JOB_ATTACH["summary"] + ", on the named host (the job "
                                                               "may not be there yet)",
        parameters=[HOST_ID] + JOB_ATTACH["parameters"])},
    "/cluster/leader": {"get": _without_etcd({
        "summary": "The leader, as this agent's view has it",
        "responses": _responses({"200": _json(ref("Leader"))}, 503)})},
    "/cluster/hosts": {"get": _cluster({
        "summary": "Every host, oldest registration first",
        "responses": _responses({"200": _json({"type": "array", "items": ref("Host")})},
                                503)})},
    "/cluster/hosts/{host_id}": {"get": _cluster({
        "summary": "One host", "parameters": [HOST_ID],
        "responses": _responses({"200": _json(ref("Host"))}, 404, 503)})},
    "/cluster/hosts/{host_id}/jobs/{job_id}": {"delete": _cluster({
        "summary": "Stop a job on its host (that host's DELETE /host/jobs/<id> answer)",
        "parameters": [HOST_ID, JOB_ID, _query("timeout", {"type": "number", "minimum": 0,
                                                           "maximum": 3600},
                                               "seconds before SIGKILL")],
        "responses": _responses({"200": _json(ref("ActiveJob")),
                                 "202": _json(ref("ActiveJob"))}, 404, 503)})},
    "/cluster/jobs": {"post": _cluster({
        "summary": "AddJobs: place jobs (exactly once per id)",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": ref("AddJobsRequest")}}},
        "responses": _responses({"200": _json(ref("AddJobsAnswer"))},
                                404, 408, 409, 413, 422, 503)})},
    "/cluster/events": {"get": _cluster({
        "summary": "The cluster's events: a long-poll, or a stream",
        "parameters": [SINCE, WAIT, STREAM],
        "responses": _responses({"200": EVENTS_OK}, 410, 429, 503)})},
}


def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "flynn-host", "version": host.__version__,
                 "description": "The host service's HTTP API. docs/API.md says it in prose; "
                                "every error is {code, message, retry}."},
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "responses": {f"E{status}": _json(ref("Error"), meaning)
                          for status, meaning in ERRORS.items()},
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer",
                                          "description": "with -auth-token-file"}},
        },
        "security": [{"token": []}],
    }


def as_json() -> str:
    return simplejson.dumps(document(), indent=2, sort_keys=True) + "\n"


def install(app: bottle.Bottle):
    text = as_json()

    @app.get("/openapi.json")
    def openapi():
        return bottle.HTTPResponse(text, headers={"Content-Type": JSON_TYPE})

