# -*- test-case-name: tests.test_dashboard -*-
"""
``GET /_subrouter/dashboard``: one page, three static files served by
Subrouter itself (no CDN, no external font or script), drawing its charts
from the JSON endpoints beside it.

The shell holds no data, so it is served without a client token; the page
asks for one when an endpoint answers 401, keeps it in the tab's session
storage and sends it in ``X-Subrouter-Token``, never in a URL. A strict
Content-Security-Policy lets it load nothing but itself and talk to nothing
but its own origin, and no other page may frame it.
"""

from __future__ import annotations

from importlib.resources import files

from twisted.web.resource import Resource
from twisted.web.server import Request

from subrouter.errors import error_body

_TYPES = {
    "dashboard.html": b"text/html; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
}
_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class StaticFile(Resource):
    """
    One of the dashboard's files, read once.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self._body = files("subrouter.web").joinpath("static", name).read_bytes()
        self._type = _TYPES[name]

    def render(self, request: Request) -> bytes:
        headers = request.responseHeaders
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            headers.setRawHeaders(b"allow", [b"GET, HEAD"])
            headers.setRawHeaders(b"content-type", [b"application/json"])
            return error_body("method_not_allowed", "only GET is allowed here")
        headers.setRawHeaders(b"content-type", [self._type])
        headers.setRawHeaders(b"cache-control", [b"no-cache"])
        headers.setRawHeaders(b"content-security-policy", [_POLICY])
        headers.setRawHeaders(b"x-frame-options", [b"DENY"])
        headers.setRawHeaders(b"x-content-type-options", [b"nosniff"])
        headers.setRawHeaders(b"referrer-policy", [b"no-referrer"])
        return self._body


def add_dashboard(admin: Resource) -> None:
    """
    Put the dashboard's files under the ``/_subrouter/`` tree.
    """
    admin.putChild(b"dashboard", StaticFile("dashboard.html"))
    admin.putChild(b"dashboard.js", StaticFile("dashboard.js"))
    admin.putChild(b"dashboard.css", StaticFile("dashboard.css"))
