"""The attach WebSocket bounds what a client can make the agent hold: no compression (a small
deflated frame inflates into hundreds of megabytes inside the library, before any size check),
and a message over the limit closes the connection with 1009."""
import os
import socket
import struct
import unittest

from host.api.attach import MAX_MESSAGE_BYTES
from host.runtime.fake import FakeRuntime
from tests.support import InProcessAgent

HANDSHAKE = ("GET /host/jobs/nobody-yet/attach HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))  # as RFC 6455 masks
    return header + mask + body


class AttachLimitsTest(unittest.TestCase):
    def setUp(self):
        self.host = InProcessAgent(FakeRuntime())
        self.port = self.host.server.server_port

    def tearDown(self):
        self.host.close()

    def handshake(self) -> tuple:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(HANDSHAKE.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        head, _, rest = answer.partition(b"\r\n\r\n")
        return sock, head.decode(), rest

    def test_compression_is_not_negotiated(self):
        sock, head, _ = self.handshake()
        with sock:
            self.assertTrue(head.startswith("HTTP/1.1 101"), head)
            self.assertNotIn("sec-websocket-extensions", head.lower())

    def test_a_message_over_the_limit_closes_with_1009(self):
        sock, head, data = self.handshake()
        with sock:
            self.assertTrue(head.startswith("HTTP/1.1 101"), head)
            try:
                sock.sendall(masked_frame(0x2, b"\x00" * (MAX_MESSAGE_BYTES + 1)))
            except OSError:
                pass  # the agent may close before it has read all of it
            while len(data) < 4:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        self.assertGreaterEqual(len(data), 4, data)
        self.assertEqual(data[0] & 0x0F, 0x8, data[:8])  # a close frame
        self.assertEqual(struct.unpack("!H", data[2:4])[0], 1009)
        self.assertEqual(self.host.client.get("/host/status").status_code, 200)
