# -*- test-case-name: tests.test_proxy_live -*-
"""
The root of the Site: ``/_subrouter/...`` goes to Subrouter's own endpoints,
every other path to the proxy.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

_ADMIN = b"_subrouter"


class RootResource(Resource):
    """
    Dispatches on the first path segment.

    :param proxy: the leaf that proxies requests upstream.
    :param admin: the ``/_subrouter/`` tree.
    """

    def __init__(self, proxy: Resource, admin: Resource, websocket: Any = None) -> None:
        super().__init__()
        self._proxy = proxy
        self._admin = admin
        self._websocket = websocket

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if path == _ADMIN:
            return self._admin
        if self._websocket is not None and _is_upgrade(request):
            # a WebSocket upgrade on any proxied path goes to the relay
            return self._websocket  # type: ignore[no-any-return]
        if path == b"" and not request.postpath and request.method == b"HEAD":
            return _PROBE
        # the proxy reads request.uri itself; traversal state does not matter
        return self._proxy


def _is_upgrade(request: Request) -> bool:
    upgrade = request.requestHeaders.getRawHeaders(b"upgrade")
    return bool(upgrade) and any(b"websocket" in v.lower() for v in upgrade or ())


class _BaseURLProbe(Resource):
    """
    ``HEAD /``: the base-URL probe some clients send, answered without
    choosing an account or touching an upstream.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(204)
        return b""


_PROBE = _BaseURLProbe()


class ProxyRequest(Request):
    """
    A request whose body is never parsed as a form: the proxy forwards bodies
    as they are, and parsing a Content-Type alone costs more than routing.
    """

    _parsePOSTFormSubmission = False


class QuietSite(Site):
    """
    A Site without Twisted's access log: the proxy logs one structured line
    per request itself, without the query string or any header.
    """

    displayTracebacks = False
    noisy = False
    requestFactory = ProxyRequest

    def log(self, request: http.Request) -> None:
        pass

    def logPrefix(self) -> str:
        # Twisted names the listener in "<prefix> starting on <port>": not a class name
        return "subrouter proxy"
