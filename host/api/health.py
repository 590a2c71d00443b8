"""Liveness and readiness, as load balancers and service managers ask for them.

`GET /healthz` answers 200 whenever the process serves, and says nothing else (it is the one
route served without a token). `GET /readyz` answers 200 when the agent can do its work, else 503
`unavailable` (`retry: true`) naming what is not ready: Docker unreachable or its events not
followed, etcd unreachable, this host not registered, a layer-0 service not up or not healthy.
`GET /host/status` stays the detailed view.
"""
from __future__ import annotations

import bottle

from host.api.http import error_body, json_body
from host.errors import Unavailable


def install(app: bottle.Bottle, agent):
    @app.get("/healthz")
    def healthz():
        return json_body({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        checks = agent.readiness()
        not_ready = {name: state for name, state in checks.items() if state != "ok"}
        if not not_ready:
            return json_body({"status": "ready", "checks": checks})
        error = Unavailable("not ready: " + "; ".join(f"{name}: {state}" for name, state
                                                      in not_ready.items()), checks=checks)
        return error_body(error)
