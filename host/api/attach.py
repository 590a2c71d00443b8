"""`/host/jobs/<id>/attach`: a job's stdin, stdout and stderr, signals and TTY size over one
WebSocket (RFC 6455) connection. The framing is in docs/API.md ("Attach").

An attach may be opened before the job exists (it waits, bounded); the host then starts the job
only once the attach holds the container's streams, so no output is lost even for a job that
exits at once. Works under bin/flynn-host (gevent's pywsgi) and gunicorn's gevent worker.
"""
from __future__ import annotations

import collections
import logging
import time

import bottle
import gevent
import simple_websocket
import simplejson
from wsproto import ConnectionType
from wsproto.utilities import RemoteProtocolError

from host import errors
from host.api.http import checked_id, int_param
from host.api.host import parse_signal
from host.runtime import STDERR, STDOUT
from host.server import SOCKET, UPGRADED, client_socket
from host.types import FINAL_STATES, RUNNING

log = logging.getLogger(__name__)

#: seconds an attach waits for its job to appear, and for the container to be created
ATTACH_WAIT_S = 30.0

#: seconds the agent waits for a client to answer its WebSocket close
CLOSE_WAIT_S = 2.0
#: bytes of one message from the client (stdin, controls): over it, the attach is closed with
#: 1009 (message too big)
MAX_MESSAGE_BYTES = 1 << 20


class _SendAll:
    """The connection as the WebSocket uses it, with send() meaning sendall(): the library's
    send() writes what one call takes, so output to a slow client lost the rest of a frame."""

    def __init__(self, sock):
        self._sock = sock

    def send(self, data) -> int:
        self._sock.sendall(data)
        return len(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _WebSocket(simple_websocket.Server):
    """simple_websocket's server on a connection we hand it (it otherwise digs the socket out of
    the environ itself, and writes to it with send())."""

    def __init__(self, environ, sock, **kwargs):
        self.environ, self.subprotocols, self.mode = environ, [], "flynn"
        simple_websocket.ws.Base.__init__(self, _SendAll(sock),
                                          connection_type=ConnectionType.SERVER, **kwargs)


def _connection(environ):
    """The request's connection, for the WebSocket to own. Under pywsgi a duplicate (the server
    closes its own; a TLS connection cannot be duplicated, and is used as it is). No timeout:
    an attached terminal may be idle for hours."""
    sock = client_socket(environ)
    if sock is None:
        raise errors.InternalError("attach: this server does not expose its connections")
    if environ.get(SOCKET) is not None:
        try:
            sock = sock.dup()
        except NotImplementedError:
            pass
    sock.settimeout(None)
    return sock


def install(app: bottle.Bottle, agent):
    attached = collections.Counter()  # job id -> attach sessions open
    per_job = agent.config.max_attaches_per_job

    @app.get("/host/jobs/<job_id>/attach")
    def attach(job_id):
        environ = bottle.request.environ
        if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
            raise errors.ValidationError("attach needs a WebSocket upgrade (RFC 6455)")
        checked_id("job id", job_id)
        query = bottle.request.query
        size = (int_param(query, "height", None, 1, 9999), int_param(query, "width", None, 1, 9999))
        if attached[job_id] >= per_job:
            raise errors.TooManyRequests(f"job {job_id!r} has {attached[job_id]} attach sessions "
                                         f"open, the most it may (-max-attaches-per-job "
                                         f"{per_job})")
        with app.waiters.held(environ, "attach"):
            attached[job_id] += 1
            try:
                return _serve(agent, environ, job_id, size)
            finally:
                attached[job_id] -= 1
                if attached[job_id] <= 0:
                    del attached[job_id]
    return attach  # host/api/attach_relay.py attaches this host's own jobs with it


def _serve(agent, environ, job_id: str, size: tuple):
    """The attach session on this request's connection, once upgraded."""
    slot = agent.supervisor.reserve_attach(job_id)
    if all(size):
        slot.size = size  # the terminal is sized right as the job starts
    try:
        ws = upgrade(environ)
        try:
            _session(agent, job_id, slot, ws)
        except simple_websocket.ConnectionClosed:
            pass  # the client went away
        except errors.FlynnError as e:
            _send_json(ws, dict(e.to_dict(), type="error"))
        except Exception:
            log.exception("job %s: attach failed", job_id)
            error = errors.InternalError("internal error (logged by the agent)")
            _send_json(ws, dict(error.to_dict(), type="error"))
        try:
            ws.close()
        except simple_websocket.ConnectionClosed:
            pass
        # the closing handshake: the client answers our close, then the connection ends;
        # returning at once would let the server close the socket under that answer
        ws.thread.join(CLOSE_WAIT_S)
    finally:
        agent.supervisor.release_attach(job_id)
    # never written (see AgentApp.__call__); the access log shows the switch
    return bottle.HTTPResponse(status=101)


def upgrade(environ) -> "_WebSocket":
    """The request's connection as the server end of a WebSocket, the handshake answered; a
    ValidationError (400) for an upgrade that is not a valid one."""
    # no permessage-deflate: a small compressed frame inflates, inside the WebSocket library
    # and before any size check, into hundreds of megabytes. Without the client's offer, the
    # answer names no extension
    environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    sock = _connection(environ)
    try:
        ws = _WebSocket(environ, sock, max_message_size=MAX_MESSAGE_BYTES)
    except RemoteProtocolError as e:
        if sock is not client_socket(environ):  # our duplicate; the 400 goes on the other
            sock.close()
        raise errors.ValidationError(f"attach: not a valid WebSocket upgrade: {e}") from None
    environ[UPGRADED] = True
    return ws


def _send_json(ws, message: dict):
    try:
        ws.send(simplejson.dumps(message))
    except simple_websocket.ConnectionClosed:
        pass


def _while_connected(ws, wait_step) -> bool:
    """Repeat `wait_step(seconds)` (True when what it waits for came) for up to ATTACH_WAIT_S,
    but only while the client is still there: one that leaves while its attach waits for the
    job frees its place within a second, not after the whole wait."""
    deadline = time.monotonic() + ATTACH_WAIT_S
    while ws.connected:
        remaining = deadline - time.monotonic()
        if wait_step(min(1.0, max(remaining, 0))) or remaining <= 0:
            return True
    raise simple_websocket.ConnectionClosed()


def _wait_for_job(agent, job_id: str, ws):
    job = None

    def appeared(seconds: float) -> bool:
        nonlocal job
        job = agent.wait_for_job(job_id, lambda found: found is not None, seconds)
        return job is not None
    _while_connected(ws, appeared)
    if job is None:
        raise errors.NotFound(f"no job {job_id!r} appeared within {ATTACH_WAIT_S:g}s")
    return job


def _session(agent, job_id: str, slot, ws):
    job = _wait_for_job(agent, job_id, ws)
    if job.status in FINAL_STATES:
        _send_json(ws, _exit_message(job))
        return
    def created_or_ended(seconds: float) -> bool:
        # a job that fails before it has a container (an image it cannot pull) ends here
        if slot.created.wait(min(seconds, 0.2)):
            return True
        found = agent.table.find(job_id)
        return found is None or found.is_final
    _while_connected(ws, created_or_ended)
    job = agent.table.find(job_id)
    if job is None:
        raise errors.NotFound(f"job {job_id!r} was removed")
    if job.status in FINAL_STATES and not slot.created.is_set():
        _send_json(ws, _exit_message(job))
        return
    if not slot.created.is_set() and not job.container_id:
        raise errors.Conflict(f"job {job_id!r} has no container yet; try again")
    attachment = agent.runtime.attach(job.container_id, job.job.config.tty)
    slot.attached.set()
    if slot.size:
        _apply_size(agent, job_id, slot)  # the job may be running already
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
                _control(agent, job_id, slot, attachment, message)
        output.get()
    finally:
        output.kill()
        attachment.close()


def _control(agent, job_id: str, slot, attachment, text: str):
    try:
        message = simplejson.loads(text)
        kind = message["type"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise errors.ValidationError(
            f"attach: not a control message: {text[:100]!r}") from None
    if kind == "eof":
        attachment.close_stdin()
    elif kind == "signal":
        agent.supervisor.signal(job_id, parse_signal(message.get("signal")))
    elif kind == "resize":
        height, width = message.get("height"), message.get("width")
        if not all(isinstance(v, int) and 0 < v < 10000 for v in (height, width)):
            raise errors.ValidationError("attach: resize needs integer height and width")
        slot.size = (height, width)
        _apply_size(agent, job_id, slot)
    else:
        raise errors.ValidationError(f"attach: unknown message type {kind!r}")


def _apply_size(agent, job_id: str, slot):
    """Size a TTY job's terminal to `slot.size`. A running job at once, before the next message
    is read, so stdin sent after a resize meets the new size. A job still starting: the
    supervisor applies `slot.size` right after the start, but may have looked just before it
    was set, so it is applied again once the job runs."""
    job = agent.table.get(job_id)
    if not job.job.config.tty:
        return  # no terminal to size
    if job.status == RUNNING:
        agent.supervisor.size_terminal(job.container_id, slot.size)
    else:
        gevent.spawn(_size_once_started, agent, job_id, slot)


def _size_once_started(agent, job_id: str, slot):
    job = agent.wait_until_started(job_id, ATTACH_WAIT_S)
    if job is not None and job.status == RUNNING:
        agent.supervisor.size_terminal(job.container_id, slot.size)


def _pump_output(agent, job_id: str, attachment, ws):
    while True:
        chunk = attachment.read()
        if chunk is None:
            break
        stream, data = chunk
        if stream in (STDOUT, STDERR):
            ws.send(bytes([stream]) + data)
    job = agent.wait_until_final(job_id, ATTACH_WAIT_S)
    _send_json(ws, _exit_message(job))


def _exit_message(job) -> dict:
    return {"type": "exit", "status": job.exit_status, "error": job.error, "job": job.to_dict()}
