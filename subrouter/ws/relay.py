# -*- test-case-name: tests.test_ws_relay -*-
"""
The Responses WebSocket relay, on the same port as the HTTP proxy.

A WebSocket upgrade on any proxied path is routed like an HTTP request:
session key and agent from the handshake headers, the conversation's sticky
account (or a new placement), credentials replaced, ``X-Subrouter-*``
stripped, the path rules of the account's kind. The upstream ``wss://``
connection is opened first, with certificates checked; the client is accepted
only once the upstream accepted, with the upstream's subprotocol and headers.
If the upstream refuses the upgrade, the client gets the same status, so
Codex falls back to HTTPS; a refusal saying the upstream is overloaded (529)
is first waited out on the same account, as for HTTP (``--overload-wait``).

Messages are relayed whole, in order, text and binary alike, each side's
transport the other's producer. Upstream messages are looked at as they pass
(never re-encoded): a usage-limit error marks the account exhausted, and the
connection is closed after the response in progress so the client reconnects
and is placed anew; ``codex.rate_limits`` events feed the usage book.

Open connections report to the daemon's in-flight tracker: at a stop, one
between responses closes at once with 1001, one with a response under way
closes with 1001 when that response ends (or when the drain times out).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest, ConnectionResponse
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS

from subrouter.accounting.extract import Origin
from subrouter.accounting.ledger import Ledger
from subrouter.accounts.refresh import TokenRefresher
from subrouter.accounts.store import Account
from subrouter.errors import closing_error, describe_failure_reason
from subrouter.routing.exchange import (
    AUTH_REJECTED,
    Exchange,
    OutOfQuota,
    Overloaded,
    Sent,
    Verdict,
)
from subrouter.routing.inflight import GOING_AWAY, GOING_AWAY_REASON, InFlight
from subrouter.routing.shared import SharedPlacement
from subrouter.sessions.identity import Identity, identify_headers
from subrouter.sessions.keys import BadAccountSelector
from subrouter.sessions.placement import NoAccount, Placement
from subrouter.sessions.usage import is_usage_limit, worth_waiting_out
from subrouter.transcripts.events import redact_headers
from subrouter.transcripts.recorder import Conversation, Recorder
from subrouter.upstream.client import set_no_delay
from subrouter.upstream.headers import forwardable
from subrouter.upstream.routing import Upstreams, is_backend_path, split_uri

_log = Logger()

#: the largest frame and message either side may send
MAX_MESSAGE = 64 * 1024 * 1024
PING_INTERVAL = 30.0
PING_TIMEOUT = 60.0
#: the client handshake waits for the upstream one
HANDSHAKE_TIMEOUT = 60.0
CONNECT_TIMEOUT = 30.0
#: autobahn's timers round down to whole seconds: 1 s could fire at once
CLOSE_TIMEOUT = 5.0
#: options both legs of the relay share
_LEG_OPTIONS: dict[str, Any] = {
    "maxFramePayloadSize": MAX_MESSAGE,
    "maxMessagePayloadSize": MAX_MESSAGE,
    "autoPingInterval": PING_INTERVAL,
    "autoPingTimeout": PING_TIMEOUT,
    "openHandshakeTimeout": HANDSHAKE_TIMEOUT,
    "closeHandshakeTimeout": CLOSE_TIMEOUT,
}

#: handshake headers that belong to one hop of the WebSocket
_HANDSHAKE_HEADERS = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-accept",
        b"sec-websocket-protocol",
        b"host",
        b"origin",
        b"content-length",
        b"authorization",
        b"chatgpt-account-id",
        b"accept-encoding",
        b"user-agent",
    }
)
_UPGRADE_FAILED = re.compile(r"upgrade failed \[(\d{3})\]")
_RESPONSE_END = (b'"response.completed"', b'"response.failed"', b'"response.incomplete"',
                 b'"error"')


def handshake_headers(request: ConnectionRequest) -> Headers:
    """
    The client's handshake headers as Twisted ``Headers``.
    """
    headers = Headers()
    for name, value in request.headers.items():
        headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    return headers


def upstream_handshake_headers(
    client: Headers, credentials: Iterable[tuple[bytes, bytes]]
) -> dict[str, str]:
    """
    The headers of the upstream handshake: the client's, less the ones that
    belong to one hop, Subrouter's own and the client's credentials; plus the
    account's credentials.
    """
    out: dict[str, str] = {}
    for name, values in forwardable(client, _HANDSHAKE_HEADERS):
        out[name.decode("latin-1")] = ", ".join(v.decode("latin-1") for v in values)
    for name, value in credentials:
        out[name.decode("latin-1")] = value.decode("latin-1")
    return out


def relayable_response_headers(headers: dict[str, str]) -> dict[str, str]:
    """
    The upstream's 101 headers worth passing to the client (``x-codex-*``,
    ``x-models-etag``, ...).
    """
    skip = {"connection", "upgrade", "content-length", "date", "server", "transfer-encoding",
            "keep-alive", "set-cookie"}
    return {
        name: value
        for name, value in headers.items()
        if name.lower() not in skip and not name.lower().startswith("sec-websocket-")
    }


def client_close_code(code: int | None) -> int:
    """
    A close code autobahn lets us send (1000 or 3000-4999) for the one the
    other side sent: 1001-1015 become 4001-4015, nothing becomes 1000.
    """
    if code is None or code == 1000 or 3000 <= code <= 4999:
        return code or 1000
    if 1000 < code < 2000:
        return 4000 + (code - 1000)
    return 1000


def _accept_deflate(offers: list[Any]) -> Any:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def _accept_deflate_response(response: Any) -> Any:
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


class UpstreamRefused(Exception):
    """
    The upstream did not accept the upgrade (``status`` is its HTTP status,
    or 502 when it could not be reached).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


#: what may not stand in a status line's phrase
_PHRASE_UNSAFE = re.compile(r"[^\x20-\x7e]")
#: the JSON error type of a handshake autobahn refused (a malformed one)
_BAD_HANDSHAKE = "bad_websocket_handshake"


def _refused(name: str, refused: UpstreamRefused) -> ConnectionDeny:
    """
    The client's answer when the upstream refused the upgrade: the same
    status; when it could not be reached (502), why, in words.
    """
    _log.warn(
        "the upstream refused the WebSocket via account {account}: {status} {reason}",
        account=name, status=refused.status, reason=refused.reason,
    )
    if refused.status == 502 and not _UPGRADE_FAILED.search(refused.reason):
        return ConnectionDeny(
            502, f"could not open the upstream WebSocket via account {name}: {refused.reason}"
        )
    return ConnectionDeny(refused.status, f"the upstream refused the WebSocket via account {name}")


def _stop_close_timer(protocol: WebSocketClientProtocol | WebSocketServerProtocol) -> None:
    """
    Cancel the close-handshake timer of a connection that is gone: autobahn
    leaves it running when the peer drops TCP instead of answering our close
    frame, which keeps the protocol (and the relay) alive until it fires.
    """
    call = protocol.closeHandshakeTimeoutCall
    if call is not None:
        protocol.closeHandshakeTimeoutCall = None
        call.cancel()


class UpstreamProtocol(WebSocketClientProtocol):
    """
    The relay's connection to the upstream.
    """

    factory: UpstreamFactory
    client: RelayServerProtocol | None = None
    response: ConnectionResponse | None = None
    opened = False

    lost_reason: Failure | None = None

    def onConnect(self, response: ConnectionResponse) -> None:
        self.response = response

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # kept so a failed opening can say why (TLS, a reset, ...) in words
        self.lost_reason = reason
        super().connectionLost(reason)

    def onOpen(self) -> None:
        self.opened = True
        set_no_delay(_tcp(self.transport))
        waiting = self.factory.waiting
        if waiting is not None and not waiting.called:
            waiting.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.client is not None:
            self.client.from_upstream(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        _stop_close_timer(self)
        waiting = self.factory.waiting
        if not self.opened:
            status = 502
            match = _UPGRADE_FAILED.search(reason or "")
            if match:
                status = int(match.group(1))
            elif self.lost_reason is not None and not self.lost_reason.check(ConnectionDone):
                reason = describe_failure_reason(self.lost_reason)
            if waiting is not None and not waiting.called:
                waiting.errback(UpstreamRefused(status, reason or "the upstream refused"))
            return
        if self.client is not None:
            self.client.upstream_closed(code, reason)


class UpstreamFactory(WebSocketClientFactory):
    protocol = UpstreamProtocol  # type: ignore[assignment]
    noisy = False  # one factory per connection: no start/stop log lines
    waiting: Deferred[UpstreamProtocol] | None = None

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        pass  # reported through the endpoint's Deferred


class RelayServerProtocol(WebSocketServerProtocol):
    """
    One client WebSocket and its relay to the upstream.
    """

    factory: RelayFactory
    upstream: UpstreamProtocol | None = None
    account: Account | None = None
    opened_at = 0.0
    counts: list[int]
    identity: Identity | None = None
    closing_after_response = False
    conversation: Conversation | None = None
    #: the JSON error type of the refusal this relay decided, if it did
    denied_kind: str | None = None
    request_id = ""
    #: a client message went up and its response has not ended yet
    responding = False
    #: the daemon is stopping: close once the response under way ends
    going_away = False
    tracked = False
    #: whose tokens this connection's responses spend
    spender: Origin | None = None
    #: the client dropped its connection before the upgrade was answered
    handshake_lost = False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.state == self.STATE_CONNECTING:
            self.handshake_lost = True
        super().connectionLost(reason)

    def onConnect(self, request: ConnectionRequest) -> Deferred[Any]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._connect(request))

    def sendHttpErrorResponse(self, code: int, reason: str,
                              responseHeaders: Any = None) -> None:
        """
        A refused handshake: autobahn sends the reason as the status line's
        phrase and no body; this keeps that line (clients that show only the
        status read the reason there) and adds the reason as a JSON error, as
        every other refusal has it.
        """
        phrase = _PHRASE_UNSAFE.sub(" ", reason)[:200] or "Error"
        extra = [(str(name).encode("latin-1", "replace"), str(value).encode("latin-1", "replace"))
                 for name, value in responseHeaders or ()]
        self.sendData(closing_error(code, phrase.encode("ascii"),
                                    self.denied_kind or _BAD_HANDSHAKE, reason, extra))

    async def _connect(self, request: ConnectionRequest) -> Any:
        try:
            return await self._open_upstream(request)
        except ConnectionDeny:
            raise
        except Exception:
            _log.failure("opening the upstream WebSocket failed")
            self.denied_kind = "internal_error"
            raise ConnectionDeny(500, "Subrouter failed to open the upstream WebSocket") from None

    async def _open_upstream(self, request: ConnectionRequest) -> Any:
        relay = self.factory
        if request.origin not in (None, "", "null") or "origin" in request.headers:
            # a browser page must never drive a credential-holding proxy
            self.denied_kind = "origin_refused"
            raise ConnectionDeny(403, "WebSocket connections from browser origins are refused")
        headers = handshake_headers(request)
        path, query = split_uri(self.http_request_uri.encode("latin-1"))
        try:
            identity = identify_headers(headers, query, path, request.peer, b"GET")
        except BadAccountSelector as e:
            self.denied_kind = "invalid_account_selector"
            raise ConnectionDeny(400, str(e)) from None
        self.identity = identity
        exchange: Exchange[tuple[Account, UpstreamProtocol] | ConnectionDeny, UpstreamRefused]
        exchange = Exchange(
            placement=relay.placement,
            refresher=relay.refresher,
            identity=identity,
            clock=relay.reactor,
            gone=lambda: self.handshake_lost,
            oauth_only=is_backend_path(path),
            shared=relay.shared,
            overload_wait=relay.overload_wait,
        )

        async def attempt(
            account: Account, may_refresh: bool
        ) -> Verdict[tuple[Account, UpstreamProtocol] | ConnectionDeny, UpstreamRefused]:
            try:
                upstream = await self._dial(account, headers, path, query, request.protocols)
            except UpstreamRefused as refused:
                if refused.status == 401 and may_refresh:
                    return AUTH_REJECTED
                if refused.status == 429:
                    return OutOfQuota(
                        refused, None, "the upstream refused the WebSocket with 429"
                    )
                if worth_waiting_out(refused.status, refused.reason.encode("utf-8", "replace")):
                    # the handshake reads no Retry-After: the exchange's pauses
                    return Overloaded(refused, None,
                                      f"the upstream refused the WebSocket with {refused.status}")
                return Sent(_refused(account.id, refused))
            return Sent((account, upstream))

        result = await exchange.run(attempt)
        if isinstance(result, NoAccount):
            self.denied_kind = result.kind
            raise ConnectionDeny(result.status, result.message)
        if isinstance(result, OutOfQuota | Overloaded):
            # the last account's own refusal, passed on
            assert result.held is not None
            raise self._upstream_denial(_refused(exchange.tried[-1], result.held))
        if not isinstance(result, Sent):
            self.denied_kind = "internal_error"
            raise ConnectionDeny(500, "the WebSocket was given up")
        if isinstance(result.value, ConnectionDeny):
            raise self._upstream_denial(result.value)
        return self._accepted(*result.value, why=exchange.why)

    def _upstream_denial(self, deny: ConnectionDeny) -> ConnectionDeny:
        # unreachable (502) or refusing: the JSON error says which
        self.denied_kind = "upstream_error" if deny.code == 502 else "upstream_refused"
        return deny

    def _accepted(self, account: Account, upstream: UpstreamProtocol, why: str = "-") -> Any:
        # what the closing log line reports: messages and bytes each way
        self.opened_at = self.factory.reactor.seconds()
        self.counts = [0, 0, 0, 0]  # client→upstream messages, bytes; upstream→client
        self.account = account
        self.upstream = upstream
        upstream.client = self
        response = upstream.response
        protocol = response.protocol if response is not None else None
        headers = relayable_response_headers(dict(response.headers)) if response else {}
        _log.info(
            "WebSocket {path} opened via account {account} why={why}",
            path=self.http_request_path, account=account.id, why=why,
        )
        recorder = self.factory.recorder
        identity = self.identity
        if identity is not None:
            session = identity.session
            self.spender = Origin(session.agent, session.key, identity.email, account.id,
                                  account.provider, "websocket")
        if recorder is not None and identity is not None and recorder.wants(
            self.http_request_path
        ):
            session = identity.session
            self.conversation = Conversation(session.agent, session.key, identity.email,
                                             account.id)
            self.request_id = recorder.new_id("ws")
            recorder.event(self.conversation, self.request_id, "subrouter_meta", {
                "transport": "websocket",
                "user": identity.email,
                "account": account.id,
                "method": "GET",
                "path": self.http_request_path,
                "upstream": self.factory.upstreams.provider(
                    account.kind, account.provider
                ).root.decode("ascii"),
                "upstream_url": getattr(upstream.factory, "url", None),
                "headers": redact_headers(
                    (k.encode("latin-1"), [v.encode("latin-1")])
                    for k, v in self.http_headers.items()
                ),
            })
        return (protocol, headers)

    async def _dial(
        self, account: Account, client: Headers, path: bytes, query: bytes, protocols: list[str]
    ) -> UpstreamProtocol:
        relay = self.factory
        provider = relay.upstreams.provider(account.kind, account.provider)
        url = provider.url(path, query).decode("ascii")
        secure = url.startswith("https://")
        url = ("wss://" if secure else "ws://") + url.split("://", 1)[1]
        user_agent = client.getRawHeaders(b"user-agent")
        factory = UpstreamFactory(
            url,
            headers=upstream_handshake_headers(
                client, provider.credential_headers(account.secret, account.chatgpt_account_id)
            ),
            protocols=protocols or None,
            useragent=user_agent[0].decode("latin-1") if user_agent else None,
            reactor=relay.reactor,
        )
        factory.setProtocolOptions(
            **_LEG_OPTIONS,
            perMessageCompressionOffers=[PerMessageDeflateOffer()],
            perMessageCompressionAccept=_accept_deflate_response,
        )
        waiting: Deferred[UpstreamProtocol] = Deferred()
        factory.waiting = waiting
        host = factory.host
        endpoint: Any = HostnameEndpoint(relay.reactor, host, factory.port,
                                         timeout=CONNECT_TIMEOUT)
        if secure:
            creator = relay.tls.creatorForNetloc(host.encode("idna"), factory.port)
            endpoint = wrapClientTLS(creator, endpoint)
        try:
            await endpoint.connect(factory)
        except Exception as e:
            raise UpstreamRefused(502, describe_failure_reason(e)) from None
        return await waiting

    # -- relaying -------------------------------------------------------------

    def onOpen(self) -> None:
        upstream = self.upstream
        if upstream is None:
            self.sendClose(1000)
            return
        set_no_delay(_tcp(self.transport))
        # backpressure both ways: a full socket pauses the other side's reads
        _couple(self.transport, upstream.transport)
        _couple(upstream.transport, self.transport)
        if self.factory.inflight is not None:
            self.tracked = True
            self.factory.inflight.websocket_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.opened and upstream.state == upstream.STATE_OPEN:
            self.responding = True
            upstream.sendMessage(payload, isBinary)
            self.counts[0] += 1
            self.counts[1] += len(payload)
            if self.conversation is not None and self.factory.recorder is not None:
                self.factory.recorder.message(self.conversation, self.request_id,
                                              "client_to_upstream", payload, isBinary)

    def from_upstream(self, payload: bytes, isBinary: bool) -> None:
        if self.state != self.STATE_OPEN:
            return
        self.sendMessage(payload, isBinary)
        self.counts[2] += 1
        self.counts[3] += len(payload)
        if self.conversation is not None and self.factory.recorder is not None:
            self.factory.recorder.message(self.conversation, self.request_id,
                                          "upstream_to_client", payload, isBinary)
        if isBinary or self.account is None:
            return
        ledger = self.factory.ledger
        if ledger is not None and self.spender is not None:
            ledger.message(self.spender, payload)
        if b"rate_limits" in payload:
            self._observe_rate_limits(payload)
        if b"usage" in payload and (b"usage_limit" in payload or b"usage limit" in payload):
            try:
                if is_usage_limit(json.loads(payload)):
                    self.factory.placement.mark_exhausted(
                        self.account.id, None, "a usage-limit error on the WebSocket"
                    )
                    self.closing_after_response = True
            except ValueError:
                pass
        if any(marker in payload for marker in _RESPONSE_END) and _ends_response(payload):
            self.responding = False
            if self.going_away:
                self.end_now()
                return
            now = self.factory.reactor.seconds()
            if self.closing_after_response or (
                self.factory.placement.usage.exhausted_until(self.account.id, now) is not None
            ):
                # between responses: the client reconnects and is placed anew
                self.sendClose(1000, "subrouter: account reached its usage limit; reconnect")
                self._close_upstream(1000, "client placed elsewhere")

    def _observe_rate_limits(self, payload: bytes) -> None:
        assert self.account is not None
        try:
            event = json.loads(payload)
        except ValueError:
            return
        self.factory.placement.observe_rate_limits(self.account.id, event, "websocket")

    def upstream_closed(self, code: int | None, reason: str | None) -> None:
        if self.state in (self.STATE_OPEN, self.STATE_CONNECTING):
            self.sendClose(client_close_code(code), reason or None)

    # -- a stopping daemon (routing.inflight.Drainable) -----------------------

    def end_gracefully(self) -> None:
        if self.responding:
            self.going_away = True
        else:
            self.end_now()

    def end_now(self) -> None:
        _going_away(self)
        upstream = self.upstream
        if upstream is not None and upstream.state == upstream.STATE_OPEN:
            upstream.client = None
            _going_away(upstream)
        else:
            self._close_upstream(1000, None)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.tracked and self.factory.inflight is not None:
            self.tracked = False
            self.factory.inflight.websocket_closed(self)
        _stop_close_timer(self)
        self._close_upstream(client_close_code(code), reason)
        if self.account is not None:
            # a client that just exits drops the connection (1006): that is how
            # agents end, not an error
            how = "the client left" if code in (None, 1006) else f"closed ({code})"
            up_messages, up_bytes, down_messages, down_bytes = self.counts
            seconds = round(self.factory.reactor.seconds() - self.opened_at, 1)
            _log.info(
                "WebSocket {path} via account {account}: {how} after {seconds}s; "
                "{up_messages} messages ({up_bytes}B) up, {down_messages} ({down_bytes}B) down",
                path=getattr(self, "http_request_path", "?"), account=self.account.id,
                how=how, code=code, seconds=seconds, up_messages=up_messages,
                up_bytes=up_bytes, down_messages=down_messages, down_bytes=down_bytes,
            )

    def _close_upstream(self, code: int, reason: str | None) -> None:
        upstream = self.upstream
        if upstream is None:
            return
        upstream.client = None
        if upstream.state == upstream.STATE_OPEN:
            upstream.sendClose(code, reason or None)
        elif upstream.state != upstream.STATE_CLOSED and upstream.transport is not None:
            upstream.transport.loseConnection()


def _going_away(protocol: Any) -> None:
    """
    Close with 1001, the code RFC 6455 gives an endpoint that goes away.
    autobahn's ``sendClose`` lets applications send only 1000 and
    3000-4999, so the frame goes out the way the protocol itself sends it.
    """
    if protocol.state == protocol.STATE_OPEN:
        protocol.sendCloseFrame(code=GOING_AWAY, reasonUtf8=GOING_AWAY_REASON.encode(),
                                isReply=False)


_END_TYPES = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})


def _ends_response(payload: bytes) -> bool:
    """
    Whether a message is the last event of a response (read only for the
    few messages that might be).
    """
    try:
        event = json.loads(payload)
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("type") in _END_TYPES


def _tcp(transport: Any) -> Any:
    # a TLS transport wraps the TCP one
    inner = getattr(transport, "transport", None)
    return inner if inner is not None else transport


def _couple(consumer: Any, producer: Any) -> None:
    if consumer is None or producer is None:
        return
    try:
        if getattr(consumer, "producer", None) is not None:
            consumer.unregisterProducer()
        consumer.registerProducer(producer, True)
    except RuntimeError:
        pass  # the transport already has a producer; flow control stays TCP's own


class RelayFactory(WebSocketServerFactory):
    """
    The server side of the relay.

    :param placement: places the connection's conversation on an account.
    :param refresher: keeps tokens fresh.
    :param upstreams: the upstream base URLs.
    :param tls: the HTTPS policy whose certificate checks the upstream
        ``wss://`` connections get too.
    :param shared: placement across instances (``--state redis://``).
    :param inflight: where open connections are counted, for a graceful stop.
    :param recorder: the transcript recorder, when recording is on.
    :param ledger: the token ledger every response's usage goes to.
    :param overload_wait: seconds an upgrade the upstream refuses as
        overloaded is waited out on the same account (0: never).
    """

    protocol = RelayServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        *,
        placement: Placement,
        refresher: TokenRefresher,
        upstreams: Upstreams,
        tls: IPolicyForHTTPS,
        reactor: Any,
        recorder: Recorder | None = None,
        shared: SharedPlacement | None = None,
        inflight: InFlight | None = None,
        ledger: Ledger | None = None,
        overload_wait: float = 0.0,
    ) -> None:
        super().__init__(reactor=reactor)
        self.overload_wait = overload_wait
        self.recorder = recorder
        self.shared = shared
        self.inflight = inflight
        self.ledger = ledger
        self.placement = placement
        self.refresher = refresher
        self.upstreams = upstreams
        self.tls = tls
        self.reactor = reactor
        self.server = "Subrouter"
        self.setProtocolOptions(
            **_LEG_OPTIONS,
            perMessageCompressionAccept=_accept_deflate,
            webStatus=False,
        )
