# -*- test-case-name: tests.test_proxy -*-
"""
The streaming reverse proxy resource.

Each client request becomes an :class:`_Exchange`: choose an account, make
sure its token is fresh, send the request upstream with that account's
credentials, and relay the answer chunk by chunk as it arrives. The upstream
connection is the client response's producer, so a slow client slows the
upstream read instead of filling memory; a client that goes away cancels the
upstream request; an upstream that dies mid-stream aborts the client
connection, so the client never mistakes a cut stream for a whole one.
"""

from __future__ import annotations

import io
from typing import IO, Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from subrouter.accounts.pool import AccountPool
from subrouter.accounts.refresh import RefreshFailed, TokenRefresher
from subrouter.accounts.store import Account
from subrouter.proxy.client import set_no_delay
from subrouter.proxy.errors import describe_failure_reason, write_error
from subrouter.proxy.headers import client_response_headers, upstream_request_headers
from subrouter.proxy.routing import Upstreams, is_backend_path, split_uri, upstream_url

_log = Logger()

#: request bodies up to this size are sent in one write
_SMALL_BODY = 1 << 20
#: methods that carry a body even when it is empty
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


@implementer(IBodyProducer)
class _BytesBody:
    """
    A body already in memory, written at once.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def request_body(request: Request) -> IBodyProducer | None:
    """
    A fresh producer of the client's request body, which Twisted has already
    received into ``request.content``. Each call starts from the beginning, so
    a request can be sent again after a refreshed token.
    """
    content: IO[bytes] | None = request.content
    if content is None:
        return None
    if isinstance(content, io.BytesIO):
        data = content.getvalue()
        if not data and request.method not in _BODY_METHODS:
            return None
        return _BytesBody(data)
    content.seek(0, io.SEEK_END)
    length = content.tell()
    content.seek(0)
    if length <= _SMALL_BODY:
        return _BytesBody(content.read())
    # large bodies live in a temporary file; stream it with backpressure
    producer = FileBodyProducer(content)
    producer.length = length if length else UNKNOWN_LENGTH
    return producer


class _Discard(Protocol):
    """
    Reads a response body to its end and drops it, so the connection can go
    back to the pool.
    """

    def dataReceived(self, data: bytes) -> None:
        pass


class _Relay(Protocol):
    """
    Relays an upstream response body to the client, chunk by chunk.
    """

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    def connectionMade(self) -> None:
        self._exchange.relay_started(self)

    def dataReceived(self, data: bytes) -> None:
        self._exchange.relay_chunk(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self._exchange.relay_ended(reason)


class ProxyResource(Resource):
    """
    Proxies every request it is given to an upstream, with a chosen account's
    credentials.

    :param pool: the accounts to choose from.
    :param refresher: keeps OAuth tokens fresh.
    :param agent: the HTTP agent for the upstreams (bare, so bytes pass
        through unchanged).
    :param upstreams: the upstream base URLs.
    :param clock: the source of time, for timeouts and durations.
    :param idle_timeout: seconds without a byte from upstream (before or
        during the answer) after which the exchange is given up.
    """

    isLeaf = True

    def __init__(
        self,
        *,
        pool: AccountPool,
        refresher: TokenRefresher,
        agent: IAgent,
        upstreams: Upstreams,
        clock: IReactorTime,
        idle_timeout: float,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.refresher = refresher
        self.agent = agent
        self.upstreams = upstreams
        self.clock = clock
        self.idle_timeout = idle_timeout

    def render(self, request: Request) -> object:
        # the upstream's Content-Type, or none: never Twisted's text/html
        request.defaultContentType = None
        channel = request.channel
        if channel is not None and not getattr(channel, "_subrouter_nodelay", False):
            # relay each event as it comes, without waiting for acknowledgements
            set_no_delay(request.transport)
            setattr(channel, "_subrouter_nodelay", True)  # noqa: B010 - a foreign object
        _Exchange(self, request).start()
        return NOT_DONE_YET


class _Exchange:
    """
    One client request and its way through the proxy.
    """

    def __init__(self, proxy: ProxyResource, request: Request) -> None:
        self.proxy = proxy
        self.request = request
        self.clock = proxy.clock
        self.started = proxy.clock.seconds()
        self.path, self.query = split_uri(request.uri)
        self.method = request.method
        self.account: Account | None = None
        self.status: int | None = None
        self.outcome = "ok"
        self.bytes_in = _content_length(request)
        self.bytes_out = 0
        self.gone = False
        self.timed_out = False
        self.pending: Deferred[Any] | None = None
        self.relay: _Relay | None = None
        self.timer: IDelayedCall | None = None
        request.notifyFinish().addBoth(self._request_finished)

    def start(self) -> None:
        Deferred.fromCoroutine(self._run()).addErrback(self._crashed)

    # -- choosing and sending -------------------------------------------------

    async def _run(self) -> None:
        proxy = self.proxy
        tried: list[str] = []
        reasons: list[str] = []
        oauth_only = is_backend_path(self.path)
        while True:
            account = proxy.pool.choose(oauth_only=oauth_only, exclude=tried)
            if account is None:
                self._no_account(reasons, oauth_only)
                return
            tried.append(account.id)
            try:
                account = await proxy.refresher.ensure_fresh(account)
            except RefreshFailed as e:
                reasons.append(f"{e.account_id}: {e.reason}")
                continue
            if self.gone:
                return
            response = await self._send(account)
            if response is None:
                return
            if response.code == 401 and account.is_oauth:
                # the token may have been revoked or rotated early: refresh
                # once and try once more on the same account
                response.deliverBody(_Discard())
                try:
                    account = await proxy.refresher.refresh_rejected(account)
                except RefreshFailed as e:
                    reasons.append(f"{e.account_id}: {e.reason}")
                    continue
                if self.gone:
                    return
                response = await self._send(account)
                if response is None:
                    return
            self._answer(response)
            return

    async def _send(self, account: Account) -> Any:
        """
        Send the request upstream as ``account``.

        :return: the response, or None when the exchange ended instead (the
            client left, or an error answer was written).
        """
        self.account = account
        proxy = self.proxy
        url = upstream_url(proxy.upstreams, account.kind, self.path, self.query)
        headers = upstream_request_headers(self.request.requestHeaders, account)
        for attempt in (1, 2):
            d = proxy.agent.request(self.method, url, headers, request_body(self.request))
            self.pending = d
            self._arm_timer()
            try:
                return await d
            except Exception as e:
                if self.gone:
                    return None
                if self.timed_out:
                    self._fail(
                        504,
                        "upstream_timeout",
                        f"the upstream did not answer within {proxy.idle_timeout:g}s "
                        f"(account {account.id})",
                    )
                    return None
                if attempt == 1 and _stale_connection(e):
                    # a pooled connection the upstream had already closed;
                    # nothing was answered, so sending again is safe
                    continue
                self._fail(
                    502,
                    "upstream_error",
                    f"the upstream request via account {account.id} failed: "
                    f"{describe_failure_reason(e)}",
                )
                return None
            finally:
                self.pending = None
        raise AssertionError("unreachable")

    def _no_account(self, reasons: list[str], oauth_only: bool) -> None:
        unusable = [f"{a.id}: {why}" for a, why in self.proxy.pool.unusable()]
        details = list(dict.fromkeys(reasons + unusable))
        if not self.proxy.pool.store.accounts():
            message = (
                "no accounts are set up: run `cx add` to add a ChatGPT login "
                "(or `cx add-key` for an API key)"
            )
        else:
            kind = "ChatGPT login" if oauth_only else "account"
            message = f"no usable {kind} right now; run `cx add` to add one"
            if details:
                message += " (" + "; ".join(details) + ")"
        self._fail(503, "no_usable_account", message)

    # -- answering --------------------------------------------------------------

    def _answer(self, response: Any) -> None:
        request = self.request
        self.status = response.code
        request.setResponseCode(response.code, response.phrase or None)
        client_response_headers(response.headers, request.responseHeaders)
        # send the status line and headers now: a streaming client sees the
        # response start as soon as the upstream's does
        request.write(b"")
        self._arm_timer()
        response.deliverBody(_Relay(self))

    def relay_started(self, relay: _Relay) -> None:
        self.relay = relay
        transport = _producer_of(relay)
        if transport is None:
            return
        if self.gone:
            transport.stopProducing()
            return
        # backpressure: a full client socket pauses the upstream read
        self.request.registerProducer(transport, True)

    def relay_chunk(self, data: bytes) -> None:
        if self.gone:
            return
        self.bytes_out += len(data)
        timer = self.timer
        if timer is not None:
            timer.reset(self.proxy.idle_timeout)
        self.request.write(data)

    def relay_ended(self, reason: Failure) -> None:
        self._disarm_timer()
        if self.gone:
            return
        request = self.request
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
            return
        self.outcome = "upstream-died" if not self.timed_out else "upstream-idle"
        _log.warn(
            "the upstream stream via account {account} broke off after {bytes} bytes: "
            "{reason}; aborting the client connection",
            account=self.account.id if self.account else None,
            bytes=self.bytes_out,
            reason=describe_failure_reason(reason),
        )
        _abort_client(request)

    # -- timers, failures, the end ------------------------------------------------

    def _arm_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.reset(self.proxy.idle_timeout)
        else:
            self.timer = self.clock.callLater(self.proxy.idle_timeout, self._idle)

    def _disarm_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _idle(self) -> None:
        self.timer = None
        self.timed_out = True
        if self.pending is not None:
            self.pending.cancel()
        elif self.relay is not None:
            _stop(self.relay)

    def _fail(self, status: int, kind: str, message: str) -> None:
        self._disarm_timer()
        self.status = status
        self.outcome = kind
        _log.warn("{method} {path}: {status} {message}", method=self.method.decode("ascii",
                  "replace"), path=self.path.decode("ascii", "replace"), status=status,
                  message=message)
        write_error(self.request, status, kind, message)

    def _crashed(self, failure: Failure) -> None:
        _log.failure("proxying {path} failed", failure, path=self.path.decode("ascii", "replace"))
        if self.request.startedWriting:
            _abort_client(self.request)
        else:
            self._fail(500, "internal_error", "Subrouter failed to proxy the request; see its log")

    def _request_finished(self, result: Failure | None) -> None:
        if isinstance(result, Failure):
            # the client went away (or was aborted): stop all upstream work
            self.gone = True
            if self.outcome == "ok":
                self.outcome = "client-gone"
            self._disarm_timer()
            if self.pending is not None:
                self.pending.cancel()
            if self.relay is not None:
                _stop(self.relay)
        account_id = self.account.id if self.account is not None else None
        method = self.method.decode("ascii", "replace")
        path = self.path.decode("ascii", "replace")
        duration_ms = round((self.clock.seconds() - self.started) * 1000, 1)
        # the text is built here once; the named fields are there for JSON logs
        _log.info(
            "{request_line}",
            request_line=f"{method} {path} {self.status} {self.outcome} account={account_id} "
            f"{duration_ms}ms in={self.bytes_in}B out={self.bytes_out}B",
            method=method,
            path=path,
            status=self.status,
            outcome=self.outcome,
            account=account_id,
            duration_ms=duration_ms,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            log_category="request",
        )


def _producer_of(relay: _Relay) -> IPushProducer | None:
    """
    The upstream body's transport: a producer that can pause, resume and stop
    the upstream read.
    """
    return cast("IPushProducer | None", relay.transport)


def _stop(relay: _Relay) -> None:
    producer = _producer_of(relay)
    if producer is not None:
        producer.stopProducing()


def _abort_client(request: Request) -> None:
    channel = request.channel
    transport = channel.transport if channel is not None else None
    if transport is not None:
        cast(ITCPTransport, transport).abortConnection()


def _content_length(request: Request) -> int:
    content = request.content
    if content is None:
        return 0
    if isinstance(content, io.BytesIO):
        return len(content.getbuffer())
    try:
        position = content.tell()
        content.seek(0, io.SEEK_END)
        size = content.tell()
        content.seek(position)
        return int(size)
    except (OSError, ValueError):
        return 0


def _stale_connection(error: Exception) -> bool:
    """
    Whether a request failed because a pooled connection was already closed
    before any answer came: safe to send again on a new connection.
    """
    from twisted.internet.error import ConnectionDone, ConnectionLost
    from twisted.web._newclient import RequestTransmissionFailed, ResponseNeverReceived

    if not isinstance(error, ResponseNeverReceived | RequestTransmissionFailed):
        return False
    return all(r.check(ConnectionDone, ConnectionLost) for r in error.reasons)
