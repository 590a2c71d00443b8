"""The HTTP server socket for the agent's WSGI app (gevent's pywsgi)."""
from __future__ import annotations

import logging
import re
import socket

from gevent import pywsgi
from gevent.pywsgi import WSGIHandler, WSGIServer

#: environ key an application sets once the request's connection has become a WebSocket
UPGRADED = "flynn.upgraded"

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


#: as http.client.parse_headers: longest header line, most header lines; and the whole block
MAX_HEADER_LINE = 65536
MAX_HEADERS = 100
MAX_HEADER_BYTES = 65536
#: an RFC 9110 token, what a field name must be
HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def read_headers(fp) -> pywsgi.OldMessage:
    """Request headers as pywsgi's headers_factory returns them, without the email package.
    http.client.parse_headers reads the lines, then hands them to email.parser, which is the
    largest single cost of a small request; with a thousand long-poll clients re-polling after
    every event, it dominated the agent's CPU. Same limits, and the same result for well-formed
    headers. A malformed block sets `status` (pywsgi answers 400), as gunicorn refuses the same:
    a field name that is not a token, obsolete line folding (RFC 9112 lets a server refuse it;
    folded lines escaped the header count, and joining them was quadratic), a block over
    MAX_HEADER_BYTES, a NUL or a bare CR, and the request-smuggling gadgets around the body's
    length (below)."""
    message = pywsgi.OldMessage()
    total = 0
    while True:
        line = fp.readline(MAX_HEADER_LINE + 1)
        total += len(line)
        if len(line) > MAX_HEADER_LINE:
            message.status = "Line too long"
            return message
        if total > MAX_HEADER_BYTES:
            message.status = f"header block over {MAX_HEADER_BYTES} bytes"
            return message
        if line in (b"\r\n", b"\n", b""):
            message.status = _framing_problem(message)
            return message
        if len(message._headers) >= MAX_HEADERS:
            message.status = f"more than {MAX_HEADERS} headers"
            return message
        text = line.decode("iso-8859-1")
        if text[0] in " \t":
            message.status = "obsolete line folding"
            return message
        content = text.rstrip("\r\n")
        if "\0" in content or "\r" in content:
            message.status = "a NUL or a bare CR in a header"
            return message
        name, colon, value = content.partition(":")
        if not colon or not HEADER_NAME.match(name):
            # RFC 9110 field names are tokens: a space, NUL or control character in one is a
            # malformed request (400, as gunicorn answers), not a header to pass on
            message.status = "Invalid header line"
            return message
        message._headers.append((name, value.lstrip(" \t")))


def _framing_problem(message) -> str:
    """Why the headers would let two servers read the body's length differently ("" if not): a
    Content-Length that is not plain digits or comes twice, one beside Transfer-Encoding, a
    transfer coding other than chunked."""
    lengths = [v for k, v in message._headers if k.lower() == "content-length"]
    codings = [v for k, v in message._headers if k.lower() == "transfer-encoding"]
    if len(lengths) > 1:
        return "more than one Content-Length"
    if lengths and not lengths[0].isdigit():
        return "a Content-Length that is not a number"
    if lengths and codings:
        return "Content-Length with Transfer-Encoding"
    if len(codings) > 1 or (codings and codings[0].lower() != "chunked"):
        return "a Transfer-Encoding other than chunked"
    return ""


class _Handler(WSGIHandler):
    def MessageClass(self, fp, *args):
        return read_headers(fp)

    def get_environ(self):
        env = super().get_environ()
        # the request target as sent, before pywsgi decodes it into PATH_INFO (gunicorn gives
        # the same name): the app checks the path's escapes there (host.api.http.path_problem)
        env["RAW_URI"] = self.path
        return env

    def handle_one_request(self):
        result = super().handle_one_request()
        if self.environ is not None and self.environ.get(UPGRADED):
            # The connection is a WebSocket's now, read through a dup of the socket
            # (simple_websocket). pywsgi's own close reads the socket once first, which can
            # swallow the client's close frame and leave the WebSocket waiting for it forever:
            # skip that, and let the server just close our descriptor.
            self.socket = None
            return None
        return result

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
