# -*- test-case-name: tests.test_proxy_live -*-
"""
The root of the Site: every request passes the guard first (no web page and,
with client tokens, no stranger may drive Subrouter); then ``/_subrouter/...``
goes to Subrouter's own endpoints, every other path to the proxy or, for a
WebSocket upgrade, the relay.

Proxied HTTP requests are counted in flight here, where they are dispatched,
so a stop can wait for them; while the daemon drains, new ones are refused
with a 503.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.python import failure
from twisted.web import http
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request, Site, version

from subrouter.errors import error_body, write_error
from subrouter.routing.inflight import InFlight
from subrouter.upstream.headers import raw_values
from subrouter.web.channel import DEFAULT_HEADER_TIMEOUT, SubrouterChannel
from subrouter.web.guard import Guard, Refusal

_ADMIN = b"_subrouter"
_log = Logger()


class RootResource(Resource):
    """
    Dispatches on the first path segment.

    :param proxy: the leaf that proxies requests upstream.
    :param admin: the ``/_subrouter/`` tree.
    :param websocket: the WebSocket relay's resource.
    :param inflight: where proxied requests are counted while they run.
    :param guard: the checks every request passes first.
    """

    def __init__(self, proxy: Resource, admin: Resource, websocket: Any = None,
                 inflight: InFlight | None = None, guard: Guard | None = None) -> None:
        super().__init__()
        self._proxy = proxy
        self._admin = admin
        self._websocket = websocket
        self._inflight = inflight
        self._guard = guard or Guard()

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        following = request.postpath[0] if request.postpath else None
        local = getattr(request.getHost(), "host", None)
        refused = self._guard.check(request.requestHeaders, path, following, local)
        if refused is not None:
            return _Refused(refused)
        if path == _ADMIN:
            return self._admin
        inflight = self._inflight
        if inflight is not None and inflight.draining:
            return _DRAINING
        if self._websocket is not None and _is_upgrade(request):
            # a WebSocket upgrade on any proxied path goes to the relay,
            # which takes the connection away from this channel
            channel = request.channel
            if isinstance(channel, SubrouterChannel):
                channel.cancel_idle_timer()
            return self._websocket  # type: ignore[no-any-return]
        if path == b"" and not request.postpath and request.method == b"HEAD":
            return _PROBE
        if inflight is not None:
            _count(inflight, request)
        # the proxy reads request.uri itself; traversal state does not matter
        return self._proxy


class _HTTPInFlight:
    """
    A proxied request, as a drain sees it.
    """

    def __init__(self, request: Request) -> None:
        self._request = request

    def end_gracefully(self) -> None:
        pass  # a request in flight runs to its end

    def end_now(self) -> None:
        # an abort, never a clean end: a cut stream must not look complete
        transport = getattr(self._request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()


def _count(inflight: InFlight, request: Request) -> None:
    handle = _HTTPInFlight(request)
    inflight.http_started(handle)
    over = getattr(request, "when_over", None)
    if over is not None:
        over(lambda _: inflight.http_finished(handle))
    else:
        request.notifyFinish().addBoth(lambda _: inflight.http_finished(handle))


class _Draining(Resource):
    """
    Every proxied request or upgrade while the daemon stops: a 503 that
    closes the connection, so the client retries elsewhere or later.
    """

    isLeaf = True

    def render(self, request: Request) -> int:
        request.setHeader(b"connection", b"close")
        request.setHeader(b"retry-after", b"5")
        write_error(request, 503, "shutting_down",
                    "Subrouter is shutting down; retry in a moment")
        return NOT_DONE_YET


_DRAINING = _Draining()


def _is_upgrade(request: Request) -> bool:
    upgrade = raw_values(request.requestHeaders, b"upgrade")
    return bool(upgrade) and any(b"websocket" in v.lower() for v in upgrade or ())


class _Refused(Resource):
    """
    The answer to a request the guard refused: a JSON reason, no CORS header.
    """

    isLeaf = True

    def __init__(self, refusal: Refusal) -> None:
        super().__init__()
        self._refusal = refusal

    def render(self, request: Request) -> bytes:
        refusal = self._refusal
        request.setResponseCode(refusal.status)
        headers = request.responseHeaders
        headers.setRawHeaders(b"content-type", [b"application/json"])
        headers.setRawHeaders(b"cache-control", [b"no-store"])
        if refusal.status == 401:
            headers.setRawHeaders(b"www-authenticate", [b'Bearer realm="subrouter"'])
        return error_body(refusal.kind, refusal.message)


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


#: the Date header's value and the second it was made for
_DATE: list[Any] = [-1, b""]


def http_date(now: float | None = None) -> bytes:
    """
    The current time as an HTTP ``Date`` value, made once a second.
    """
    second = int(time.time() if now is None else now)
    if _DATE[0] != second:
        _DATE[1] = http.datetimeToString(second)
        _DATE[0] = second
    return _DATE[1]  # type: ignore[no-any-return]


class ProxyRequest(Request):
    """
    A request whose body is never parsed as a form: the proxy forwards bodies
    as they are, and parsing a Content-Type alone (Twisted does it with the
    ``email`` package) costs more than routing.
    """

    #: what :meth:`when_over` was given, until the request is over
    _over: list[Callable[[failure.Failure | None], object]] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Twisted sets this per request from the Site's constructor argument,
        # so a class attribute alone is overwritten
        self._parsePOSTFormSubmission = False

    def when_over(self, call: Callable[[failure.Failure | None], object]) -> None:
        """
        Have ``call(None)`` called when the answer is finished, or
        ``call(reason)`` when the connection is lost first: what
        ``notifyFinish().addBoth(call)`` does, without a Deferred made and
        fired for each (every proxied request has two such calls). A fault
        in ``call`` is logged.
        """
        if self._over is None:
            self._over = []
        self._over.append(call)

    def _cleanup(self) -> None:
        super()._cleanup()
        self._call_over(None)

    def connectionLost(self, reason: failure.Failure) -> None:
        super().connectionLost(reason)
        self._call_over(reason)

    def _call_over(self, result: failure.Failure | None) -> None:
        calls, self._over = self._over, None
        for call in calls or ():
            try:
                call(result)
            except Exception:
                _log.failure("a request's end could not be handled")

    def parseCookies(self) -> None:
        # Twisted's, without its header lookup's layers when there is no
        # Cookie header (nearly always: agents send none)
        if raw_values(self.requestHeaders, b"cookie") is not None:
            super().parseCookies()

    def process(self) -> None:
        """
        What Twisted's ``Request.process`` does, for this Site's resources
        (none of which encodes its answer), at a lower cost on every
        request: the ``Date`` header made once a second, the default headers
        set without their name lookups, and the path's segments unquoted
        only when one is quoted.
        """
        self.site = site = self.channel.site  # type: ignore[attr-defined]
        raw = self.responseHeaders._rawHeaders
        raw[b"Server"] = [version]
        raw[b"Date"] = [http_date()]
        path = self.path
        if path == b"*":
            self._handleStar()
            return
        segments = path[1:].split(b"/")
        if b"%" in path:
            segments = [unquote_to_bytes(segment) for segment in segments]
        self.prepath = []
        self.postpath = segments
        try:
            self.sitepath: list[bytes] = []
            self.render(getChildForRequest(site.resource, self))
        except BaseException:
            self.processingFailed(failure.Failure())


class QuietSite(Site):
    """
    A Site without Twisted's access log: the proxy logs one structured line
    per request itself, without the query string or any header. Its
    connections are :class:`SubrouterChannel`: limits on the request head
    answered with a JSON reason, and a deadline for a whole head.

    :ivar header_timeout: seconds a client has to send a complete request head.
    """

    displayTracebacks = False
    noisy = False
    requestFactory = ProxyRequest
    header_timeout = DEFAULT_HEADER_TIMEOUT

    def __init__(self, resource: Resource, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, *args, **kwargs)

    def protocol(self) -> SubrouterChannel:  # type: ignore[override]
        # a plain HTTP/1.1 channel: the listener is loopback TCP, never TLS
        # with ALPN, so Twisted's HTTP/2-switching wrapper is not needed
        channel = SubrouterChannel()
        channel.header_timeout = self.header_timeout
        return channel

    def log(self, request: http.Request) -> None:
        pass

    def logPrefix(self) -> str:
        # Twisted names the listener in "<prefix> starting on <port>": not a class name
        return "subrouter proxy"
