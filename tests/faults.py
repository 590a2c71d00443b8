"""Fault injection for the fault suite: a cuttable Docker socket, a misbehaving etcd in front of a
real one, a Docker engine of our own to stop, kill and restart, and a real etcd cluster whose
members can be killed. Everything is gevent-friendly (the tests run monkey-patched) and every
process or listener a helper starts is stopped by its close().

What python-etcd 0.4.5 (urllib3 2.8, gevent) raises through EtcdFaultProxy, measured with
`etcd.Client(host=IP, port=PORT, read_timeout=T)` (one peer, so allow_reconnect=False, as
host/discovery/etcd.py builds it), for read(), write() and a watch (read(key, wait=True)) alike:

    pass_through()               works; an idle watch ends in EtcdWatchTimedOut after T (etcd
                                 sent its headers at once, the body timed out)
    cut()                        EtcdConnectionFailed at once (cause: urllib3 MaxRetryError,
                                 reason NewConnectionError: connection refused)
    answer_errors(100)           EtcdKeyNotFound (so does any 404, whatever its errorCode)
    answer_errors(101 / 105)     EtcdCompareFailed / EtcdAlreadyExist
    answer_errors(104 / 107)     EtcdNotDir / EtcdRootReadOnly
    answer_errors(110)           EtcdInsufficientPermissions (so does any 401)
    answer_errors(300 / 500)     the base EtcdException: python-etcd has no class for them
    answer_errors(301)           EtcdLeaderElectionInProgress
    answer_errors(400 / 401)     EtcdWatcherCleared / EtcdEventIndexCleared
    answer_bad_gateway()         EtcdException, message "Bad response : bad gateway"
    hang()                       EtcdConnectionFailed after 4 x T (cause: MaxRetryError, reason
                                 ReadTimeoutError): urllib3 retries GET, PUT and DELETE three
                                 times, so a write is sent 4 times (stats show 4 requests); a POST
                                 (append=True) fails after 1 x T (cause: ReadTimeoutError). A
                                 watch gets EtcdConnectionFailed too, not EtcdWatchTimedOut.
    any switch under an open     EtcdConnectionFailed at once (cause: urllib3 ProtocolError,
    watch                        "IncompleteRead(0 bytes read)")

Real etcd, for comparison: while a 3-member cluster elects a new leader, every write fails with
HTTP 500, errorCode 300, cause "etcdserver: request timed out[, possibly due to previous leader
failure]", index 0 - but only after 7 s (etcd's request timeout), so a client with a shorter
timeout sees a read timeout instead (see EtcdCluster).
"""
from __future__ import annotations

import collections
import ctypes
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlparse

import docker
import gevent
import requests
from gevent import socket
from gevent.server import StreamServer

from host.layer0.process import etcd_binary


def _free_ports(ip: str, count: int = 1) -> list:
    """Distinct free ports on ip: bound all at once, so that none is handed out twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((ip, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent():
    """In a child before exec: SIGTERM when the test process dies, even by SIGKILL, so an
    aborted run leaves no daemon behind holding its ports and directories."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_for(ready, timeout: float, what: str, process: Optional[subprocess.Popen] = None,
              log_path: Optional[str] = None):
    """Poll `ready()` (these daemons publish no event we could wait on) until it is true or the
    deadline passes; fail early, with the log's tail, when `process` exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: exited with {process.returncode}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout}s" +
                                 (f":\n{_tail(log_path)}" if log_path else ""))
        gevent.sleep(0.05)


def _tail(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-3000:]


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pump(source, sink):
    """Copy bytes from one socket to the other until either side hangs up."""
    try:
        while True:
            data = source.recv(65536)
            if not data:
                return
            sink.sendall(data)
    except OSError:
        return


def _stop_process(process: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30.0):
    """Signal and reap; SIGKILL if it outlives the timeout."""
    if process is not None and process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class DockerProxy:
    """Forwards a unix socket to the real engine's; cut() drops the listener and every open
    connection (the agent's event stream included), restore() listens again."""

    def __init__(self, target_path: str, path: str):
        self.target_path, self.path = target_path, path
        self.server = None
        self.connections = set()

    def restore(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(64)
        self.server = StreamServer(listener, self._handle)
        self.server.start()

    def cut(self):
        self.server.close()
        for conn in list(self.connections):
            conn.close()
        self.connections.clear()
        os.unlink(self.path)

    def _handle(self, client, _address):
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self.target_path)
        self.connections.update((client, upstream))
        pumps = [gevent.spawn(_pump, client, upstream), gevent.spawn(_pump, upstream, client)]
        gevent.joinall(pumps, count=1)
        gevent.killall(pumps)
        for sock in (client, upstream):
            self.connections.discard(sock)
            sock.close()



# ---- etcd v2 behind a faulty proxy ------------------------------------------------------------

#: etcd's v2 error codes: code -> (etcd's message, the HTTP status etcd answers it with), from
#: etcd 3.5's server/etcdserver/api/v2error/error.go. Codes without a status of their own are
#: answered 400 (104 and 107 included). etcd turns every error that is not one of these (a raft
#: timeout during a leader election, a lost quorum) into 300 with the Go error text as "cause".
ETCD_ERRORS = {
    100: ("Key not found", 404),
    101: ("Compare failed", 412),
    102: ("Not a file", 403),
    103: ("Reached the max number of peers in the cluster", 400),
    104: ("Not a directory", 400),
    105: ("Key already exists", 412),
    106: ("The prefix of given key is a keyword in etcd", 400),
    107: ("Root is read only", 400),
    108: ("Directory not empty", 403),
    109: ("Peer address has existed", 400),
    110: ("The request requires user authentication", 401),
    200: ("Value is Required in POST form", 400),
    201: ("PrevValue is Required in POST form", 400),
    202: ("The given TTL in POST form is not a number", 400),
    203: ("The given index in POST form is not a number", 400),
    204: ("Value or TTL is required in POST form", 400),
    205: ("The given timeout in POST form is not a number", 400),
    206: ("Name is required in POST form", 400),
    207: ("Index or value is required", 400),
    208: ("Index and value cannot both be specified", 400),
    209: ("Invalid field", 400),
    210: ("Invalid POST form", 400),
    211: ("Value provided on refresh", 400),
    212: ("A TTL must be provided on refresh", 400),
    300: ("Raft Internal Error", 500),
    301: ("During Leader Election", 500),
    400: ("watcher is cleared due to etcd recovery", 400),
    401: ("The event in requested index is outdated and cleared", 400),
    402: ("Standby Internal Error", 400),
    403: ("Invalid active size", 400),
    404: ("Standby remove delay", 400),
    500: ("Client Internal Error", 400),
}

#: EtcdFaultProxy's modes, the keys of its stats
PASS_THROUGH, CUT, ERRORS, BAD_GATEWAY, HANG = (
    "pass_through", "cut", "errors", "bad_gateway", "hang")
MODES = (PASS_THROUGH, CUT, ERRORS, BAD_GATEWAY, HANG)

_BAD_GATEWAY_ANSWER = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n"
                       b"Content-Length: 12\r\nConnection: close\r\n\r\nbad gateway\n")


def _read_request(reader) -> Optional[bytes]:
    """One HTTP request (head and Content-Length body) as it came, or None at end of stream.
    Chunked request bodies are not handled: python-etcd and requests send a Content-Length."""
    head = b""
    while True:
        line = reader.readline(65536)
        if not line:
            return None
        head += line
        if line in (b"\r\n", b"\n"):
            break
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + (reader.read(length) if length else b"")


class EtcdFaultProxy:
    """A TCP proxy in front of one etcd member's client port, whose fault can be switched at any
    time: forward (pass_through), refuse connections (cut), answer every request with an etcd v2
    error (answer_errors) or a non-JSON 502 (answer_bad_gateway), or read requests and never
    answer (hang). Every switch to another mode closes every open connection (watches included),
    so no request outlives the mode it started in. `stats[mode]` counts the "connections" and
    "requests" each mode saw (a cut refuses in the kernel: it counts nothing)."""

    def __init__(self, target: str, listen_ip: str = "127.0.0.1"):
        url = urlparse(target)
        self.target_address = (url.hostname, url.port)
        self.listen_ip = listen_ip
        self.port, = _free_ports(listen_ip)
        self.url = f"http://{listen_ip}:{self.port}"
        # a real answer's headers, so that injected errors carry the cluster's id and index
        # (python-etcd raises EtcdClusterIdChanged on a different id)
        headers = requests.get(f"{target}/v2/keys/", timeout=5).headers
        self.etcd_index = int(headers["X-Etcd-Index"])
        self.cluster_id = headers["X-Etcd-Cluster-Id"]
        self.stats = {mode: collections.Counter() for mode in MODES}
        self.mode = None
        self._error = None
        self._server = None
        self._handlers = set()
        self.pass_through()

    def pass_through(self):
        self._switch(PASS_THROUGH)

    def cut(self):
        self._switch(CUT)

    def answer_errors(self, error_code: int, message: Optional[str] = None,
                      http_status: Optional[int] = None, cause: str = "injected by EtcdFaultProxy"):
        """message and http_status default to etcd's own for that code (ETCD_ERRORS)."""
        etcd_message, etcd_status = ETCD_ERRORS.get(error_code, ("", 400))
        self._error = (error_code, message or etcd_message, http_status or etcd_status, cause)
        self._switch(ERRORS)

    def answer_bad_gateway(self):
        self._switch(BAD_GATEWAY)

    def hang(self):
        self._switch(HANG)

    def close(self):
        self._switch(CUT)

    def _switch(self, mode: str):
        changed, self.mode = mode != self.mode, mode
        if mode == CUT and self._server is not None:
            self._server.close()
            self._server = None
        elif mode != CUT and self._server is None:
            self._server = StreamServer((self.listen_ip, self.port), self._handle)
            self._server.start()
        if changed:
            gevent.killall(list(self._handlers))

    def _handle(self, client, _address):
        mode = self.mode
        self._handlers.add(gevent.getcurrent())
        self.stats[mode]["connections"] += 1
        reader = client.makefile("rb")
        try:
            if mode == PASS_THROUGH:
                self._forward(client, reader)
                return
            while True:
                request = _read_request(reader)
                if request is None:
                    return
                self.stats[mode]["requests"] += 1
                if mode == HANG:
                    continue  # read on, answer never: the client's timeout is the fault
                client.sendall(self._error_answer() if mode == ERRORS else _BAD_GATEWAY_ANSWER)
                return
        except OSError:
            return
        finally:
            self._handlers.discard(gevent.getcurrent())
            reader.close()
            client.close()

    def _forward(self, client, reader):
        """Requests are read whole (to count them), answers are pumped as they come, so a
        watch's long-held answer reaches the client the moment etcd sends it."""
        upstream = socket.create_connection(self.target_address)

        def requests_up():
            try:
                while True:
                    request = _read_request(reader)
                    if request is None:
                        return
                    self.stats[PASS_THROUGH]["requests"] += 1
                    upstream.sendall(request)
            except OSError:
                return  # either side hung up: the pair ends

        pumps = [gevent.spawn(requests_up), gevent.spawn(_pump, upstream, client)]
        try:
            gevent.joinall(pumps, count=1)
        finally:
            gevent.killall(pumps)
            upstream.close()

    def _error_answer(self) -> bytes:
        code, message, status, cause = self._error
        body = json.dumps({"errorCode": code, "message": message, "cause": cause,
                           "index": self.etcd_index}).encode() + b"\n"
        reason = http.client.responses.get(status, "Error")
        return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"X-Etcd-Cluster-Id: {self.cluster_id}\r\nX-Etcd-Index: {self.etcd_index}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


# ---- a Docker engine of our own ---------------------------------------------------------------

class PrivateDockerd:
    """A second dockerd (20.10) the test owns, to stop, SIGKILL and restart (with or without
    --live-restore) while the shared engine keeps serving everyone else. It has no bridge and
    no iptables rules, and runs in a network namespace of its own: dockerd --bridge=none deletes
    the host's `docker0` at startup (moby's removeDefaultBridgeInterface), which breaks the
    shared engine's container starts; in its own namespace there is no docker0 to delete.
    Containers get a loopback interface only (no networking, no published ports). It starts its
    own containerd under its exec-root, which dies with it (even on SIGKILL); containers' shims
    outlive a kill. Keep root_dir short: unix socket paths are limited to 107 bytes.

    Measured here (2 cores, dockerd 20.10.24):
    - start(): 0.15 s until it answers; stop() 1.0 s when idle; restart() 1.2 s.
    - a container running across restart(): with live_restore it keeps running (State.Running
      true, same Pid, never exits). Without, stop() stops it: ExitCode 0 for one that exits on
      SIGTERM, 137 for a busybox `sleep` (pid 1 ignores SIGTERM: SIGKILLed after its 10 s stop
      timeout, so stop() takes 11 s; give test containers a TERM trap or a short stop_timeout).
    - kill(): the container keeps running (its shim outlives dockerd). The next start() with
      live_restore adopts it (same Pid, 0.2 s); without, the start stops it (ExitCode 137 for
      a `sleep`, and the start takes 10 s).
    - docker-py's events() stream, on stop() and on kill() alike, ends quietly (the generator
      stops, no exception): a follower must treat the end of the stream as a lost engine.
    - ensure_image(): 0.15-0.2 s (docker save into docker load); building the rootfs and
      `docker import` as bin/provision.sh does: 0.35-0.5 s.
    """

    def __init__(self, root_dir: str, live_restore: bool = False):
        self.root_dir = os.path.abspath(root_dir)
        self.live_restore = live_restore
        self.socket_path = os.path.join(self.root_dir, "docker.sock")
        self.docker_host = f"unix://{self.socket_path}"
        self.log_path = os.path.join(self.root_dir, "dockerd.log")
        self.process: Optional[subprocess.Popen] = None
        #: docker-py's low-level client for this engine, built afresh by each start()
        self.client: Optional[docker.APIClient] = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> "PrivateDockerd":
        os.makedirs(self.root_dir, exist_ok=True)
        cmd = ["unshare", "--net", "dockerd", "--host", self.docker_host,
               "--data-root", os.path.join(self.root_dir, "data"),
               "--exec-root", os.path.join(self.root_dir, "exec"),
               "--pidfile", os.path.join(self.root_dir, "docker.pid"),
               "--bridge=none", "--iptables=false", "--ip-masq=false"]
        if self.live_restore:
            cmd.append("--live-restore")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        _wait_for(self._answers, timeout, "the private dockerd answering", self.process,
                  self.log_path)
        return self

    def _answers(self) -> bool:
        try:  # version="auto" asks the engine at once: building the client is the ping
            self.client = docker.APIClient(base_url=self.docker_host, version="auto", timeout=30)
            return True
        except docker.errors.DockerException:
            return False

    def stop(self, timeout: float = 60.0):
        """SIGTERM and wait: without live restore dockerd stops every container first."""
        _stop_process(self.process, signal.SIGTERM, timeout)

    def kill(self):
        """SIGKILL: dockerd and its containerd die (containerd by its parent-death signal),
        containers and their shims do not."""
        containerd_pidfile = os.path.join(self.root_dir, "exec", "containerd", "containerd.pid")
        with open(containerd_pidfile) as f:
            containerd_pid = int(f.read())
        _stop_process(self.process, signal.SIGKILL)
        _wait_for(lambda: not _alive(containerd_pid), 10, "the private containerd dying")
        # This machine's init reaps orphans lazily (~1.4 s): the next dockerd would take the
        # zombie's pid for a live containerd, wait for its socket and give up after ~12 s.
        os.unlink(containerd_pidfile)

    def restart(self, live_restore: Optional[bool] = None):
        self.stop()
        if live_restore is not None:
            self.live_restore = live_restore
        self.start()

    def ensure_image(self, name: str, source_docker_host: Optional[str] = None):
        """Copy the image from the shared engine (DOCKER_HOST by default): docker save piped
        into docker load, which keeps its id and takes half the time of building it again."""
        try:
            self.client.inspect_image(name)
            return
        except docker.errors.ImageNotFound:
            pass
        source = docker.APIClient(base_url=source_docker_host or os.environ.get("DOCKER_HOST"),
                                  version="auto", timeout=60)
        self.client.load_image(b"".join(source.get_image(name)))

    def close(self):
        """Remove every container, stop, and delete root_dir (with whatever dockerd left
        mounted under it: its own bind mount of the data root survives a kill)."""
        if self.process is None and not os.path.exists(self.root_dir):
            return
        if self.process is not None:
            if not self.running:
                # to remove the containers a kill left running: adopting them (live restore) is
                # immediate, where a plain start first stops each one (10 s for a `sleep`)
                self.live_restore = True
                self.start()
            for container in self.client.containers(all=True):
                self.client.remove_container(container["Id"], force=True)
            self.stop()
            self.process = None
        for mount_point in self._mounts_under_root():
            subprocess.run(["umount", "--lazy", mount_point], check=True)
        shutil.rmtree(self.root_dir)

    def _mounts_under_root(self) -> list:
        """Deepest first, so that nested mounts go before their parents."""
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        prefix = self.root_dir + os.sep
        return sorted((p for p in points if p == self.root_dir or p.startswith(prefix)),
                      key=len, reverse=True)


# ---- a real etcd cluster ----------------------------------------------------------------------

@dataclass
class EtcdMember:
    name: str
    client_url: str
    peer_url: str
    data_dir: str
    log_path: str
    process: Optional[subprocess.Popen] = None


class EtcdCluster:
    """A real etcd 3.5 cluster of `size` members (v2 on, static --initial-cluster, one loopback
    IP each, free ports, data under a temporary directory), whose members can be SIGKILLed and
    started again on their data, to take the leader or quorum away from the agents for real.

    Measured here (etcd 3.5.1, default timers: 100 ms heartbeat, 1 s election timeout), with a
    write sent every 100 ms to the surviving members:
    - SIGKILL of the raft leader: a new leader is elected 1.1-1.4 s later. Every write sent
      before that fails, and takes 7.0 s to (etcd's request timeout: 5 s + 2 x election):
      HTTP 500, errorCode 300, cause "etcdserver: request timed out[, possibly due to previous
      leader failure]". A client whose timeout is shorter (e.g. 5 s) sees its own read
      timeout instead. Writes sent after the election succeed at once.
    - SIGKILL of a follower: no write fails, none is slower.
    - start(): healthy in 1.3 s; start_member() of a killed member: healthy in 0.06 s.
    - the leader can be read from any member's GET /v2/stats/self ("state": "StateLeader",
      "leaderInfo.leader" holds the leader's id); /v2/stats/leader answers 403 on followers.
    """

    def __init__(self, size: int = 3, ips=("127.0.0.11", "127.0.0.12", "127.0.0.13")):
        if len(ips) < size:
            raise ValueError(f"{size} members need {size} IPs, got {ips}")
        self.root_dir = tempfile.mkdtemp(prefix="flynn-etcd-cluster-")
        self.token = f"flynn-test-{uuid.uuid4().hex[:8]}"
        self.members = {}
        for i, ip in enumerate(ips[:size]):
            name, (client_port, peer_port) = f"m{i}", _free_ports(ip, 2)
            self.members[name] = EtcdMember(
                name, f"http://{ip}:{client_port}", f"http://{ip}:{peer_port}",
                os.path.join(self.root_dir, name), os.path.join(self.root_dir, f"{name}.log"))

    @property
    def client_urls(self) -> str:
        """-etcd-endpoints style: every member's client URL, comma-separated."""
        return ",".join(m.client_url for m in self.members.values())

    def start(self, timeout: float = 30.0) -> "EtcdCluster":
        for member in self.members.values():
            self._launch(member, "new")
        self.wait_healthy(timeout)
        return self

    def start_member(self, name: str, timeout: float = 30.0):
        """Start a killed member again on its data dir."""
        member = self.members[name]
        if member.process is not None and member.process.poll() is None:
            raise AssertionError(f"etcd member {name} is running")
        self._launch(member, "existing")
        _wait_for(lambda: self._healthy(member), timeout, f"etcd member {name} healthy",
                  member.process, member.log_path)

    def kill(self, name: str):
        _stop_process(self.members[name].process, signal.SIGKILL)

    def running_members(self) -> list:
        return [m for m in self.members.values() if m.process and m.process.poll() is None]

    def wait_healthy(self, timeout: float = 30.0):
        """Until every running member answers /health true (it has a leader and serves reads)."""
        deadline = time.monotonic() + timeout
        for member in self.running_members():
            _wait_for(lambda m=member: self._healthy(m), max(deadline - time.monotonic(), 0),
                      f"etcd member {member.name} healthy", member.process, member.log_path)

    def raft_leader(self, timeout: float = 10.0) -> str:
        """The name of the member whose /v2/stats/self says StateLeader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for member in self.running_members():
                try:
                    stats = requests.get(f"{member.client_url}/v2/stats/self", timeout=1).json()
                except (requests.RequestException, ValueError):
                    continue
                if stats.get("state") == "StateLeader":
                    return member.name
            gevent.sleep(0.05)
        raise AssertionError(f"no raft leader after {timeout}s")

    def close(self):
        for member in self.members.values():
            if member.process is not None:
                _stop_process(member.process, signal.SIGTERM, timeout=10)
        shutil.rmtree(self.root_dir, ignore_errors=True)

    def _launch(self, member: EtcdMember, state: str):
        initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members.values())
        cmd = [etcd_binary(), "--name", member.name, "--data-dir", member.data_dir,
               "--enable-v2=true",
               "--listen-client-urls", member.client_url,
               "--advertise-client-urls", member.client_url,
               "--listen-peer-urls", member.peer_url,
               "--initial-advertise-peer-urls", member.peer_url,
               "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
               "--initial-cluster-token", self.token]
        # without ETCD_*: etcd reads those as its own flags (the agent's ETCD_DISCOVERY, say)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        with open(member.log_path, "ab") as log:
            member.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=env,
                                              preexec_fn=_die_with_parent)

    @staticmethod
    def _healthy(member: EtcdMember) -> bool:
        try:
            return requests.get(f"{member.client_url}/health", timeout=1).json()["health"] == "true"
        except (requests.RequestException, ValueError, KeyError):
            return False
