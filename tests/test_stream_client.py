"""
The proxy's own HTTP/1.1 client (subrouter.upstream.stream), in memory: the
response framings, chunked bodies cut anywhere (decoded, and passed through
unchanged), the keep-alive pool, the resend rule's StaleConnection, and
cancellation.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from subrouter.proxy.bodies import BytesBody
from subrouter.upstream.client import StaleConnection
from subrouter.upstream.stream import StreamAgent

URL = b"http://upstream.test:8080/v1/responses?x=1"


class _Endpoints:
    """
    Connections to nowhere: each is a StringTransport the test reads and
    answers on.
    """

    def __init__(self) -> None:
        self.connections: list[tuple[Any, StringTransport]] = []
        self.asked: list[tuple[bytes, bytes, int]] = []
        self.pending: Deferred[Any] | None = None

    def endpoint(self, scheme: bytes, host: bytes, port: int) -> Any:
        self.asked.append((scheme, host, port))
        return self

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.pending is not None:
            return self.pending
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


class _Body(Protocol):
    def __init__(self, raw: bool = False) -> None:
        self.wants_raw = raw
        self.payload: list[bytes] = []
        self.raw: list[bytes] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.payload.append(data)

    def raw_received(self, raw: bytes, payload: bytes) -> None:
        self.raw.append(raw)
        self.payload.append(payload)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.reason = reason


def _agent() -> tuple[StreamAgent, _Endpoints, Clock]:
    clock = Clock()
    endpoints = _Endpoints()
    return StreamAgent(clock, endpoints, idle_timeout=90), endpoints, clock  # type: ignore[arg-type]


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def _failure(d: Deferred[Any]) -> Failure:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and isinstance(results[0], Failure), results
    return results[0]


def _answered(agent: StreamAgent, endpoints: _Endpoints, wire: bytes,
              raw: bool = False) -> tuple[Any, Any, _Body]:
    """
    A GET whose new connection receives ``wire``, its body delivered to a
    fresh :class:`_Body`: the connection's protocol and transport, and the body.
    """
    d = agent.request(b"GET", URL)
    protocol, transport = endpoints.connections[-1]
    protocol.dataReceived(wire)
    got = _Body(raw)
    _result(d).deliverBody(got)
    return protocol, transport, got


def _chunked(pieces: list[bytes], trailers: bytes = b"") -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\n" + trailers + b"\r\n"


#: a whole answer with an empty body
EMPTY_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
HEAD_CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


def test_the_request_goes_out_whole_with_host_length_and_headers() -> None:
    agent, endpoints, _ = _agent()
    headers = Headers({b"Authorization": [b"Bearer t"], b"X-Two": [b"a", b"b"]})
    agent.request(b"POST", URL, headers, BytesBody(b'{"n":1}'))
    [(_, transport)] = endpoints.connections
    sent = transport.value()
    head, _, body = sent.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/responses?x=1 HTTP/1.1"
    assert b"Host: upstream.test:8080" in lines
    assert b"Authorization: Bearer t" in lines
    assert lines.count(b"X-Two: a") == 1 and lines.count(b"X-Two: b") == 1
    assert b"Content-Length: 7" in lines
    assert body == b'{"n":1}'
    assert endpoints.asked == [(b"http", b"upstream.test", 8080)]


def test_a_content_length_answer_is_delivered_and_the_connection_reused() -> None:
    agent, endpoints, _ = _agent()
    for _n in range(3):
        d = agent.request(b"GET", URL)
        protocol, transport = endpoints.connections[0]
        transport.clear()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
        response = _result(d)
        assert response.code == 200 and response.length == 5
        body = _Body()
        response.deliverBody(body)
        protocol.dataReceived(b"lo")
        assert b"".join(body.payload) == b"hello"
        assert body.reason is not None and body.reason.check(ResponseDone)
    assert len(endpoints.connections) == 1  # one connection, kept alive


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.binary(min_size=0, max_size=40), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    raw=st.booleans(),
    trailers=st.sampled_from([b"", b"X-Trailer: 1\r\n"]),
)
def test_a_chunked_body_cut_anywhere_arrives_whole(
    pieces: list[bytes], cuts: list[int], raw: bool, trailers: bytes
) -> None:
    agent, endpoints, _ = _agent()
    d = agent.request(b"POST", URL, None, BytesBody(b"{}"))
    protocol, _ = endpoints.connections[0]
    body_bytes = _chunked(pieces, trailers)
    wire = HEAD_CHUNKED + body_bytes
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    got = _Body(raw)
    for start, end in itertools.pairwise(points):
        protocol.dataReceived(wire[start:end])
        if d.called and not got.connected:
            _result(d).deliverBody(got)
    assert b"".join(got.payload) == b"".join(pieces)
    assert got.reason is not None and got.reason.check(ResponseDone)
    if raw:
        # the framing passed through unchanged, up to the last-chunk marker
        assert b"".join(got.raw) == _chunked(pieces)[: -len(b"0\r\n\r\n")]
    # the connection went back to the pool, and is reused
    agent.request(b"GET", URL)
    assert len(endpoints.connections) == 1


def test_a_malformed_chunk_fails_the_body_and_the_connection_is_dropped() -> None:
    agent, endpoints, _ = _agent()
    _, transport, got = _answered(agent, endpoints, HEAD_CHUNKED + b"5\r\nhello\r\nzz\r\n")
    assert got.reason is not None and got.reason.check(ResponseFailed)
    assert transport.disconnecting
    agent.request(b"GET", URL)
    assert len(endpoints.connections) == 2


def test_a_body_until_close_ends_as_potential_data_loss_and_is_never_reused() -> None:
    agent, endpoints, _ = _agent()
    protocol, _, got = _answered(agent, endpoints, b"HTTP/1.1 200 OK\r\n\r\nsome", raw=True)
    protocol.dataReceived(b" more")
    protocol.connectionLost(Failure(ConnectionDone()))
    assert b"".join(got.payload) == b"some more"
    assert got.reason is not None and got.reason.check(PotentialDataLoss)
    agent.request(b"GET", URL)
    assert len(endpoints.connections) == 2


def test_informational_answers_are_skipped_and_body_less_answers_end_at_once() -> None:
    agent, endpoints, _ = _agent()
    d = agent.request(b"GET", URL)
    protocol, _ = endpoints.connections[0]
    protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
    response = _result(d)
    assert response.code == 204 and response.headers.getRawHeaders(b"x-a") == [b"1"]
    got = _Body()
    response.deliverBody(got)
    assert got.reason is not None and got.reason.check(ResponseDone)
    agent.request(b"GET", URL)
    assert len(endpoints.connections) == 1


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"NOPE 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
])
def test_a_malformed_answer_fails_the_request(head: bytes) -> None:
    agent, endpoints, _ = _agent()
    d = agent.request(b"GET", URL)
    protocol, transport = endpoints.connections[0]
    protocol.dataReceived(head)
    assert _failure(d).check(ResponseFailed)
    assert transport.disconnecting


def test_a_reused_connection_that_closes_before_answering_is_stale() -> None:
    agent, endpoints, _ = _agent()
    protocol, _, _ = _answered(agent, endpoints, EMPTY_OK)
    again = agent.request(b"POST", URL, None, BytesBody(b"x"))
    protocol.connectionLost(Failure(ConnectionLost()))
    assert _failure(again).check(StaleConnection)


def test_a_new_connection_that_closes_before_answering_is_not_stale() -> None:
    agent, endpoints, _ = _agent()
    d = agent.request(b"POST", URL, None, BytesBody(b"x"))
    protocol, _ = endpoints.connections[0]
    protocol.connectionLost(Failure(ConnectionLost()))
    assert _failure(d).check(ResponseNeverReceived)


def test_an_answer_cut_after_its_headers_fails_the_body() -> None:
    agent, endpoints, _ = _agent()
    protocol, _, got = _answered(agent, endpoints, HEAD_CHUNKED + b"5\r\nhel")
    protocol.connectionLost(Failure(ConnectionLost()))
    assert got.payload == [b"hel"]
    assert got.reason is not None and got.reason.check(ResponseFailed)


def test_cancelling_a_pending_request_aborts_its_connection() -> None:
    agent, endpoints, _ = _agent()
    d = agent.request(b"GET", URL)
    _, transport = endpoints.connections[0]
    d.cancel()
    assert _failure(d).check(CancelledError)
    assert transport.disconnecting


def test_cancelling_while_connecting_cancels_the_connection_attempt() -> None:
    agent, endpoints, _ = _agent()
    cancelled: list[bool] = []
    endpoints.pending = Deferred(lambda _: cancelled.append(True))
    d = agent.request(b"GET", URL)
    d.cancel()
    assert cancelled == [True]
    assert _failure(d).check(CancelledError)


def test_stopping_the_body_aborts_the_connection_and_reports_it() -> None:
    agent, endpoints, _ = _agent()
    protocol, transport, got = _answered(agent, endpoints, HEAD_CHUNKED + b"5\r\nhello\r\n")
    got.transport.stopProducing()  # type: ignore[union-attr]
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionDone()))
    assert got.reason is not None and got.reason.check(ResponseFailed)


def test_pausing_the_body_pauses_the_upstream_read() -> None:
    agent, endpoints, _ = _agent()
    _, transport, got = _answered(agent, endpoints, HEAD_CHUNKED)
    got.transport.pauseProducing()  # type: ignore[union-attr]
    assert transport.producerState == "paused"
    got.transport.resumeProducing()  # type: ignore[union-attr]
    assert transport.producerState == "producing"


def test_idle_connections_expire_and_an_idle_connection_that_speaks_is_dropped() -> None:
    agent, endpoints, clock = _agent()
    protocol, transport, _ = _answered(agent, endpoints, EMPTY_OK)
    protocol.dataReceived(b"junk")
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionDone()))
    _, transport, _ = _answered(agent, endpoints, EMPTY_OK)
    clock.advance(91)
    assert transport.disconnecting
    assert clock.getDelayedCalls() == []


def test_an_idle_connection_expires_its_idle_timeout_after_its_last_use() -> None:
    """
    Reusing a pooled connection makes no new timer; the one timer, firing
    early, waits out the rest of the connection's idle time.
    """
    agent, endpoints, clock = _agent()
    _, transport, _ = _answered(agent, endpoints, EMPTY_OK)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(60)
    d = agent.request(b"GET", URL)  # the pooled connection, reused
    assert len(endpoints.connections) == 1
    protocol, _ = endpoints.connections[0]
    protocol.dataReceived(EMPTY_OK)
    _result(d).deliverBody(_Body())
    assert len(clock.getDelayedCalls()) == 1  # still the first timer
    clock.advance(31)  # 91 s: 90 after the first use, 31 after the last
    assert not transport.disconnecting
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(58)
    assert not transport.disconnecting
    clock.advance(1)  # 90 s after the last use
    assert transport.disconnecting
    assert clock.getDelayedCalls() == []


def test_a_connection_in_use_when_its_idle_timer_fires_is_left_alone() -> None:
    agent, endpoints, clock = _agent()
    _, transport, _ = _answered(agent, endpoints, EMPTY_OK)
    d = agent.request(b"GET", URL)  # taken from the pool, not answered yet
    clock.advance(200)
    assert not transport.disconnecting
    assert clock.getDelayedCalls() == []
    protocol, _ = endpoints.connections[0]
    protocol.dataReceived(EMPTY_OK)
    _result(d).deliverBody(_Body())
    clock.advance(89)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting


def test_connection_close_is_respected() -> None:
    agent, endpoints, _ = _agent()
    _, transport, got = _answered(
        agent, endpoints, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    assert got.payload == [b"ok"] and transport.disconnecting


def test_an_answer_framed_both_ways_is_read_as_chunked_and_its_connection_dropped() -> None:
    agent, endpoints, _ = _agent()
    _, transport, got = _answered(agent, endpoints, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert b"".join(got.payload) == b"hello"
    assert got.reason is not None and got.reason.check(ResponseDone)
    assert transport.disconnecting


@pytest.mark.parametrize(
    ("read", "payload"),
    [
        (b"5\r\nhello\r\n", b"hello"),
        (b"5\r\nhello\r\n1\r\n!\r\nA\r\n0123456789\r\n", b"hello!0123456789"),
        (b"005\r\nhello\r\n", b"hello"),
        (b"5\r\nhello\r\n0\r\n\r\n", None),  # the last chunk: the decoder's
        (b"5\r\nhello\r\n3\r\nab", None),  # a chunk still coming
        (b"5\r\nhello", None),
        (b"5;ext=1\r\nhello\r\n", None),  # an extension
        (b"5\r\nhelloXY", None),  # no CRLF after the data
        (b"0\r\n\r\n", None),
        (b"g\r\nhello\r\n", None),
        (b"1" * 17 + b"\r\nx\r\n", None),  # a size line longer than 16 digits
    ],
)
def test_a_read_of_whole_chunks_is_recognised_as_one(read: bytes, payload: bytes | None) -> None:
    from subrouter.upstream.stream import _whole_chunks

    assert _whole_chunks(read) == payload
