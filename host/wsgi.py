"""WSGI entry for `gunicorn -k gevent -w 1 host.wsgi:app` (settings from FLYNN_HOST_* variables).

One worker only, and no --preload: the agent owns background greenlets and the job table, and
gevent must patch before they exist. Like Bottle's GeventServer, refuse to run unpatched.
"""
from gevent import monkey

if not monkey.is_module_patched("socket"):
    raise RuntimeError("host.wsgi must run under gevent (gunicorn -k gevent -w 1 host.wsgi:app); "
                       "the standard library is not monkey-patched")

import os  # noqa: E402

from host.agent import build_agent  # noqa: E402
from host.api import create_app  # noqa: E402
from host.config import load_config  # noqa: E402
from host.logsetup import configure_logging  # noqa: E402


def create_app_from_env(environ=None):
    """Build and start an agent from the environment and return its WSGI app."""
    config = load_config([], os.environ if environ is None else environ)
    configure_logging(config.log_level)
    agent = build_agent(config)
    agent.start()
    return create_app(agent)


app = create_app_from_env()
