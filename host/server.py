"""The HTTP server socket for the agent's WSGI app (gevent's pywsgi)."""
from __future__ import annotations

import logging
import socket

from gevent.pywsgi import WSGIHandler, WSGIServer

#: pending connections the kernel queues for us: long-poll clients reconnect in bursts
LISTEN_BACKLOG = 1024


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket with TCP_NODELAY, which accepted connections inherit. pywsgi writes a
    response's headers and body in two sends; with Nagle's algorithm the body then waits for the
    client's delayed ACK, adding ~40 ms to every request on a kept-alive connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class _Handler(WSGIHandler):
    def log_request(self):
        # pywsgi formats the access line even with no log to write it to: a measurable share
        # of a long-poll's cost with many clients
        if self.server.access_log_enabled:
            super().log_request()


def wsgi_server(app, host: str, port: int) -> WSGIServer:
    """A started server for `app`. Raises OSError when the address cannot be bound."""
    access = logging.getLogger("host.access")
    server = WSGIServer(listen_socket(host, port), app, log=access, handler_class=_Handler,
                        error_log=logging.getLogger("host.wsgi"))
    server.access_log_enabled = access.isEnabledFor(logging.DEBUG)
    server.start()
    return server
