"""WSGI entry for `gunicorn -k gevent -w 1 host.wsgi:app` (settings from FLYNN_HOST_* variables).

One worker only, and no --preload: the agent owns background greenlets and the job table, and
gevent must patch before they exist. Like Bottle's GeventServer, refuse to run unpatched.
"""
from gevent import monkey

if not monkey.is_module_patched("socket"):
    raise RuntimeError("host.wsgi must run under gevent (gunicorn -k gevent -w 1 host.wsgi:app); "
                       "the standard library is not monkey-patched")

import atexit  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from host.agent import build_agent  # noqa: E402
from host.api import create_app  # noqa: E402
from host.config import load_config  # noqa: E402
from host.errors import FatalError  # noqa: E402
from host.logsetup import configure_logging  # noqa: E402


#: gunicorn halts (rather than starting the worker again and again) on this exit status
WORKER_BOOT_ERROR = 3


def create_app_from_env(environ=None):
    """Build and start an agent from the environment and return its WSGI app."""
    config = load_config([], os.environ if environ is None else environ)
    configure_logging(config.log_level, config.log_format)
    agent = build_agent(config)
    agent.start()
    # gunicorn's worker exits normally on SIGTERM: leave the cluster at once, as the daemon does
    atexit.register(agent.stop)
    gevent.spawn(_stop_when_crashed, agent)
    gevent.spawn(_stop_when_left, agent)
    return create_app(agent)


def _stop_when_left(agent):
    """The host left the cluster for good (POST /host/leave): this worker ends."""
    agent.left.wait()
    os.kill(os.getpid(), signal.SIGTERM)


def _stop_when_crashed(agent):
    """A service died (the daemon exits then): a bug ends this worker, for gunicorn to start a
    fresh one that re-adopts the jobs; a fatal condition (our host id is another live agent's)
    halts gunicorn."""
    error = agent.crashed.get()
    if isinstance(error, FatalError):
        print(f"flynn-host: {error}", file=sys.stderr, flush=True)
        os._exit(WORKER_BOOT_ERROR)
    os.kill(os.getpid(), signal.SIGTERM)


app = create_app_from_env()
