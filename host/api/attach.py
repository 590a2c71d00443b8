"""`/host/jobs/<id>/attach`: a job's stdin, stdout and stderr, signals and TTY size over one
WebSocket (RFC 6455) connection. The framing is in docs/API.md ("Attach").

An attach may be opened before the job exists (it waits, bounded); the host then starts the job
only once the attach holds the container's streams, so no output is lost even for a job that
exits at once. Works under bin/flynn-host (gevent's pywsgi) and gunicorn's gevent worker.
"""
from __future__ import annotations

import logging

import bottle
import gevent
import simple_websocket
import simplejson

from host import errors
from host.api.http import int_param
from host.api.host import parse_signal
from host.runtime import STDERR, STDOUT
from host.types import FINAL_STATES, id_problem

log = logging.getLogger(__name__)

#: seconds an attach waits for its job to appear, and for the container to be created
ATTACH_WAIT_S = 30.0

#: environ key set once a request's connection has become a WebSocket (see AgentApp.__call__)
UPGRADED = "flynn.upgraded"


def install(app: bottle.Bottle, agent):
    @app.get("/host/jobs/<job_id>/attach")
    def attach(job_id):
        environ = bottle.request.environ
        if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
            raise errors.ValidationError("attach needs a WebSocket upgrade (RFC 6455)")
        problem = id_problem(job_id)
        if problem:
            raise errors.ValidationError(f"job id: {problem}")
        query = bottle.request.query
        size = (int_param(query, "height", None, 1, 9999), int_param(query, "width", None, 1, 9999))
        slot = agent.supervisor.reserve_attach(job_id)
        if all(size):
            slot.size = size  # the terminal is sized right as the job starts
        try:
            ws = simple_websocket.Server(environ)
            environ[UPGRADED] = True
            try:
                _session(agent, job_id, slot, ws)
            except simple_websocket.ConnectionClosed:
                pass
            except errors.FlynnError as e:
                _send_json(ws, dict(e.to_dict(), type="error"))
                ws.close()
        finally:
            agent.supervisor.release_attach(job_id)
        return bottle.HTTPResponse(status=200)


def _send_json(ws, message: dict):
    try:
        ws.send(simplejson.dumps(message))
    except simple_websocket.ConnectionClosed:
        pass


def _wait_for_job(agent, job_id: str):
    job = agent.wait_for_job(job_id, lambda found: found is not None, ATTACH_WAIT_S)
    if job is None:
        raise errors.NotFound(f"no job {job_id!r} appeared within {ATTACH_WAIT_S:g}s")
    return job


def _session(agent, job_id: str, slot, ws):
    job = _wait_for_job(agent, job_id)
    if job.status in FINAL_STATES:
        _send_json(ws, {"type": "exit", "status": job.exit_status, "job": job.to_dict()})
        ws.close()
        return
    if not slot.created.wait(ATTACH_WAIT_S) and not agent.table.get(job_id).container_id:
        raise errors.Conflict(f"job {job_id!r} has no container yet; try again")
    job = agent.table.get(job_id)
    attachment = agent.runtime.attach(job.container_id, job.job.config.tty)
    slot.attached.set()
    log.info("job %s: attached", job_id)
    output = gevent.spawn(_pump_output, agent, job_id, attachment, ws)
    try:
        while not output.ready():
            message = ws.receive(timeout=1)
            if message is None:
                continue
            if isinstance(message, bytes):
                attachment.write(message)
            else:
                _control(agent, job_id, attachment, message)
        output.get()
    finally:
        output.kill()
        attachment.close()


def _control(agent, job_id: str, attachment, text: str):
    try:
        message = simplejson.loads(text)
        kind = message["type"]
    except (ValueError, KeyError, TypeError):
        raise errors.ValidationError(f"attach: not a control message: {text[:100]!r}")
    job = agent.table.get(job_id)
    if kind == "eof":
        attachment.close_stdin()
    elif kind == "signal":
        agent.supervisor.signal(job_id, parse_signal(message.get("signal")))
    elif kind == "resize":
        height, width = message.get("height"), message.get("width")
        if not all(isinstance(v, int) and 0 < v < 10000 for v in (height, width)):
            raise errors.ValidationError("attach: resize needs integer height and width")
        # the first size usually comes before the container has started: the supervisor applies
        # it right after the start, and this applies it once the job shows as running
        agent.supervisor.reserve_attach(job_id).size = (height, width)
        gevent.spawn(_resize_once_started, agent, job_id, height, width)
    else:
        raise errors.ValidationError(f"attach: unknown message type {kind!r}")


def _resize_once_started(agent, job_id: str, height: int, width: int):
    """Size the job's terminal once it runs. Done twice: right after a start, the engine (Docker
    20.10, no create-time console size before API 1.42) may still set its own initial size over
    ours, as seen with `stty size` printing nothing."""
    job = agent.wait_until_started(job_id, ATTACH_WAIT_S)
    for delay_s in (0, 0.5):
        gevent.sleep(delay_s)
        job = agent.table.get(job_id)
        if job.status != "running":
            return
        try:
            agent.runtime.resize(job.container_id, height, width)
        except errors.FlynnError as e:
            log.debug("job %s: resize failed: %s", job_id, e)


def _pump_output(agent, job_id: str, attachment, ws):
    while True:
        chunk = attachment.read()
        if chunk is None:
            break
        stream, data = chunk
        if stream in (STDOUT, STDERR):
            ws.send(bytes([stream]) + data)
    job = agent.wait_until_final(job_id, ATTACH_WAIT_S)
    _send_json(ws, {"type": "exit", "status": job.exit_status, "error": job.error,
                    "job": job.to_dict()})
    ws.close()
