"""One exception root for the project, and the one table from error code to HTTP status.

Low-level errors (docker.errors.*, etcd.*, OSError) are translated into these at the module that
talks to the outside, with `raise ... from e`, so nothing above that module sees them.
"""
from __future__ import annotations

from typing import Optional

#: code -> HTTP status. The JSON body of every 4xx/5xx is {"code", "message", "retry"}.
STATUS_FOR_CODE = {
    "validation_error": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "conflict": 409,
    "cursor_expired": 410,
    "too_large": 413,
    "no_capacity": 422,
    "too_many_requests": 429,
    "internal_error": 500,
    "not_leader": 503,
    "unavailable": 503,
}


class FlynnError(Exception):
    """Root of every error this project raises on purpose."""
    code = "internal_error"
    retry = False

    def __init__(self, message: str, *, retry: Optional[bool] = None, **extra):
        super().__init__(message)
        self.message = message
        if retry is not None:
            self.retry = retry
        self.extra = extra  # more fields for the JSON body, e.g. leader=...

    @property
    def status(self) -> int:
        return STATUS_FOR_CODE[self.code]

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": self.message, "retry": self.retry}
        body.update(self.extra)
        return body


class ValidationError(FlynnError):
    code = "validation_error"


class Unauthorized(FlynnError):
    code = "unauthorized"


class NotFound(FlynnError):
    code = "not_found"


class MethodNotAllowed(FlynnError):
    code = "method_not_allowed"


class RequestTimeout(FlynnError):
    """The client stopped sending its request's body for longer than -read-timeout."""
    code = "request_timeout"


class Conflict(FlynnError):
    code = "conflict"


class CursorExpired(FlynnError):
    code = "cursor_expired"


class TooLarge(FlynnError):
    code = "too_large"


class TooManyRequests(FlynnError):
    """A client holds as many open requests as it may; it retries once one has ended."""
    code = "too_many_requests"
    retry = True


class NoCapacity(FlynnError):
    code = "no_capacity"


class Unavailable(FlynnError):
    """Docker (or etcd) cannot be reached right now; the same request may work later."""
    code = "unavailable"
    retry = True


class NotLeader(FlynnError):
    code = "not_leader"
    retry = True


class InternalError(FlynnError):
    code = "internal_error"


class FatalError(BaseException):
    """The agent must stop: a condition no retry mends (another agent holds our host id, our
    state dir). A BaseException, as gunicorn's fatal stops are, so that no `except Exception` on
    the way swallows it; the daemon prints its message and exits 1."""


# ---- runtime-level errors (raised by host.runtime.*, never by Docker's own classes) ------------

class RuntimeUnavailable(Unavailable):
    """The container engine did not answer."""


class ContainerNotFound(FlynnError):
    """The container is gone from the engine."""
    code = "not_found"


class ImageNotFound(FlynnError):
    """The image is not present and could not be pulled."""
    code = "not_found"


class RuntimeFailure(FlynnError):
    """The engine answered with an error (bad spec, port taken at the engine, ...)."""
    code = "conflict"
