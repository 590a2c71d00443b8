"""The flynn-host command line: the bare command (with flags) runs the daemon; a first word that
is not a flag is a client subcommand (ps, inspect, log, stop, signal, status, leader, hosts,
events)."""
from __future__ import annotations

import sys

from host.cli import commands, daemon

EXIT_USAGE = 2


def main(argv: list) -> int:
    if argv and not argv[0].startswith("-"):
        name, rest = argv[0], argv[1:]
        if name in commands.COMMANDS:
            return commands.run(name, rest)
        print(f"flynn-host: unknown command {name!r}; commands: "
              f"{', '.join(sorted(commands.COMMANDS))}; `flynn-host -help` for the daemon",
              file=sys.stderr)
        return EXIT_USAGE
    return daemon.run(argv)
