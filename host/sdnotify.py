"""systemd's readiness protocol (sd_notify), in the few lines it takes: with `Type=notify` the
unit is "started" only once the agent serves, not when its process exists. No dependency: a
datagram to the socket systemd names in NOTIFY_SOCKET ("@..." is the abstract namespace)."""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str, environ=None) -> bool:
    """Send `state` ("READY=1", "STOPPING=1", "STATUS=...") to systemd; False when not run by
    systemd with Type=notify (no NOTIFY_SOCKET) or when the socket is gone."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as e:
        log.warning("could not tell systemd %r: %s", state, e)
        return False
