"""The agent's WSGI application: create_app(agent) -> Bottle. No module-level app."""
from __future__ import annotations

import bottle

from host.api import host as host_routes
from host.api.http import json_errors, router_error


def create_app(agent) -> bottle.Bottle:
    app = bottle.Bottle(catchall=True)
    app.uninstall(bottle.JSONPlugin)   # we write JSON ourselves, with simplejson
    app.install(json_errors)
    app.default_error_handler = router_error
    host_routes.install(app, agent)
    return app
