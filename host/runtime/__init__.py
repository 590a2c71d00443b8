"""The container runtime interface: what the agent needs from a container engine.

host.runtime.docker.DockerRuntime talks to a real Docker engine; host.runtime.fake.FakeRuntime is an
in-memory twin for unit tests. Both raise only host.errors classes:
RuntimeUnavailable (engine unreachable), ContainerNotFound, ImageNotFound, RuntimeFailure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

STDOUT, STDERR = 1, 2


@dataclass(slots=True)
class ContainerSpec:
    name: str
    image: str
    cmd: Optional[list] = None
    entrypoint: Optional[list] = None
    env: dict = field(default_factory=dict)
    working_dir: Optional[str] = None
    user: Optional[str] = None
    tty: bool = False
    stdin: bool = False          # keep stdin open for an attach
    labels: dict = field(default_factory=dict)
    memory_mb: int = 0
    cpu_shares: int = 0
    ports: tuple = ()            # host.types.PortBinding
    bind_ip: str = ""            # "" = all addresses
    network: str = "bridge"      # "bridge" (Docker's default) or "host"
    volumes: tuple = ()          # host.types.VolumeSpec: named volumes, made on first use


@dataclass(slots=True)
class ContainerState:
    id: str
    status: str                  # Docker's: created, running, exited, dead, ...
    running: bool
    exit_code: Optional[int]
    oom_killed: bool
    started_at: Optional[str]    # RFC 3339, None if never started
    finished_at: Optional[str]
    ip: Optional[str]
    labels: dict
    error: str = ""


@dataclass(slots=True)
class RuntimeEvent:
    action: str                  # create, start, die, oom, kill, stop, destroy, ...
    container_id: str
    labels: dict
    time_nanos: int
    exit_code: Optional[int] = None


class Runtime:
    """Interface. Blocking calls; run them in greenlets."""

    def ping(self) -> None:
        raise NotImplementedError

    def pull(self, image: str) -> None:
        """Pull the image. Raises ImageNotFound when it cannot be had."""
        raise NotImplementedError

    def create(self, spec: ContainerSpec) -> str:
        """Create the container and return its id. If a container with spec.name exists
        already and carries the same host and job labels (a previous attempt got this far),
        return that one's id; one of another host or job is a RuntimeFailure, never adopted.
        Raises ImageNotFound when the image is not present (the caller pulls, then creates
        again)."""
        raise NotImplementedError

    def start(self, container_id: str) -> None:
        raise NotImplementedError

    def inspect(self, container_id: str) -> ContainerState:
        raise NotImplementedError

    def list(self, labels: dict) -> list:
        """ContainerState of every container (running or not) carrying all these labels."""
        raise NotImplementedError

    def stop(self, container_id: str, timeout_s: float) -> None:
        """SIGTERM, then SIGKILL after timeout_s. Returns when the container has stopped."""
        raise NotImplementedError

    def signal(self, container_id: str, signal: str) -> None:
        raise NotImplementedError

    def remove(self, container_id: str) -> None:
        """Remove the container (killing it if running). A missing one is not an error."""
        raise NotImplementedError

    def events(self, labels: dict, since_nanos: Optional[int]) -> Iterator[RuntimeEvent]:
        """Container events for containers with these labels, from `since_nanos` (inclusive,
        so the caller must tolerate repeats) and then live. Ends or raises RuntimeUnavailable
        when the connection breaks."""
        raise NotImplementedError

    def attach(self, container_id: str, tty: bool):
        """Attach to the container's stdin, stdout and stderr (before it starts, so nothing is
        missed): an Attachment with read() -> (STDOUT|STDERR, bytes) or None at the end,
        write(bytes), close_stdin() and close()."""
        raise NotImplementedError

    def resize(self, container_id: str, height: int, width: int) -> None:
        raise NotImplementedError

    def logs(self, container_id: str, *, stdout: bool, stderr: bool, follow: bool,
             tail: Optional[int], tty: bool, since: Optional[float] = None,
             until: Optional[float] = None, timestamps: bool = False) -> Iterator[tuple]:
        """(STDOUT|STDERR, bytes) chunks of the container's output. With follow, ends when the
        container stops. `since`/`until` (Unix seconds) bound the lines by the time the engine
        took them; `timestamps` puts that time (RFC 3339, nanoseconds) before each line. The
        iterator has close() to let go of the connection early."""
        raise NotImplementedError

    def volume_has(self, volume: str, path: str, image: str) -> bool:
        """Whether the named volume exists and holds `path` (relative to its root). `image` is
        one the engine has (or can pull), used to look without starting anything."""
        raise NotImplementedError

    def remove_volume(self, volume: str) -> None:
        """Remove the named volume (its containers must be gone). A missing one is not an
        error."""
        raise NotImplementedError
