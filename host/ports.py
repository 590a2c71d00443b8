"""Host port allocation for published job ports.

A port is handed out only if neither our own table holds it nor the machine has it bound (checked
with a real bind, the way Docker's proxy will bind it). Allocation rotates through the range so a
port freed a moment ago is not handed straight back to a new job while old clients may still hold
connections to it.
"""
from __future__ import annotations

import errno
import socket
from typing import Callable, Iterable

from host.errors import Conflict
from host.types import PortBinding, PortSpec

_SOCKET_TYPE = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}


def port_is_free(bind_ip: str, port: int, proto: str) -> bool:
    """True if `port` can be bound on `bind_ip` ("" = all addresses) right now, as far as this
    process can tell. An address this process does not have (an agent in a container of its
    own, publishing its jobs' ports on the machine's address) cannot be checked from here: the
    port counts as free, and the engine, which publishes on the machine, refuses a taken one."""
    family = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
    with socket.socket(family, _SOCKET_TYPE[proto]) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_ip or "0.0.0.0", port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            if e.errno == errno.EADDRNOTAVAIL:
                return True
            raise
    return True


class PortAllocator:
    def __init__(self, low: int, high: int, bind_ip: str = "",
                 is_free: Callable[[str, int, str], bool] = port_is_free):
        self.low, self.high = low, high
        self.bind_ip = bind_ip
        self._is_free = is_free
        self._taken = set()      # {(port, proto)}
        self._cursor = low       # next port to try

    def taken(self) -> set:
        return set(self._taken)

    def mark_taken(self, bindings: Iterable[PortBinding]):
        """Record ports already in use by jobs we re-adopted (no check: they are ours)."""
        for b in bindings:
            self._taken.add((b.port, b.proto))

    def release(self, bindings: Iterable[PortBinding]):
        for b in bindings:
            self._taken.discard((b.port, b.proto))

    def reserve(self, specs: Iterable[PortSpec]) -> tuple:
        """Reserve every port a job asks for, all or nothing. Returns PortBindings.
        Raises Conflict naming the port that is taken or the range that is full."""
        bindings = []
        try:
            for spec in specs:
                port = self._reserve_fixed(spec) if spec.port else self._allocate(spec.proto)
                bindings.append(PortBinding(port=port, proto=spec.proto,
                                            container_port=spec.container_port or port))
        except Conflict:
            self.release(bindings)
            raise
        return tuple(bindings)

    def _reserve_fixed(self, spec: PortSpec) -> int:
        key = (spec.port, spec.proto)
        if key in self._taken:
            raise Conflict(f"port {spec.port}/{spec.proto} is taken by another job on this host")
        if not self._is_free(self.bind_ip, spec.port, spec.proto):
            raise Conflict(f"port {spec.port}/{spec.proto} is in use on this host")
        self._taken.add(key)
        return spec.port

    def _allocate(self, proto: str) -> int:
        size = self.high - self.low + 1
        for step in range(size):
            port = self.low + (self._cursor - self.low + step) % size
            if (port, proto) in self._taken or not self._is_free(self.bind_ip, port, proto):
                continue
            self._taken.add((port, proto))
            self._cursor = port + 1 if port < self.high else self.low
            return port
        raise Conflict(f"no free {proto} port left in the range {self.low}-{self.high}")
