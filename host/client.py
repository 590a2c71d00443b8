"""Talking to agents over HTTP. For now: forwarding a request to the cluster leader unchanged.
(The full HostClient / ClusterClient for the CLI and schedulers comes with the client issue.)"""
from __future__ import annotations

import requests

from host.errors import NotLeader

#: seconds a forwarded request may take (a long-poll's own wait comes on top)
FORWARD_TIMEOUT_S = 35  # an AddJobs request may wait up to 30 s in the leader's queue


def forward(addr: str, method: str, path: str, query: str, body: bytes, content_type: str,
            extra_timeout_s: float = 0) -> requests.Response:
    """Send the request to the agent at `addr`; NotLeader (503, retry) if it cannot be reached."""
    url = f"http://{addr}{path}" + (f"?{query}" if query else "")
    try:
        return requests.request(method, url, data=body or None,
                                headers={"Content-Type": content_type} if content_type else {},
                                timeout=FORWARD_TIMEOUT_S + extra_timeout_s,
                                allow_redirects=False)
    except requests.RequestException as e:
        raise NotLeader(f"the leader at {addr} could not be reached: {e}", leader=addr) from e
