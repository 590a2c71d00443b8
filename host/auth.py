"""The API token: where it comes from and how a request's is checked.

The token is read from a file (`-auth-token-file`, or FLYNN_HOST_TOKEN_FILE) or, for clients,
from FLYNN_HOST_TOKEN: never from a flag's value, which every user of the machine sees in the
process list. Every route asks for `Authorization: Bearer <token>` except the liveness route,
which says nothing but that the process serves, and the dashboard's static files. The
comparison takes the same time whatever the token sent, so that it cannot be guessed a
character at a time.
"""
from __future__ import annotations

import hmac
import os
from typing import Optional

#: routes served without a token: they reveal nothing. The liveness probe of a load balancer,
#: and the dashboard's page and static files (host/api/dashboard.py), which hold no data and
#: must load before the person has typed the token in; exact paths, nothing below them.
OPEN_PATHS = frozenset({"/healthz", "/", "/dashboard/dashboard.js", "/dashboard/dashboard.css",
                        "/dashboard/favicon.svg"})
#: the longest token read, bytes: a token file is a secret, not a document
MAX_TOKEN_BYTES = 4096


class TokenError(ValueError):
    """The token file cannot be used; the message says why (never what it holds)."""


def read_token(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_BYTES + 1)
    except OSError as e:
        raise TokenError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_TOKEN_BYTES:
        raise TokenError(f"{path} is longer than {MAX_TOKEN_BYTES} bytes")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise TokenError(f"{path} holds bytes that are not ASCII") from None
    if not token:
        raise TokenError(f"{path} is empty")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise TokenError(f"{path} holds more than one word (a token has no spaces)")
    return token


def client_token(token_file: Optional[str] = None, environ=None) -> Optional[str]:
    """The token a client sends: from `token_file`, else FLYNN_HOST_TOKEN, else the file named by
    FLYNN_HOST_TOKEN_FILE; None when there is none. Raises TokenError for a file that cannot be
    used."""
    environ = os.environ if environ is None else environ
    if token_file:
        return read_token(token_file)
    if environ.get("FLYNN_HOST_TOKEN", "").strip():
        return environ["FLYNN_HOST_TOKEN"].strip()
    if environ.get("FLYNN_HOST_TOKEN_FILE", "").strip():
        return read_token(environ["FLYNN_HOST_TOKEN_FILE"].strip())
    return None


class TokenCheck:
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def allows(self, authorization: str) -> bool:
        """Whether an Authorization header carries the token (constant time)."""
        return hmac.compare_digest(authorization.encode("latin-1", "replace"), self._expected)


def bearer(token: Optional[str]) -> dict:
    """The header a client sends ({} without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
