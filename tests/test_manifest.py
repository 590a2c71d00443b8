"""The layer-0 manifest: loading, the errors that name the field, templates; and the daemon's
exit 2 on an invalid one."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

from host.layer0.bootstrap import DEFAULT_MANIFEST
from host.layer0.manifest import ManifestError, load_manifest, parse_manifest, render, render_args
from tests.support import FLYNN_HOST

ETCD = {"id": "etcd", "role": "etcd", "image": "flynn/etcd:3.5.1", "command": ["{etcd_binary}"],
        "args": ["--name", "{etcd.name}", "{etcd.bootstrap}"],
        "ports": {"client": "{etcd_client_port}", "peer": 2380}, "data": True,
        "health": {"http": "{etcd.client_url}/health"}}


class ManifestTest(unittest.TestCase):
    def assertInvalid(self, data, fragment):
        with self.assertRaises(ManifestError) as caught:
            parse_manifest(data)
        self.assertIn(fragment, str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))

    def test_the_shipped_manifest_loads(self):
        services = load_manifest(DEFAULT_MANIFEST)
        self.assertEqual([(s.id, s.role, s.data) for s in services], [("etcd", "etcd", "/data")])
        # the repository's top-level manifest.json is the same file
        top = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "manifest.json")
        self.assertEqual(load_manifest(top), services)

    def test_services_in_order_with_earlier_ones_named(self):
        later = {"id": "web", "image": "busybox", "args": ["{services.etcd.ports.client}",
                                                            "{etcd_peers}", "{etcd_discovery}",
                                                            "{etcd_endpoints}"],
                 "env": {"ETCD": "http://{services.etcd.external_ip}:{services.etcd.ports.peer}",
                         "HOME_DIR": "{env.HOME}"},
                 "expose_env": ["TZ"], "health": {"tcp": "{external_ip}:80", "timeout_s": 5}}
        services = parse_manifest([ETCD, later])
        self.assertEqual([s.id for s in services], ["etcd", "web"])
        self.assertEqual(services[0].data, "/data")  # true: the default mount point
        self.assertEqual(services[1].health.timeout_s, 5.0)
        self.assertEqual(services[1].expose_env, ("TZ",))

    def test_invalid_manifests_name_the_field(self):
        cases = [
            ({"id": "etcd"}, "manifest: must be a JSON array of services"),
            (["etcd"], "[0]: must be an object"),
            ([{}], "[0].id: required"),
            ([{"id": "a b", "image": "x"}], "[0].id: must be 1 to 128 characters"),
            ([{"id": "x"}], "[0].image: required (or a command"),
            ([{"id": "x", "image": ""}], "[0].image: must be a non-empty image reference"),
            ([{"id": "x", "image": "i", "imgae": "j"}], "[0]: unknown field(s) imgae"),
            ([{"id": "x", "image": "i"}, {"id": "x", "image": "i"}], "[1].id: 'x' is used"),
            ([{"id": "x", "image": "i", "args": "-v"}], "[0].args: must be a list of strings"),
            ([{"id": "x", "image": "i", "args": ["{nope}"]}], "[0].args[0]: {nope}: unknown"),
            ([{"id": "x", "image": "i", "args": ["{ports.web}"]}],
             "[0].args[0]: {ports.web}: no such port"),
            ([{"id": "x", "image": "i", "args": ["{etcd.name}"]}],
             '[0].args[0]: {etcd.name}: only the service with "role": "etcd"'),
            ([{"id": "x", "image": "i", "args": ["{services.y.external_ip}"]}, dict(ETCD, id="y")],
             "[0].args[0]: {services.y.external_ip}: services can name only services listed "
             "before"),
            ([{"id": "x", "image": "i", "args": ["a{b"]}], "[0].args[0]: a lone '{'"),
            ([{"id": "x", "image": "i", "args": ["{a b}"]}], "{a b} is not a variable name"),
            ([dict(ETCD, args=["--x={etcd.bootstrap}"])],
             "[0].args[0]: {etcd.bootstrap} is a list: it must be a whole argument"),
            ([dict(ETCD, env={"B": "{etcd.bootstrap}"})], "[0].env.B: {etcd.bootstrap} is a list"),
            ([{"id": "x", "image": "i", "env": {"A": 1}}], "[0].env.A: must be a string"),
            ([{"id": "x", "image": "i", "env": {"A-B": "1"}}], "[0].env.A-B: not a variable name"),
            ([{"id": "x", "image": "i", "ports": [2379]}], "[0].ports: must be an object"),
            ([{"id": "x", "image": "i", "ports": {"a": 70000}}], "[0].ports.a: must be from 1"),
            ([{"id": "x", "image": "i", "ports": {"a": True}}], "[0].ports.a: must be a port"),
            ([{"id": "x", "image": "i", "data": "data"}], "[0].data: must be true, false, or an"),
            ([{"id": "x", "image": "i", "health": {}}], "[0].health: must have exactly one of"),
            ([{"id": "x", "image": "i", "health": {"http": "u", "tcp": "t"}}],
             "[0].health: must have exactly one of"),
            ([{"id": "x", "image": "i", "health": {"http": "u", "timeout_s": 0}}],
             "[0].health.timeout_s"),
            ([{"id": "x", "image": "i", "role": "dns"}], "[0].role: must be one of etcd"),
            ([ETCD, dict(ETCD, id="etcd2")], "[1].role: only one service may have role 'etcd'"),
            ([{"id": "x", "image": "i", "command": []}], "[0].command: must not be empty"),
        ]
        for data, fragment in cases:
            with self.subTest(data=data):
                self.assertInvalid(data, fragment)

    def test_file_errors_name_the_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.json")
            for content, fragment in (("[{", "not valid JSON"), ("[" * 100000, "nested too deeply"),
                                      (json.dumps([{"id": "x"}]), "[0].image: required")):
                with open(path, "w") as f:
                    f.write(content)
                with self.assertRaises(ManifestError) as caught:
                    load_manifest(path)
                self.assertIn(f"manifest {path}: ", str(caught.exception))
                self.assertIn(fragment, str(caught.exception))
            with self.assertRaises(ManifestError) as caught:
                load_manifest(os.path.join(tmp, "missing.json"))
            self.assertIn("cannot be read", str(caught.exception))

    def test_templates(self):
        variables = {"a": "1", "ports.client": 2379, "etcd.bootstrap": ["--x", "y"]}
        self.assertEqual(render("http://{a}:{ports.client}/{{raw}}", variables),
                         "http://1:2379/{raw}")
        self.assertEqual(render_args(["-p", "{ports.client}", "{etcd.bootstrap}", "z"],
                                     variables), ["-p", "2379", "--x", "y", "z"])
        self.assertEqual(render_args(["{etcd.bootstrap}"], {"etcd.bootstrap": []}), [])


class DaemonManifestTest(unittest.TestCase):
    def run_daemon(self, manifest_text: str):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "manifest.json")
            with open(path, "w") as f:
                f.write(manifest_text)
            env = {k: v for k, v in os.environ.items() if k != "FLYNN_HOST_ETCD_ENDPOINTS"}
            return subprocess.run([sys.executable, FLYNN_HOST, "-manifest", path,
                                   "-state-dir", os.path.join(tmp, "state")], env=env,
                                  capture_output=True, text=True, timeout=60), path

    def test_an_invalid_manifest_is_exit_2_with_one_line_naming_the_field(self):
        proc, path = self.run_daemon(json.dumps([{"id": "etcd", "role": "etcd",
                                                  "image": "flynn/etcd", "ports": {"c": "x"},
                                                  "args": ["{ports.client}"]}]))
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertEqual(proc.stderr.strip().splitlines(), [
            f"flynn-host: manifest {path}: [0].args[0]: {{ports.client}}: no such port is "
            "declared"])

    def test_a_manifest_without_etcd_needs_etcd_endpoints(self):
        proc, _ = self.run_daemon(json.dumps([{"id": "web", "image": "busybox"}]))
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn('no service has "role": "etcd"; give -etcd-endpoints', proc.stderr)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)

    def test_jobs_mode_needs_an_explicit_external_address(self):
        env = {k: v for k, v in os.environ.items() if k != "FLYNN_HOST_EXTERNAL"}
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([sys.executable, FLYNN_HOST, "-layer0-mode", "jobs",
                                   "-state-dir", tmp], env=env, capture_output=True, text=True,
                                  timeout=60)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("-external IP is required with -layer0-mode jobs", proc.stderr)

    def test_a_missing_manifest_file_is_a_usage_error(self):
        proc = subprocess.run([sys.executable, FLYNN_HOST, "-manifest", "/nonexistent.json"],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("-manifest: invalid value '/nonexistent.json': no such file", proc.stderr)
