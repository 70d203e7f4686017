"""
What every fake server in the tests shares: a ``twisted.web`` site on a free
port of 127.0.0.1, over TLS or not, that knows its open connections, so that
:meth:`FakeServer.stop` can abort them all and return only once they are
closed. A test that stops its fake servers leaves no connection or timer of
theirs behind (``conftest.py`` checks).

:class:`~tests.support.upstream.FakeUpstream` and
:class:`~tests.support.codex_backend.FakeCodexBackend` are built on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class Root(Resource):
    """
    A resource that hands every request, whatever its path, to ``render``.
    """

    isLeaf = True

    def __init__(self, render: Callable[[Request], int | bytes]) -> None:
        super().__init__()
        self._render = render

    def render(self, request: Request) -> int | bytes:
        return self._render(request)


class QuietSite(Site):
    """
    A site that writes no access log lines into the test output.
    """

    def log(self, request: http.Request) -> None:
        pass


class _TrackConnections(WrappingFactory):
    """
    Keeps every open connection (as every ``WrappingFactory`` does, in
    ``protocols``) and says when the last one has gone.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle_waiters: list[Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_idle(self) -> Deferred[None]:
        if not self.protocols:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter


class _TrackTLSConnections(_TrackConnections, TLSMemoryBIOFactory):
    pass


class FakeServer:
    """
    A site on a free port of 127.0.0.1, HTTPS when given TLS options.
    Subclasses say what the site is (:meth:`make_site`) and may stop their
    own work first (:meth:`stopping`).

    :ivar reactor: the reactor it listens with.
    :ivar port: the port, once started.
    """

    def __init__(self, reactor: Any, tls_options: ssl.CertificateOptions | None) -> None:
        """
        :param reactor: a reactor providing ``IReactorTCP`` and ``IReactorTime``.
        :param tls_options: serve TLS with these; plain HTTP if ``None``.
        """
        self.reactor = reactor
        self.port = 0
        self._tls_options = tls_options
        self._listening: IListeningPort | None = None
        self._factory: _TrackConnections | None = None

    @property
    def tls(self) -> bool:
        """Whether it serves TLS."""
        return self._tls_options is not None

    def make_site(self) -> Site:
        """The site to serve; called by :meth:`start`."""
        raise NotImplementedError

    def stopping(self) -> None:
        """
        Called first by :meth:`stop`, before anything is closed: a subclass
        stops its handlers and timers here.
        """

    async def start(self) -> None:
        """Listen on a free port on 127.0.0.1."""
        site = self.make_site()
        factory: _TrackConnections
        if self._tls_options is not None:
            factory = _TrackTLSConnections(self._tls_options, False, site)
        else:
            factory = _TrackConnections(site)
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self._listening = await endpoint.listen(factory)
        self._factory = factory
        self.port = cast(IPv4Address, self._listening.getHost()).port

    async def stop(self) -> None:
        """
        Stop listening and abort every open connection (HTTP, TLS or
        WebSocket); returns once they are all closed.
        """
        self.stopping()
        if self._listening is not None:
            listening, self._listening = self._listening, None
            stopped = listening.stopListening()
            if stopped is not None:
                await stopped
        if self._factory is not None:
            factory, self._factory = self._factory, None
            for protocol in list(factory.protocols):
                protocol.abortConnection()
            await factory.when_idle()
            # The wrapped protocols' connectionLost runs just after the
            # factory hears of it; let it finish (and cancel its timeouts).
            await deferLater(self.reactor, 0, lambda: None)
