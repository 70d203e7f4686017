# -*- test-case-name: tests.test_proxy_live -*-
"""
The outbound HTTP client: a connection pool, certificate checking (with
optional extra trust roots), and a treq client that never keeps cookies.
"""

from __future__ import annotations

from collections.abc import Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import platformTrust
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

#: idle upstream connections kept per host; Codex opens many parallel turns
MAX_PERSISTENT_PER_HOST = 64
#: seconds an idle pooled connection is kept
CACHED_CONNECTION_TIMEOUT = 90
CONNECT_TIMEOUT = 30


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


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietClientFactory


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


@implementer(IAgentEndpointFactory)
class CachedEndpoints:
    """
    One client endpoint per upstream (scheme, host, port), built once.

    Twisted's default factory builds a new endpoint (and encodes the host
    name) for every request, even when the pool then hands out an idle
    connection and the endpoint goes unused.
    """

    def __init__(self, reactor: Any, tls: IPolicyForHTTPS, connect_timeout: float) -> None:
        self._reactor = reactor
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
    Owns the connection pool: closes cached connections at shutdown so the
    daemon stops promptly.
    """

    name = "http-pool"

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self.pool = pool

    def stopService(self) -> Deferred[None]:
        super().stopService()
        d: Deferred[None] = self.pool.closeCachedConnections()
        return d
