"""Port allocation: our table, the machine's sockets, all-or-nothing."""
import socket
import unittest

from host.errors import Conflict
from host.ports import PortAllocator, port_is_free
from host.types import PortSpec


class PortAllocatorTest(unittest.TestCase):
    def test_allocates_rotating_and_releases(self):
        alloc = PortAllocator(100, 102, is_free=lambda ip, port, proto: True)
        a = alloc.reserve([PortSpec(0)])
        b = alloc.reserve([PortSpec(0)])
        self.assertEqual([a[0].port, b[0].port], [100, 101])
        self.assertEqual(a[0].container_port, 100)  # the app listens on $PORT
        alloc.release(a)
        c = alloc.reserve([PortSpec(0)])
        self.assertEqual(c[0].port, 102)  # not straight back to the freed 100
        d = alloc.reserve([PortSpec(0)])
        self.assertEqual(d[0].port, 100)
        with self.assertRaises(Conflict) as caught:
            alloc.reserve([PortSpec(0)])
        self.assertIn("no free tcp port", caught.exception.message)

    def test_skips_ports_busy_on_the_machine(self):
        busy = {100}
        alloc = PortAllocator(100, 101, is_free=lambda ip, port, proto: port not in busy)
        self.assertEqual(alloc.reserve([PortSpec(0)])[0].port, 101)

    def test_fixed_ports_and_protocols(self):
        alloc = PortAllocator(100, 101, is_free=lambda ip, port, proto: True)
        got = alloc.reserve([PortSpec(8080, "tcp", 80)])
        self.assertEqual((got[0].port, got[0].container_port), (8080, 80))
        alloc.reserve([PortSpec(8080, "udp")])  # another protocol is another port
        with self.assertRaises(Conflict) as caught:
            alloc.reserve([PortSpec(8080, "tcp")])
        self.assertIn("8080/tcp is taken by another job", caught.exception.message)

    def test_all_or_nothing(self):
        alloc = PortAllocator(100, 100, is_free=lambda ip, port, proto: port != 9000)
        with self.assertRaises(Conflict) as caught:
            alloc.reserve([PortSpec(0), PortSpec(9000)])
        self.assertIn("9000/tcp is in use", caught.exception.message)
        self.assertEqual(alloc.taken(), set())

    def test_real_bind_check(self):
        with socket.socket() as held:
            held.bind(("0.0.0.0", 0))
            held.listen()
            port = held.getsockname()[1]
            self.assertFalse(port_is_free("", port, "tcp"))
            alloc = PortAllocator(port, port)
            with self.assertRaises(Conflict):
                alloc.reserve([PortSpec(0)])
        self.assertTrue(port_is_free("", port, "tcp"))


    def test_an_address_this_process_does_not_have_cannot_be_checked(self):
        # an agent in a container of its own publishes on the machine's address: it cannot bind
        # there to look, so the engine decides (192.0.2.1 is TEST-NET-1, nobody's address)
        self.assertTrue(port_is_free("192.0.2.1", 8080, "tcp"))
        self.assertEqual(PortAllocator(40000, 40000, "192.0.2.1").reserve([PortSpec(0)])[0].port,
                         40000)
