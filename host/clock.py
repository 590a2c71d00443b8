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
