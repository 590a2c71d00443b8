"""The flynn-host command line: the bare command (with flags) runs the daemon; client
subcommands (ps, log, run, ...) come with the client issue."""
from __future__ import annotations

import sys

from host.cli import daemon

EXIT_USAGE = 2


def main(argv: list) -> int:
    if argv and not argv[0].startswith("-"):
        print(f"flynn-host: unknown command {argv[0]!r}; run `flynn-host -help` for the daemon's "
              "flags", file=sys.stderr)
        return EXIT_USAGE
    return daemon.run(argv)
