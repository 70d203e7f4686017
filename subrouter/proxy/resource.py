# -*- test-case-name: tests.test_proxy_live,tests.test_proxy -*-
"""
The streaming reverse proxy resource.

A request travels down this file: :class:`ProxyResource` takes it, a
:class:`_ProxiedRequest` identifies its conversation and runs the shared
:class:`~subrouter.routing.exchange.Exchange` (place, fresh token, send, retry
elsewhere) with one HTTP attempt, and the answer is relayed chunk by chunk as
it arrives.

Nearly every request's account can be chosen at once (no placement shared
through Redis, usage scores fresh enough, the token fresh:
:meth:`~subrouter.routing.exchange.Exchange.place_now`). Its first attempt is
then sent, and a plain success relayed, with Deferred callbacks alone; the
exchange's coroutine starts only for what needs waiting for or judging (a
refresh, a usage poll, an error answer, an account close to its limits),
going on from the first answer. Starting a coroutine for every request cost
tens of microseconds, which every request of a burst waited for.

The upstream connection is the client response's producer, so a slow client
slows the upstream read instead of filling memory; a client that goes away
cancels the upstream request; an upstream that dies mid-stream aborts the
client connection, so the client never mistakes a cut stream for a whole one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from hashlib import sha256
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from subrouter.accounting.extract import Origin
from subrouter.accounting.ledger import BodyTap, Ledger
from subrouter.accounts.refresh import TokenRefresher
from subrouter.accounts.store import Account
from subrouter.errors import describe_failure_reason, error_body, write_error
from subrouter.logs import Logger
from subrouter.proxy.bodies import Bounded, Discard, Prefix, content_length, request_body
from subrouter.proxy.tap import Tap
from subrouter.routing.exchange import (
    AUTH_REJECTED,
    GONE,
    Exchange,
    OutOfQuota,
    Overloaded,
    Sent,
    Verdict,
)
from subrouter.routing.identity import identify
from subrouter.routing.shared import SharedPlacement
from subrouter.routing.usage import UsagePoller
from subrouter.sessions import anthropic
from subrouter.sessions.identity import Identity
from subrouter.sessions.keys import BadAccountSelector
from subrouter.sessions.placement import NoAccount, Placement
from subrouter.sessions.usage import (
    is_overload,
    retry_after,
    usage_limit_in_body,
    windows_from_headers,
    worth_waiting_out,
)
from subrouter.transcripts.recorder import Conversation, Recorder
from subrouter.upstream.client import StaleConnection, hold, send_now, set_no_delay
from subrouter.upstream.headers import (
    client_response_headers,
    raw_values,
    upstream_request_headers,
)
from subrouter.upstream.routing import ANTHROPIC, Upstreams, is_backend_path, split_uri

_log = Logger()

#: how much of an error answer is read to look for a usage-limit signal
MAX_ERROR_SCAN = 1 << 20


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
    :param upstreams: the providers.
    :param clock: the source of time, for timeouts and durations.
    :param idle_timeout: seconds without a byte from upstream (before or
        during the answer) after which the exchange is given up.
    :param recorder: the transcript recorder, when recording is on.
    :param ledger: the token ledger every successful answer's usage goes to.
    :param overload_wait: seconds one request may wait out an overloaded
        upstream on its own account before the error is passed on.
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
        shared: SharedPlacement | None = None,
        ledger: Ledger | None = None,
        overload_wait: float = 0.0,
    ) -> None:
        super().__init__()
        self.recorder = recorder
        self.shared = shared
        self.ledger = ledger
        self.overload_wait = overload_wait
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
        _ProxiedRequest(self, request).start()
        return NOT_DONE_YET


class _ProxiedRequest:
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
        self.bytes_in = content_length(request)
        self.bytes_out = 0
        #: for the request line: the conversation (a short hash), the agent,
        #: why the account was chosen (set by placement reasons when known) and
        #: the error given to the client
        self.conversation = "-"
        self.agent = "-"
        self.reason = "-"
        self.error: str | None = None
        self.tap: Tap | None = None
        self.exchange: Exchange[None, Prefix] | None = None
        self.identity: Identity | None = None
        self.usage: BodyTap | None = None
        # what is under way upstream, for the idle timer and a client that leaves
        self.pending: Deferred[Any] | None = None
        self.reading: Protocol | None = None
        self.timer: IDelayedCall | None = None
        self.last_data = self.started
        self.gone = False
        self.timed_out = False
        self.headers_sent = False
        # a streamed answer's first chunk is looked at for a usage-limit error
        self.watch_first = False
        over = getattr(request, "when_over", None)  # the Site's requests: no Deferred
        if over is not None:
            over(self._request_finished)
        else:
            request.notifyFinish().addBoth(self._request_finished)

    def start(self) -> None:
        """
        Identify the conversation and, when its account can be chosen at
        once (nearly every request), send the request upstream now; the
        exchange's coroutine runs only when something must be waited for or
        the answer is not a plain success.
        """
        try:
            exchange = self._prepare()
            if exchange is None:
                return
            account = exchange.place_now()
            if account is None:
                self._go_on(None)
                return
            self._send(account, self._first_answer, self._crashed)
        except Exception:
            self._crashed(Failure())

    def _prepare(self) -> Exchange[None, Prefix] | None:
        """
        The request's identity, transcript tap and exchange; None when the
        request was answered instead (an unusable account selector).
        """
        proxy = self.proxy
        try:
            identity = identify(self.request, self.path, self.query)
        except BadAccountSelector as e:
            self._fail(400, "invalid_account_selector", str(e))
            return None
        self.conversation = _short_hash(identity.session.key)
        self.agent = identity.session.agent
        self.identity = identity
        recorder = proxy.recorder
        if recorder is not None and recorder.wants(self.path.decode("ascii", "replace")):
            session = identity.session
            self.tap = Tap(recorder, Conversation(session.agent, session.key, identity.email))
        exchange: Exchange[None, Prefix] = Exchange(
            placement=proxy.placement,
            refresher=proxy.refresher,
            identity=identity,
            clock=self.clock,
            gone=lambda: self.gone,
            oauth_only=is_backend_path(self.path),
            poller=proxy.poller,
            overload_wait=proxy.overload_wait,
            shared=proxy.shared,
        )
        self.exchange = exchange
        return exchange

    # -- placing and sending ----------------------------------------------------

    def _go_on(self, first: Awaitable[Verdict[None, Prefix]] | None) -> None:
        Deferred.fromCoroutine(self._run(first)).addErrback(self._crashed)

    async def _run(self, first: Awaitable[Verdict[None, Prefix]] | None) -> None:
        exchange = self.exchange
        if exchange is None:
            # the request is over already (its end let go of the exchange)
            if isinstance(first, Coroutine):
                first.close()
            return
        result = await exchange.run(self._attempt, first)
        if isinstance(result, NoAccount):
            self._fail(result.status, result.kind, result.message)
        elif isinstance(result, Overloaded):
            # waited out as long as allowed: the upstream's own error
            self._answer_prefix(result.held)
        elif isinstance(result, OutOfQuota):
            # no other account could take it: the last account's own answer
            if result.held is not None:
                self._answer_prefix(result.held)
            elif self.account is not None:
                self._fail(
                    429, "usage_limit_reached",
                    f"account {self.account.id} has reached its usage limit",
                )

    def _first_answer(self, response: IResponse | None) -> None:
        """
        The answer to the first attempt, sent without the exchange's
        coroutine: a plain success is relayed from here; anything else (a
        refresh, another account, a wait, an error answer) goes on in the
        exchange, from this answer.
        """
        account = self.account
        if response is None or account is None:
            return  # the client left, or an error answer was written
        if response.code < 400 and not self.proxy.placement.at_risk(account):
            self._observe_headers(account, response)
            self._answer_streaming(response)
            return
        self._go_on(self._attempt(account, account.is_oauth, response))

    async def _attempt(self, account: Account, may_refresh: bool,
                       arrived: IResponse | None = None) -> Verdict[None, Prefix]:
        """
        Send the request as ``account`` (or take the answer ``arrived`` to
        the request already sent) and answer the client, unless the answer
        says to refresh the token or to try another account.
        """
        response = arrived if arrived is not None else await self._sent(account)
        if response is None:
            return GONE
        if response.code == 401 and may_refresh:
            response.deliverBody(Discard())
            return AUTH_REJECTED
        self._observe_headers(account, response)
        if response.code >= 400:
            body = await self._read_prefix(response, MAX_ERROR_SCAN)
            if self.gone:
                return GONE
            if _out_of_quota(response.code, body.data):
                body.stop()
                return OutOfQuota(body, self._resets_in(account, response),
                                  f"HTTP {response.code}")
            if worth_waiting_out(response.code, body.data):
                # the pause before the next try is the exchange's, not idleness
                self._disarm_timer()
                return Overloaded(body, retry_after(response.headers), f"HTTP {response.code}",
                                  drop=body.stop)
            self._answer_prefix(body)
            return Sent(None)
        if self.proxy.placement.at_risk(account):
            # close to its limits: look at the first chunk before anything
            # reaches the client, so a stream that opens with a usage-limit
            # error can be replayed elsewhere
            first = await self._read_prefix(response, 1)
            if self.gone:
                return GONE
            if _usage_limit_event(first.data):
                first.stop()
                return OutOfQuota(None, None, "error event in the stream")
            self._answer_prefix(first)
            return Sent(None)
        self._answer_streaming(response)
        return Sent(None)

    def _sent(self, account: Account) -> Deferred[IResponse | None]:
        """
        Send the request upstream as ``account`` (:meth:`_send`), for the
        exchange's coroutine: fires with the response, or None when the
        exchange ended instead.
        """
        result: Deferred[IResponse | None] = Deferred()
        self._send(account, result.callback, result.errback)
        return result

    def _send(self, account: Account, answered: Callable[[IResponse | None], object],
              crashed: Callable[[Failure], object]) -> None:
        """
        Send the request upstream as ``account``, then call ``answered``
        with the response, or with None when the exchange ended instead (the
        client left, or an error answer was written); ``crashed`` with a
        fault in either. Callbacks alone, no Deferred of its own: the first
        attempt of nearly every request goes this way. A stale pooled
        connection is resent once (the resend rule, upstream/client.py).
        """
        url, headers = self._upstream_request(account)
        self._send_attempt(account, url, headers, 1, answered, crashed)

    def _send_attempt(self, account: Account, url: bytes, headers: Headers, attempt: int,
                      answered: Callable[[IResponse | None], object],
                      crashed: Callable[[Failure], object]) -> None:
        d = self._request_upstream(url, headers)
        d.addCallbacks(
            self._send_answered, self._send_attempt_failed,
            callbackArgs=(answered,),
            errbackArgs=(account, url, headers, attempt, answered, crashed),
        )
        d.addErrback(crashed)

    def _send_answered(self, response: IResponse,
                       answered: Callable[[IResponse | None], object]) -> None:
        self.pending = None
        answered(response)

    def _send_attempt_failed(self, failure: Failure, account: Account, url: bytes,
                             headers: Headers, attempt: int,
                             answered: Callable[[IResponse | None], object],
                             crashed: Callable[[Failure], object]) -> None:
        self.pending = None
        failure.trap(Exception)
        if self._send_failed(cast(Exception, failure.value), account, attempt):
            self._send_attempt(account, url, headers, attempt + 1, answered, crashed)
        else:
            answered(None)

    def _upstream_request(self, account: Account) -> tuple[bytes, Headers]:
        """
        Where the request goes as ``account``, and with which headers.
        """
        self.account = account
        provider = self.proxy.upstreams.provider(account.kind, account.provider)
        url = provider.url(self.path, self.query)
        headers = upstream_request_headers(
            self.request.requestHeaders,
            provider.credential_headers(account.secret, account.chatgpt_account_id),
        )
        if self.tap is not None:
            self.tap.meta(self.request, account, url.partition(b"?")[0])
        return url, headers

    def _request_upstream(self, url: bytes, headers: Headers) -> Deferred[IResponse]:
        d = self.proxy.agent.request(self.method, url, headers, request_body(self.request))
        self.pending = d
        self._arm_timer()
        return d

    def _send_failed(self, e: Exception, account: Account, attempt: int) -> bool:
        """
        An attempt to send failed: answer the client (unless it left), or
        return True when the request is to be sent once more.
        """
        if self.gone:
            return False
        if self.timed_out:
            self._fail(
                504,
                "upstream_timeout",
                f"the upstream did not answer within {self.proxy.idle_timeout:g}s "
                f"(account {account.id})",
            )
            return False
        if attempt == 1 and isinstance(e, StaleConnection):
            # a reused pooled connection the upstream had closed, no byte
            # answered: the resend rule (upstream/client.py)
            return True
        self._fail(
            502,
            "upstream_error",
            f"the upstream request via account {account.id} failed: "
            f"{describe_failure_reason(e)}",
        )
        return False

    async def _read_prefix(self, response: IResponse, limit: int) -> Prefix:
        """
        Read the start of an answer (up to ``limit`` bytes, or all of a
        shorter one) before deciding what to do with it.
        """
        reader = Bounded(limit)
        self.reading = reader
        response.deliverBody(reader)
        try:
            await reader.done
        finally:
            self.reading = None
        return Prefix(response, reader)

    def _observe_headers(self, account: Account, response: IResponse) -> None:
        if not account.is_oauth:
            return
        now = self.clock.seconds()
        if account.provider == ANTHROPIC:
            windows = anthropic.windows_from_headers(response.headers, now)
        else:
            windows = windows_from_headers(response.headers, now)
        if windows:
            self.proxy.placement.usage.record(account.id, windows, now, "headers")

    def _resets_in(self, account: Account, response: IResponse) -> float | None:
        """
        When an account that ran out may be used again, as the answer says.
        """
        if account.provider == ANTHROPIC and anthropic.rejected(response.headers):
            found = anthropic.rejection_reset(response.headers, self.clock.seconds())
            if found is not None:
                return found
        return retry_after(response.headers)

    # -- answering ----------------------------------------------------------------

    def _commit(self, response: IResponse) -> None:
        """
        Send the upstream's status line and headers to the client.
        """
        self.headers_sent = True
        self.status = response.code
        request = self.request
        # the head goes out with whatever else the read that brought it
        # brings (a short answer's body and end), in one send
        self._hold()
        request.setResponseCode(response.code, response.phrase or None)
        client_response_headers(response.headers, request.responseHeaders)
        request.write(b"")
        ledger = self.proxy.ledger
        identity = self.identity
        account = self.account
        if ledger is not None and identity is not None and account is not None and (
            response.code < 400
        ):
            # every successful answer is looked at for token usage as it passes
            session = identity.session
            kind = raw_values(response.headers, b"content-type")
            self.usage = ledger.body(
                Origin(session.agent, session.key, identity.email, account.id,
                       account.provider, "http"),
                kind[0] if kind else None,
            )

    def _answer_streaming(self, response: IResponse) -> None:
        """
        Relay an answer as it comes: headers now, each chunk as it arrives.
        """
        self._commit(response)
        self.watch_first = True
        self._arm_timer()
        response.deliverBody(_Relay(self, bool(self.request.chunked)))

    def _answer_prefix(self, prefix: Prefix) -> None:
        """
        Relay an answer whose start was read before deciding: the headers and
        what was read, then the rest of the stream as it comes.
        """
        if prefix.complete and not prefix.clean and not prefix.data:
            if self.timed_out:
                self._fail(
                    504, "upstream_timeout",
                    f"the upstream answer stalled for {self.proxy.idle_timeout:g}s "
                    f"(account {_account_id(self.account)})",
                )
                return
            self._fail(
                502, "upstream_error",
                f"the upstream answer via account {_account_id(self.account)} broke off "
                f"before its body: {describe_failure_reason(prefix.protocol.reason)}",
            )
            return
        self._commit(prefix.response)
        self._deliver(prefix.data)
        if prefix.complete:
            self._ended(prefix.protocol.reason)
            return
        self._arm_timer()
        prefix.protocol.hand_over(_Relay(self, bool(self.request.chunked)))

    def relay_started(self, relay: _Relay) -> None:
        self.reading = relay
        producer = cast("IPushProducer | None", relay.transport)
        if producer is None:
            return
        if self.gone:
            producer.stopProducing()
            return
        # backpressure: a full client socket pauses the upstream read
        self.request.registerProducer(producer, True)

    def _hold(self) -> None:
        channel = self.request.channel
        if channel is not None:
            hold(channel.transport)

    def relay_ending(self) -> None:
        """
        The read being relayed ends the answer: its last bytes and the
        client's end go out in one send.
        """
        if not self.gone:
            self._hold()

    def relay_chunk(self, data: bytes) -> None:
        """
        A read of the upstream answer's payload.
        """
        if self._arrived(data):
            self._deliver(data)

    def relay_raw(self, raw: bytes, data: bytes) -> None:
        """
        A read of a chunked upstream answer relayed to a chunked client: the
        bytes as they came, framing and all, passed on unchanged, and their
        payload (``data``) for the taps. The hot path: one call per event.
        """
        if not self._arrived(data):
            return
        request = self.request
        if not request._disconnected and not request.finished:
            send_now(request.channel.transport, raw)
        if data:
            request.sentLength += len(data)
            self._passed(data)

    def _arrived(self, data: bytes) -> bool:
        """
        A read of the answer came: note when (the idle timer checks this when
        it fires, instead of being reset for every chunk) and look at the
        first. False when the client has gone.
        """
        if self.gone:
            return False
        self.last_data = self.clock.seconds()
        if self.watch_first:
            self.watch_first = False
            if self.account is not None and _usage_limit_event(data):
                # too late to move this answer; the next request will
                self.proxy.placement.mark_exhausted(
                    self.account.id, None, "error event in the stream"
                )
        return True

    def _deliver(self, data: bytes) -> None:
        if not data:
            return  # an empty chunk would end a chunked answer
        request = self.request
        if request.chunked and not request._disconnected and not request.finished:
            # what Request.write does for a chunked answer under way, without
            # its layers: one framed chunk, sent at once
            request.sentLength += len(data)
            send_now(request.channel.transport, b"%x\r\n%b\r\n" % (len(data), data))
        else:
            request.write(data)
        self._passed(data)

    def _passed(self, data: bytes) -> None:
        """
        What every relayed payload feeds: rate-limit signals, the byte count,
        the token ledger and the transcript.
        """
        if b"rate_limits" in data and self.account is not None:
            self._observe_events(self.account, data)
        self.bytes_out += len(data)
        if self.usage is not None:
            self.usage.feed(data)
        if self.tap is not None:
            self.tap.response(data, self.status)

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
        self.reading = None
        if self.gone:
            self._disarm_timer()
            self._count_usage()
            if self.tap is not None:
                self.tap.response_end(self.status)
            return
        self.request.unregisterProducer()
        self._ended(reason)

    def _ended(self, reason: Failure) -> None:
        """
        The upstream answer is over: finish the client's, or abort it when
        the upstream broke off (a cut stream must never look whole).
        """
        self._disarm_timer()
        # a response completed before the stream broke off was still spent
        self._count_usage()
        if self.tap is not None:
            self.tap.response_end(self.status)
        if isinstance(reason.value, (ResponseDone, PotentialDataLoss)):  # reason.check, cheaper
            self.request.finish()
            return
        self.outcome = "upstream-died" if not self.timed_out else "upstream-idle"
        _log.warn(
            "the upstream stream via account {account} broke off after {bytes} bytes: "
            "{reason}; aborting the client connection",
            account=_account_id(self.account),
            bytes=self.bytes_out,
            reason=describe_failure_reason(reason),
        )
        _abort_client(self.request)

    def _count_usage(self) -> None:
        usage, self.usage = self.usage, None
        if usage is not None:
            usage.finish()

    # -- timers, failures, the end ------------------------------------------------

    def _arm_timer(self) -> None:
        self.last_data = self.clock.seconds()
        if self.timer is None or not self.timer.active():
            self.timer = self.clock.callLater(self.proxy.idle_timeout, self._idle)

    def _disarm_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _idle(self) -> None:
        self.timer = None
        quiet = self.clock.seconds() - self.last_data
        if quiet < self.proxy.idle_timeout:
            # something arrived since the timer was set: wait out the rest
            self.timer = self.clock.callLater(self.proxy.idle_timeout - quiet, self._idle)
            return
        self.timed_out = True
        self._stop_upstream()

    def _stop_upstream(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
        elif self.reading is not None:
            producer = cast("IPushProducer | None", self.reading.transport)
            if producer is not None:
                producer.stopProducing()

    def _fail(self, status: int, kind: str, message: str) -> None:
        self._disarm_timer()
        self.status = status
        self.outcome = kind
        self.error = message  # logged once, on the request line
        if not (self.request.finished or self.request.startedWriting):
            self.bytes_out += len(error_body(kind, message))
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
            self._stop_upstream()
        account_id = self.account.id if self.account is not None else "-"
        method = self.method.decode("ascii", "replace")
        path = self.path.decode("ascii", "replace")
        duration_ms = round((self.clock.seconds() - self.started) * 1000, 1)
        if self.exchange is not None:
            # the placement's reason, formatted here once, only for the log
            self.reason = self.exchange.why
        line = (f"{method} {path} {self.status if self.status is not None else '-'} "
                f"{self.outcome} account={account_id} conversation={self.conversation} "
                f"agent={self.agent} why={self.reason} {duration_ms}ms in={self.bytes_in}B "
                f"out={self.bytes_out}B")
        if self.error:
            line += f": {self.error}"
        # one line per request, a warning when it failed; the text is built
        # here once, the named fields are there for JSON logs
        emit = _log.warn if self.error or (self.status or 0) >= 500 else _log.info
        emit(
            "{request_line}",
            request_line=line,
            conversation=self.conversation,
            agent=self.agent,
            why=self.reason,
            error=self.error,
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
        # The exchange holds a check of this request (gone) and this request
        # the exchange: let go of it, so the request's objects are freed at
        # once rather than by the cyclic garbage collector (about 35 objects
        # per request, every one of them walked by its collections).
        self.exchange = None


#: conversation keys and their short forms, for the log (a conversation's
#: requests come back again and again); emptied when full
_SHORT: dict[str, str] = {}
_SHORT_MAX = 4096


def _short_hash(key: str) -> str:
    """
    A conversation as the log shows it: 8 hex digits of its key's SHA-256 (the
    key itself can be long, and is the client's business). Remembered per key:
    OpenSSL's digest set-up cost tens of µs inside a busy daemon, for a
    log field.
    """
    short = _SHORT.get(key)
    if short is None:
        if len(_SHORT) >= _SHORT_MAX:
            _SHORT.clear()
        short = _SHORT[key] = sha256(key.encode("utf-8", "replace")).hexdigest()[:8]
    return short


class _Relay(Protocol):
    """
    Relays an upstream response body to the client, chunk by chunk.

    :param raw: the client's answer is chunked, so a chunked upstream answer
        may pass through with its framing unchanged (``raw_received``, from
        :class:`~subrouter.upstream.stream.StreamAgent`).
    """

    def __init__(self, proxied: _ProxiedRequest, raw: bool) -> None:
        self._proxied = proxied
        self.wants_raw = raw
        #: a read as it came and its payload: straight to the request
        self.raw_received = proxied.relay_raw
        #: the next bytes end the answer
        self.body_ending = proxied.relay_ending

    def connectionMade(self) -> None:
        self._proxied.relay_started(self)

    def dataReceived(self, data: bytes) -> None:
        self._proxied.relay_chunk(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self._proxied.relay_ended(reason)


def _out_of_quota(status: int, body: bytes) -> bool:
    """
    Whether an error answer says the account ran out. Overload (5xx, "at
    capacity") is never exhaustion.
    """
    if status >= 500:
        return False
    return usage_limit_in_body(body) or (status == 429 and not is_overload(status, body))


def _usage_limit_event(data: bytes) -> bool:
    return b"usage" in data and usage_limit_in_body(data)


def _account_id(account: Account | None) -> str | None:
    return account.id if account is not None else None


def _abort_client(request: Request) -> None:
    channel = request.channel
    transport = channel.transport if channel is not None else None
    if transport is not None:
        cast(ITCPTransport, transport).abortConnection()
