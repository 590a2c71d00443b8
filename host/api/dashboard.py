"""The dashboard's page and static files (host/dashboard/static/), served at fixed paths.

They are served without a token (host/auth.py lets exactly these paths through): they hold no
data, and a person must be able to load the page before typing the token in. Everything the page
shows comes from the API, which asks for the token as usual. The browser protections of
host/api/browsers.py apply to these paths as to any other (a rebound Host is refused).

The files are read once, at install: a few kilobytes, and an upgrade restarts the agent anyway.
"""
from __future__ import annotations

from importlib import resources

import bottle

#: path -> (file in host/dashboard/static/, content type). host/auth.py's OPEN_PATHS names the
#: same paths (tests/test_dashboard.py checks that the two agree).
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard/favicon.svg": ("favicon.svg", "image/svg+xml"),
}

#: The page loads only its own files and talks only to its own agent: no inline script or style,
#: no eval, no framing, no form posts, no plugins; and with Trusted Types required, a string
#: assigned to innerHTML (or any other HTML sink) throws instead of becoming markup.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'none'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'; "
    "trusted-types 'none'")

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # revalidated on every load: a page from before an upgrade must not talk to the new agent
    "Cache-Control": "no-cache",
}


def read_files() -> dict:
    """path -> (bytes, content type), from the package's data."""
    static = resources.files("host.dashboard").joinpath("static")
    return {path: (static.joinpath(name).read_bytes(), content_type)
            for path, (name, content_type) in FILES.items()}


def install(app: bottle.Bottle, agent=None):
    """`agent` is not used: the files are the same on every agent (the argument keeps the
    shape of the other route modules)."""
    served = read_files()

    def route(path: str):
        body, content_type = served[path]

        def serve():
            return bottle.HTTPResponse(body, headers={"Content-Type": content_type,
                                                      "Content-Length": str(len(body)),
                                                      **HEADERS})
        serve.__name__ = "dashboard_" + (path.rsplit("/", 1)[1].replace(".", "_") or "page")
        app.get(path, callback=serve)

    for path in FILES:
        route(path)
