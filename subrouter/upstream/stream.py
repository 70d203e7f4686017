# -*- test-case-name: tests.test_stream_client,tests.test_faults,tests.test_proxy_live -*-
"""
The proxy's own HTTP/1.1 client: what every proxied request and every relayed
event goes through, so it does as little per request and per event as HTTP
allows.

It is an ``IAgent``, so the proxy uses it as it would Twisted's: ``request``
gives a response whose body is delivered to a protocol whose transport is the
upstream connection, as a producer (backpressure). What it leaves out of
Twisted's agent is what the proxy never needs: redirects, cookies, content
decoding, a ``URI`` object and an endpoint lookup per request, a Deferred
chain per state change, a body producer run by a cooperator.

Two things it adds:

- the request (head and body) is sent on the socket at once, not on the
  reactor's next turn;
- a chunked answer can pass through unchanged: a body protocol with
  ``wants_raw`` set gets each read's bytes as they came (``raw_received``),
  framing and all, besides the decoded payload (for the taps), so nothing is
  re-framed towards a chunked client. Only the last-chunk marker and trailers
  are held back; the client side ends its own answer.

Connections are kept alive per (scheme, host, port) and reused newest first.
The resend rule of :mod:`subrouter.upstream.client` holds here too: a
request that fails on a reused connection before any byte of the answer
raises :class:`~subrouter.upstream.client.StaleConnection`; nothing is ever
resent by this module itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    DNSLookupError,
    UserError,
)
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHostnameResolver,
    IPushProducer,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.client import ResponseDone
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers, InvalidHeaderName
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from subrouter.upstream.client import (
    CACHED_CONNECTION_TIMEOUT,
    CachingResolver,
    StaleConnection,
    send_now,
    send_now_two,
    set_no_delay,
)
from subrouter.upstream.headers import (
    CANONICAL_NAMES,
    canonical_name,
    connection_tokens,
    raw_values,
)

#: idle connections kept per upstream origin: a burst of parallel turns (many
#: agents at once) finds warm connections, TLS done, when it comes again
MAX_IDLE_PER_HOST = 1024
#: the most a response head (status line and headers) may take
MAX_HEAD = 256 * 1024
#: the most a chunk-size line may take (extensions included)
MAX_CHUNK_LINE = 4096
#: bytes of body buffered, before the body protocol is given, before reading pauses
_EARLY_BODY_LIMIT = 64 * 1024
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_HEX = frozenset(b"0123456789abcdefABCDEF")
#: the reason every whole body ends with, made once: a Failure looks up its
#: exception's classes by name when it is made, tens of µs in a busy daemon
_BODY_DONE = Failure(ResponseDone("Response body fully received"))

# body framings
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)
# chunked decoder states
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class BadResponse(Exception):
    """
    The upstream's answer broke HTTP/1.1 (its head or its framing).
    """


class _Target:
    """
    One upstream origin, parsed once: where to connect and what ``Host`` says.
    """

    __slots__ = ("host", "host_header", "key", "port", "scheme")

    def __init__(self, scheme: bytes, netloc: bytes) -> None:
        if scheme not in _DEFAULT_PORTS:
            raise SchemeNotSupported(f"unsupported scheme {scheme!r}")
        host, port = netloc, _DEFAULT_PORTS[scheme]
        if netloc.startswith(b"["):
            end = netloc.find(b"]")
            host = netloc[1:end]
            if netloc[end + 1:end + 2] == b":":
                port = int(netloc[end + 2:])
        elif b":" in netloc:
            host, _, text = netloc.rpartition(b":")
            port = int(text)
        self.key = (scheme, netloc)
        self.scheme = scheme
        self.host = host
        self.port = port
        self.host_header = netloc


@implementer(IAgent)
class StreamAgent:
    """
    Sends requests over kept-alive connections from its own pool.

    :param reactor: the reactor (for timers).
    :param endpoints: where connections come from (TLS and name caching).
    :param max_idle_per_host: idle connections kept per origin.
    :param idle_timeout: seconds an idle connection is kept.
    """

    def __init__(
        self,
        reactor: Any,
        endpoints: DirectEndpoints,
        *,
        max_idle_per_host: int = MAX_IDLE_PER_HOST,
        idle_timeout: float = CACHED_CONNECTION_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._endpoints = endpoints
        self._max_idle = max_idle_per_host
        self._idle_timeout = idle_timeout
        self._targets: dict[bytes, _Target] = {}
        self._idle: dict[tuple[bytes, bytes], list[_Connection]] = {}
        self._factories: dict[tuple[bytes, bytes], Factory] = {}

    # -- requests ---------------------------------------------------------------------

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        try:
            target, path = self._split(uri)
        except (ValueError, SchemeNotSupported) as e:
            return _failed(e)
        body = getattr(bodyProducer, "data", None)  # a body already in memory
        streamed = None
        if bodyProducer is not None and body is None:
            streamed = bodyProducer
        head = _request_head(method, path, target.host_header, headers, bodyProducer)
        exchange = _Exchange(method, head, body, streamed)
        idle = self._idle.get(target.key)
        while idle:
            connection = idle.pop()
            connection.pooled = False
            if connection.take():
                connection.send(exchange, reused=True)
                return exchange.result
        self._connect(target, exchange)
        return exchange.result

    def _split(self, uri: bytes) -> tuple[_Target, bytes]:
        scheme_end = uri.find(b"://")
        if scheme_end < 0:
            raise ValueError(f"not an absolute URL: {uri[:100]!r}")
        path_start = uri.find(b"/", scheme_end + 3)
        if path_start < 0:
            origin, path = uri, b"/"
        else:
            origin, path = uri[:path_start], uri[path_start:]
        target = self._targets.get(origin)
        if target is None:
            target = _Target(uri[:scheme_end].lower(), uri[scheme_end + 3:len(origin)])
            self._targets[origin] = target
        return target, path

    def _connect(self, target: _Target, exchange: _Exchange) -> None:
        factory = self._factories.get(target.key)
        if factory is None:
            factory = Factory.forProtocol(lambda: _Connection(self, target.key))
            factory.noisy = False
            self._factories[target.key] = factory
        endpoint = self._endpoints.endpoint(target.scheme, target.host, target.port)
        connecting = endpoint.connect(factory)
        exchange.connecting = connecting

        def connected(connection: _Connection) -> None:
            exchange.connecting = None
            if exchange.result.called:
                connection.close()  # cancelled while connecting
                return
            connection.send(exchange, reused=False)

        def failed(reason: Failure) -> None:
            exchange.connecting = None
            if not exchange.result.called:
                exchange.result.errback(reason)

        connecting.addCallbacks(connected, failed)

    # -- the pool -----------------------------------------------------------------------

    def _release(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self._max_idle:
            oldest = idle.pop(0)
            oldest.pooled = False
            oldest.close()
        # One timer per connection, not one per request: taking the
        # connection leaves its timer running, and the timer, when it fires,
        # looks at how long the connection has been idle (_expire).
        connection.idle_since = self._reactor.seconds()
        if connection.idle_timer is None:
            connection.idle_timer = self._reactor.callLater(
                self._idle_timeout, self._expire, connection)
        connection.pooled = True
        idle.append(connection)

    def _expire(self, connection: _Connection) -> None:
        connection.idle_timer = None
        if not connection.pooled:
            return  # in use; released again, it gets a timer again
        idle_for = self._reactor.seconds() - connection.idle_since
        if idle_for < self._idle_timeout:
            connection.idle_timer = self._reactor.callLater(
                self._idle_timeout - idle_for, self._expire, connection)
            return
        self._forget(connection)
        connection.close()

    def _forget(self, connection: _Connection) -> None:
        if not connection.pooled:
            return
        connection.pooled = False
        idle = self._idle.get(connection.key)
        if idle is not None and connection in idle:
            idle.remove(connection)

    def closeCachedConnections(self) -> Deferred[None]:
        """
        Close every idle connection; fires when they are all closed.
        """
        waiting = []
        for idle in self._idle.values():
            while idle:
                connection = idle.pop()
                connection.pooled = False
                connection.take()
                waiting.append(connection.closed)
                # not now: this may be called from inside the connection's
                # own read (the answer that ended a drain), where closing a
                # TLS connection pulls it from under the read
                self._reactor.callLater(0, connection.close)
        if not waiting:
            return succeed(None)
        from twisted.internet.defer import gatherResults

        d: Deferred[Any] = gatherResults(waiting)
        return d.addCallback(lambda _: None)


def _failed(error: Exception) -> Deferred[IResponse]:
    d: Deferred[IResponse] = Deferred()
    d.errback(Failure(error))
    return d


def _request_head(
    method: bytes, path: bytes, host: bytes, headers: Headers | None,
    body: IBodyProducer | None,
) -> bytes:
    parts = [method, b" ", path, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    if headers is not None:
        for name, values in headers.getAllRawHeaders():
            for value in values:
                parts += (name, b": ", value, b"\r\n")
    if body is not None:
        if body.length is UNKNOWN_LENGTH:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        else:
            parts += (b"Content-Length: ", b"%d" % body.length, b"\r\n")
    elif method in _BODY_METHODS:
        parts.append(b"Content-Length: 0\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class _Exchange:
    """
    One request on its way: what to send, and the Deferred of its response.
    """

    __slots__ = ("body", "connecting", "connection", "head", "method", "result", "streamed")

    def __init__(self, method: bytes, head: bytes, body: bytes | None,
                 streamed: IBodyProducer | None) -> None:
        self.method = method
        self.head = head
        self.body = body
        self.streamed = streamed
        self.connecting: Deferred[Any] | None = None
        self.connection: _Connection | None = None
        self.result: Deferred[IResponse] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[IResponse]) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        if self.connection is not None:
            self.connection.abort()
        # the Deferred fails with CancelledError unless the above already failed it


@implementer(IResponse)
class StreamResponse:
    """
    An upstream answer: its status and headers, and its body to be delivered.
    """

    version = (b"HTTP", 1, 1)
    previousResponse = None
    request = None

    def __init__(self, connection: _Connection, code: int, phrase: bytes, headers: Headers,
                 length: int | object) -> None:
        self._connection = connection
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length

    def deliverBody(self, protocol: Protocol) -> None:
        self._connection.deliver_to(protocol)

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response


@implementer(IPushProducer)
class _Connection(Protocol):
    """
    One kept-alive upstream connection; one exchange on it at a time.

    It is also the producer a response body's protocol sees as its transport:
    pausing it stops reading from the upstream.
    """

    def __init__(self, agent: StreamAgent, key: tuple[bytes, bytes]) -> None:
        self.agent = agent
        self.key = key
        self.exchange: _Exchange | None = None
        self.reused = False
        self.idle_timer: IDelayedCall | None = None
        self.closed: Deferred[None] = Deferred()
        self._gone = False
        self._fresh()

    def _fresh(self) -> None:
        """
        Forget the last exchange's state: what a new one starts from.
        """
        self._buffer = b""
        self._got_bytes = False
        self._sent_all = False
        self._head_done = False
        self._framing = _NONE
        self._remaining = 0  # content-length left, or the current chunk's data left
        self._chunk_state = _SIZE
        self._reusable = True
        self._protocol: Protocol | None = None
        self._raw: Callable[[bytes, bytes], None] | None = None
        self._early: list[bytes] = []
        self._early_size = 0
        self._early_end: Failure | None = None
        self._paused = False
        self._stopped = False
        self._body_done = False

    #: called once connected (set by the endpoint that made the connection)
    on_made: Callable[[_Connection], None] | None = None
    #: waiting in the pool's idle list
    pooled = False
    #: when it last went back to the pool
    idle_since = 0.0

    def connectionMade(self) -> None:
        made, self.on_made = self.on_made, None
        if made is not None:
            made(self)

    # -- the pool's side -----------------------------------------------------------------

    def take(self) -> bool:
        """
        Take this idle connection for a request; False when it has gone.
        Its idle timer keeps running (the pool's ``_expire`` leaves a
        connection in use alone).
        """
        return not self._gone

    def _stop_idle_timer(self) -> None:
        timer, self.idle_timer = self.idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def close(self) -> None:
        if self.transport is not None and not self._gone:
            self.transport.loseConnection()

    def abort(self) -> None:
        self._reusable = False
        if self.transport is not None and not self._gone:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- sending -----------------------------------------------------------------------

    def send(self, exchange: _Exchange, reused: bool) -> None:
        self.exchange = exchange
        exchange.connection = self
        self.reused = reused
        self._fresh()
        transport = self.transport
        if exchange.streamed is None:
            self._sent_all = True
            body = exchange.body
            if body:
                send_now_two(transport, exchange.head, body)
            else:
                send_now(transport, exchange.head)
            return
        self._sent_all = False
        transport.write(exchange.head)  # type: ignore[union-attr]
        producer = exchange.streamed
        chunked = producer.length is UNKNOWN_LENGTH
        consumer = _BodyConsumer(transport, chunked)
        # a large body (from a file) goes at the upstream's pace, not into memory
        transport.registerProducer(producer, True)  # type: ignore[union-attr]
        d = producer.startProducing(consumer)

        def sent(_: object) -> None:
            if not self._gone:
                transport.unregisterProducer()  # type: ignore[union-attr]
                if chunked:
                    transport.write(b"0\r\n\r\n")  # type: ignore[union-attr]
            self._sent_all = True

        def failed(reason: Failure) -> None:
            if not self._gone:
                transport.unregisterProducer()  # type: ignore[union-attr]
            if not reason.check(CancelledError):
                self.abort()

        d.addCallbacks(sent, failed)

    # -- receiving ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._head_done:
            raw = self._raw
            if raw is not None and self._chunk_state == _SIZE and not self._buffer:
                # the usual read of a relayed stream: one whole chunk (an
                # event), or a few when the stream got ahead, passed on as
                # they came, their payload beside them
                payload = _whole_chunks(data)
                if payload is not None:
                    raw(data, payload)
                    return
            self._body(data)
            return
        exchange = self.exchange
        if exchange is None:
            # an idle connection is not to speak: drop it
            self.agent._forget(self)
            self.abort()
            return
        self._got_bytes = True
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._fail_head(BadResponse("the response head is too large"))
                    return
                self._buffer = buffer
                return
            try:
                code, phrase, headers, keep_alive = _parse_head(buffer[:end])
            except (BadResponse, ValueError) as e:
                self._fail_head(e if isinstance(e, BadResponse) else BadResponse(str(e)))
                return
            buffer = buffer[end + 4:]
            if 100 <= code < 200:
                if code == 101:
                    self._fail_head(BadResponse("the upstream switched protocols"))
                    return
                continue  # an informational answer: the real one follows
            break
        self._buffer = b""
        self._head_done = True
        self._reusable = keep_alive
        try:
            length = self._framing_of(exchange.method, code, headers)
        except BadResponse as e:
            self._fail_head(e)
            return
        response = StreamResponse(self, code, phrase, headers, length)
        exchange.result.callback(response)
        if buffer:
            # the body's start; or, if the answer is already over, bytes
            # beyond it, which drop the connection
            if self._head_done:
                self._body(buffer)
            else:
                self.dataReceived(buffer)

    def _framing_of(self, method: bytes, code: int, headers: Headers) -> int | object:
        if method == b"HEAD" or code in (204, 304):
            self._framing = _NONE
            return 0
        coding = raw_values(headers, b"transfer-encoding")
        if coding:
            last = coding[-1].rsplit(b",", 1)[-1].strip().lower()
            if last != b"chunked":
                self._framing = _UNTIL_CLOSE
                self._reusable = False
                return UNKNOWN_LENGTH
            self._framing = _CHUNKED
            self._chunk_state = _SIZE
            if raw_values(headers, b"content-length"):
                # both framings: chunked wins, and the connection is not trusted again
                self._reusable = False
            return UNKNOWN_LENGTH
        lengths = raw_values(headers, b"content-length")
        if lengths:
            values = {v.strip() for value in lengths for v in value.split(b",")}
            if len(values) != 1:
                raise BadResponse("conflicting Content-Length headers")
            text = values.pop()
            if not text.isdigit():
                raise BadResponse("a malformed Content-Length header")
            self._remaining = int(text)
            if self._remaining == 0:
                self._framing = _NONE
                return 0
            self._framing = _LENGTH
            return self._remaining
        self._framing = _UNTIL_CLOSE
        self._reusable = False
        return UNKNOWN_LENGTH

    def _fail_head(self, error: Exception) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None and not exchange.result.called:
            exchange.result.errback(Failure(ResponseFailed([Failure(error)])))
        self.abort()

    def _body(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._protocol is None:
            # nobody to deliver to yet: keep the bytes as they came
            self._early.append(data)
            self._early_size += len(data)
            if self._early_size > _EARLY_BODY_LIMIT:
                self.pauseProducing()
            return
        framing = self._framing
        if framing == _CHUNKED:
            self._chunked(data)
        elif framing == _LENGTH:
            remaining = self._remaining
            if len(data) >= remaining:
                extra = len(data) > remaining
                if extra:
                    data = data[:remaining]
                    self._reusable = False  # bytes beyond the answer: never reuse
                self._remaining = 0
                self._ending()
                self._emit(data, data)
                self._finish_body()
                return
            self._remaining = remaining - len(data)
            self._emit(data, data)
        elif framing == _UNTIL_CLOSE:
            self._emit(data, data)
        else:
            self._reusable = False  # bytes after a body-less answer

    def _chunked(self, data: bytes) -> None:
        """
        Decode one read of a chunked body. The read's bytes up to any
        unfinished chunk-size line (held back for the next read) and up to the
        last-chunk marker are what passes through unchanged.
        """
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        position = 0
        size = len(data)
        pieces: list[bytes] = []
        forward_end = 0
        state = self._chunk_state
        remaining = self._remaining
        while position < size:
            if state == _DATA:
                end = position + remaining
                if end <= size:
                    pieces.append(data[position:end])
                    position = end
                    remaining = 0
                    state = _DATA_END
                else:
                    pieces.append(data[position:])
                    remaining -= size - position
                    position = size
                forward_end = position
            elif state == _SIZE:
                line_end = data.find(b"\r\n", position)
                if line_end < 0:
                    if size - position > MAX_CHUNK_LINE:
                        return self._broken("a chunk-size line is too long")
                    self._buffer = data[position:]
                    break
                digits = data[position:line_end].partition(b";")[0].strip()
                if not digits or len(digits) > 16 or not _HEX.issuperset(digits):
                    return self._broken("a malformed chunk-size line")
                remaining = int(digits, 16)
                if remaining == 0:
                    state = _TRAILER
                    position = line_end + 2
                    continue
                position = line_end + 2
                forward_end = position
                state = _DATA
            elif state == _DATA_END:
                if size - position < 2:
                    if data[position:] != b"\r"[: size - position]:
                        return self._broken("a chunk does not end with CRLF")
                    self._buffer = data[position:]
                    break
                if data[position:position + 2] != b"\r\n":
                    return self._broken("a chunk does not end with CRLF")
                position += 2
                forward_end = position
                state = _SIZE
            else:  # _TRAILER: header lines up to an empty one
                line_end = data.find(b"\r\n", position)
                if line_end < 0:
                    if size - position > MAX_HEAD:
                        return self._broken("the trailers are too large")
                    self._buffer = data[position:]
                    break
                empty = line_end == position
                position = line_end + 2
                if empty:
                    self._chunk_state = state
                    self._remaining = 0
                    if position < size:
                        self._reusable = False  # bytes beyond the answer
                    self._ending()
                    self._emit_chunks(data, forward_end, pieces)
                    self._finish_body()
                    return None
        self._chunk_state = state
        self._remaining = remaining
        self._emit_chunks(data, forward_end, pieces)
        return None

    def _emit_chunks(self, data: bytes, forward_end: int, pieces: list[bytes]) -> None:
        if forward_end == 0 and not pieces:
            return
        payload = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        raw = data if forward_end == len(data) else data[:forward_end]
        self._emit(raw, payload)

    def _broken(self, why: str) -> None:
        self._end_body(Failure(ResponseFailed([Failure(BadResponse(why))])))
        self.abort()

    def _emit(self, raw: bytes, payload: bytes) -> None:
        raw_sink = self._raw
        if raw_sink is not None:
            raw_sink(raw, payload)
            return
        if payload:
            protocol = self._protocol
            if protocol is not None:
                protocol.dataReceived(payload)

    def _ending(self) -> None:
        """
        Tell the body's protocol that this read ends the body, before its
        last bytes are delivered (``body_ending``, when it has one): what it
        writes for them and for the end can go out together.
        """
        ending = getattr(self._protocol, "body_ending", None)
        if ending is not None:
            ending()

    def _finish_body(self) -> None:
        self._body_done = True
        self._end_body(_BODY_DONE)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.connection = None
        self._head_done = False  # what comes next is not this answer's
        if self._reusable and self._sent_all and not self._stopped and not self._gone:
            self.resumeProducing()
            self.agent._release(self)
        else:
            self.close()

    def _end_body(self, reason: Failure) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        self._protocol = None
        self._raw = None
        protocol.connectionLost(reason)

    # -- the body protocol's side ----------------------------------------------------------

    def deliver_to(self, protocol: Protocol) -> None:
        self._protocol = protocol
        self._use_raw(protocol)
        protocol.makeConnection(self)
        early, self._early = self._early, []
        self._early_size = 0
        for data in early:
            if self._protocol is not protocol:
                break
            self._body(data)
        if self._protocol is not protocol:
            return
        if self._framing == _NONE and self._head_done:
            self._finish_body()
        elif self._early_end is not None:
            # the connection was lost before the body was asked for
            self._body_done = True
            self._end_body(self._lost_body(self._early_end))
        elif self._paused and not self._stopped:
            self.resumeProducing()

    def redirect(self, protocol: Protocol) -> None:
        """
        Deliver the rest of the body to another protocol (which is given this
        connection as its transport), e.g. after its start was read.
        """
        self._protocol = protocol
        self._use_raw(protocol)

    def _use_raw(self, protocol: Protocol) -> None:
        # unchanged bytes only from a chunk boundary on, and only for chunked bodies
        self._raw = None
        if (getattr(protocol, "wants_raw", False) and self._framing == _CHUNKED
                and self._chunk_state in (_SIZE, _TRAILER)):
            self._raw = protocol.raw_received  # type: ignore[attr-defined]

    def pauseProducing(self) -> None:
        if not self._paused and not self._gone:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        if self._paused and not self._gone:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.abort()

    # -- the end ------------------------------------------------------------------------

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self._gone = True
        self.agent._forget(self)
        self._stop_idle_timer()
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.connection = None
            if not exchange.result.called:
                exchange.result.errback(self._before_answer(reason))
            elif not self._body_done and self._head_done:
                if self._protocol is None:
                    self._early_end = reason  # told when the body is asked for
                else:
                    self._body_done = True
                    self._end_body(self._lost_body(reason))
        self.closed.callback(None)

    def _lost_body(self, reason: Failure) -> Failure:
        if self._stopped:
            return Failure(ResponseFailed([Failure(ConnectionAborted())]))
        if self._framing == _UNTIL_CLOSE:
            return Failure(PotentialDataLoss())
        return Failure(ResponseFailed([reason]))

    def _before_answer(self, reason: Failure) -> Failure:
        if self.reused and not self._got_bytes and reason.check(ConnectionDone, ConnectionLost):
            return Failure(StaleConnection([reason]))
        if self._got_bytes:
            return Failure(ResponseFailed([reason]))
        if not self._sent_all:
            return Failure(RequestTransmissionFailed([reason]))
        return Failure(ResponseNeverReceived([reason]))


@implementer(IConsumer)
class _BodyConsumer:
    """
    Writes a streamed request body to the connection, chunk-framed when its
    length is unknown.
    """

    def __init__(self, transport: Any, chunked: bool) -> None:
        self._transport = transport
        self._chunked = chunked

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._transport.unregisterProducer()

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._chunked:
            self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._transport.write(data)


class DirectEndpoints:
    """
    Where the stream client's connections come from: TCP straight to the
    upstream's address (TLS on top for https), its name resolved once and
    remembered (:class:`~subrouter.upstream.client.CachingResolver`).

    Twisted's ``HostnameEndpoint`` builds a class, a ``LoopingCall`` and a
    wrapping protocol for every connection, and the wrapper then sits between
    every read and its protocol; with hundreds of new conversations a second
    that was most of what a new connection cost. The addresses of a name are
    tried one after the other, the one that last worked first.

    :param reactor: the reactor.
    :param tls: the certificate policy for https upstreams.
    :param connect_timeout: seconds one connection attempt may take.
    """

    def __init__(self, reactor: Any, tls: IPolicyForHTTPS, connect_timeout: float) -> None:
        self._reactor = reactor
        resolver = IReactorPluggableNameResolver(reactor, None)
        self._resolver = (
            CachingResolver(resolver.nameResolver, reactor) if resolver is not None else None
        )
        self._tls = tls
        self._timeout = connect_timeout
        self._cache: dict[tuple[bytes, bytes, int], _DirectEndpoint] = {}

    def endpoint(self, scheme: bytes, host: bytes, port: int) -> _DirectEndpoint:
        key = (scheme, host, port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            if scheme not in _DEFAULT_PORTS:
                raise SchemeNotSupported(f"unsupported scheme {scheme!r}")
            creator = self._tls.creatorForNetloc(host, port) if scheme == b"https" else None
            endpoint = _DirectEndpoint(self._reactor, self._resolver, host.decode("ascii"), port,
                                       creator, self._timeout)
            self._cache[key] = endpoint
        return endpoint


class _DirectEndpoint:
    def __init__(self, reactor: Any, resolver: IHostnameResolver | None, host: str, port: int,
                 creator: Any, timeout: float) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._host = host
        self._port = port
        self._creator = creator
        self._timeout = timeout
        self._literal = isIPAddress(host) or isIPv6Address(host)
        self._last_good: str | None = None

    def connect(self, factory: Any) -> Deferred[Any]:
        attempt = _Attempt(self, factory)
        if self._literal or self._resolver is None:
            attempt.try_addresses([self._host])
        else:
            self._resolver.resolveHostName(attempt, self._host, self._port)
        return attempt.result

    def _connect_to(self, host: str, factory: Any) -> Any:
        if self._creator is not None:
            factory = TLSMemoryBIOFactory(self._creator, True, factory)
        return self._reactor.connectTCP(host, self._port, factory, timeout=self._timeout)


@implementer(IResolutionReceiver)
class _Attempt(ClientFactory):
    """
    One connection wanted: the name's addresses in turn until one connects.
    """

    noisy = False

    def __init__(self, endpoint: _DirectEndpoint, factory: Any) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._addresses: list[str] = []
        self._current: str | None = None
        self._connector: Any = None
        self._last_reason: Failure | None = None
        self.result: Deferred[Any] = Deferred(self._cancel)

    # IResolutionReceiver
    def resolutionBegan(self, resolutionInProgress: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if address.host not in self._addresses:
            self._addresses.append(address.host)

    def resolutionComplete(self) -> None:
        if not self._addresses:
            self.result.errback(Failure(DNSLookupError(
                f"no address found for {self._endpoint._host}")))
            return
        self.try_addresses(self._addresses)

    def try_addresses(self, addresses: list[str]) -> None:
        good = self._endpoint._last_good
        if good in addresses and addresses[0] != good:
            addresses = [good] + [a for a in addresses if a != good]
        self._addresses = list(addresses)
        self._next()

    def _next(self) -> None:
        if self.result.called:
            return
        if not self._addresses:
            assert self._last_reason is not None
            self.result.errback(self._last_reason)
            return
        self._current = self._addresses.pop(0)
        self._connector = self._endpoint._connect_to(self._current, self)

    # the factory's side
    def buildProtocol(self, addr: Any) -> Any:
        protocol = self._factory.buildProtocol(addr)
        protocol.on_made = self._made
        return protocol

    def _made(self, protocol: Any) -> None:
        self._connector = None
        self._endpoint._last_good = self._current
        set_no_delay(protocol.transport)
        if self.result.called:  # cancelled meanwhile
            protocol.transport.abortConnection()
            return
        self.result.callback(protocol)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._connector = None
        self._last_reason = reason
        if self.result.called or reason.check(UserError):
            return
        self._next()

    def _cancel(self, d: Deferred[Any]) -> None:
        connector, self._connector = self._connector, None
        if connector is not None:
            connector.stopConnecting()


def _whole_chunks(data: bytes) -> bytes | None:
    """
    The payload of ``data`` when it is one or more whole, non-empty chunks
    (no extensions, no last chunk) and nothing else; None for anything else,
    which the chunk decoder takes.
    """
    size = len(data)
    position = 0
    payloads: list[bytes] | None = None
    while True:
        line_end = data.find(b"\r\n", position, position + MAX_CHUNK_LINE)
        if not position < line_end <= position + 16:
            return None
        digits = data[position:line_end]
        if not _HEX.issuperset(digits):
            return None
        start = line_end + 2
        end = start + int(digits, 16)
        if end == start or end + 2 > size or data[end:end + 2] != b"\r\n":
            return None
        position = end + 2
        if position == size and payloads is None:
            return data[start:end]  # one chunk: nearly every read
        if payloads is None:
            payloads = []
        payloads.append(data[start:end])
        if position == size:
            return b"".join(payloads)


def _parse_head(head: bytes) -> tuple[int, bytes, Headers, bool]:
    """
    A response head's status, reason phrase, headers, and whether the
    connection may be kept alive after it.
    """
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or len(status[1]) != 3 or (
        not status[1].isdigit()
    ):
        raise BadResponse("a malformed status line")
    code = int(status[1])
    phrase = status[2] if len(status) > 2 else b""
    headers = Headers()
    raw = headers._rawHeaders
    names = CANONICAL_NAMES
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise BadResponse("a malformed header line")
        canonical = names.get(name)
        if canonical is None:
            try:
                canonical = canonical_name(name)
            except InvalidHeaderName:
                raise BadResponse("a malformed header name") from None
        existing = raw.get(canonical)
        if existing is None:
            raw[canonical] = [value.strip()]
        else:
            existing.append(value.strip())
    tokens = connection_tokens(raw.get(b"Connection"))
    if status[0] == b"HTTP/1.0":
        keep_alive = b"keep-alive" in tokens
    else:
        keep_alive = b"close" not in tokens
    return code, phrase, headers, keep_alive
