"""The HTTP server socket and request-header parsing the agent serves with."""
import http.client
import io
import socket
import unittest

from host.runtime.fake import FakeRuntime
from host.server import ServerLimits, listen_socket, read_headers
from tests.support import InProcessAgent

MAX_HEADERS = ServerLimits().max_headers


class ListenSocketTest(unittest.TestCase):
    def test_no_nagle_delay_on_kept_alive_connections(self):
        sock = listen_socket("127.0.0.1", 0)
        try:
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
            client = socket.create_connection(sock.getsockname())
            accepted, _ = sock.accept()
            self.assertEqual(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
            accepted.close()
            client.close()
        finally:
            sock.close()


class ReadHeadersTest(unittest.TestCase):
    BLOCKS = [
        b"Host: a\r\n\r\n",
        b"Host: a\r\nContent-Length: 12\r\nContent-Type: application/json\r\n\r\n",
        b"X-Empty:\r\nX-Spaces:   padded  \r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
        b"host: lower\nAccept: */*\n\n",
        b"Host: caf\xe9\r\n\r\nbody after the headers",
    ]

    def test_same_as_the_standard_library(self):
        for block in self.BLOCKS:
            with self.subTest(block=block):
                ours = read_headers(io.BytesIO(block))
                theirs = http.client.parse_headers(io.BytesIO(block))
                self.assertEqual(ours._headers, theirs._headers)
                self.assertEqual(ours.get("content-length"), theirs.get("content-length"))
                self.assertEqual(ours.status, "")

    def test_stops_at_the_blank_line(self):
        stream = io.BytesIO(b"Host: a\r\n\r\nrest")
        read_headers(stream)
        self.assertEqual(stream.read(), b"rest")

    def test_obsolete_line_folding_is_refused(self):
        # RFC 9112 lets a server refuse it; folded lines escaped the header count and made the
        # parse quadratic
        message = read_headers(io.BytesIO(b"X-Long: one\r\n two\r\n\r\n"))
        self.assertEqual(message.status, "obsolete line folding")

    def test_request_smuggling_gadgets_are_refused(self):
        cases = {b"Content-Length: 5\r\nContent-Length: 5\r\n": "more than one Content-Length",
                 b"Content-Length: +5\r\n": "not a number",
                 b"Content-Length: -1\r\n": "not a number",
                 b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n": "with Transfer-Enc",
                 b"Transfer-Encoding: gzip, chunked\r\n": "other than chunked",
                 b"X: a\rb\r\n": "a bare CR",
                 b"X: a\x00b\r\n": "a NUL"}
        for block, status in cases.items():
            with self.subTest(block=block):
                self.assertIn(status, read_headers(io.BytesIO(block + b"\r\n")).status)
        too_big = b"".join(b"X%d: %s\r\n" % (i, b"v" * 1000) for i in range(70)) + b"\r\n"
        self.assertIn("header block over", read_headers(io.BytesIO(too_big)).status)
        ok = read_headers(io.BytesIO(b"Transfer-Encoding: chunked\r\n\r\n"))
        self.assertEqual(ok.status, "")

    def test_malformed_blocks_set_a_status(self):
        for block in (b"no colon here\r\n\r\n", b" leading fold\r\n\r\n", b": no name\r\n\r\n",
                      b"Bad Name : x\r\n\r\n", b"X: " + b"a" * 70000 + b"\r\n\r\n",
                      # RFC 9110: a field name is a token
                      b"Bad Name: x\r\n\r\n", b"X\x00Y: x\r\n\r\n", b"X\x07: x\r\n\r\n",
                      b"X(Y): x\r\n\r\n", b"X\xe9: x\r\n\r\n", b"X\tY: x\r\n\r\n",
                      b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n"):
            with self.subTest(block=block[:30]):
                self.assertNotEqual(read_headers(io.BytesIO(block)).status, "")


class MalformedRequestTest(unittest.TestCase):
    def test_bad_header_lines_get_400_and_the_server_goes_on(self):
        host = InProcessAgent(FakeRuntime())
        try:
            port = host.server.server_port
            for request in (b"GET /host/status HTTP/1.1\r\nno colon\r\n\r\n",
                            b"GET /host/status HTTP/1.1\r\nBad Name: x\r\n\r\n",
                            b"GET /host/status HTTP/1.1\r\nX\x00Y: x\r\n\r\n",
                            b"POST /host/jobs/x/signal HTTP/1.1\r\nContent-Length: 5\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                            b"GET /host/status HTTP/1.1\r\nX: one\r\n two\r\n\r\n",
                            b"GET /host/status HTTP/1.1\r\n" + b"".join(
                                b"H%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n"):
                with self.assertLogs("host.wsgi") as logged, \
                        socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.sendall(request)
                    self.assertTrue(sock.recv(100).startswith(b"HTTP/1.1 400"))
                self.assertIn("Invalid headers status", logged.output[0])
            self.assertEqual(host.client.get("/host/status").status_code, 200)
        finally:
            host.close()
