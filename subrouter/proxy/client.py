# -*- test-case-name: tests.test_client -*-
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
from twisted.internet.interfaces import IReactorCore
from twisted.internet.ssl import platformTrust
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HostnameCachingHTTPSPolicy,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
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


def make_http_client(
    reactor: Any, pool: HTTPConnectionPool, ca_bundles: Sequence[str] = ()
) -> HTTPClient:
    """
    A treq client for the upstreams, sharing ``pool``.

    :param ca_bundles: extra PEM trust roots, added to the platform's.
    """
    trust = PlatformTrustWithBundles(ca_bundles) if ca_bundles else platformTrust()
    policy = HostnameCachingHTTPSPolicy(BrowserLikePolicyForHTTPS(trustRoot=trust))
    agent = Agent(reactor, contextFactory=policy, pool=pool, connectTimeout=CONNECT_TIMEOUT)
    # one client serves every account: it must never replay one account's
    # cookies on another's request
    jar = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
    return HTTPClient(agent, cookiejar=jar)  # type: ignore[arg-type]


class PoolService(Service):
    """
    Owns the connection pool: closes cached connections at shutdown so the
    daemon stops promptly.
    """

    name = "http-pool"

    def __init__(self, pool: HTTPConnectionPool, reactor: IReactorCore | None = None) -> None:
        self.pool = pool

    def stopService(self) -> Deferred[None]:
        super().stopService()
        d: Deferred[None] = self.pool.closeCachedConnections()
        return d
