"""JSON in and out for Bottle routes: one error shape everywhere, bounded bodies, typed query
parameters that fail with a message naming the parameter."""
from __future__ import annotations

import itertools
import logging
import os
import re
import time

import bottle
import simplejson

from host.clock import parse_moment
from host.errors import FlynnError, InternalError, RequestTimeout, TooLarge, ValidationError
from host.types import id_problem

log = logging.getLogger(__name__)

JSON_TYPE = "application/json; charset=utf-8"

#: the header naming a request (answers carry it; forwarded requests pass it on)
REQUEST_ID = "X-Request-Id"
REQUEST_ID_KEY = "flynn.request_id"  # environ key holding it
_REQUEST_ID_SHAPE = re.compile(r"^[A-Za-z0-9._:/+=-]+$")


def request_id_of(environ) -> str:
    """The client's X-Request-Id when it is a sane one (a proxy or a forwarding agent set it),
    else a new one: it names the request in the answer's header and the agent's JSON logs."""
    given = environ.get("HTTP_X_REQUEST_ID", "")
    if 0 < len(given) <= 128 and _REQUEST_ID_SHAPE.match(given):
        return given
    return f"{_ID_PREFIX}{next(_id_numbers) & 0xFFFFFFFF:08x}"


#: new request ids: random per process, then counted (a random read per request was a system
#: call on the long-poll's hot path; an id names a request, it guards nothing)
_ID_PREFIX = os.urandom(4).hex()
_id_numbers = itertools.count(int.from_bytes(os.urandom(4), "big"))


def json_body(obj, status: int = 200) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(simplejson.dumps(obj), status=status,
                               headers={"Content-Type": JSON_TYPE})


def error_body(error: FlynnError) -> bottle.HTTPResponse:
    return json_body(error.to_dict(), status=error.status)


def json_errors(callback):
    """Bottle plugin: a FlynnError becomes its JSON error; anything else is a bug, logged with
    its traceback and answered as internal_error without one."""
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except bottle.HTTPResponse:
            raise
        except FlynnError as e:
            answer = error_body(e)
            if isinstance(e, RequestTimeout):  # what is left of the body would be misread
                answer.set_header("Connection", "close")
            return answer
        except Exception:
            log.exception("unhandled error serving %s %s", bottle.request.method,
                          bottle.request.path)
            return error_body(InternalError("internal error (logged by the agent)"))
    return wrapper


#: what the router's own errors (no route, wrong method, ...) are called in our error shape
ROUTER_ERRORS = {400: "validation_error", 404: "not_found", 405: "method_not_allowed",
                 413: "too_large", 500: "internal_error"}


def router_error(res: bottle.HTTPError) -> str:
    """Bottle's default_error_handler replacement: errors Bottle raises itself, as JSON."""
    code = ROUTER_ERRORS.get(res.status_code, "internal_error" if res.status_code >= 500
                             else "validation_error")
    if res.status_code == 404:
        message = f"no route {bottle.request.method} {bottle.request.path}"
    elif res.status_code == 405:
        message = (f"method {bottle.request.method} not allowed on {bottle.request.path}; "
                   f"allowed: {res.headers.get('Allow', '')}")
    elif res.status_code >= 500:
        message = "internal error (logged by the agent)"
    else:
        message = str(res.body)
    bottle.response.content_type = JSON_TYPE
    return simplejson.dumps({"code": code, "message": message, "retry": False})


def read_body(max_bytes: int) -> bytes:
    """The request body, as bytes. TooLarge over max_bytes (checked before reading when
    Content-Length says so, and while reading a chunked body): never read whole."""
    length = bottle.request.content_length
    if length > max_bytes:
        raise TooLarge(f"body: {length} bytes is over the limit of {max_bytes}")
    stream = bottle.request.environ["wsgi.input"]
    try:
        data = stream.read(length if length >= 0 else max_bytes + 1)
    except TimeoutError:
        raise RequestTimeout("body: the client stopped sending it (-read-timeout)") from None
    if len(data) > max_bytes:
        raise TooLarge(f"body: over the limit of {max_bytes} bytes")
    return data


def read_json(max_bytes: int):
    """The request body decoded as JSON, bounded as read_body()."""
    data = read_body(max_bytes)
    if not data.strip():
        raise ValidationError("body: required (a JSON object)")
    try:
        return simplejson.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValidationError(f"body: not valid JSON: {e}") from None
    except RecursionError:
        raise ValidationError("body: JSON nested too deeply") from None


def path_problem(environ) -> str:
    """Why a request's path cannot be routed as sent, "path: ..." ("" when it can). WSGI hands
    over the path decoded, once: an escaped `/` (`x%2Flog`) would split an id into two segments
    and reach another route, a byte that is not UTF-8 (`%FF`) would be dropped by the router
    (`a%FFb` becoming `ab`), a NUL or another control character would reach the ids. Each is
    refused."""
    raw = environ.get("RAW_URI") or ""
    raw_path = raw.split("?", 1)[0]
    if "://" in raw_path:  # an absolute-form target: the path after the authority
        raw_path = "/" + raw_path.split("://", 1)[1].partition("/")[2]
    if "%2f" in raw_path.lower() or "%5c" in raw_path.lower():
        return "path: an escaped / or \\ in a path segment (a job id or host id holds neither)"
    path = environ.get("PATH_INFO", "")
    try:
        decoded = path.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return "path: not UTF-8 once its escapes are decoded"
    if not decoded.isprintable() and _CONTROL.search(decoded):
        return "path: a control character (NUL, a newline, ...)"
    return ""


#: C0 controls and DEL (isprintable() is the fast first look: it is False for these and for a
#: few printable-but-unusual characters, which this then tells apart)
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def checked_id(what: str, value: str) -> str:
    """`value` if it is a valid id, else a ValidationError naming `what`."""
    problem = id_problem(value)
    if problem:
        raise ValidationError(f"{what}: {problem}")
    return value


# ---- query parameters: `query` is a mapping of name -> last value (bottle.request.query) ------

def _raw(query, name: str):
    value = query.get(name)
    return None if value is None or value == "" else value


def int_param(query, name: str, default, low: int, high: int):
    raw = _raw(query, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name}: {raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ValidationError(f"{name}: must be from {low} to {high}, got {value}")
    return value


def float_param(query, name: str, default, low: float, high: float):
    raw = _raw(query, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(f"{name}: {raw!r} is not a number") from None
    if not low <= value <= high:  # also rejects nan
        raise ValidationError(f"{name}: must be from {low:g} to {high:g}, got {raw}")
    return value


def bool_param(query, name: str) -> bool:
    raw = _raw(query, name)
    if raw is None:
        return False
    lowered = raw.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ValidationError(f"{name}: {raw!r} is not true or false")


def moment_param(query, name: str):
    """A point in time (host.clock.parse_moment: RFC 3339, Unix seconds, or a duration ago by
    this agent's clock) as Unix seconds, or None when not given."""
    raw = _raw(query, name)
    if raw is None:
        return None
    try:
        return parse_moment(raw, time.time())
    except ValueError as e:
        raise ValidationError(f"{name}: {e}") from None


def choice_param(query, name: str, choices: tuple):
    raw = _raw(query, name)
    if raw is not None and raw not in choices:
        raise ValidationError(f"{name}: must be one of {', '.join(choices)}, got {raw!r}")
    return raw
