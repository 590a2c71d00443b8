"""The host API (docs/API.md, "Host API"): this agent's own jobs, their logs, and its events."""
from __future__ import annotations

import signal as signals

import bottle

from host import errors
from host.api.events import events_response
from host.api.streams import UntilClientLeaves
from host.api.http import (bool_param, checked_id, choice_param, float_param, int_param,
                           json_body, moment_param, read_json)
from host.errors import ValidationError
from host.jobspec import check_limits, parse_job
from host.runtime import STDERR, STDOUT
from host.types import ALL_STATES

#: longest a stop may wait before SIGKILL, seconds
MAX_STOP_TIMEOUT_S = 3600.0
#: longest one GET .../wait holds the request, seconds (a client asks again)
MAX_WAIT_JOB_S = 3600.0


def install(app: bottle.Bottle, agent):
    table = agent.table
    supervisor = agent.supervisor

    @app.get("/host/status")
    def status():
        return json_body(agent.status())

    @app.post("/host/leave")
    def leave():
        return json_body(agent.leave(), status=202)

    @app.get("/host/jobs")
    def list_jobs():
        wanted = choice_param(bottle.request.query, "status", ALL_STATES)
        return json_body([j.to_dict() for j in table.list(wanted)])

    @app.get("/host/jobs/<job_id>")
    def get_job(job_id):
        return json_body(table.get(job_id).to_dict())

    @app.delete("/host/jobs/<job_id>")
    def stop_job(job_id):
        query = bottle.request.query
        if bool_param(query, "remove"):
            job, removed = supervisor.remove(job_id, force=bool_param(query, "force"))
            return json_body(dict(job.to_dict(), removed=removed), status=200 if removed else 202)
        timeout = float_param(query, "timeout", 10.0, 0, MAX_STOP_TIMEOUT_S)
        job, already_final = supervisor.stop(job_id, timeout)
        return json_body(job.to_dict(), status=200 if already_final else 202)

    @app.post("/host/jobs/<job_id>/signal")
    def signal_job(job_id):
        body = read_json(agent.config.max_body_bytes)
        if not isinstance(body, dict) or set(body) != {"signal"}:
            raise ValidationError('body: must be {"signal": NAME or NUMBER}')
        job = supervisor.signal(job_id, parse_signal(body["signal"]))
        return json_body(job.to_dict(), status=202)

    @app.get("/host/jobs/<job_id>/log")
    def job_log(job_id):
        job = table.get(job_id)
        query = bottle.request.query
        follow = bool_param(query, "follow")
        tail = int_param(query, "tail", None, 0, 1 << 31)
        which = choice_param(query, "stream", ("stdout", "stderr"))
        since, until = moment_param(query, "since"), moment_param(query, "until")
        timestamps = bool_param(query, "timestamps")
        if follow:
            job = agent.wait_until_started(job_id)
        if not job.container_id:
            return bottle.HTTPResponse(b"", headers={"Content-Type": "text/plain"})
        chunks = agent.runtime.logs(job.container_id, stdout=which in (None, "stdout"),
                                    stderr=which in (None, "stderr"), follow=follow, tail=tail,
                                    tty=job.job.config.tty, since=since, until=until,
                                    timestamps=timestamps)

        environ = bottle.request.environ
        if follow:
            body = app.waiters.holding(environ, "log_follow",
                                       UntilClientLeaves(_output(chunks), environ))
        else:
            body = _output(chunks)
        return bottle.HTTPResponse(body, headers={"Content-Type": "text/plain",
                                                  "X-Content-Type-Options": "nosniff"})

    @app.get("/host/jobs/<job_id>/wait")
    def wait_job(job_id):
        """The job once it has ended (`docker wait`), or as it is after `timeout` seconds: the
        client sees a status not final yet and asks again. Woken by the job's events."""
        timeout = float_param(bottle.request.query, "timeout", 60.0, 0, MAX_WAIT_JOB_S)
        table.get(job_id)  # 404 at once for a job that is not here
        with app.waiters.held(bottle.request.environ, "longpoll"):
            job = agent.wait_until_final(job_id, timeout)
        if job is None:  # removed meanwhile (rm -f): ended and gone
            raise errors.NotFound(f"job {job_id!r} was removed while waited for")
        return json_body(job.to_dict())

    @app.get("/host/events")
    def events():
        # normally answered by AgentApp's fast lane before Bottle routes; kept as the route so
        # the router knows the path (405 for other methods) and for apps served without it
        status, content_type, body = events_response(table.events, bottle.request.query,
                                                     bottle.request.environ, app.waiters)
        return bottle.HTTPResponse(body, status, headers={"Content-Type": content_type})

    # an id with a slash never reaches the routes above; name the problem instead of "no route"
    @app.put("/host/jobs/<job_id:path>")
    def put_job(job_id):
        job = parse_job(read_json(agent.config.max_body_bytes), checked_id("job id", job_id))
        check_limits(job, agent.config.job_limits)
        active, created = supervisor.submit(job)
        return json_body(active.to_dict(), status=202 if created else 200)

    # the cluster's job routes (host/api/cluster_jobs.py) serve this host's own jobs with these
    return {"get": get_job, "delete": stop_job, "signal": signal_job, "log": job_log,
            "wait": wait_job}


def _output(chunks):
    try:
        for stream, data in chunks:
            if stream in (STDOUT, STDERR):
                yield data
    except errors.FlynnError:
        return  # the engine went away mid-stream; the client sees the output end
    finally:
        chunks.close()


def parse_signal(value) -> str:
    """A signal name ("HUP", "SIGHUP") or number, checked against this system's signals."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return signals.Signals(value).name
        except ValueError:
            raise ValidationError(f"signal: unknown signal number {value}") from None
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name in signals.Signals.__members__:
            return name
        if value.strip().isdigit():
            return parse_signal(int(value))
        raise ValidationError(f"signal: unknown signal {value!r}")
    raise ValidationError("signal: must be a name such as \"HUP\" or a number")
