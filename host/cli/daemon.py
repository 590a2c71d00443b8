"""`flynn-host [flags]`: run the host daemon in the foreground until SIGTERM or SIGINT."""
from __future__ import annotations

import logging
import os
import resource
import signal
import ssl
import sys

import gevent
import gevent.event

from host.agent import build_agent
from host.api import create_app
from host.config import ConfigError, HelpRequested, load_config, usage
from host.errors import FatalError, FlynnError
from host.layer0.manifest import ManifestError
from host.logsetup import configure_logging
from host.sdnotify import notify
from host.server import ServerLimits, server_tls_context, wsgi_server

log = logging.getLogger("host.daemon")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def raise_open_file_limit():
    """Every long-poll client holds a socket: lift the soft descriptor limit to the hard one
    (as Go's runtime does for the original)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.debug("open file limit raised from %d to %d", soft, hard)


def run(argv: list, environ=None) -> int:
    try:
        config = load_config(argv, os.environ if environ is None else environ)
    except HelpRequested:
        print(usage())
        return EXIT_OK
    except ConfigError as e:
        print(f"flynn-host: {e}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.log_level, config.log_format)
    raise_open_file_limit()
    try:
        tls = server_tls_context(config.tls_cert, config.tls_key) if config.tls_cert else None
    except (OSError, ssl.SSLError) as e:
        print(f"flynn-host: -tls-cert/-tls-key: cannot use them: {e}", file=sys.stderr)
        return EXIT_USAGE

    try:
        agent = build_agent(config)
    except (ConfigError, ManifestError) as e:
        print(f"flynn-host: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (FlynnError, FatalError, OSError) as e:
        print(f"flynn-host: cannot start: {e}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        agent.start()
    except (FlynnError, FatalError, OSError) as e:
        print(f"flynn-host: cannot start: {e}", file=sys.stderr)
        agent.stop()
        return EXIT_FAILURE

    host, port = config.listen
    try:
        server = wsgi_server(create_app(agent), host, port, ServerLimits.of(config), tls)
    except OSError as e:
        print(f"flynn-host: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        agent.stop()
        return EXIT_FAILURE

    stop_requested = gevent.event.Event()

    def on_signal(signum):
        # one thing per signal: the first asks for the stop, a second one (the operator does
        # not want to wait) exits at once; jobs keep running either way
        if stop_requested.is_set():
            os._exit(128 + signum)
        stop_requested.set()
    gevent.signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM)
    gevent.signal_handler(signal.SIGINT, on_signal, signal.SIGINT)
    log.info("host %s serving %s on %s:%d", agent.host_id, "HTTPS" if tls else "HTTP", host,
             port)
    notify(f"READY=1\nSTATUS=serving on {host}:{port} as {agent.host_id}")

    gevent.wait([stop_requested, agent.crashed, agent.left], count=1)
    crashed = agent.crashed.ready()
    log.info("stopping (%s)", "a service died" if crashed else
             "the host left the cluster" if agent.left.is_set() else "signal")
    notify("STOPPING=1")
    agent.leave_cluster()  # first: the cluster sees us go at once
    agent.end_waits()
    server.stop(timeout=1)
    agent.stop()
    if crashed and isinstance(agent.crashed.exception, FatalError):
        print(f"flynn-host: {agent.crashed.exception}", file=sys.stderr)
    return EXIT_FAILURE if crashed else EXIT_OK
