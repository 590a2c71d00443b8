"""Configuration: declared once, flags and environment, validated, frozen."""
import ipaddress
import socket
import subprocess
import sys
import tempfile
import unittest

from host.config import ConfigError, HelpRequested, guess_external_ip, load_config, parse_flags
from tests.support import FLYNN_HOST


class ConfigTest(unittest.TestCase):
    def test_defaults(self):
        config = load_config([], environ={})
        # an open API (no token) stays on this machine unless told otherwise
        self.assertEqual(config.listen, ("127.0.0.1", 1113))
        self.assertEqual(config.ports, (49152, 65535))
        self.assertEqual(config.bind, "")
        self.assertIsNone(config.id)
        self.assertFalse(config.force)
        self.assertGreater(config.memory_mb, 0)
        self.assertGreater(config.cpu_shares, 0)
        self.assertEqual(config.retain_ended, 100)
        self.assertEqual(config.event_buffer, 10000)
        self.assertEqual(config.max_body_bytes, 1 << 20)

    def test_single_and_double_dash_and_equals(self):
        config = load_config(["-external", "10.0.0.5", "--listen=127.0.0.1:2000", "-force",
                              "--ports", "50000-50010", "-attribute", "zone=a",
                              "--attribute=disk=ssd"], environ={})
        self.assertEqual(config.external, "10.0.0.5")
        self.assertEqual(config.listen, ("127.0.0.1", 2000))
        self.assertTrue(config.force)
        self.assertEqual(config.ports, (50000, 50010))
        self.assertEqual(config.attributes, {"zone": "a", "disk": "ssd"})
        self.assertEqual(config.addr, "10.0.0.5:2000")

    def test_environment_and_flag_precedence(self):
        env = {"FLYNN_HOST_EXTERNAL": "10.1.1.1", "FLYNN_HOST_MEMORY_MB": "512",
               "FLYNN_HOST_ATTRIBUTE": "a=1,b=2", "FLYNN_HOST_FORCE": "false"}
        config = load_config(["-memory-mb", "256"], environ=env)
        self.assertEqual(config.external, "10.1.1.1")
        self.assertEqual(config.memory_mb, 256)
        self.assertEqual(config.attributes, {"a": "1", "b": "2"})
        self.assertFalse(config.force)

    def test_frozen(self):
        config = load_config([], environ={})
        with self.assertRaises(AttributeError):
            config.force = True

    def test_bad_values_name_the_setting(self):
        cases = [
            (["-external", "not-an-ip"], "-external"),
            (["-listen", "1113"], "-listen"),
            (["-listen", "0.0.0.0:99999"], "-listen"),
            (["-ports", "6000-5000"], "-ports"),
            (["-ports", "x"], "-ports"),
            (["-memory-mb", "-5"], "-memory-mb"),
            (["-attribute", "novalue"], "-attribute"),
            (["-id", "a/b"], "-id"),
            (["-log-level", "loud"], "-log-level"),
            (["-nope"], "unknown flag -nope"),
            (["-listen"], "needs a value"),
            (["stray"], "unexpected argument"),
        ]
        for argv, fragment in cases:
            with self.subTest(argv=argv):
                with self.assertRaises(ConfigError) as caught:
                    load_config(argv, environ={})
                self.assertIn(fragment, str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            load_config([], environ={"FLYNN_HOST_PORTS": "1-0"})
        self.assertIn("FLYNN_HOST_PORTS", str(caught.exception))

    def test_help(self):
        with self.assertRaises(HelpRequested):
            parse_flags(["-help"])

    def test_daemon_rejects_bad_value_with_one_line_and_exit_2(self):
        proc = subprocess.run([sys.executable, FLYNN_HOST, "-ports", "9-1"], capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(proc.returncode, 2)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertIn("-ports", lines[0])
        self.assertNotIn("Traceback", proc.stderr)

    def test_daemon_help_lists_every_flag(self):
        proc = subprocess.run([sys.executable, FLYNN_HOST, "--help"], capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(proc.returncode, 0)
        for flag in ("-external", "-listen", "-bind", "-id", "-state-dir", "-force", "-ports",
                     "-memory-mb", "-cpu-shares", "-attribute", "-log-level"):
            self.assertIn(flag + " ", proc.stdout)

    def test_unknown_subcommand_is_a_usage_error(self):
        proc = subprocess.run([sys.executable, FLYNN_HOST, "frobnicate"], capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("unknown command", proc.stderr)


class DaemonStartFailureTest(unittest.TestCase):
    """Start-up problems that are not bad flags: one clear line and exit 1, no traceback."""

    def run_daemon(self, *args):
        state = tempfile.mkdtemp()
        proc = subprocess.run([sys.executable, FLYNN_HOST, "-state-dir", state, *args],
                              capture_output=True, text=True, timeout=60)
        self.assertNotIn("Traceback", proc.stderr)
        return proc

    def test_listen_address_in_use(self):
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            port = held.getsockname()[1]
            proc = self.run_daemon("-listen", f"127.0.0.1:{port}", "-id", "inuse")
        self.assertEqual(proc.returncode, 1)
        self.assertIn(f"cannot listen on 127.0.0.1:{port}", proc.stderr)

    def test_state_dir_that_is_a_file(self):
        with tempfile.NamedTemporaryFile() as not_a_dir:
            proc = subprocess.run([sys.executable, FLYNN_HOST, "-state-dir", not_a_dir.name],
                                  capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("cannot start", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)


class MachineDefaultsTest(unittest.TestCase):
    def test_external_ip_guess_is_an_address(self):
        ipaddress.ip_address(guess_external_ip())
