"""An in-memory container runtime for fast unit tests: the same interface and errors as the Docker
one, with controls a test uses to play the engine's part (a container exits, the engine goes away).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator, Optional

import gevent.queue

from host import errors
from host.clock import Clock, rfc3339
from host.runtime import (STDOUT, ContainerSpec, ContainerState, Runtime, RuntimeEvent)
from host.runtime.labels import same_job

_SIGNAL_NUMBERS = {"HUP": 1, "INT": 2, "KILL": 9, "TERM": 15}
_BROKEN = object()


class FakeRuntime(Runtime):
    def __init__(self, clock: Optional[Clock] = None, images=("busybox",)):
        self.clock = clock or Clock()
        self.images = set(images)       # present locally
        self.pullable: set = set()      # not present, but a pull brings them
        self.containers: dict = {}      # id -> {"spec", "state", "output"}
        self.available = True
        self.signals: list = []         # (container id, signal) received
        self.volumes: dict = {}         # name -> {relative paths it holds}
        self._ids = itertools.count(1)
        self._subscribers: list = []

    # ---- controls for tests ---------------------------------------------------------------

    def set_available(self, available: bool):
        """Engine down: calls raise RuntimeUnavailable and event streams break."""
        self.available = available
        if not available:
            for queue in self._subscribers:
                queue.put(_BROKEN)
            self._subscribers = []

    def exit(self, container_id: str, code: int, oom: bool = False):
        """The container's process ends with `code`."""
        state = self.containers[container_id]["state"]
        state.running, state.status, state.exit_code = False, "exited", code
        state.oom_killed = oom
        state.finished_at = rfc3339(self.clock.now())
        self._emit("die", container_id, exit_code=code)

    def by_name(self, name: str) -> Optional[str]:
        for cid, c in self.containers.items():
            if c["spec"].name == name:
                return cid
        return None

    # ---- the interface --------------------------------------------------------------------

    def _check(self):
        if not self.available:
            raise errors.RuntimeUnavailable("fake engine is down")

    def ping(self):
        self._check()

    def pull(self, image: str):
        self._check()
        if image not in self.pullable:
            raise errors.ImageNotFound(f"image {image} is not present and could not be pulled")
        self.images.add(image)

    def create(self, spec: ContainerSpec) -> str:
        self._check()
        existing = self.by_name(spec.name)
        if existing:
            if not same_job(self.containers[existing]["state"].labels, spec.labels):
                raise errors.RuntimeFailure(f"container name {spec.name} is taken by a "
                                            "container of another host or job")
            return existing
        if spec.image not in self.images:
            raise errors.ImageNotFound(f"no such image: {spec.image}")
        cid = f"fake{next(self._ids):060d}"
        state = ContainerState(id=cid, status="created", running=False, exit_code=None,
                               oom_killed=False, started_at=None, finished_at=None, ip=None,
                               labels=dict(spec.labels))
        self.containers[cid] = {"spec": spec, "state": state, "output": []}
        for volume in spec.volumes:  # made on first use, as Docker does
            self.volumes.setdefault(volume.name, set())
        self._emit("create", cid)
        return cid

    def start(self, container_id: str):
        self._check()
        state = self._get(container_id)["state"]
        if state.running:
            return
        if state.status == "exited":
            raise errors.RuntimeFailure("cannot restart an exited container in the fake")
        state.running, state.status = True, "running"
        state.started_at = rfc3339(self.clock.now())
        state.ip = "172.17.0.%d" % (int(container_id[-3:]) % 250 + 2)
        self._emit("start", container_id)

    def inspect(self, container_id: str) -> ContainerState:
        self._check()
        state = self._get(container_id)["state"]
        return dataclasses.replace(state)

    def list(self, labels: dict) -> list:
        self._check()
        return [dataclasses.replace(c["state"]) for c in self.containers.values()
                if all(c["state"].labels.get(k) == v for k, v in labels.items())]

    def stop(self, container_id: str, timeout_s: float):
        self._check()
        if self._get(container_id)["state"].running:
            self.exit(container_id, 143)

    def signal(self, container_id: str, signal: str):
        self._check()
        if not self._get(container_id)["state"].running:
            raise errors.RuntimeFailure(f"container {container_id} is not running")
        self.signals.append((container_id, signal))
        number = _SIGNAL_NUMBERS.get(signal.upper().replace("SIG", ""), 0)
        if number in (9, 15):
            self.exit(container_id, 128 + number)

    def remove(self, container_id: str):
        self._check()
        removed = self.containers.pop(container_id, None)
        if removed is not None:
            self._emit("destroy", container_id, labels=removed["state"].labels)

    def events(self, labels: dict, since_nanos: Optional[int]) -> Iterator[RuntimeEvent]:
        self._check()
        queue = gevent.queue.Queue()
        self._subscribers.append(queue)
        return self._iterate(queue, labels)

    def _iterate(self, queue, labels):
        while True:
            event = queue.get()
            if event is _BROKEN:
                raise errors.RuntimeUnavailable("fake event stream broke")
            if all(event.labels.get(k) == v for k, v in labels.items()):
                yield event

    def logs(self, container_id: str, *, stdout: bool, stderr: bool, follow: bool,
             tail: Optional[int], tty: bool, since: Optional[float] = None,
             until: Optional[float] = None, timestamps: bool = False) -> Iterator[tuple]:
        """The fake's output carries no times: since, until and timestamps are the real
        engine's to honour (tests/test_cli.py checks them against it)."""
        self._check()
        chunks = [(s, d) for s, d in self._get(container_id)["output"]
                  if (s == STDOUT and stdout) or (s != STDOUT and stderr)]
        if tail is not None:
            chunks = chunks[-tail:] if tail else []
        return (chunk for chunk in chunks)  # closeable, as the real engine's stream

    def volume_has(self, volume: str, path: str, image: str) -> bool:
        self._check()
        return path.strip("/") in self.volumes.get(volume, set())

    def remove_volume(self, volume: str) -> None:
        self._check()
        in_use = [cid for cid, c in self.containers.items()
                  if any(v.name == volume for v in c["spec"].volumes)]
        if in_use:
            raise errors.RuntimeFailure(f"volume {volume} is in use by {in_use[0]}")
        self.volumes.pop(volume, None)

    # ---- helpers --------------------------------------------------------------------------

    def _get(self, container_id: str) -> dict:
        try:
            return self.containers[container_id]
        except KeyError:
            raise errors.ContainerNotFound(f"no container {container_id}") from None

    def _emit(self, action: str, container_id: str, exit_code: Optional[int] = None,
              labels: Optional[dict] = None):
        if labels is None:
            labels = self.containers[container_id]["state"].labels
        nanos = int(self.clock.now().timestamp() * 1e9)
        event = RuntimeEvent(action=action, container_id=container_id, labels=dict(labels),
                             time_nanos=nanos, exit_code=exit_code)
        for queue in self._subscribers:
            queue.put(event)
