"""Time, behind an interface so unit tests can hold it still.

All times in the API are RFC 3339 UTC strings with microseconds, e.g. 2026-11-25T08:00:49.058969Z.
"""
from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

_DOCKER_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str):
    """Parse an RFC 3339 time (Docker's carry nanoseconds; we keep microseconds).
    Returns None for Docker's zero time (0001-01-01...) or an unparsable string."""
    match = _DOCKER_TIME.match(text or "")
    if not match or text.startswith("0001-"):
        return None
    whole, fraction, zone = match.groups()
    fraction = (fraction or "0")[:6].ljust(6, "0")
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(f"{whole}.{fraction}{zone}").astimezone(timezone.utc)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SECONDS_IN = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration as people write them: 10s, 5m, 1h30m, 2d, 250ms. ValueError if
    it is not one."""
    text = (text or "").strip()
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _SECONDS_IN[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"not a duration: {text!r} (e.g. 30s, 10m, 1h30m, 2d)")
    return total


def parse_moment(text: str, now: float) -> float:
    """Unix seconds for a point in time given as docker's --since and --until take it: an
    RFC 3339 time (2026-12-01T10:00:00Z, or a date), Unix seconds (1764583200.5), or a
    duration before `now` (10m: ten minutes ago). ValueError naming the forms otherwise."""
    text = (text or "").strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not 0 <= seconds < 1e11:  # nan, inf, negative: not a moment
            raise ValueError(f"not a time: {text!r} (Unix seconds must be 0 or more)")
        return seconds
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (an RFC 3339 time such as "
                         "2026-12-01T10:00:00Z, Unix seconds, or a duration ago such as 10m)") \
            from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


class Clock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def now_text(self) -> str:
        return rfc3339(self.now())

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock(Clock):
    """A clock that moves only when told to."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, tzinfo=timezone.utc)):
        self._now = start
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float):
        self._now += timedelta(seconds=seconds)
        self._mono += seconds
