"""The Docker runtime: the only module that imports docker (docker-py's low-level APIClient).

The engine is found the way docker-py finds it (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH).
The client is built lazily and rebuilt after a failure, so an agent started while Docker is down
comes up anyway and starts working when Docker does.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from typing import Iterator, Optional

import docker
import docker.errors
import docker.utils
import requests.exceptions

from host import errors
from host.clock import parse_time, rfc3339
from host.runtime import (STDOUT, ContainerSpec, ContainerState, Runtime, RuntimeEvent)
from host.runtime.labels import same_job

log = logging.getLogger(__name__)

#: seconds a plain API call may take; streams (events, logs) have no read timeout
API_TIMEOUT_S = 60


@contextlib.contextmanager
def _translated(what: str):
    """Turn docker-py and transport errors into host.errors, naming what we were doing."""
    try:
        yield
    except docker.errors.ImageNotFound as e:
        raise errors.ImageNotFound(f"{what}: {e.explanation or e}") from e
    except docker.errors.NotFound as e:
        raise errors.ContainerNotFound(f"{what}: {e.explanation or e}") from e
    except docker.errors.APIError as e:
        raise errors.RuntimeFailure(f"{what}: {e.explanation or e}") from e
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            docker.errors.DockerException, ConnectionError) as e:
        raise errors.RuntimeUnavailable(f"{what}: Docker is unreachable ({_short(e)})") from e


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) < 200 else text[:200] + "..."


def _labels_filter(labels: dict) -> list:
    return [f"{k}={v}" for k, v in sorted(labels.items())]


class DockerRuntime(Runtime):
    def __init__(self, base_url: Optional[str] = None):
        self._kwargs = docker.utils.kwargs_from_env()
        if base_url:
            self._kwargs["base_url"] = base_url
        self._api: Optional[docker.APIClient] = None

    # docker-py asks the engine for its API version when built with version="auto": build lazily
    def _client(self) -> docker.APIClient:
        if self._api is None:
            with _translated("connecting to Docker"):
                self._api = docker.APIClient(version="auto", timeout=API_TIMEOUT_S, **self._kwargs)
        return self._api

    @contextlib.contextmanager
    def _call(self, what: str):
        try:
            with _translated(what):
                yield self._client()
        except errors.RuntimeUnavailable:
            self._api = None  # reconnect (and renegotiate the version) next time
            raise

    def ping(self) -> None:
        with self._call("pinging Docker") as api:
            api.ping()

    def pull(self, image: str) -> None:
        repository, tag = docker.utils.parse_repository_tag(image)
        log.info("pulling image %s", image)
        with self._call(f"pulling image {image}") as api:
            try:
                for message in api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                    if "error" in message:  # pull failures arrive inside a 200 stream
                        raise errors.ImageNotFound(
                            f"image {image} is not present and could not be pulled: "
                            f"{message['error']}")
            except docker.errors.APIError as e:
                raise errors.ImageNotFound(f"image {image} is not present and could not be "
                                           f"pulled: {e.explanation or e}") from e

    def create(self, spec: ContainerSpec) -> str:
        with self._call(f"creating container {spec.name}") as api:
            bindings = {}
            for b in spec.ports:
                bindings.setdefault(f"{b.container_port}/{b.proto}", []).append(
                    (spec.bind_ip or "0.0.0.0", b.port))
            host_config = api.create_host_config(
                port_bindings=bindings,
                mem_limit=spec.memory_mb * 1024 * 1024 if spec.memory_mb else None,
                cpu_shares=spec.cpu_shares or None,
                network_mode="host" if spec.network == "host" else None,
                binds={v.name: {"bind": v.target, "mode": "rw"} for v in spec.volumes} or None,
            )
            try:
                created = api.create_container(
                    spec.image, command=spec.cmd, entrypoint=spec.entrypoint,
                    environment=[f"{k}={v}" for k, v in spec.env.items()],
                    working_dir=spec.working_dir, user=spec.user or None, tty=spec.tty,
                    stdin_open=spec.stdin,
                    labels=spec.labels, name=spec.name, host_config=host_config,
                    ports=[(int(key.split("/")[0]), key.split("/")[1]) for key in bindings],
                )
            except docker.errors.APIError as e:
                if e.status_code != 409:
                    raise
                # the name is taken: by a previous attempt for this very job, or by a container
                # that is not ours to adopt
                existing = api.inspect_container(spec.name)
                if not same_job((existing.get("Config") or {}).get("Labels") or {}, spec.labels):
                    raise errors.RuntimeFailure(
                        f"container name {spec.name} is taken by a container of another host "
                        f"or job ({existing['Id'][:12]})") from e
                return existing["Id"]
            return created["Id"]

    def start(self, container_id: str) -> None:
        with self._call(f"starting container {container_id[:12]}") as api:
            api.start(container_id)

    def inspect(self, container_id: str) -> ContainerState:
        with self._call(f"inspecting container {container_id[:12]}") as api:
            return _state_from_inspect(api.inspect_container(container_id))

    def list(self, labels: dict) -> list:
        with self._call("listing containers") as api:
            found = api.containers(all=True, quiet=True, filters={"label": _labels_filter(labels)})
            states = []
            for item in found:
                try:
                    states.append(_state_from_inspect(api.inspect_container(item["Id"])))
                except docker.errors.NotFound:
                    continue  # removed between the list and the inspect
            return states

    def stop(self, container_id: str, timeout_s: float) -> None:
        with self._call(f"stopping container {container_id[:12]}") as api:
            api.stop(container_id, timeout=int(round(timeout_s)))

    def signal(self, container_id: str, signal: str) -> None:
        with self._call(f"signalling container {container_id[:12]}") as api:
            api.kill(container_id, signal=signal)

    #: seconds to wait for a removal someone else started (the engine refuses a second one)
    removal_wait_s = 30.0

    def remove(self, container_id: str) -> None:
        with self._call(f"removing container {container_id[:12]}") as api:
            try:
                api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                if e.status_code != 409 or "already in progress" not in str(e.explanation):
                    raise
                # another removal (an agent before this one, an operator's docker rm) is under
                # way: the container is going; done once it has gone
                self._wait_until_gone(api, container_id, e)

    def _wait_until_gone(self, api, container_id: str, refusal):
        deadline = time.monotonic() + self.removal_wait_s
        while time.monotonic() < deadline:
            try:
                api.inspect_container(container_id)
            except docker.errors.NotFound:
                return
            time.sleep(0.1)  # (cooperative: the agent runs monkey-patched)
        raise refusal

    def events(self, labels: dict, since_nanos: Optional[int]) -> Iterator[RuntimeEvent]:
        filters = {"type": "container", "label": _labels_filter(labels)}
        since = since_nanos / 1e9 if since_nanos else None
        # subscribe now, not at the first next(): the caller reconciles once this returns
        with self._call("following Docker events") as api:
            stream = api.events(since=since, filters=filters, decode=True)
        return self._event_iterator(stream)

    def _event_iterator(self, stream) -> Iterator[RuntimeEvent]:
        try:
            with self._call("following Docker events"):
                for raw in stream:
                    actor = raw.get("Actor") or {}
                    attributes = actor.get("Attributes") or {}
                    exit_code = attributes.get("exitCode")
                    yield RuntimeEvent(
                        action=raw.get("Action") or raw.get("status") or "",
                        container_id=raw.get("id") or actor.get("ID", ""),
                        labels=attributes, time_nanos=int(raw.get("timeNano") or 0),
                        exit_code=int(exit_code) if exit_code is not None else None)
            raise errors.RuntimeUnavailable("the Docker event stream ended")
        finally:
            stream.close()

    def attach(self, container_id: str, tty: bool) -> "_Attachment":
        with self._call(f"attaching to {container_id[:12]}") as api:
            stream = api.attach_socket(container_id, params={"stdin": 1, "stdout": 1,
                                                             "stderr": 1, "stream": 1})
        return _Attachment(stream, tty)

    def resize(self, container_id: str, height: int, width: int) -> None:
        with self._call(f"resizing {container_id[:12]}") as api:
            api.resize(container_id, height=height, width=width)

    def logs(self, container_id: str, *, stdout: bool, stderr: bool, follow: bool,
             tail: Optional[int], tty: bool, since: Optional[float] = None,
             until: Optional[float] = None, timestamps: bool = False) -> Iterator[tuple]:
        params = {"stdout": int(stdout), "stderr": int(stderr), "follow": int(follow),
                  "tail": str(tail) if tail is not None else "all",
                  "timestamps": int(timestamps)}
        # the engine takes fractional Unix seconds ("1700000000.5") for both bounds
        if since is not None:
            params["since"] = f"{since:.9f}"
        if until is not None:
            params["until"] = f"{until:.9f}"
        with self._call(f"reading logs of {container_id[:12]}") as api:
            # docker-py's logs() reads a TTY stream one byte per chunk; read frames ourselves.
            # timeout=None: a followed log may stay silent for hours.
            response = api._get(api._url("/containers/{0}/logs", container_id), params=params,
                                stream=True, timeout=None)
            api._raise_for_status(response)
        return _LogStream(response, tty)

    def volume_has(self, volume: str, path: str, image: str) -> bool:
        with self._call(f"looking into volume {volume}") as api:
            try:
                api.inspect_volume(volume)
            except docker.errors.NotFound:
                return False
            # a container that is created, never started, mounts the volume: its archive API
            # reads the volume's files without running anything of the image
            try:
                probe = api.create_container(image, host_config=api.create_host_config(
                    binds={volume: {"bind": "/flynn-volume", "mode": "ro"}}),
                    labels={"flynn-host.probe": "volume"})
            except docker.errors.ImageNotFound:
                self.pull(image)
                return self.volume_has(volume, path, image)
            try:
                stream, _ = api.get_archive(probe["Id"], f"/flynn-volume/{path.lstrip('/')}")
                for _ in stream:  # let go of the answer
                    pass
                return True
            except docker.errors.NotFound:
                return False
            finally:
                api.remove_container(probe["Id"], force=True, v=True)

    def remove_volume(self, volume: str) -> None:
        with self._call(f"removing volume {volume}") as api:
            try:
                api.remove_volume(volume)
            except docker.errors.NotFound:
                pass


class _Attachment:
    """Docker's hijacked attach connection: multiplexed frames (or raw bytes with a TTY) out,
    stdin in."""

    def __init__(self, stream, tty: bool):
        self._stream = stream
        self._sock = stream._sock
        self._tty = tty
        self._buffer = b""

    def _recv_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            data = self._sock.recv(65536)
            if not data:
                return b""
            self._buffer += data
        chunk, self._buffer = self._buffer[:size], self._buffer[size:]
        return chunk

    def read(self):
        """(stream, bytes), or None when the container's output has ended."""
        try:
            if self._tty:
                data = self._buffer or self._sock.recv(65536)
                self._buffer = b""
                return (STDOUT, data) if data else None
            header = self._recv_exactly(8)
            if len(header) < 8:
                return None
            stream, length = struct.unpack(">BxxxL", header)
            data = self._recv_exactly(length)
            return (stream, data) if len(data) == length else None
        except OSError:
            return None

    def write(self, data: bytes):
        self._sock.sendall(data)

    def close_stdin(self):
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        try:
            self._stream.close()
            self._sock.close()
        except OSError:
            pass


class _LogStream:
    """Iterator of (stream, bytes) over a logs response; close() drops the connection."""

    def __init__(self, response, tty: bool):
        self._response = response
        self._frames = self._read_tty() if tty else self._read_multiplexed()

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._frames)
        except (requests.exceptions.RequestException, OSError) as e:
            self.close()
            raise errors.RuntimeUnavailable(f"log stream broke: {_short(e)}") from e

    def _read_tty(self):
        raw = self._response.raw
        while True:
            chunk = raw.read1(65536)
            if not chunk:
                return
            yield STDOUT, chunk

    def _read_multiplexed(self):
        raw = self._response.raw
        while True:
            header = raw.read(8)
            if len(header) < 8:
                return
            stream, length = struct.unpack(">BxxxL", header)
            if length:
                yield stream, raw.read(length)

    def close(self):
        self._response.close()


def _state_from_inspect(info: dict) -> ContainerState:
    state = info.get("State") or {}
    network = info.get("NetworkSettings") or {}
    ip = network.get("IPAddress") or None
    if not ip:
        for net in (network.get("Networks") or {}).values():
            ip = net.get("IPAddress") or ip
    started = parse_time(state.get("StartedAt"))
    finished = parse_time(state.get("FinishedAt"))
    return ContainerState(
        id=info["Id"],
        status=state.get("Status", ""),
        running=bool(state.get("Running")),
        exit_code=state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        started_at=rfc3339(started) if started else None,
        finished_at=rfc3339(finished) if finished else None,
        ip=ip,
        labels=(info.get("Config") or {}).get("Labels") or {},
        error=state.get("Error") or "",
    )
