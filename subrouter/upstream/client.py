# -*- test-case-name: tests.test_proxy_live -*-
"""
The outbound HTTP client: a connection pool, certificate checking (with
optional extra trust roots), and a treq client that never keeps cookies.

The resend rule
---------------
A request is sent a second time only when the first went out on a pooled
keep-alive connection that was reused for it, and the connection ended before
a single byte of the answer came back: the upstream had (almost certainly)
closed the idle connection just as it was reused, so it never processed the
request. Such a failure is raised as :class:`StaleConnection`, and the proxy
resends once on a new connection. A request on a connection opened for it is
never resent, whatever happened: an upstream that took the whole request and
then closed or reset may well have acted on it.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import platformTrust
from twisted.python.failure import Failure
from twisted.web._newclient import RequestTransmissionFailed, ResponseNeverReceived
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HostnameCachingHTTPSPolicy,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from subrouter.loop import after_read

#: idle upstream connections kept per host; Codex opens many parallel turns
MAX_PERSISTENT_PER_HOST = 64
#: seconds an idle pooled connection is kept
CACHED_CONNECTION_TIMEOUT = 90
CONNECT_TIMEOUT = 30
#: seconds an upstream host name's addresses are reused for new connections
DNS_CACHE_SECONDS = 30.0


@implementer(IOpenSSLTrustRoot)
class PlatformTrustWithBundles:
    """
    Trust the platform's certificate authorities plus those in PEM files.

    :param bundles: paths of PEM files holding extra CA certificates.
    """

    def __init__(self, bundles: Sequence[str]) -> None:
        self._bundles = list(bundles)

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.set_default_verify_paths()
        for path in self._bundles:
            context.load_verify_locations(path)


class _QuietClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory, without a log line per new connection.
    """

    noisy = False


class StaleConnection(Exception):
    """
    A request failed on a reused pooled connection before any byte of the
    answer arrived: the one failure that may be resent (see the module's
    resend rule).

    :ivar reasons: the failures under it, as Twisted's wrapper exceptions have.
    """

    def __init__(self, reasons: list[Failure]) -> None:
        super().__init__(reasons)
        self.reasons = reasons


def _is_stale(error: ResponseNeverReceived | RequestTransmissionFailed) -> bool:
    from twisted.internet.error import ConnectionDone, ConnectionLost

    # ResponseNeverReceived: the connection ended before the first byte of
    # the answer (a partial answer is ResponseFailed); RequestTransmissionFailed:
    # it ended while the request was still being written. A cancellation (the
    # client left, the idle timer) is neither.
    return all(r.check(ConnectionDone, ConnectionLost) for r in error.reasons)


class _Reused:
    """
    A pooled connection handed out again: its failures before the first byte
    of the answer become :class:`StaleConnection`.
    """

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def request(self, request: Any) -> Deferred[Any]:
        def failed(reason: Failure) -> Failure:
            error = reason.value
            if isinstance(error, ResponseNeverReceived | RequestTransmissionFailed) and (
                _is_stale(error)
            ):
                return Failure(StaleConnection(list(error.reasons)))
            return reason

        d: Deferred[Any] = self._connection.request(request)
        return d.addErrback(failed)


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietClientFactory

    _opened = 0

    def getConnection(self, key: Any, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        # a connection the pool did not open for this request was reused:
        # mark it, so a failure on it can be told from one on a new one
        opened = self._opened
        d: Deferred[Any] = super().getConnection(key, endpoint)
        if self._opened == opened:
            d.addCallback(_Reused)
        return d

    def _newConnection(self, key: Any, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        self._opened += 1
        d: Deferred[Any] = super()._newConnection(key, endpoint)
        return d


def make_pool(reactor: Any) -> HTTPConnectionPool:
    pool = _QuietPool(reactor, persistent=True)
    pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
    pool.cachedConnectionTimeout = CACHED_CONNECTION_TIMEOUT
    # a POST is never silently re-sent by the pool; the proxy decides
    pool.retryAutomatically = False
    return pool


@implementer(IStreamClientEndpoint)
class NoDelayEndpoint:
    """
    Connects through another endpoint and turns Nagle's algorithm off on the
    new TCP connection: a relayed event is sent at once, not held back until
    the previous one is acknowledged.
    """

    def __init__(self, inner: IStreamClientEndpoint) -> None:
        self._inner = inner

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def no_delay(protocol: IProtocol) -> IProtocol:
            set_no_delay(getattr(protocol, "transport", None))
            return protocol

        d: Deferred[IProtocol] = self._inner.connect(factory)
        return d.addCallback(no_delay)


def set_no_delay(transport: object) -> None:
    """
    Set ``TCP_NODELAY`` on a TCP transport; anything else is left alone.
    """
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        try:
            setter(True)
        except OSError:
            pass  # not a TCP socket after all (e.g. a UNIX socket)


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass  # HostnameEndpoint never cancels a resolution


@implementer(IHostnameResolver)
class CachingResolver:
    """
    Remembers each host name's addresses for ``ttl`` seconds, and answers
    concurrent look-ups of one name with one resolution.

    Twisted resolves the upstream's name (even an IP address) in a thread for
    every new connection; when many conversations start at once, each waits
    for its own round trip through the thread pool. With this, the first
    look-up of a name resolves it and the rest, then and for ``ttl`` seconds,
    take its answer.

    :param inner: the resolver that really resolves (the reactor's).
    :param clock: the source of time.
    :param ttl: how long an answer is kept.
    """

    def __init__(self, inner: IHostnameResolver, clock: Any, ttl: float = DNS_CACHE_SECONDS
                 ) -> None:
        self._inner = inner
        self._clock = clock
        self._ttl = ttl
        self._answers: dict[tuple[Any, ...], tuple[float, list[IAddress]]] = {}
        self._waiting: dict[tuple[Any, ...], list[IResolutionReceiver]] = {}

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        key = (hostName, portNumber, tuple(addressTypes or ()), transportSemantics)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        answer = self._answers.get(key)
        if answer is not None and answer[0] > self._clock.seconds():
            _replay(resolutionReceiver, answer[1])
            return resolution
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(resolutionReceiver)
            return resolution
        self._waiting[key] = [resolutionReceiver]
        found: list[IAddress] = []
        resolver = self

        @implementer(IResolutionReceiver)
        class Collect:
            @staticmethod
            def resolutionBegan(resolutionInProgress: IHostResolution) -> None:
                pass

            @staticmethod
            def addressResolved(address: IAddress) -> None:
                found.append(address)

            @staticmethod
            def resolutionComplete() -> None:
                receivers = resolver._waiting.pop(key, [])
                if found:  # a failed look-up is not remembered
                    resolver._answers[key] = (resolver._clock.seconds() + resolver._ttl, found)
                for receiver in receivers:
                    _replay(receiver, found)

        self._inner.resolveHostName(Collect(), hostName, portNumber, addressTypes,
                                    transportSemantics)
        return resolution


def _replay(receiver: IResolutionReceiver, addresses: list[IAddress]) -> None:
    for address in addresses:
        receiver.addressResolved(address)
    receiver.resolutionComplete()


@implementer(IReactorPluggableNameResolver)
class _ReactorWithResolver:
    """
    The reactor, as ``HostnameEndpoint`` sees it, with another name resolver.
    """

    def __init__(self, reactor: Any, resolver: IHostnameResolver) -> None:
        self._reactor = reactor
        self.nameResolver = resolver

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        old, self.nameResolver = self.nameResolver, resolver
        return old

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


#: the attribute of a transport holding what is written to it during a read
_HELD = "_subrouter_held"


def hold(transport: Any) -> None:
    """
    Keep what is written to ``transport`` with :func:`send_now` while the
    read being handled now lasts, and send it all in one system call when it
    ends (:func:`subrouter.loop.after_read`): an answer's head with the body
    that came in the same read, a stream's last event with its end. Nothing
    is held when no read is being handled.
    """
    if getattr(transport, _HELD, None) is None and after_read(release, transport):
        setattr(transport, _HELD, [])


def release(transport: Any) -> None:
    """
    Send what :func:`hold` kept for ``transport`` now (before the connection
    is closed, say).
    """
    held = getattr(transport, _HELD, None)
    if held is None:
        return
    setattr(transport, _HELD, None)
    if held:
        send_now(transport, held[0] if len(held) == 1 else b"".join(held))


def send_now(transport: Any, data: bytes) -> None:
    """
    Write ``data`` to a TCP transport, sending it at once when nothing is
    queued ahead of it.

    ``transport.write`` only queues, registers the socket for writing and
    sends on the reactor's next turn, which costs two ``epoll_ctl`` calls and
    a dispatch for every relayed event. When the transport holds nothing
    unsent, sending straight away keeps the order and skips all of that; what
    the socket does not take is queued the usual way (so backpressure still
    pauses the producer). Any other transport is simply written to. While
    :func:`hold` holds the transport, ``data`` is kept for later instead.
    """
    held = getattr(transport, _HELD, None)
    if held is not None:
        held.append(data)
        return
    if not _may_send_now(transport):
        transport.write(data)
        return
    sent = _try_send(transport.socket.send, data)
    if sent is not None and sent < len(data):
        transport.write(data[sent:])


def send_now_two(transport: Any, head: bytes, body: bytes) -> None:
    """
    :func:`send_now` for ``head + body`` (a request and its body), given to
    the socket as two buffers instead of being joined into one first.
    """
    held = getattr(transport, _HELD, None)
    if held is not None:
        held += (head, body)
        return
    if not _may_send_now(transport):
        transport.write(head)
        transport.write(body)
        return
    sent = _try_send(transport.socket.sendmsg, (head, body))
    if sent is None:
        return
    if sent < len(head):
        transport.write(head[sent:])
        transport.write(body)
    elif sent < len(head) + len(body):
        transport.write(body[sent - len(head):])


def _try_send(send: Callable[[Any], int], what: Any) -> int | None:
    """
    ``send(what)`` on a non-blocking socket: how many bytes it took (0 when
    it is full), or None when the connection is gone (the reactor sees that
    on its next read).
    """
    try:
        return send(what)
    except BlockingIOError:
        return 0
    except OSError as e:
        return 0 if e.errno == errno.ENOBUFS else None


def _may_send_now(transport: Any) -> bool:
    """
    Whether bytes for ``transport`` may go straight to its socket: a plain
    TCP connection, open, with nothing queued ahead of them. (A TLS wrapper
    passes unknown attributes on to the TCP connection under it, whose socket
    would bypass TLS.)
    """
    return bool(
        isinstance(transport, tcp.Connection)
        and not transport.dataBuffer
        and not transport._tempDataLen
        and not transport.disconnecting
        and transport.connected
        and not transport.TLS
    )


@implementer(IAgentEndpointFactory)
class CachedEndpoints:
    """
    One client endpoint per upstream (scheme, host, port), built once.

    Twisted's default factory builds a new endpoint (and encodes the host
    name) for every request, even when the pool then hands out an idle
    connection and the endpoint goes unused.
    """

    def __init__(self, reactor: Any, tls: IPolicyForHTTPS, connect_timeout: float) -> None:
        resolver = IReactorPluggableNameResolver(reactor, None)
        self._reactor = (
            _ReactorWithResolver(reactor, CachingResolver(resolver.nameResolver, reactor))
            if resolver is not None else reactor
        )
        self._tls = tls
        self._timeout = connect_timeout
        self._cache: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            host = uri.host.decode("ascii")
            endpoint = NoDelayEndpoint(
                HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
            )
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
            elif uri.scheme != b"http":
                raise SchemeNotSupported(f"unsupported scheme {uri.scheme!r}")
            self._cache[key] = endpoint
        return endpoint


def make_tls_policy(ca_bundles: Sequence[str] = ()) -> IPolicyForHTTPS:
    """
    Certificate checking for every upstream connection (HTTPS and WSS): the
    platform's roots plus those in ``ca_bundles``.
    """
    trust = PlatformTrustWithBundles(ca_bundles) if ca_bundles else platformTrust()
    policy: IPolicyForHTTPS = HostnameCachingHTTPSPolicy(
        BrowserLikePolicyForHTTPS(trustRoot=trust)
    )
    return policy


def make_agent(reactor: Any, pool: HTTPConnectionPool, policy: IPolicyForHTTPS) -> Agent:
    """
    The HTTP agent for the upstreams: certificates checked by ``policy``,
    connections from ``pool``.

    The proxy streams through this bare agent, so bytes pass unchanged: no
    added ``Accept-Encoding``, no decoding, no cookie jar, no URL rewriting.
    """
    endpoints = CachedEndpoints(reactor, policy, CONNECT_TIMEOUT)
    agent: Agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
    return agent


def make_http_client(agent: Agent) -> HTTPClient:
    """
    A treq client over ``agent``, for Subrouter's own JSON calls (token
    refresh, usage). It never keeps cookies: one client serves every account,
    and must never replay one account's cookies on another's request.
    """
    jar = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
    return HTTPClient(agent, cookiejar=jar)  # type: ignore[arg-type]


class PoolService(Service):
    """
    Owns the connection pools: closes cached connections at shutdown so the
    daemon stops promptly.
    """

    name = "http-pool"

    def __init__(self, *pools: Any) -> None:
        self.pools = pools

    def stopService(self) -> Deferred[None]:
        super().stopService()
        from twisted.internet.defer import gatherResults

        d: Deferred[Any] = gatherResults([p.closeCachedConnections() for p in self.pools])
        return d.addCallback(lambda _: None)
