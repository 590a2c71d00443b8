"""What the client commands print for people: tables, short ids, relative times, a job's state
with its exit status, and --format templates. Stdlib only."""
from __future__ import annotations

import re
import shlex
import time
from datetime import datetime

import simplejson

#: characters of an id shown in a table (--no-trunc for all), as docker shows them
SHORT_ID = 12
#: characters of a command shown in a table
SHORT_COMMAND = 40

#: C0 and C1 control characters (ESC among them): a job's image, command, error or id, shown to
#: a person, could otherwise move the cursor, recolour or retitle their terminal
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def printable(value) -> str:
    """`value` as text safe for a terminal: control characters shown as \\xNN."""
    return str(value).translate(_CONTROL)


def print_json(value):
    print(simplejson.dumps(value, indent=2, sort_keys=True))


def table(rows: list, headers: list):
    rows = [[printable(x) for x in row] for row in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    for row in [headers] + rows:
        print("   ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def seconds_since(moment: str | None, now: float | None = None) -> float | None:
    """Seconds from an RFC 3339 time of the API to now (None without one)."""
    if not moment:
        return None
    try:
        then = datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return (time.time() if now is None else now) - then


#: (a span shorter than this many seconds, how it is said) in docker's words
_MINUTE, _HOUR, _DAY = 60, 3600, 86400
_SPANS = ((1, lambda s: "Less than a second"),
          (_MINUTE, lambda s: _plural(s, 1, "second")),
          (2 * _MINUTE, lambda s: "About a minute"),
          (_HOUR, lambda s: _plural(s, _MINUTE, "minute")),
          (2 * _HOUR, lambda s: "About an hour"),
          (48 * _HOUR, lambda s: _plural(s, _HOUR, "hour")),
          (14 * _DAY, lambda s: _plural(s, _DAY, "day")),
          (60 * _DAY, lambda s: _plural(s, 7 * _DAY, "week")),
          (730 * _DAY, lambda s: _plural(s, 30 * _DAY, "month")),
          (float("inf"), lambda s: _plural(s, 365 * _DAY, "year")))


def duration(seconds: float) -> str:
    """A span as docker says it: "Less than a second", "5 seconds", "About a minute",
    "2 minutes", "About an hour", "3 hours", "2 days", "3 weeks", "4 months", "2 years"."""
    seconds = max(0.0, seconds)
    return next(say(seconds) for limit, say in _SPANS if seconds < limit)


def _plural(seconds: float, unit_seconds: float, unit: str) -> str:
    n = int(seconds / unit_seconds)
    return f"{n} {unit}" + ("" if n == 1 else "s")


def ago(moment: str | None, now: float | None = None) -> str:
    """ "2 minutes ago" for an RFC 3339 time ("" without one)."""
    elapsed = seconds_since(moment, now)
    if elapsed is None:
        return ""
    text = duration(elapsed)
    return f"{text[0].lower()}{text[1:]} ago" if text.startswith(("Less", "About")) \
        else f"{text} ago"


def state_text(job: dict, now: float | None = None) -> str:
    """The STATE column: "running for 2 minutes", "crashed (3) 5 seconds ago", "stopped (143)
    a minute ago", "failed 3 seconds ago", "starting"."""
    status = job.get("status", "")
    if status == "running":
        since = seconds_since(job.get("started_at"), now)
        return "running" if since is None else f"running for {duration(since).lower()}"
    if status in ("done", "crashed", "stopped", "failed"):
        code = job.get("exit_status")
        text = status + (f" ({code})" if code is not None and status != "failed" else "")
        when = ago(job.get("ended_at"), now)
        return f"{text} {when}" if when else text
    return status


def command_of(config: dict) -> str:
    """A job spec's entrypoint and cmd as one shell line ("" for the image's own)."""
    words = list(config.get("entrypoint") or ()) + list(config.get("cmd") or ())
    return shlex.join(str(word) for word in words)


def ports_text(ports: list) -> str:
    return ",".join(f"{p['port']}->{p['container_port']}/{p['proto']}" for p in ports)


# ---- --format ---------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{\s*(json\s+)?\.(\w*)\s*\}\}")


class FormatError(ValueError):
    pass


def render(template: str, row: dict, names: dict) -> str:
    """`template` with each {{.Name}} replaced by the row's value (names: the template's name
    -> the row's key, matched without regard to case) and {{json .}} / {{json .Name}} by JSON.
    \\t and \\n stand for a tab and a newline, as in a shell's printf."""
    lowered = {name.lower(): key for name, key in names.items()}

    def value(match):
        as_json, name = match.group(1), match.group(2)
        if not name:
            if not as_json:
                raise FormatError("{{.}} needs json: {{json .}}")
            return simplejson.dumps(row, sort_keys=True)
        key = lowered.get(name.lower())
        if key is None:
            raise FormatError(f"no field {name!r}; fields: {', '.join(names)}")
        item = row.get(key)
        if as_json:
            return simplejson.dumps(item, sort_keys=True)
        return printable("" if item is None else
                         ports_text(item) if key == "ports" else item)
    return _PLACEHOLDER.sub(value, template.replace("\\t", "\t").replace("\\n", "\n"))


def check_template(template: str, names: dict):
    """FormatError naming the first unknown field, before anything is asked of the agent."""
    render(template, {}, names)
