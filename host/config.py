"""Every daemon setting, declared once: flag, environment variable, type, default and help.

Flags follow the original's Go habits: `-name value`, `-name=value`; `--name` is accepted too.
Each setting NAME also reads `FLYNN_HOST_<NAME>` (dashes become underscores); a flag wins over the
environment. load_config() validates everything and returns a frozen Config; a bad value raises
ConfigError with one line that names the setting, which the CLI prints before exiting 2.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Callable, Optional

from host.types import id_problem


class ConfigError(Exception):
    """A setting has a bad value; the message is one line naming it."""


class HelpRequested(Exception):
    """-h / -help / --help was given."""


# ---- value parsers: each takes the raw string and returns the value or raises ValueError ------

def parse_ip(text: str) -> str:
    return str(ipaddress.ip_address(text.strip()))


def parse_bind_ip(text: str) -> str:
    return "" if text.strip() in ("", "0.0.0.0") else parse_ip(text)


def parse_listen(text: str) -> tuple:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:1113")
    host = host.strip("[]") or "0.0.0.0"
    ipaddress.ip_address(host)
    return host, _int_between(port, 1, 65535)


def parse_port_range(text: str) -> tuple:
    low, sep, high = text.partition("-")
    if not sep:
        raise ValueError("must be LOW-HIGH, e.g. 49152-65535")
    low, high = _int_between(low, 1, 65535), _int_between(high, 1, 65535)
    if low > high:
        raise ValueError("LOW must not be above HIGH")
    return low, high


def _int_between(text: str, low: int, high: int) -> int:
    value = int(str(text).strip())
    if not low <= value <= high:
        raise ValueError(f"must be from {low} to {high}")
    return value


def positive_int(text: str) -> int:
    return _int_between(text, 1, 1 << 40)


def parse_seconds(text: str) -> float:
    value = float(str(text).strip())
    if not 0.1 <= value <= 86400:
        raise ValueError("must be from 0.1 to 86400 seconds")
    return value


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on", ""):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def parse_attribute(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError("must be KEY=VALUE")
    return key.strip(), value


def parse_host_id(text: str) -> str:
    problem = id_problem(text)
    if problem:
        raise ValueError(problem)
    return text


def parse_port(text: str) -> int:
    return _int_between(text, 1, 65535)


def parse_ttl(text: str) -> int:
    return _int_between(text, 3, 3600)


def parse_url(text: str) -> str:
    url = text.strip()
    if url and not url.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return url


def parse_etcd_endpoints(text: str) -> str:
    from host.discovery.etcd import parse_endpoints  # the discovery module owns the format
    if text.strip():
        parse_endpoints(text)
    return text.strip()


def parse_etcd_peers(text: str) -> tuple:
    from host.discovery.etcd import parse_peer_urls
    return parse_peer_urls(text) if text.strip() else ()


def parse_member_count(text: str) -> int:
    return _int_between(text, 1, 9)


def parse_token_file(text: str) -> str:
    from host.auth import read_token  # checked now: a bad file is a usage error, exit 2
    path = text.strip()
    if path:
        read_token(path)
    return path


def parse_host_list(text: str) -> tuple:
    """"a.example,b.example:5000" -> ("a.example", "b.example:5000"), lowercased."""
    hosts = tuple(h.strip().lower() for h in text.split(",") if h.strip())
    for host in hosts:
        if "/" in host or " " in host:
            raise ValueError(f"{host!r} is not a host name (HOST or HOST:PORT)")
    return hosts


def parse_choice(*choices: str) -> Callable[[str], str]:
    """A parser taking one of `choices` (any case)."""
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return value
    return parse


def parse_manifest_path(text: str) -> str:
    path = text.strip()
    if path and not os.path.isfile(path):
        raise ValueError("no such file")
    return path


def parse_existing_file(text: str) -> str:
    path = text.strip()
    if path and not os.path.isfile(path):
        raise ValueError("no such file")
    return path


def parse_etcd_prefix(text: str) -> str:
    prefix = "/" + text.strip().strip("/")
    if " " in prefix:
        raise ValueError("must not contain spaces")
    return prefix


# ---- machine-derived defaults -----------------------------------------------------------------

def guess_external_ip() -> str:
    """The IPv4 address of the interface holding the default route, read from the kernel
    (no packet is sent). Falls back to 127.0.0.1 on a machine without a default route."""
    try:
        with open("/proc/net/route") as routes:
            next(routes)
            for line in routes:
                fields = line.split()
                if fields[1] == "00000000" and int(fields[3], 16) & 2:  # default, RTF_GATEWAY
                    return _interface_ipv4(fields[0])
    except (OSError, StopIteration, IndexError, ValueError):
        pass
    return "127.0.0.1"


def _interface_ipv4(name: str) -> str:
    SIOCGIFADDR = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
    return socket.inet_ntoa(packed[20:24])


def machine_memory_mb() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 1024


def machine_cpu_shares() -> int:
    return 1024 * (os.cpu_count() or 1)


# ---- the declarations ------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    name: str                       # flag name without dashes
    parse: Callable[[str], object]
    default: object                 # a value, or a zero-argument callable computing one
    help: str
    metavar: str = "VALUE"
    boolean: bool = False
    repeatable: bool = False        # the flag may be given many times; the value is a tuple
    env_name: str = ""              # an environment variable other than FLYNN_HOST_<NAME>

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return self.env_name or "FLYNN_HOST_" + self.attr.upper()


SETTINGS = (
    Setting("external", parse_ip, guess_external_ip, "IP other hosts and jobs reach this host at "
            "(default: the address of the default route's interface)", "IP"),
    Setting("listen", parse_listen, None, "address the HTTP API listens on (default: "
            "0.0.0.0:1113 with -auth-token-file, 127.0.0.1:1113 without: an open API stays on "
            "this machine unless you say otherwise)", "ADDR"),
    Setting("auth-token-file", parse_token_file, "", "file holding the API token: every route "
            "but /healthz then asks for Authorization: Bearer <token>", "FILE",
            env_name="FLYNN_HOST_TOKEN_FILE"),
    Setting("tls-cert", parse_existing_file, "", "certificate chain (PEM) to serve the API over "
            "HTTPS with; the agents of a cluster then reach each other by https too. Its names "
            "must include the -external IP", "FILE"),
    Setting("tls-key", parse_existing_file, "", "the certificate's private key (PEM)", "FILE"),
    Setting("tls-ca", parse_existing_file, "", "CA certificate(s) (PEM) this agent verifies "
            "other agents' certificates with (default: the system's)", "FILE"),
    Setting("bind", parse_bind_ip, "", "IP that jobs' published ports bind to (default: all)",
            "IP"),
    Setting("id", parse_host_id, None, "host id (default: derived from the hostname once, then "
            "kept in the state dir)", "ID"),
    Setting("state-dir", str, "/var/lib/flynn-host", "directory for the job table and host id",
            "DIR"),
    Setting("force", parse_bool, False, "kill and remove the containers a previous instance left",
            boolean=True),
    Setting("ports", parse_port_range, (49152, 65535), "host port range for allocated ports",
            "LO-HI"),
    Setting("memory-mb", positive_int, machine_memory_mb, "memory jobs may reserve, in MiB "
            "(default: the machine's)", "N"),
    Setting("cpu-shares", positive_int, machine_cpu_shares, "CPU shares jobs may reserve "
            "(default: 1024 per core)", "N"),
    Setting("attribute", parse_attribute, (), "host attribute KEY=VALUE, repeatable "
            "(environment: comma-separated)", "KEY=VALUE", repeatable=True),
    Setting("log-level", parse_choice("debug", "info", "warning", "error"), "info",
            "debug, info, warning or error", "LEVEL"),
    Setting("log-format", parse_choice("text", "json"), "text", "text (for people) or json "
            "(one object a line: time, level, logger, message, host_id, job_id; for log "
            "shippers)", "FORMAT"),
    Setting("metrics", parse_bool, True, "serve GET /metrics (Prometheus) and count requests "
            "by route and status for it (-metrics=false: neither)", boolean=True),
    Setting("retain-ended", positive_int, 100, "ended jobs whose containers are kept for logs",
            "N"),
    Setting("event-buffer", positive_int, 10000, "events kept for long-poll resumption", "N"),
    Setting("task-concurrency", positive_int, 64, "container starts run at once (the engine "
            "slows down with too many); the rest wait their turn. Stops, pulls and waits take no "
            "slot", "N"),
    Setting("max-body-bytes", positive_int, 1 << 20, "largest request body accepted", "N"),
    Setting("max-headers", positive_int, 100, "header lines one request may send", "N"),
    Setting("max-header-bytes", positive_int, 64 << 10, "bytes of one request's header block",
            "N"),
    Setting("header-timeout", parse_seconds, 10.0, "seconds a client has to send a request's "
            "headers once it starts (a slow sender holds a connection for no more)", "SECONDS"),
    Setting("read-timeout", parse_seconds, 60.0, "seconds a connection may stay silent while "
            "the agent waits to read from it: a body, or the next request on a kept-alive "
            "connection", "SECONDS"),
    Setting("max-connections", positive_int, 4096, "client connections served at once; more "
            "wait in the kernel's queue", "N"),
    Setting("max-waits-per-client", positive_int, 256, "long-polls, event streams, log follows "
            "and attaches one client address may hold open at once (429 past it)", "N"),
    Setting("max-attaches-per-job", positive_int, 4, "attach sessions one job may have at "
            "once (429 past it)", "N"),
    Setting("max-job-env", positive_int, 256, "environment variables one job may set", "N"),
    Setting("max-job-env-bytes", positive_int, 64 << 10, "bytes of one job's environment, names "
            "and values together", "N"),
    Setting("max-job-cmd-bytes", positive_int, 64 << 10, "bytes of one job's cmd and entrypoint",
            "N"),
    Setting("max-job-ports", positive_int, 32, "ports one job may publish", "N"),
    Setting("fixed-ports", parse_port_range, (1024, 65535), "where a job may ask for a fixed "
            "host port (below 1024 are privileged)", "LO-HI"),
    Setting("allowed-hosts", parse_host_list, (), "names clients may address this agent by, "
            "comma-separated, besides its IP addresses, localhost and the machine's names (a "
            "browser's request under another name, DNS rebinding, is refused)", "NAMES"),
    Setting("registries", parse_host_list, (), "registries images may be pulled from, "
            "comma-separated (docker.io for Docker Hub; default: any). Images already on the "
            "engine are used whatever their name", "HOSTS"),
    Setting("manifest", parse_manifest_path, "", "the layer-0 manifest: services started before "
            "the host registers (default: the one shipped in the package, which runs etcd)",
            "FILE"),
    Setting("layer0-mode", parse_choice("auto", "jobs"), "auto", "how layer-0 services run: "
            "auto (one with a command as a local process, others as jobs), jobs (every one as a "
            "job: for an agent that runs in a container itself, as in the flynn/host image)",
            "MODE"),
    Setting("etcd-peers", parse_etcd_peers, (), "peer addresses (IP:2380) of a running etcd "
            "cluster: this host's own etcd member joins it (up to -etcd-members), comma-separated",
            "ADDRS", env_name="ETCD_PEERS"),
    Setting("etcd-discovery", parse_url, "", "etcd discovery URL: this host's member forms or "
            "joins the first members through it", "URL", env_name="ETCD_DISCOVERY"),
    Setting("etcd-endpoints", parse_etcd_endpoints, "", "client URLs of an etcd the operator "
            "runs, comma-separated: no member runs here", "URLS"),
    Setting("etcd-members", parse_member_count, 3, "etcd members the cluster grows to as hosts "
            "join; later hosts run none and use theirs", "N"),
    Setting("etcd-prefix", parse_etcd_prefix, "/flynn", "etcd key prefix", "PREFIX",
            env_name="FLYNN_ETCD_PREFIX"),
    Setting("etcd-client-port", parse_port, 2379, "this host's etcd member's client port", "PORT"),
    Setting("etcd-peer-port", parse_port, 2380, "this host's etcd member's peer port", "PORT"),
    Setting("heartbeat-ttl", parse_ttl, 10, "seconds the registration lives without a heartbeat "
            "(refreshed every TTL/3)", "SECONDS"),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


class Config:
    """Validated settings, read-only once built. Attribute names are the settings' names with
    underscores (config.state_dir)."""

    def __init__(self, values: dict, given: frozenset = frozenset()):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_given", frozenset(given))

    def was_given(self, name: str) -> bool:
        """Whether the setting came from a flag or the environment, not its default."""
        return name.replace("-", "_") in self._given

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Config is frozen")

    def replace(self, **changes) -> "Config":
        return Config({**self._values, **changes}, self._given | set(changes))

    @property
    def attributes(self) -> dict:
        return dict(self.attribute)

    @property
    def job_limits(self):
        from host.jobspec import JobLimits
        return JobLimits(max_env=self.max_job_env, max_env_bytes=self.max_job_env_bytes,
                         max_cmd_bytes=self.max_job_cmd_bytes, max_ports=self.max_job_ports,
                         fixed_ports=self.fixed_ports)

    @property
    def peer_tls(self):
        """How this agent reaches the others (host.client.agent_url): None over plain HTTP; with
        -tls-cert (the cluster serves TLS) by https, verified with -tls-ca or the system's."""
        return (self.tls_ca or True) if self.tls_cert else None

    @property
    def addr(self) -> str:
        return f"{self.external}:{self.listen[1]}"


def _parse_value(setting: Setting, raw: str, source: str):
    try:
        return setting.parse(raw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: invalid value {raw!r}: {e}") from None
    # (a TokenError is a ValueError: its message names the file, never what the file holds)


def parse_flags(argv: list) -> dict:
    """Flags -> {attr: raw value or list of raw values}. Raises ConfigError / HelpRequested."""
    given = {}
    args = list(argv)
    while args:
        token = args.pop(0)
        if token in ("-h", "-help", "--help"):
            raise HelpRequested()
        if not token.startswith("-") or token in ("-", "--"):
            raise ConfigError(f"unexpected argument {token!r} (flags start with -)")
        name, has_value, value = token.lstrip("-").partition("=")
        setting = SETTINGS_BY_NAME.get(name)
        if setting is None:
            raise ConfigError(f"unknown flag -{name} (see -help)")
        if not has_value:
            if setting.boolean:
                value = "true"
            elif args:
                value = args.pop(0)
            else:
                raise ConfigError(f"-{name} needs a value ({setting.metavar})")
        if setting.repeatable:
            given.setdefault(setting.attr, []).append(value)
        else:
            given[setting.attr] = value
    return given


def load_config(argv: list, environ: Optional[dict] = None) -> Config:
    environ = os.environ if environ is None else environ
    flags = parse_flags(argv)
    values = {}
    for setting in SETTINGS:
        if setting.attr in flags:
            source, raw = f"-{setting.name}", flags[setting.attr]
        elif environ.get(setting.env, "") != "":
            source, raw = setting.env, environ[setting.env]
            if setting.repeatable:
                raw = [part for part in raw.split(",") if part.strip()]
        else:
            default = setting.default
            values[setting.attr] = default() if callable(default) else default
            continue
        if setting.repeatable:
            values[setting.attr] = tuple(_parse_value(setting, r, source) for r in raw)
        else:
            values[setting.attr] = _parse_value(setting, raw, source)
    given = {s.attr for s in SETTINGS if s.attr in flags or environ.get(s.env, "") != ""}
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        raise ConfigError("-tls-cert and -tls-key go together: give both, or neither")
    if values["listen"] is None:
        values["listen"] = ("0.0.0.0" if values["auth_token_file"] else "127.0.0.1", 1113)
    return Config(values, frozenset(given))


def usage() -> str:
    """The daemon's flags, as `flynn-host -help` prints them: each flag's help wrapped to the
    terminal, with its environment variable and its default as a person writes it."""
    import shutil
    import textwrap
    width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))
    indent = " " * 28
    lines = ["usage: flynn-host [daemon] [flags]   run the host daemon", "", "flags:"]
    for s in SETTINGS:
        flag = f"  -{s.name}" + ("" if s.boolean else f" {s.metavar}")
        default = default_text(s)
        text = s.help + (f" (env {s.env}" + (f"; default {default})" if default else ")"))
        wrapped = textwrap.wrap(text, width - len(indent)) or [""]
        lines.append(f"{flag:<27} {wrapped[0]}" if len(flag) < 28 else flag)
        lines += [indent + line for line in (wrapped[1:] if len(flag) < 28 else wrapped)]
    lines += ["", "Flags take one dash or two (-external or --external). Docker is reached "
              "through DOCKER_HOST (as docker-py reads it)."]
    return "\n".join(lines)


def default_text(setting: Setting) -> str:
    """A setting's default as a person would write it on the command line ("" for none, or
    one computed at start-up that the help already describes)."""
    value = setting.default
    if callable(value) or value is None or value == "" or value == ():
        return ""
    if setting.boolean:
        return "on" if value else "off"
    if setting.metavar in ("LO-HI",) and isinstance(value, tuple):
        return f"{value[0]}-{value[1]}"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
