"""Parsing an untrusted Job spec (decoded JSON) into a host.types.Job.

Every problem raises ValidationError whose message starts with the field's path
(`job.config.ports[0].port: ...`), so a client knows exactly what to fix.
Unknown fields are rejected rather than ignored: a typo such as `memroy_mb` must not silently run a
job without its limit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from host.errors import ValidationError
from host.fields import known_fields
from host.types import NETWORKS, Job, JobConfig, PortSpec, Resources, VolumeSpec, id_problem

JOB_FIELDS = {"id", "config", "resources", "attributes"}
CONFIG_FIELDS = {"image", "cmd", "entrypoint", "env", "working_dir", "user", "tty", "ports",
                 "stdin", "network", "volumes"}
VOLUME_FIELDS = {"name", "target"}
#: a Docker volume name, as the engine accepts one
VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RESOURCE_FIELDS = {"memory_mb", "cpu_shares"}
PORT_FIELDS = {"port", "proto", "container_port"}
PROTOCOLS = ("tcp", "udp")

#: Docker refuses smaller non-zero limits
MIN_MEMORY_MB = 6
MIN_CPU_SHARES = 2
MAX_CPU_SHARES = 262144
MAX_LIST_ITEMS = 1000


def _fail(path: str, problem: str):
    raise ValidationError(f"{path}: {problem}")


def _object(value, path: str, allowed: set) -> dict:
    return known_fields(value, path, allowed, ValidationError)


def _int(value, path: str, low: int, high: int, hint: str = "") -> int:
    # bool is an int subclass in Python; JSON true is not a number
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        _fail(path, hint or f"must be an integer from {low} to {high}")
    return value


def _optional_str(value, path: str):
    if value is not None and not isinstance(value, str):
        _fail(path, "must be a string or null")
    return value


def _str_list(value, path: str):
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(path, "must be a list of strings or null")
    if len(value) > MAX_LIST_ITEMS:
        _fail(path, f"must have at most {MAX_LIST_ITEMS} items")
    return tuple(value)


def _str_map(value, path: str, env: bool = False) -> tuple:
    if value is None:
        return ()
    if not isinstance(value, dict):
        _fail(path, "must be an object of string values")
    for key, val in value.items():
        if not key or (env and "=" in key) or "\0" in key:
            _fail(f"{path}.{key}", "invalid name")
        if not isinstance(val, str):
            _fail(f"{path}.{key}", "must be a string")
    return tuple(sorted(value.items()))


def _port(value, path: str) -> PortSpec:
    _object(value, path, PORT_FIELDS)
    port = _int(value.get("port", 0), f"{path}.port", 0, 65535)
    proto = value.get("proto", "tcp")
    if proto not in PROTOCOLS:
        _fail(f"{path}.proto", "must be one of " + ", ".join(PROTOCOLS))
    container_port = value.get("container_port")
    if container_port is not None:
        container_port = _int(container_port, f"{path}.container_port", 1, 65535)
    return PortSpec(port=port, proto=proto, container_port=container_port)


def _volume(value, path: str) -> VolumeSpec:
    _object(value, path, VOLUME_FIELDS)
    name, target = value.get("name"), value.get("target")
    if not isinstance(name, str) or not VOLUME_NAME.match(name):
        _fail(f"{path}.name", "must be a volume name: 1 to 128 of A-Z a-z 0-9 _ . -, starting "
                              "with a letter or digit")
    if not isinstance(target, str) or not target.startswith("/") or "\0" in target or \
            ":" in target or len(target) > 1024:
        _fail(f"{path}.target", "must be an absolute path in the container")
    return VolumeSpec(name=name, target=target)


def _config(value, path: str) -> JobConfig:
    if value is None:
        _fail(path, "required")
    _object(value, path, CONFIG_FIELDS)
    image = value.get("image")
    if image is None:
        _fail(f"{path}.image", "required")
    if not isinstance(image, str) or not image.strip() or len(image) > 512:
        _fail(f"{path}.image", "must be a non-empty image reference")
    tty, stdin = value.get("tty", False), value.get("stdin", False)
    for name, flag in (("tty", tty), ("stdin", stdin)):
        if not isinstance(flag, bool):
            _fail(f"{path}.{name}", "must be true or false")
    ports = value.get("ports") or []
    if not isinstance(ports, list):
        _fail(f"{path}.ports", "must be a list")
    port_specs = tuple(_port(p, f"{path}.ports[{i}]") for i, p in enumerate(ports))
    fixed = [(p.port, p.proto) for p in port_specs if p.port]
    if len(fixed) != len(set(fixed)):
        _fail(f"{path}.ports", "the same port is asked for twice")
    network = value.get("network", "bridge")
    if network not in NETWORKS:
        _fail(f"{path}.network", "must be one of " + ", ".join(NETWORKS))
    if network == "host" and port_specs:
        _fail(f"{path}.ports", "a job on the host's network publishes no ports (it listens on "
                               "the host's addresses itself)")
    volumes = value.get("volumes") or []
    if not isinstance(volumes, list) or len(volumes) > 64:
        _fail(f"{path}.volumes", "must be a list of at most 64 volumes")
    volume_specs = tuple(_volume(v, f"{path}.volumes[{i}]") for i, v in enumerate(volumes))
    targets = [v.target for v in volume_specs]
    if len(targets) != len(set(targets)):
        _fail(f"{path}.volumes", "two volumes are mounted at the same target")
    return JobConfig(
        image=image,
        cmd=_str_list(value.get("cmd"), f"{path}.cmd"),
        entrypoint=_str_list(value.get("entrypoint"), f"{path}.entrypoint"),
        env=_str_map(value.get("env"), f"{path}.env", env=True),
        working_dir=_optional_str(value.get("working_dir"), f"{path}.working_dir"),
        user=_optional_str(value.get("user"), f"{path}.user"),
        tty=tty,
        ports=port_specs,
        stdin=stdin,
        network=network,
        volumes=volume_specs,
    )


def _resources(value, path: str) -> Resources:
    if value is None:
        return Resources()
    _object(value, path, RESOURCE_FIELDS)
    memory = _int(value.get("memory_mb", 0), f"{path}.memory_mb", 0, 1 << 30)
    if 0 < memory < MIN_MEMORY_MB:
        _fail(f"{path}.memory_mb", f"must be 0 (no limit) or at least {MIN_MEMORY_MB}")
    cpu = _int(value.get("cpu_shares", 0), f"{path}.cpu_shares", 0, MAX_CPU_SHARES)
    if 0 < cpu < MIN_CPU_SHARES:
        _fail(f"{path}.cpu_shares", f"must be 0 (default) or at least {MIN_CPU_SHARES}")
    return Resources(memory_mb=memory, cpu_shares=cpu)


def parse_job(body, job_id: str = None) -> Job:
    """Validate a decoded JSON Job. `job_id` is the id from the URL, which the body may repeat
    but not contradict; without either, the caller must supply one."""
    _object(body, "job", JOB_FIELDS)
    body_id = body.get("id")
    if body_id is not None:
        problem = id_problem(body_id)
        if problem:
            _fail("job.id", problem)
        if job_id is not None and body_id != job_id:
            _fail("job.id", f"{body_id!r} does not match the id in the URL, {job_id!r}")
    final_id = job_id if job_id is not None else body_id
    if final_id is None:
        _fail("job.id", "required")
    return Job(
        id=final_id,
        config=_config(body.get("config"), "job.config"),
        resources=_resources(body.get("resources"), "job.resources"),
        attributes=_str_map(body.get("attributes"), "job.attributes"),
    )


# ---- limits: what one job may ask of a host (settings, checked where jobs come in) ---------------

@dataclass(frozen=True, slots=True)
class JobLimits:
    max_env: int = 256                 # environment variables
    max_env_bytes: int = 64 << 10      # all names and values together
    max_cmd_bytes: int = 64 << 10      # cmd and entrypoint, every argument together
    max_ports: int = 32                # ports published
    fixed_ports: tuple = (1024, 65535)  # where a fixed host port may be


def check_limits(job: Job, limits: JobLimits, path: str = "job") -> None:
    """ValidationError naming the field when `job` asks for more than `limits` allow."""
    config = job.config
    if len(config.env) > limits.max_env:
        _fail(f"{path}.config.env", f"{len(config.env)} variables, over the limit of "
                                    f"{limits.max_env} (-max-job-env)")
    env_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in config.env)
    if env_bytes > limits.max_env_bytes:
        _fail(f"{path}.config.env", f"{env_bytes} bytes, over the limit of "
                                    f"{limits.max_env_bytes} (-max-job-env-bytes)")
    cmd_bytes = sum(len(a.encode()) for a in (config.cmd or ()) + (config.entrypoint or ()))
    if cmd_bytes > limits.max_cmd_bytes:
        _fail(f"{path}.config.cmd", f"cmd and entrypoint are {cmd_bytes} bytes, over the limit "
                                    f"of {limits.max_cmd_bytes} (-max-job-cmd-bytes)")
    if len(config.ports) > limits.max_ports:
        _fail(f"{path}.config.ports", f"{len(config.ports)} ports, over the limit of "
                                      f"{limits.max_ports} (-max-job-ports)")
    low, high = limits.fixed_ports
    for n, port in enumerate(config.ports):
        if port.port and not low <= port.port <= high:
            _fail(f"{path}.config.ports[{n}].port",
                  f"{port.port} is outside the fixed ports this host gives out ({low}-{high}, "
                  "-fixed-ports); ask for port 0 to have one allocated")
