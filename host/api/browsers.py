"""Browsers are callers too: a page anyone can open may send requests to an agent its visitor can
reach (every job is told EXTERNAL_IP; a loopback-only agent is reachable from the visitor's own
browser), and DNS rebinding gives such a page an agent's address under the page's own name.
Programs (the CLI, schedulers, other agents) are unaffected by these checks:
- the Host a request names must be this agent's: an IP literal, localhost, the machine's
  names, or one of -allowed-hosts (a rebound name is not);
- a request that carries an Origin (browsers add it to every cross-origin request, WebSockets
  included) must come from the agent's own origin;
- a body may not be of the three types a page may send to another origin without asking first
  (text/plain, a form): bodies are JSON.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Optional
from urllib.parse import urlsplit

#: the content types a browser sends cross-origin without a preflight (the "simple" ones)
FORM_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")


def _host_part(value: str) -> str:
    """'Example.COM:1113' -> 'example.com'; '[::1]:1113' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class BrowserGuard:
    def __init__(self, allowed_hosts=()):
        names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
        self.names = names | {h.lower() for h in allowed_hosts}
        self._verdicts: dict = {}

    def host_allowed(self, host: str) -> bool:
        # clients send the same few Host values on every request: each is judged once
        verdict = self._verdicts.get(host)
        if verdict is None:
            verdict = self._judge_host(host)
            if len(self._verdicts) < 256:
                self._verdicts[host] = verdict
        return verdict

    def _judge_host(self, host: str) -> bool:
        name = _host_part(host)
        if not name:
            return True  # HTTP/1.0 without a Host: nothing a browser sends
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return name in self.names

    def problem(self, environ) -> Optional[str]:
        """Why the request looks like a browser's that the agent must refuse (None if not)."""
        host = environ.get("HTTP_HOST", "")
        if not self.host_allowed(host):
            return (f"Host: {host!r} is not a name of this agent (an IP address, localhost, "
                    "the machine's name, or one of -allowed-hosts)")
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and urlsplit(origin).netloc.lower() != host.strip().lower():
            return f"Origin: {origin!r}: requests from another origin are refused"
        content_type = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if content_type in FORM_TYPES:
            return f"Content-Type: {content_type} is refused: bodies are application/json"
        return None
