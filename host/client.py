"""The one HTTP client of the code base: the CLI, schedulers' scripts, the tests, and the agent
itself (forwarding cluster requests to the leader) talk to agents through it.

Errors come back as the project's typed exceptions, built from the JSON error body
(`code`, `message`, `retry`): host.errors.NotFound, Conflict, ... An agent that cannot be reached
raises AgentUnreachable. Every call has a timeout.
"""
from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from typing import Iterator, Optional
from urllib.parse import quote, urlsplit

import requests
import simple_websocket
import simplejson
from simple_websocket.ws import Base as WebSocketBase
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request

from host import errors
from host.auth import bearer, client_token

log = logging.getLogger(__name__)

#: seconds a forwarded request may take (a long-poll's own wait comes on top)
FORWARD_TIMEOUT_S = 35  # an AddJobs request may wait up to 30 s in the leader's queue
#: the header an agent puts on a request it forwards to the leader (its host id): an agent that
#: gets a forwarded request and does not lead answers not_leader instead of forwarding it again,
#: so two agents whose views of the leader differ for a moment never pass a request back and forth
FORWARDED_BY = "X-Flynn-Forwarded-By"

ERROR_CLASSES = {cls.code: cls for cls in (
    errors.ValidationError, errors.NotFound, errors.MethodNotAllowed, errors.Conflict,
    errors.CursorExpired, errors.TooLarge, errors.NoCapacity, errors.Unavailable,
    errors.NotLeader, errors.InternalError, errors.Unauthorized, errors.TooManyRequests,
    errors.RequestTimeout)}


class AgentUnreachable(errors.FlynnError):
    """No answer from the agent (refused, timed out, reset). `extra` has its `addr` and the
    `reason` in a few words ("connection refused"), for a message a person can read."""
    code = "unavailable"
    retry = True


def unreachable_reason(error: BaseException) -> str:
    """Why a request got no answer, in a few words, from the exception chain requests and
    urllib3 wrap around the socket's error."""
    seen, current = [], error
    while current is not None and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    for e in seen:
        if isinstance(e, socket.gaierror):
            return "no such host name"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, ConnectionResetError):
            return "connection reset"
        if isinstance(e, ssl.SSLError):
            return f"TLS: {e.reason or e}"
        if isinstance(e, (socket.timeout, requests.Timeout)):
            return "timed out"
    text = " ".join(str(e) for e in seen)
    for words in ("Connection refused", "Name or service not known", "timed out",
                  "Connection reset", "No route to host", "Network is unreachable"):
        if words in text:
            return words.lower().replace("name or service not known", "no such host name")
    return str(error).split(":")[-1].strip() or type(error).__name__


def error_from_response(response: requests.Response) -> errors.FlynnError:
    """The typed error an agent's 4xx/5xx answer stands for."""
    return error_from_body(response.status_code, response.content, response.url)


def error_from_body(status: int, content: bytes, url: str) -> errors.FlynnError:
    try:
        body = simplejson.loads(content)
        code, message = body["code"], body["message"]
    except (ValueError, KeyError, TypeError):
        text = content[:200].decode("utf-8", "replace")
        return errors.FlynnError(f"HTTP {status} from {url}: {text}")
    cls = ERROR_CLASSES.get(code, errors.FlynnError)
    extra = {k: v for k, v in body.items() if k not in ("code", "message", "retry")}
    error = cls(message, retry=bool(body.get("retry", cls.retry)), **extra)
    error.http_status = status
    return error


def client_tls_ca(tls_ca: Optional[str] = None, environ=None) -> Optional[str]:
    """The CA file a client verifies agents' certificates with: `tls_ca`, else FLYNN_HOST_TLS_CA
    (None: plain HTTP to an address given without a scheme)."""
    environ = os.environ if environ is None else environ
    return tls_ca or environ.get("FLYNN_HOST_TLS_CA", "").strip() or None


def agent_url(addr: str, tls) -> str:
    """`addr` as a base URL: as given when it has a scheme, else https:// when `tls` (a CA file
    to verify with, or True for the system's CAs: the cluster serves TLS), else http://."""
    if "://" in addr:
        return addr.rstrip("/")
    return ("https://" if tls else "http://") + addr


def forward(addr: str, method: str, path: str, query: str, body: bytes, content_type: str,
            forwarded_by: str, token: Optional[str] = None,
            extra_timeout_s: float = 0, tls=None,
            request_id: Optional[str] = None) -> requests.Response:
    """Send a request on to the agent at `addr` as it came (the leader's answer is relayed
    unchanged), saying which agent forwards it, with the cluster's token, over TLS when `tls`
    (as agent_url); NotLeader (503, retry) if it cannot be reached."""
    url = agent_url(addr, tls) + path + (f"?{query}" if query else "")
    headers = forward_headers(forwarded_by, token, request_id, content_type)
    try:
        return requests.request(method, url, data=body or None, headers=headers,
                                timeout=FORWARD_TIMEOUT_S + extra_timeout_s,
                                allow_redirects=False, verify=tls or True)
    except requests.RequestException as e:
        raise errors.NotLeader(f"the leader at {addr} could not be reached: "
                               f"{unreachable_reason(e)}",
                               leader=addr) from e


def forward_headers(forwarded_by: str, token: Optional[str], request_id: Optional[str],
                    content_type: Optional[str]) -> dict:
    """The headers of a request one agent passes on to another: who passes it, the cluster's
    token, the client's request id (the other agent's log lines for it carry the same) and the
    body's type."""
    headers = {FORWARDED_BY: forwarded_by, **bearer(token)}
    if request_id:
        headers["X-Request-Id"] = request_id
    if content_type:
        headers["Content-Type"] = content_type
    return headers


def route_path(*parts: str) -> str:
    """A route path with each id percent-quoted: a `?`, `#` or space in an id given by a user
    reaches the agent inside the path, to get its validation error, instead of starting a query
    or a fragment (WSGI decodes the path, so a `/` still splits it: the CLI refuses such ids)."""
    return "/" + "/".join(quote(str(part), safe="") for part in parts)


class _Client:
    #: seconds an ordinary call may take
    timeout_s = 10.0

    def __init__(self, addr: str, timeout_s: Optional[float] = None,
                 token: Optional[str] = None, tls_ca: Optional[str] = None):
        """`token`: the agent's API token; without one, FLYNN_HOST_TOKEN or the file named by
        FLYNN_HOST_TOKEN_FILE, if set. `tls_ca`: the CA certificate(s) to verify the agent's
        with (or FLYNN_HOST_TLS_CA); an address without a scheme is then reached by https."""
        self.tls_ca = client_tls_ca(tls_ca)
        self.addr = agent_url(addr, self.tls_ca)
        self.timeout_s = timeout_s or self.timeout_s
        self.token = token or client_token()
        # given on every request: a session's own `verify` loses to REQUESTS_CA_BUNDLE
        self.verify = self.tls_ca or True
        self.http = requests.Session()
        self.http.headers.update(bearer(self.token))

    def _request(self, method: str, path: str, *, extra_timeout_s: float = 0,
                 stream: bool = False, **kwargs) -> requests.Response:
        try:
            response = self.http.request(method, self.addr + path, stream=stream,
                                         timeout=self.timeout_s + extra_timeout_s,
                                         verify=self.verify, **kwargs)
        except requests.RequestException as e:
            raise AgentUnreachable(f"no answer from {self.addr}: {e}", addr=self.addr,
                                   reason=unreachable_reason(e)) from e
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs):
        return self._request(method, path, **kwargs).json()

    def _events(self, path: str, since, wait, job_id) -> dict:
        params = {"wait": wait}
        if since is not None:
            params["since"] = since
        if job_id:
            params["job_id"] = job_id
        return self._json("GET", path, params=params, extra_timeout_s=wait)

    def _follow(self, path: str, since, job_id, wait_s: float, max_backoff_s: float,
                on_error=None, on_resume=None) -> Iterator[dict]:
        """Events forever, resuming from the last cursor after any connection error (with
        backoff). CursorExpired propagates: the caller must re-list state. `on_error(error,
        retry_in_s)` hears of each failed ask, `on_resume()` of the first answer after them."""
        cursor, backoff, failing = since, 0.1, False
        while True:
            try:
                page = self._events(path, cursor, wait_s, job_id)
            except errors.FlynnError as e:
                # a server error (an agent stopping, a proxy between) is as passing as no
                # answer at all; a client error (a bad cursor, 410) is the caller's to handle
                if not (isinstance(e, (AgentUnreachable, errors.Unavailable, errors.NotLeader))
                        or getattr(e, "http_status", 0) >= 500):
                    raise
                log.debug("events: %s; resuming from cursor %s in %.1fs", e, cursor, backoff)
                if on_error is not None:
                    on_error(e, backoff)
                failing = True
                time.sleep(backoff)
                backoff = min(backoff * 2, max_backoff_s)
                continue
            if failing and on_resume is not None:
                on_resume()
            backoff, failing = 0.1, False
            yield from page["events"]
            cursor = page["cursor"]


class AttachSocket(WebSocketBase):
    """The client end of an attach WebSocket: simple_websocket's connection (its reader, frames,
    close) with our own connect and handshake, for three reasons:
    - frames that arrive in the same read as the handshake answer are kept. simple_websocket's
      Client takes only the first event and then waits for more bytes; an attach to a job that
      has already ended gets its `exit` and close right behind the answer, and then waited
      forever;
    - the connect and the handshake have a timeout;
    - a refused upgrade raises the agent's typed error from its JSON body (a 404, a 400), not a
      bare status code."""

    def __init__(self, url: str, timeout_s: float, token: Optional[str] = None,
                 tls_ca: Optional[str] = None):
        self.token = token
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        self.host, self.port = parts.hostname, parts.port or (443 if secure else 80)
        self.target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.url = url
        sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        try:
            if secure:
                context = ssl.create_default_context(cafile=tls_ca)
                sock = context.wrap_socket(sock, server_hostname=self.host)
            super().__init__(sock, connection_type=ConnectionType.CLIENT)
        except BaseException:
            sock.close()
            raise

    def handshake(self):
        headers = [(k.encode(), v.encode()) for k, v in bearer(self.token).items()]
        self.sock.sendall(self.ws.send(Request(host=self.host, target=self.target,
                                               extra_headers=headers)))
        rejected, body = None, b""
        while True:
            data = self.sock.recv(self.receive_bytes)
            if not data:
                raise ConnectionError(f"{self.url}: the connection closed during the handshake")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    # the connect's timeout bounded the handshake; receive() has its own
                    self.sock.settimeout(None)
                    self.connected = True
                    return
                if isinstance(event, RejectConnection):
                    rejected = event.status_code
                    if not event.has_body:
                        raise error_from_body(rejected, b"", self.url)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise error_from_body(rejected, body, self.url)

    def _thread(self):
        # first the frames that came in with the handshake answer, already in wsproto's buffer:
        # the reader loop only looks at bytes it reads itself
        self.connected = self._handle_events()
        super()._thread()

    def close(self, reason=None, message=None):
        super().close(reason=reason, message=message)
        self.sock.close()


class Attachment:
    """A job's streams over the attach WebSocket (framing: docs/API.md, "Attach")."""

    def __init__(self, ws):
        self._ws = ws

    def send(self, data: bytes):
        """Our input to the job. Once the session is over (the job ended, and its exit
        message is what receive() gives next) there is nothing to deliver it to: dropped."""
        try:
            self._ws.send(bytes(data))
        except simple_websocket.ConnectionClosed:
            pass

    def close_stdin(self):
        self._control({"type": "eof"})

    def signal(self, signal):
        self._control({"type": "signal", "signal": signal})

    def resize(self, height: int, width: int):
        self._control({"type": "resize", "height": height, "width": width})

    def _control(self, message: dict):
        try:
            self._ws.send(simplejson.dumps(message))
        except simple_websocket.ConnectionClosed:
            pass  # as send(): the session is over

    def receive(self, timeout_s: Optional[float] = None):
        """("stdout" | "stderr", bytes), ("exit", message) or ("error", message); None on a
        timeout. Raises AgentUnreachable when the connection is gone without an exit."""
        try:
            message = self._ws.receive(timeout=timeout_s)
        except simple_websocket.ConnectionClosed as e:
            raise AgentUnreachable(f"the attach connection closed ({e.reason})") from e
        if message is None:
            return None
        if isinstance(message, bytes):
            return ("stdout" if message[0] == 1 else "stderr"), message[1:]
        body = simplejson.loads(message)
        return body["type"], body

    def close(self):
        try:
            self._ws.close()
        except simple_websocket.ConnectionClosed:
            pass


class HostClient(_Client):
    """One agent's own jobs (the host API)."""

    def attach(self, job_id: str, size: Optional[tuple] = None) -> Attachment:
        """Attach to a job's stdin/stdout/stderr; the job may not exist yet (the agent waits,
        bounded, and starts it only once attached). `size` (height, width) sizes its terminal
        as it starts."""
        return self._attach(self._job_path(job_id, "attach"), size)

    def _attach(self, path: str, size: Optional[tuple]) -> Attachment:
        url = self.addr.replace("http", "ws", 1) + path
        if size:
            url += f"?height={size[0]}&width={size[1]}"
        try:
            return Attachment(AttachSocket(url, self.timeout_s, self.token, self.tls_ca))
        except OSError as e:
            raise AgentUnreachable(f"cannot attach through {self.addr}: {e}", addr=self.addr,
                                   reason=unreachable_reason(e)) from e

    def status(self) -> dict:
        return self._json("GET", "/host/status")

    def leave(self) -> dict:
        """The agent leaves the cluster for good (its etcd member removed) and exits."""
        return self._json("POST", "/host/leave", extra_timeout_s=60)

    def jobs(self, status: Optional[str] = None) -> list:
        return self._json("GET", "/host/jobs", params={"status": status} if status else None)

    def _job_path(self, job_id: str, *rest: str) -> str:
        return route_path("host", "jobs", job_id, *rest)

    def job(self, job_id: str) -> dict:
        return self._json("GET", self._job_path(job_id))

    def add_job(self, job_id: str, job: dict) -> tuple:
        """(ActiveJob, created): created is False when the same job was there already."""
        response = self._request("PUT", route_path("host", "jobs", job_id), json=job)
        return response.json(), response.status_code == 202

    def stop_job(self, job_id: str, timeout_s: Optional[float] = None) -> dict:
        params = {"timeout": timeout_s} if timeout_s is not None else None
        return self._json("DELETE", self._job_path(job_id), params=params,
                          extra_timeout_s=timeout_s or 0)

    def remove_job(self, job_id: str, force: bool = False) -> dict:
        """Forget an ended job and its container; with force, kill an active one first (it
        is removed as it ends: `removed` is then false in the answer)."""
        params = {"remove": "true", "force": "true" if force else "false"}
        return self._json("DELETE", self._job_path(job_id), params=params)

    def signal_job(self, job_id: str, signal) -> dict:
        return self._json("POST", self._job_path(job_id, "signal"), json={"signal": signal})

    def wait_job(self, job_id: str, timeout_s: float = 60) -> dict:
        """The job once it has ended, or as it is after `timeout_s` (its status tells)."""
        return self._json("GET", self._job_path(job_id, "wait"), params={"timeout": timeout_s},
                          extra_timeout_s=timeout_s)

    def log(self, job_id: str, follow: bool = False, tail: Optional[int] = None,
            stream: Optional[str] = None, since: Optional[float] = None,
            until: Optional[float] = None, timestamps: bool = False) -> Iterator[bytes]:
        """The job's output as chunks; with follow, until the job ends. `since`/`until`: Unix
        seconds; `timestamps`: each line starts with the time the engine took it."""
        params = {"follow": "true" if follow else "false"}
        if tail is not None:
            params["tail"] = tail
        if stream:
            params["stream"] = stream
        if since is not None:
            params["since"] = f"{since:.6f}"
        if until is not None:
            params["until"] = f"{until:.6f}"
        if timestamps:
            params["timestamps"] = "true"
        response = self._request("GET", self._job_path(job_id, "log"), params=params,
                                 stream=True, extra_timeout_s=3600 if follow else 0)
        try:
            yield from response.iter_content(chunk_size=None)
        except requests.RequestException as e:
            raise AgentUnreachable(f"log stream from {self.addr} broke: {e}", addr=self.addr,
                                   reason=unreachable_reason(e)) from e
        finally:
            response.close()

    def events(self, since: Optional[int] = None, wait: float = 0,
               job_id: Optional[str] = None) -> dict:
        return self._events("/host/events", since, wait, job_id)

    def follow_events(self, since: Optional[int] = None, job_id: Optional[str] = None,
                      wait_s: float = 30, max_backoff_s: float = 5, on_error=None,
                      on_resume=None) -> Iterator[dict]:
        return self._follow("/host/events", since, job_id, wait_s, max_backoff_s, on_error,
                            on_resume)


class ClusterJobs(HostClient):
    """The jobs of every host, through the one agent at `addr` (/cluster/jobs/<id>: it finds
    the job's host and relays): job, stop_job, remove_job, signal_job and log as HostClient's,
    for a job wherever it runs."""

    def _job_path(self, job_id: str, *rest: str) -> str:
        return route_path("cluster", "jobs", job_id, *rest)

    def attach_on(self, host_id: str, job_id: str, size: Optional[tuple] = None) -> Attachment:
        """attach() to a job placed on `host_id` that may not be there yet (`run`)."""
        return self._attach(route_path("cluster", "hosts", host_id, "jobs", job_id, "attach"),
                            size)


class ClusterClient(_Client):
    """The cluster API through any agent (it forwards to the leader). Errors the agent answers
    with `retry: true` (no leader yet, leader unreachable) are retried a bounded number of
    times; an agent that does not answer at all is not (it is down: saying so at once beats
    three seconds of retries, as docker's CLI does)."""
    #: attempts for an error that says retry, with growing pauses between them
    attempts = 5

    def _json(self, method: str, path: str, **kwargs):
        pause = 0.2
        for attempt in range(self.attempts):
            try:
                return super()._json(method, path, **kwargs)
            except errors.FlynnError as e:
                if not e.retry or isinstance(e, AgentUnreachable) or \
                        attempt == self.attempts - 1:
                    raise
                log.debug("%s %s: %s; retrying in %.1fs", method, path, e, pause)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def leader(self) -> dict:
        return self._json("GET", "/cluster/leader")

    def hosts(self) -> list:
        return self._json("GET", "/cluster/hosts")

    def host(self, host_id: str) -> dict:
        return self._json("GET", route_path("cluster", "hosts", host_id))

    def add_jobs(self, jobs: list, host_id: Optional[str] = None) -> list:
        """Place `jobs` (on `host_id`, or where the leader chooses): [{"host_id", "job_id",
        "host_addr"}]."""
        body = {host_id or "jobs": jobs}
        return self._json("POST", "/cluster/jobs", json=body, extra_timeout_s=30)["jobs"]

    def stop_job(self, host_id: str, job_id: str, timeout_s: Optional[float] = None) -> dict:
        params = {"timeout": timeout_s} if timeout_s is not None else None
        return self._json("DELETE", route_path("cluster", "hosts", host_id, "jobs", job_id),
                          params=params,
                          extra_timeout_s=timeout_s or 0)

    def events(self, since: Optional[int] = None, wait: float = 0) -> dict:
        return self._events("/cluster/events", since, wait, None)

    def follow_events(self, since: Optional[int] = None, wait_s: float = 30,
                      max_backoff_s: float = 5, on_error=None,
                      on_resume=None) -> Iterator[dict]:
        return self._follow("/cluster/events", since, None, wait_s, max_backoff_s, on_error,
                            on_resume)
