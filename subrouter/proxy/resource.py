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
import json
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

from subrouter.accounts.refresh import RefreshFailed, TokenRefresher
from subrouter.accounts.store import Account
from subrouter.errors import describe_failure_reason, write_error
from subrouter.routing.identity import identify
from subrouter.routing.usage import UsagePoller, bounded
from subrouter.sessions.identity import Identity
from subrouter.sessions.keys import BadAccountSelector
from subrouter.sessions.placement import NoAccount, Placement
from subrouter.sessions.usage import (
    is_overload,
    retry_after,
    usage_limit_in_body,
    windows_from_headers,
)
from subrouter.transcripts.events import redact_headers
from subrouter.transcripts.recorder import Conversation, Recorder
from subrouter.upstream.client import set_no_delay
from subrouter.upstream.headers import client_response_headers, upstream_request_headers
from subrouter.upstream.routing import Upstreams, is_backend_path, split_uri

_log = Logger()

#: request bodies up to this size are sent in one write
_SMALL_BODY = 1 << 20
#: how much of an error answer is read to look for a usage-limit signal
MAX_ERROR_SCAN = 1 << 20
#: accounts one request may try when they turn out exhausted
MAX_ACCOUNTS_PER_REQUEST = 4
#: how long a new conversation waits for stale usage scores
USAGE_WAIT_BOUND = 1.5
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


class _Bounded(Protocol):
    """
    Reads a response body up to a limit, then can hand the rest of the
    stream over to another protocol.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.done: Deferred[None] = Deferred()
        self.complete = False
        self._next: Protocol | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._next is not None:
            self._next.dataReceived(data)
            return
        self.chunks.append(data)
        self.size += len(data)
        if self.size >= self.limit and not self.done.called:
            producer = cast("IPushProducer | None", self.transport)
            if producer is not None:
                producer.pauseProducing()
            self.done.callback(None)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self._next is not None:
            self._next.connectionLost(reason)
            return
        self.complete = True
        self.reason = reason
        if not self.done.called:
            self.done.callback(None)

    def hand_over(self, protocol: Protocol) -> None:
        self._next = protocol
        protocol.makeConnection(self.transport)
        producer = cast("IPushProducer | None", self.transport)
        if producer is not None:
            producer.resumeProducing()


class _Body:
    def __init__(self, protocol: _Bounded) -> None:
        self.protocol = protocol
        self.data = b"".join(protocol.chunks)
        self.complete = protocol.complete


class _Held:
    """
    An upstream answer and the start of its body, read before deciding.
    """

    def __init__(self, response: Any, body: _Body) -> None:
        self.response = response
        self.body = body


async def _read_bounded(response: Any, limit: int) -> _Body:
    protocol = _Bounded(limit)
    response.deliverBody(protocol)
    await protocol.done
    return _Body(protocol)


class _Tap:
    """
    What one exchange hands the transcript recorder: cheap calls only.
    """

    def __init__(self, recorder: Recorder, conversation: Conversation) -> None:
        self.recorder = recorder
        self.conversation = conversation
        self.request_id = recorder.new_id("req")
        self.response_stream: str | None = None
        self.request_recorded = False

    def meta(self, request: Request, account: Account, upstream: bytes) -> None:
        self.conversation.account = account.id
        self.recorder.event(self.conversation, self.request_id, "subrouter_meta", {
            "transport": "http",
            "user": self.conversation.user,
            "account": account.id,
            "method": request.method.decode("ascii", "replace"),
            "path": request.uri.decode("ascii", "replace").partition("?")[0],
            "upstream": upstream.decode("ascii", "replace"),
            "headers": redact_headers(request.requestHeaders.getAllRawHeaders()),
        })
        if not self.request_recorded:
            self.request_recorded = True
            data = _body_bytes(request, self.recorder.max_body)
            stream = self.recorder.new_id("body")
            self.recorder.body(self.conversation, self.request_id, stream,
                               "client_to_upstream", data)
            self.recorder.body_end(self.conversation, self.request_id, stream)

    def response(self, data: bytes, status: int | None) -> None:
        if self.response_stream is None:
            self.response_stream = self.recorder.new_id("body")
        self.recorder.body(self.conversation, self.request_id, self.response_stream,
                           "upstream_to_client", data, status)

    def response_end(self, status: int | None) -> None:
        if self.response_stream is None:
            self.response(b"", status)
        assert self.response_stream is not None
        self.recorder.body_end(self.conversation, self.request_id, self.response_stream)


def _body_bytes(request: Request, limit: int) -> bytes:
    content = request.content
    if content is None:
        return b""
    if isinstance(content, io.BytesIO):
        return content.getvalue()[:limit]
    position = content.tell()
    content.seek(0)
    data = content.read(limit)
    content.seek(position)
    return bytes(data)


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

    :param placement: places requests on accounts.
    :param poller: refreshes stale usage scores before a new conversation is
        placed; None when usage polling is off.
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
        placement: Placement,
        poller: UsagePoller | None = None,
        refresher: TokenRefresher,
        agent: IAgent,
        upstreams: Upstreams,
        clock: IReactorTime,
        idle_timeout: float,
        recorder: Recorder | None = None,
    ) -> None:
        super().__init__()
        self.recorder = recorder
        self.placement = placement
        self.poller = poller
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
        self.identity: Identity | None = None
        self.committed: Deferred[bool] | None = None
        self.pending_response: Any = None
        self.first_chunk = False
        self.holding = False
        self.headers_sent = False
        self.tap: _Tap | None = None
        request.notifyFinish().addBoth(self._request_finished)

    def start(self) -> None:
        Deferred.fromCoroutine(self._run()).addErrback(self._crashed)

    # -- choosing and sending -------------------------------------------------

    async def _run(self) -> None:
        proxy = self.proxy
        placement = proxy.placement
        try:
            identity = identify(self.request, self.path, self.query)
        except BadAccountSelector as e:
            self._fail(400, "invalid_account_selector", str(e))
            return
        self.identity = identity
        recorder = proxy.recorder
        if recorder is not None and recorder.wants(self.path.decode("ascii", "replace")):
            session = identity.session
            self.tap = _Tap(recorder, Conversation(session.agent, session.key, identity.email))
        poller = proxy.poller
        if poller is not None and identity.forced is None and not placement.knows(identity):
            stale = poller.refresh_if_stale()
            if stale is not None:
                await bounded(stale, self.clock, USAGE_WAIT_BOUND)
                if self.gone:
                    return
        tried: list[str] = []
        oauth_only = is_backend_path(self.path)
        held: _Held | None = None  # an exhausted account's answer, kept for the client
        while True:
            try:
                account = placement.choose(identity, oauth_only=oauth_only, exclude=tried)
            except NoAccount as e:
                if held is not None:
                    self._answer_held(held)
                else:
                    self._fail(e.status, e.kind, e.message)
                return
            tried.append(account.id)
            try:
                account = await proxy.refresher.ensure_fresh(account)
            except RefreshFailed:
                continue  # the account is now unusable, with the reason shown
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
                except RefreshFailed:
                    continue
                if self.gone:
                    return
                response = await self._send(account)
                if response is None:
                    return
            self._observe_headers(account, response)
            if response.code >= 400:
                body = await _read_bounded(response, MAX_ERROR_SCAN)
                if self.gone:
                    return
                if self._exhausted_by(account, response, body.data):
                    if not body.complete:
                        _stop_transport(body.protocol)
                    held = _Held(response, body)
                    if identity.forced is None and len(tried) < MAX_ACCOUNTS_PER_REQUEST:
                        continue  # replay on the next best account; the session moves
                    self._answer_held(held)
                    return
                self._answer_held(_Held(response, body))
                return
            committed = await self._answer(response)
            if committed or self.gone:
                return
            # the stream opened with a usage-limit error before any byte
            # reached the client: mark the account and place the request anew
            if identity.forced is not None or len(tried) >= MAX_ACCOUNTS_PER_REQUEST:
                self._fail(
                    429, "usage_limit_reached",
                    f"account {account.id} has reached its usage limit",
                )
                return

    def _exhausted_by(self, account: Account, response: Any, body: bytes) -> bool:
        """
        Whether an error answer says the account ran out; marks it if so.
        Overload (5xx, "at capacity") is never exhaustion.
        """
        status = response.code
        if status >= 500:
            return False
        if not usage_limit_in_body(body) and (status != 429 or is_overload(status, body)):
            return False
        self.proxy.placement.mark_exhausted(
            account.id, retry_after(response.headers), f"HTTP {status}"
        )
        return True

    def _observe_headers(self, account: Account, response: Any) -> None:
        if not account.is_oauth:
            return
        now = self.clock.seconds()
        windows = windows_from_headers(response.headers, now)
        if windows:
            self.proxy.placement.usage.record(account.id, windows, now, "headers")

    async def _send(self, account: Account) -> Any:
        """
        Send the request upstream as ``account``.

        :return: the response, or None when the exchange ended instead (the
            client left, or an error answer was written).
        """
        self.account = account
        proxy = self.proxy
        provider = proxy.upstreams.provider(account.kind)
        url = provider.url(self.path, self.query)
        headers = upstream_request_headers(
            self.request.requestHeaders,
            provider.credential_headers(account.secret, account.chatgpt_account_id),
        )
        if self.tap is not None:
            self.tap.meta(self.request, account, url.partition(b"?")[0])
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

    # -- answering --------------------------------------------------------------

    def _answer(self, response: Any) -> Deferred[bool]:
        """
        Relay a response.

        Normally the status line and headers go out at once. For an account
        close to its limits they are held until the first chunk of the body,
        which is looked at first: a stream that opens with a usage-limit error
        is then not relayed (the Deferred fires False, nothing has reached the
        client, and the request can be placed elsewhere). Otherwise the
        Deferred fires True.
        """
        self.committed = Deferred()
        self.pending_response = response
        self.first_chunk = True
        self.holding = self.account is not None and self.proxy.placement.at_risk(self.account)
        self.status = response.code
        committed = self.committed
        if not self.holding:
            self._commit()
        self._arm_timer()
        response.deliverBody(_Relay(self))
        return committed

    def _commit(self) -> None:
        if self.headers_sent:
            return
        self.headers_sent = True
        request = self.request
        response = self.pending_response
        request.setResponseCode(response.code, response.phrase or None)
        client_response_headers(response.headers, request.responseHeaders)
        request.write(b"")
        committed, self.committed = self.committed, None
        if committed is not None:
            committed.callback(True)

    def _answer_held(self, held: _Held) -> None:
        """
        Send an error answer whose body was read (up to the scan limit)
        before deciding what to do with it, then the rest of it.
        """
        response, body = held.response, held.body
        request = self.request
        self.status = response.code
        request.setResponseCode(response.code, response.phrase or None)
        client_response_headers(response.headers, request.responseHeaders)
        request.write(body.data)
        self.headers_sent = True
        self.bytes_out += len(body.data)
        if self.tap is not None:
            self.tap.response(body.data, self.status)
        if body.complete:
            if self.tap is not None:
                self.tap.response_end(self.status)
            request.finish()
            return
        self.pending_response = response
        self.first_chunk = False
        self.committed = None
        self._arm_timer()
        body.protocol.hand_over(_Relay(self))

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
        timer = self.timer
        if timer is not None:
            timer.reset(self.proxy.idle_timeout)
        if b"rate_limits" in data and self.account is not None:
            self._observe_events(self.account, data)
        if self.first_chunk:
            self.first_chunk = False
            if (
                self.account is not None
                and b"usage" in data
                and usage_limit_in_body(data)
            ):
                self.proxy.placement.mark_exhausted(
                    self.account.id, None, "error event in the stream"
                )
                if not self.headers_sent:
                    committed, self.committed = self.committed, None
                    self._stop_upstream()
                    if committed is not None:
                        committed.callback(False)
                    return
            self._commit()
        self.bytes_out += len(data)
        self.request.write(data)
        if self.tap is not None:
            self.tap.response(data, self.status)

    def _stop_upstream(self) -> None:
        relay = self.relay
        self.relay = None
        if relay is not None:
            self.request.unregisterProducer()
            _stop(relay)

    def _observe_events(self, account: Account, data: bytes) -> None:
        for line in data.split(b"\n"):
            if not line.startswith(b"data:") or b"codex.rate_limits" not in line:
                continue
            try:
                event = json.loads(line[5:])
            except ValueError:
                continue
            self.proxy.placement.observe_rate_limits(account.id, event, "stream")

    def relay_ended(self, reason: Failure) -> None:
        if self.relay is None and self.committed is None and not self.first_chunk:
            return  # a stream given up before it reached the client
        self._disarm_timer()
        if self.tap is not None and self.headers_sent:
            self.tap.response_end(self.status)
        if self.gone:
            return
        request = self.request
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            if self.first_chunk:
                self.first_chunk = False
                self._commit()  # an empty body: the headers still go out
            request.finish()
            return
        if self.first_chunk and not self.headers_sent:
            # died before a byte: an error the client can read
            self.first_chunk = False
            committed, self.committed = self.committed, None
            if committed is not None:
                committed.callback(True)
            self._fail(
                502, "upstream_error",
                f"the upstream answer via account {self.account.id if self.account else None} "
                f"broke off before its body: {describe_failure_reason(reason)}",
            )
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


def _stop_transport(protocol: Protocol) -> None:
    producer = cast("IPushProducer | None", protocol.transport)
    if producer is not None:
        producer.stopProducing()


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
