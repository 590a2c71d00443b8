"""The HTTP server socket for the agent's WSGI app (gevent's pywsgi)."""
from __future__ import annotations

import logging
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Optional

import gevent
from gevent import pywsgi
from gevent.pywsgi import WSGIHandler, WSGIServer

log = logging.getLogger(__name__)

#: environ key an application sets once the request's connection has become a WebSocket
UPGRADED = "flynn.upgraded"

#: environ key holding the request's connection (gunicorn's workers give `gunicorn.socket`)
SOCKET = "flynn.socket"

#: pending connections the kernel queues for us: long-poll clients reconnect in bursts
LISTEN_BACKLOG = 1024


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket with TCP_NODELAY, which accepted connections inherit. pywsgi writes a
    response's headers and body in two sends (ours, one for a small answer, but a streamed
    one still writes in pieces); with Nagle's algorithm a second piece waits for the client's
    delayed ACK, adding ~40 ms to every request on a kept-alive connection."""
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


#: as http.client.parse_headers: the longest header line
MAX_HEADER_LINE = 65536


@dataclass(frozen=True)
class ServerLimits:
    """What one connection may take of the agent (the -max-headers ... settings)."""
    max_headers: int = 100              # header lines of one request
    max_header_bytes: int = 65536       # the whole header block
    header_timeout: float = 10.0        # seconds from a request's first byte to its last header
    read_timeout: float = 60.0          # seconds a read may wait: a body, or the next request
    max_connections: int = 4096

    @classmethod
    def of(cls, config) -> "ServerLimits":
        return cls(max_headers=config.max_headers, max_header_bytes=config.max_header_bytes,
                   header_timeout=config.header_timeout, read_timeout=config.read_timeout,
                   max_connections=config.max_connections)


class HeadersTooSlow(OSError):
    """The client took longer than -header-timeout to send a request's line and headers (an
    OSError: pywsgi drops a connection whose request line fails so, and answers 408 when the
    headers do)."""
#: an RFC 9110 token, what a field name must be
HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def read_headers(fp, limits: ServerLimits = ServerLimits()) -> pywsgi.OldMessage:
    """Request headers as pywsgi's headers_factory returns them, without the email package.
    http.client.parse_headers reads the lines, then hands them to email.parser, which is the
    largest single cost of a small request; with a thousand long-poll clients re-polling after
    every event, it dominated the agent's CPU. Same limits, and the same result for well-formed
    headers. A malformed block sets `status` (pywsgi answers 400), as gunicorn refuses the same:
    a field name that is not a token, obsolete line folding (RFC 9112 lets a server refuse it;
    folded lines escaped the header count, and joining them was quadratic), more lines or bytes
    than `limits` allow, a NUL or a bare CR, and the request-smuggling gadgets around the body's
    length (below)."""
    message = pywsgi.OldMessage()
    total = 0
    while True:
        line = fp.readline(MAX_HEADER_LINE + 1)
        total += len(line)
        if len(line) > MAX_HEADER_LINE:
            message.status = "Line too long"
            return message
        if total > limits.max_header_bytes:
            message.status = f"header block over {limits.max_header_bytes} bytes"
            return message
        if line in (b"\r\n", b"\n", b""):
            message.status = _framing_problem(message)
            return message
        if len(message._headers) >= limits.max_headers:
            message.status = f"more than {limits.max_headers} headers"
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


def client_socket(environ):
    """The request's connection under either server we run under (None under another)."""
    return environ.get(SOCKET) or environ.get("gunicorn.socket")


#: the largest first chunk sent in one piece with the headers (a bigger one is sent as it is,
#: not copied)
_ONE_SEND_MAX = 64 * 1024

_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                     b"Content-Type: text/plain\r\nContent-Length: 45\r\n\r\n"
                     b"the request's headers took too long to arrive")


class _Handler(WSGIHandler):
    """pywsgi's handler with our header parser, limits on how slowly a client may send, and
    the connection in the environ (SOCKET)."""
    _header_clock = None

    def handle(self):
        # Every read and write on the connection waits at most read_timeout: a body trickling
        # in, a kept-alive connection with no next request, a client that reads nothing.
        self.socket.settimeout(self.server.limits.read_timeout)
        super().handle()

    def MessageClass(self, fp, *args):
        return read_headers(fp, self.server.limits)

    def read_requestline(self):
        # Waiting for a request to begin is idleness (read_timeout); from its first byte, the
        # line and the headers must all arrive within header_timeout, however slowly they
        # trickle (one byte a minute would otherwise hold the connection for hours).
        me = gevent.getcurrent()
        self.server.idle.add(me)  # a kept-alive connection between requests
        try:
            self.rfile.peek(1)
        finally:
            self.server.idle.discard(me)
        limit = self.server.limits.header_timeout
        self._header_clock = gevent.Timeout.start_new(
            limit, HeadersTooSlow(f"request headers not complete within {limit:g}s"))
        return super().read_requestline()

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        finally:
            self._stop_header_clock()

    def _stop_header_clock(self):
        if self._header_clock is not None:
            self._header_clock.close()
            self._header_clock = None

    def _write_with_headers(self, data):
        """The headers and the first chunk of the body in one send, not two (pywsgi's own
        sends the headers first, then the body): a small answer, a long-poll's above all, is
        then one system call. In a profile of 1,000 long-poll clients, sends were the largest
        cost of the serving loop, half of them for headers alone (docs/PERFORMANCE.md)."""
        self.headers_sent = True
        self.finalize_headers()
        head = bytearray(b"HTTP/1.1 ")
        head += self.status
        head += b"\r\n"
        for header, value in self.response_headers:
            head += header
            head += b": "
            head += value
            head += b"\r\n"
        head += b"\r\n"
        if self.response_use_chunked or len(data) > _ONE_SEND_MAX or not data:
            self._sendall(head)
            self._write(data)
            return
        head += data
        self._sendall(head)

    def _handle_client_error(self, ex):
        if isinstance(ex, HeadersTooSlow):
            self.close_connection = True
            return ("408", _TIMEOUT_RESPONSE)
        return super()._handle_client_error(ex)

    def get_environ(self):
        env = super().get_environ()
        # the request target as sent, before pywsgi decodes it into PATH_INFO (gunicorn gives
        # the same name): the app checks the path's escapes there (host.api.http.path_problem)
        env["RAW_URI"] = self.path
        env[SOCKET] = self.socket
        return env

    def handle_one_request(self):
        try:
            result = super().handle_one_request()
        finally:
            self._stop_header_clock()
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


class _Server(WSGIServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.idle = set()  # handlers waiting for a kept-alive connection's next request

    def stop(self, timeout=None):
        """Stop serving: connections idle between requests are closed at once, requests in
        flight get up to `timeout` seconds to finish (then they are killed)."""
        gevent.killall(list(self.idle), block=False)
        super().stop(timeout)

    def wrap_socket_and_handle(self, client_socket, address):
        # the TLS handshake runs before the handler: bounded as the headers are
        client_socket.settimeout(self.limits.header_timeout)
        try:
            return super().wrap_socket_and_handle(client_socket, address)
        except (ssl.SSLError, OSError) as e:
            # a client that does not trust us, speaks plain HTTP, or leaves mid-handshake: its
            # business, not a traceback in our log
            log.debug("TLS handshake with %s failed: %s", address[0], e)


def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS 1.2 and up with the certificate chain and key; raises OSError or ssl.SSLError."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def wsgi_server(app, host: str, port: int, limits: ServerLimits = ServerLimits(),
                tls: Optional[ssl.SSLContext] = None) -> WSGIServer:
    """A started server for `app` (HTTPS with `tls`). Raises OSError when the address cannot be
    bound. At most limits.max_connections are served at once; others wait in the backlog."""
    access = logging.getLogger("host.access")
    ssl_args = {"ssl_context": tls} if tls is not None else {}
    server = _Server(listen_socket(host, port), app, log=access, handler_class=_Handler,
                     error_log=logging.getLogger("host.wsgi"), spawn=limits.max_connections,
                     **ssl_args)
    server.limits = limits
    server.access_log_enabled = access.isEnabledFor(logging.DEBUG)
    server.start()
    return server
