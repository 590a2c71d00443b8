"""The layer-0 manifest: the services a host brings up before it registers (docs/LAYER0.md).

A manifest is a JSON array of services, as the original's was. Each service is started in order,
as a job of this host (or, outside Docker and without its image, as a local process), and waited
for until its health check passes; a later service can name an earlier one's address and ports.

Strings in `args`, `command`, `entrypoint`, `env`, `ports` and `health` are templates: `{name}`
is replaced by the variable `name` (`{{` and `}}` are literal braces). An argument that is exactly
one variable holding a list (`{etcd.bootstrap}`) becomes that many arguments. Every name is checked
when the manifest is loaded, so a typo is an error naming the field, not a service started with a
hole in its command line.

Stdlib only: loading a manifest needs nothing of the agent.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Optional

from host.fields import known_fields
from host.types import id_problem

SERVICE_FIELDS = {"id", "image", "command", "entrypoint", "args", "env", "expose_env", "ports",
                  "data", "health", "role"}
HEALTH_FIELDS = {"http", "tcp", "timeout_s"}
ROLES = ("etcd",)
#: where a service's data volume is mounted in its container when `data` is just true
DEFAULT_DATA_PATH = "/data"
DEFAULT_HEALTH_TIMEOUT_S = 60.0

#: variables every service may use
HOST_VARIABLES = ("external_ip", "host_id", "listen_port", "etcd_client_port", "etcd_peer_port",
                  "etcd_peers", "etcd_discovery", "etcd_endpoints", "etcd_binary", "data_dir")
#: variables only the service with role "etcd" may use (the agent plans its membership)
ETCD_VARIABLES = ("etcd.name", "etcd.bootstrap", "etcd.peer_url", "etcd.client_url",
                  "etcd.listen_client_urls")
#: variables whose value is a list: they may only stand alone in one argument
LIST_VARIABLES = ("etcd.bootstrap",)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PORT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ManifestError(Exception):
    """The manifest is not valid; the message is one line naming the field at fault."""


def _fail(path: str, problem: str):
    raise ManifestError(f"{path}: {problem}")


# ---- templates -----------------------------------------------------------------------------

def template_names(text: str, path: str) -> list:
    """The variable names used in a template string; ManifestError when it is malformed."""
    names = []
    for match in _PLACEHOLDER.finditer(text):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        name = match.group(1)
        if name is None:
            _fail(path, f"a lone {token!r} (write {token * 2} for a literal brace)")
        if not _NAME.fullmatch(name):
            _fail(path, f"{{{name}}} is not a variable name")
        names.append(name)
    return names


def render(text: str, variables: dict) -> str:
    """The template with every {name} replaced by str(variables[name])."""
    def replace(match):
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        value = variables[match.group(1)]
        return ",".join(value) if isinstance(value, (list, tuple)) else str(value)
    return _PLACEHOLDER.sub(replace, text)


def render_args(args, variables: dict) -> list:
    """Each argument rendered; one that is exactly a list variable becomes its items."""
    out = []
    for arg in args:
        whole = re.fullmatch(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}", arg)
        if whole and isinstance(variables.get(whole.group(1)), (list, tuple)):
            out.extend(str(item) for item in variables[whole.group(1)])
        else:
            out.append(render(arg, variables))
    return out


# ---- the model -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HealthCheck:
    http: Optional[str] = None   # a URL template: healthy when it answers 2xx
    tcp: Optional[str] = None    # a HOST:PORT template: healthy when it accepts a connection
    timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    image: Optional[str] = None
    command: Optional[tuple] = None     # argv to run it as a local process (outside Docker)
    entrypoint: Optional[tuple] = None
    args: tuple = ()
    env: tuple = ()                     # (name, template) pairs
    expose_env: tuple = ()              # names copied from the agent's environment when set
    ports: tuple = ()                   # (name, template) pairs; rendered, each is a port number
    data: Optional[str] = None          # where its data volume is mounted (None: no data)
    health: Optional[HealthCheck] = None
    role: Optional[str] = None          # "etcd": the agent plans its membership and uses it

    @property
    def health_timeout_s(self) -> float:
        """Seconds it has to pass its health check once started."""
        return self.health.timeout_s if self.health else DEFAULT_HEALTH_TIMEOUT_S

    @property
    def job_prefix(self) -> str:
        """Its jobs are `flynn-<id>-<random>`, as the original named them."""
        return f"flynn-{self.id}-"


# ---- loading ------------------------------------------------------------------------------

def load_manifest(path: str) -> tuple:
    """The services of the manifest file at `path`. Raises ManifestError naming the file and the
    field at fault."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ManifestError(f"manifest {path}: cannot be read: {e.strerror or e}") from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"manifest {path}: not valid JSON: {e}") from None
    except RecursionError:
        raise ManifestError(f"manifest {path}: JSON nested too deeply") from None
    try:
        return parse_manifest(data)
    except ManifestError as e:
        raise ManifestError(f"manifest {path}: {e}") from None


def parse_manifest(data) -> tuple:
    """The services of a decoded manifest (a list of service objects)."""
    if not isinstance(data, list):
        _fail("manifest", "must be a JSON array of services")
    services, seen = [], set()
    roles = set()
    for n, item in enumerate(data):
        service = _service(item, f"[{n}]", earlier=tuple(services))
        if service.id in seen:
            _fail(f"[{n}].id", f"{service.id!r} is used by an earlier service")
        if service.role is not None:
            if service.role in roles:
                _fail(f"[{n}].role", f"only one service may have role {service.role!r}")
            roles.add(service.role)
        seen.add(service.id)
        services.append(service)
    return tuple(services)


def _object(value, path: str, allowed: set) -> dict:
    return known_fields(value, path, allowed, ManifestError)


def _str_list(value, path: str) -> Optional[tuple]:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(path, "must be a list of strings")
    return tuple(value)


def _service(item, path: str, earlier: tuple) -> Service:
    _object(item, path, SERVICE_FIELDS)
    service_id = item.get("id")
    if service_id is None:
        _fail(f"{path}.id", "required")
    problem = id_problem(service_id)
    if problem:
        _fail(f"{path}.id", problem)
    image = item.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        _fail(f"{path}.image", "must be a non-empty image reference")
    command = _str_list(item.get("command"), f"{path}.command")
    if command is not None and not command:
        _fail(f"{path}.command", "must not be empty")
    if image is None and command is None:
        _fail(f"{path}.image", "required (or a command to run it as a local process)")
    role = item.get("role")
    if role is not None and role not in ROLES:
        _fail(f"{path}.role", "must be one of " + ", ".join(ROLES))

    env = item.get("env") or {}
    if not isinstance(env, dict):
        _fail(f"{path}.env", "must be an object of string values")
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            _fail(f"{path}.env.{name}", "not a variable name")
        if not isinstance(value, str):
            _fail(f"{path}.env.{name}", "must be a string")
    expose = _str_list(item.get("expose_env"), f"{path}.expose_env") or ()
    for n, name in enumerate(expose):
        if not _ENV_NAME.match(name):
            _fail(f"{path}.expose_env[{n}]", f"{name!r} is not a variable name")

    ports = item.get("ports") or {}
    if not isinstance(ports, dict):
        _fail(f"{path}.ports", 'must be an object of named ports, e.g. {"client": 2379}')
    port_items = []
    for name, value in ports.items():
        if not _PORT_NAME.match(name):
            _fail(f"{path}.ports.{name}", "not a port name (letters, digits, _)")
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= 65535:
                _fail(f"{path}.ports.{name}", "must be from 1 to 65535")
            value = str(value)
        elif not isinstance(value, str):
            _fail(f"{path}.ports.{name}", "must be a port number or a template")
        port_items.append((name, value))

    data = item.get("data")
    if data is True:
        data = DEFAULT_DATA_PATH
    elif data is False:
        data = None
    elif data is not None and (not isinstance(data, str) or not data.startswith("/")):
        _fail(f"{path}.data", "must be true, false, or an absolute path in the container")

    health = item.get("health")
    if health is not None:
        _object(health, f"{path}.health", HEALTH_FIELDS)
        checks = [k for k in ("http", "tcp") if health.get(k) is not None]
        if len(checks) != 1:
            _fail(f"{path}.health", "must have exactly one of http, tcp")
        if not isinstance(health[checks[0]], str):
            _fail(f"{path}.health.{checks[0]}", "must be a string")
        timeout = health.get("timeout_s", DEFAULT_HEALTH_TIMEOUT_S)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or \
                not 0 < timeout <= 3600:
            _fail(f"{path}.health.timeout_s", "must be a number of seconds from 0 to 3600")
        health = HealthCheck(http=health.get("http"), tcp=health.get("tcp"),
                             timeout_s=float(timeout))

    service = Service(
        id=service_id, image=image, command=command,
        entrypoint=_str_list(item.get("entrypoint"), f"{path}.entrypoint"),
        args=_str_list(item.get("args"), f"{path}.args") or (),
        env=tuple(sorted(env.items())), expose_env=expose, ports=tuple(port_items),
        data=data, health=health, role=role)
    _check_templates(service, path, earlier)
    return service


def allowed_variables(service: Service, earlier: tuple) -> set:
    """Every variable name a template of `service` may use (env.* aside)."""
    names = set(HOST_VARIABLES) | {f"ports.{name}" for name, _ in service.ports}
    if service.role == "etcd":
        names |= set(ETCD_VARIABLES)
    for other in earlier:
        names.add(f"services.{other.id}.external_ip")
        names |= {f"services.{other.id}.ports.{name}" for name, _ in other.ports}
    return names


def _check_templates(service: Service, path: str, earlier: tuple):
    allowed = allowed_variables(service, earlier)
    fields = [(f"{path}.command[{i}]", a) for i, a in enumerate(service.command or ())]
    fields += [(f"{path}.entrypoint[{i}]", a) for i, a in enumerate(service.entrypoint or ())]
    fields += [(f"{path}.args[{i}]", a) for i, a in enumerate(service.args)]
    fields += [(f"{path}.env.{k}", v) for k, v in service.env]
    fields += [(f"{path}.ports.{k}", v) for k, v in service.ports]
    if service.health is not None:
        check = "http" if service.health.http is not None else "tcp"
        fields.append((f"{path}.health.{check}", getattr(service.health, check)))
    in_args = {f for f, _ in fields if ".args[" in f or ".command[" in f or ".entrypoint[" in f}
    for field_path, text in fields:
        for name in template_names(text, field_path):
            if name.startswith("env.") and _ENV_NAME.match(name[4:]):
                continue
            if name not in allowed:
                if name.startswith("ports.") or ".ports." in name:
                    hint = "no such port is declared"
                elif name.startswith("services."):
                    hint = "services can name only services listed before them"
                elif name.startswith("etcd.") and service.role != "etcd":
                    hint = 'only the service with "role": "etcd" can use it'
                else:
                    hint = "unknown variable (see docs/LAYER0.md)"
                _fail(field_path, f"{{{name}}}: {hint}")
            if name in LIST_VARIABLES and (field_path not in in_args or text != f"{{{name}}}"):
                _fail(field_path, f"{{{name}}} is a list: it must be a whole argument by itself")
