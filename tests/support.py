"""Shared test helpers: real agent processes, an in-process agent on a fake runtime, and waiting on
a job's state through the agent's own long-poll (event-driven, with a deadline; never a bare sleep).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import gevent
import requests

from host.agent import Agent
from host.api import create_app
from host.config import load_config
from host.runtime.labels import LABEL_HOST_ID
from host.runtime.docker import DockerRuntime
from host.server import ServerLimits, wsgi_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLYNN_HOST = os.path.join(REPO, "bin", "flynn-host")
TEST_IMAGE = os.environ.get("FLYNN_TEST_IMAGE", "flynn-test/busybox:latest")
#: an image that cannot exist: the pull goes to a closed port on loopback, never off the machine
MISSING_IMAGE = "127.0.0.1:1/flynn-test/missing:latest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=10.0, what="the condition"):
    """For effects that publish no event (a container removed by retention): check, yield,
    check again, until a deadline; fails with `what` named."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        gevent.sleep(0.05)


def require_docker():
    """Fail (not skip) when the engine is missing: the suite must be run with bin/test, which
    provisions dockerd and the test image."""
    runtime = DockerRuntime()
    try:
        runtime.ping()
        runtime._client().inspect_image(TEST_IMAGE)
    except Exception as e:
        raise AssertionError(
            f"Docker with the image {TEST_IMAGE} is required and was not usable "
            f"(DOCKER_HOST={os.environ.get('DOCKER_HOST')!r}): {e}. Run the suite with bin/test, "
            "which provisions both.") from e
    return runtime


def remove_host_containers(runtime, host_id: str):
    for container in runtime.list({LABEL_HOST_ID: host_id}):
        runtime.remove(container.id)


def job_body(cmd, **config) -> dict:
    return {"config": dict({"image": TEST_IMAGE, "cmd": cmd}, **config)}


class AgentClient:
    """A thin HTTP helper for tests (the real client library is host.client, a later issue)."""

    def __init__(self, base_url: str, token: str = None, verify=True):
        self.url = base_url
        self.verify = verify  # on each request: a session's loses to REQUESTS_CA_BUNDLE
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def get(self, path, **kw):
        return self.http.get(self.url + path, timeout=kw.pop("timeout", 30),
                             verify=self.verify, **kw)

    def put(self, path, **kw):
        return self.http.put(self.url + path, timeout=kw.pop("timeout", 30),
                             verify=self.verify, **kw)

    def post(self, path, **kw):
        return self.http.post(self.url + path, timeout=kw.pop("timeout", 30),
                             verify=self.verify, **kw)

    def delete(self, path, **kw):
        return self.http.delete(self.url + path, timeout=kw.pop("timeout", 30),
                             verify=self.verify, **kw)

    def put_job(self, job_id, body) -> dict:
        resp = self.put(f"/host/jobs/{job_id}", json=body)
        assert resp.status_code in (200, 202), resp.text
        return resp.json()

    def job(self, job_id) -> dict:
        resp = self.get(f"/host/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def find_job(self, job_id):
        """The job, or None while this host does not have it (yet)."""
        resp = self.get(f"/host/jobs/{job_id}")
        assert resp.status_code in (200, 404), resp.text
        return resp.json() if resp.status_code == 200 else {"status": None}

    def wait_for_output(self, job_id, needle: bytes, timeout=15.0):
        """Follow the job's log until `needle` appears: a job says it is ready (e.g. its shell
        installed a trap) instead of the test sleeping and hoping."""
        seen = b""
        with gevent.Timeout(timeout, AssertionError(f"{needle!r} not in the output of {job_id} "
                                                    f"within {timeout}s")):
            with self.get(f"/host/jobs/{job_id}/log", params={"follow": "true"}, stream=True,
                          timeout=timeout) as resp:
                assert resp.status_code == 200, resp.text
                for chunk in resp.iter_content(chunk_size=None):
                    seen += chunk
                    if needle in seen:
                        return
        raise AssertionError(f"{job_id} ended without printing {needle!r}: {seen!r}")

    def wait_status(self, job_id, statuses, timeout=30.0) -> dict:
        """Follow the agent's events until the job is in one of `statuses` (the job may arrive
        on this host meanwhile, e.g. from the leader's assignment)."""
        statuses = {statuses} if isinstance(statuses, str) else set(statuses)
        deadline = time.monotonic() + timeout
        cursor = self.get("/host/events").json()["cursor"]
        job = self.find_job(job_id)
        while job["status"] not in statuses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"job {job_id} is {job['status']}, not {statuses}, "
                                     f"after {timeout}s: {job}")
            resp = self.get("/host/events", params={"since": cursor, "job_id": job_id,
                                                    "wait": min(remaining, 10)})
            assert resp.status_code == 200, resp.text
            cursor = resp.json()["cursor"]
            job = self.find_job(job_id)
        return job


class TestCA:
    """A certificate authority of the test's own (openssl), issuing server certificates for IP
    addresses, in a temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="flynn-test-ca-")
        self.cert, self.key = (os.path.join(self.dir, name) for name in ("ca.pem", "ca.key"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=flynn-host test CA", "-keyout", self.key, "-out", self.cert],
                       check=True, capture_output=True)

    def issue(self, ip: str, name: str = None) -> tuple:
        """(certificate file, key file) for `ip` (and 127.0.0.1, localhost)."""
        name = name or f"agent-{ip}"
        cert, key, csr = (os.path.join(self.dir, f"{name}.{ext}") for ext in ("pem", "key", "csr"))
        ext = os.path.join(self.dir, f"{name}.ext")
        with open(ext, "w") as f:
            f.write(f"subjectAltName=IP:{ip},IP:127.0.0.1,DNS:localhost\n")
        subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={ip}",
                        "-keyout", key, "-out", csr], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey",
                        self.key, "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", cert],
                       check=True, capture_output=True)
        return cert, key

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class AgentProcess:
    """bin/flynn-host as a real process on 127.0.0.1:<free port> with its own state dir."""

    def __init__(self, host_id: str, state_dir: str = None, args=(), env=None, ip="127.0.0.1",
                 port: int = None, token_file: str = None, tls: "TestCA" = None):
        """`token_file`: the agent asks for that token, and self.client sends it. `tls`: the
        agent serves HTTPS with a certificate of that CA for `ip`, and self.client verifies it."""
        self.host_id = host_id
        self.ip = ip
        self.port = port or free_port()
        self.state_dir = state_dir or tempfile.mkdtemp(prefix=f"flynn-{host_id}-")
        self.args = list(args) + (["-auth-token-file", token_file] if token_file else [])
        if tls is not None:
            cert, key = tls.issue(ip)
            self.args += ["-tls-cert", cert, "-tls-key", key, "-tls-ca", tls.cert]
        token = open(token_file).read().strip() if token_file else None
        # a cluster of its own unless the test shares a prefix between agents
        self.env = {**os.environ, "FLYNN_ETCD_PREFIX": f"/flynn-test/{host_id}", **(env or {})}
        self.proc = None
        self.log_path = os.path.join(self.state_dir, "agent.log")
        scheme = "https" if tls is not None else "http"
        self.client = AgentClient(f"{scheme}://{ip}:{self.port}", token,
                                  verify=tls.cert if tls is not None else True)

    def start(self, extra_args=(), wait=True) -> "AgentProcess":
        cmd = [sys.executable, FLYNN_HOST, "-id", self.host_id, "-state-dir", self.state_dir,
               "-listen", f"{self.ip}:{self.port}", "-external", self.ip,
               "-log-level", "debug", *self.args, *extra_args]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status = self.client.get("/host/status", timeout=2)
                if status.status_code == 200 and status.json()["docker"] == "ok":
                    return
            except requests.ConnectionError:
                pass
            gevent.sleep(0.05)
        raise AssertionError(f"agent not ready after {timeout}s:\n{self.log()}")

    def log(self, tail: int = 6000) -> str:
        """The end of the agent's log (all of it with tail=0)."""
        with open(self.log_path, errors="replace") as f:
            return f.read()[-tail:]

    def stop(self, sig=signal.SIGTERM, timeout=15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self):
        return self.stop(signal.SIGKILL)

    def cleanup(self):
        self.stop()
        keep = os.environ.get("FLYNN_TEST_KEEP_LOGS")  # a directory: the logs outlive the test
        if keep and os.path.exists(self.log_path):
            os.makedirs(keep, exist_ok=True)
            shutil.copy(self.log_path, os.path.join(keep, f"{self.host_id}-{time.time():.0f}.log"))
        shutil.rmtree(self.state_dir, ignore_errors=True)


class DockerAgentTestCase(unittest.TestCase):
    """One real agent process per test class, against the real engine; its containers are
    removed afterwards."""
    host_id = None
    agent_args = ()

    @classmethod
    def setUpClass(cls):
        cls.runtime = require_docker()
        cls.host_id = cls.host_id or f"t{cls.__name__.lower()[:40]}{os.getpid()}"
        remove_host_containers(cls.runtime, cls.host_id)
        cls.agent = AgentProcess(cls.host_id, args=cls.agent_args).start()
        cls.client = cls.agent.client

    @classmethod
    def tearDownClass(cls):
        cls.agent.cleanup()
        remove_host_containers(cls.runtime, cls.host_id)


class InProcessAgent:
    """An Agent with the given runtime, served in this process on a free loopback port."""

    def __init__(self, runtime, flags=(), clock=None, state_dir=None, token=None):
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="flynn-inproc-")
        argv = ["-id", "inproc", "-state-dir", self.state_dir, "-external", "127.0.0.1",
                "-memory-mb", "1000", "-cpu-shares", "1024", "-ports", "30000-30099", *flags]
        self.config = load_config(argv, environ={})
        self.agent = Agent(self.config, runtime, clock)
        self.agent.start()
        wait_until(lambda: self.agent.supervisor.events_connected, 5, "following runtime events")
        self.server = wsgi_server(create_app(self.agent), "127.0.0.1", 0,
                                  ServerLimits.of(self.config))
        self.client = AgentClient(f"http://127.0.0.1:{self.server.server_port}", token)
        self.stopped = False

    def stop(self):
        """Stop serving and stop the agent (its jobs stay in the runtime)."""
        if not self.stopped:
            self.stopped = True
            self.server.stop(timeout=1)
            self.agent.stop()

    def close(self):
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)


def raw_attach(base_url: str, job_id: str, timeout_s: float = 10.0, stall_s: float = 0) -> tuple:
    """An attach by hand over a bare socket, to see exactly what the agent writes: the frames it
    sends, then, after our close answers its close, whatever else came before the connection
    ended. Returns (status line, [(opcode, payload)], trailing bytes that are not a frame).
    `stall_s`: a slow reader, with a small receive buffer, reading nothing for that long."""
    host, port = base_url.split("://", 1)[1].rsplit(":", 1)
    with socket.socket() as sock:
        if stall_s:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(timeout_s)
        sock.connect((host, int(port)))
        sock.sendall(f"GET /host/jobs/{job_id}/attach HTTP/1.1\r\nHost: {host}\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        gevent.sleep(stall_s)
        data, answered_close = b"", False
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            frames, trailing = _parse_frames(rest)
            if not answered_close and any(opcode == 8 for opcode, _ in frames):
                # a masked close frame (mask of zeros), as a client must send
                sock.sendall(bytes([0x88, 0x80, 0, 0, 0, 0]))
                answered_close = True
    head, _, rest = data.partition(b"\r\n\r\n")
    frames, trailing = _parse_frames(rest)
    return head.split(b"\r\n", 1)[0].decode(), frames, trailing


def _parse_frames(data: bytes) -> tuple:
    """Unmasked server frames, and the bytes after the last whole frame (or after a close)."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, length, header = data[at] & 0x0F, data[at + 1] & 0x7F, 2
        if length == 126:
            length, header = int.from_bytes(data[at + 2:at + 4], "big"), 4
        elif length == 127:
            length, header = int.from_bytes(data[at + 2:at + 10], "big"), 10
        if at + header + length > len(data) or data[at + 1] & 0x80:
            break  # incomplete, or not a server frame at all
        frames.append((opcode, data[at + header:at + header + length]))
        at += header + length
        if opcode == 8:
            break
    return frames, data[at:]
