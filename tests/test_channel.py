"""
The request-head limits and the head deadline of Subrouter's HTTP channel:
every oversized, malformed or too-slow head gets an answer with a JSON
reason, never a silent close; heads within the limits are served.
"""

from __future__ import annotations

import itertools
import json
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from subrouter.web.channel import LINGER, MAX_HEAD, MAX_HEADERS, MAX_LINE, SubrouterChannel
from subrouter.web.root import QuietSite
from tests.support.daemon import make_config, start_daemon
from tests.support.raw_http import send_raw


class _Ok(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return b"ok"


class _HalfClosingTransport(StringTransport):
    """
    A transport that, like TCP, can close its writing side alone.
    """

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


def _connect(clock: Clock | None = None, header_timeout: float = 30.0,
             transport: StringTransport | None = None) -> tuple[SubrouterChannel, StringTransport]:
    site = QuietSite(_Ok(), reactor=clock or Clock())
    site.header_timeout = header_timeout
    channel = site.buildProtocol(None)
    assert isinstance(channel, SubrouterChannel)
    transport = transport or StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def _answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode()
    return status, headers, body


def _error(raw: bytes) -> tuple[int, dict[str, Any]]:
    status, headers, body = _answer(raw)
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    return status, json.loads(body)["error"]


def _head(target: bytes = b"/v1/models", headers: list[bytes] | None = None) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1", *(headers or [])]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Echo(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        return b"%s %d %08x" % (request.uri, len(body), zlib.crc32(body))


@pytest.mark.parametrize("cut", [None, 10, 5000, 40_000])
def test_heads_and_bodies_in_one_read_arrive_whole_and_in_order(cut: int | None) -> None:
    site = QuietSite(_Echo(), reactor=Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    bodies = [bytes(range(256)) * 200 + b"\r\n\r\n", b"", b"x" * 9000]
    wire = b"".join(
        b"POST /%d HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
        % (i, len(body), body) for i, body in enumerate(bodies)
    )
    for piece in ([wire] if cut is None else [wire[:cut], wire[cut:]]):
        channel.dataReceived(piece)
    answers = transport.value().split(b"HTTP/1.1 200 OK")[1:]
    expected = [b"/%d %d %08x" % (i, len(body), zlib.crc32(body)) for i, body in enumerate(bodies)]
    assert [a.rpartition(b"\r\n\r\n")[2] for a in answers] == expected


class _Describe(Resource):
    """
    Answers with everything Twisted parsed of the request.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        seen = {
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "version": request.clientproto.decode("latin-1"),
            "headers": sorted(
                [name.decode("latin-1"), [v.decode("latin-1") for v in values]]
                for name, values in request.requestHeaders.getAllRawHeaders()
            ),
            "body": request.content.read().decode("latin-1"),
        }
        return json.dumps(seen).encode()


_good_lines = st.sampled_from([
    b"Host: 127.0.0.1", b"host:127.0.0.1", b"Content-Length: 5", b"Content-Length: 0",
    b"content-length:   5\t", b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity",
    b"Expect: 100-continue", b"Connection: close", b"Connection: keep-alive",
    b"Cookie: a=b; c=d", b"X-Empty:", b"X-Spaces:  a  b  ", b"X-Colons: a:b:c",
    b"X-Latin: caf\xe9", b"ETag: x", b"x-repeat: 1", b"X-Repeat: 2", b"session-id: s-1",
    b"Authorization: Bearer t", b"X-Tab:\ta\t",
])
#: at most one of these in a head: each alone decides how it ends
_odd_lines = st.sampled_from([
    b"Content-Length: +5", b"Content-Length: 5 x", b"Transfer-Encoding: gzip",
    b"X-Nul: a\x00b", b"X-Cr: a\rb", b"X-Lf: a\nb", b"Bad Name: v", b"NoColon", b" folded",
    b"\tfolded", b":empty-name", b"X-\x7f: v", b"Content-Length: 1\r\nContent-Length: 1",
    b"Content-Length: 5\r\nTransfer-Encoding: chunked",
]) | st.binary(min_size=1, max_size=30).filter(lambda b: b"\r\n" not in b)


@st.composite
def _header_lines(draw: st.DrawFn) -> list[bytes]:
    lines = draw(st.lists(_good_lines, max_size=8))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(_odd_lines))
    return lines


@settings(max_examples=300, deadline=None)
@example(b"GET / HTTP/1.1", [b"Host: h", b"X-Nul: a\x00b"], b"")
@example(b"GET / HTTP/1.1", [b"Content-Length: 1", b"Transfer-Encoding: chunked"], b"")
@example(b"POST / HTTP/1.1", [b"content-length:   5\t", b"X-Tab:\ta\t"], b"hello")
@given(
    st.sampled_from([b"POST /v1/responses HTTP/1.1", b"GET /v1/models?x=1 HTTP/1.1",
                     b"GET / HTTP/1.0", b"get / HTTP/1.1", b"GET  / HTTP/1.1", b"",
                     b"GET /a b HTTP/1.1", b"PUT /x HTTP/2.0"]),
    _header_lines(),
    st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n",
                     b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"]),
)
def test_a_head_read_whole_is_taken_exactly_as_line_by_line(
    request_line: bytes, headers: list[bytes], after: bytes
) -> None:
    # A whole head at the start of a read is parsed in one pass; one that
    # arrives in pieces goes through Twisted's line reader. Whatever the
    # head, both end the same: the same request seen, or the same refusal.
    wire = b"\r\n".join([request_line, *headers]) + b"\r\n\r\n" + after
    answers = []
    for reads in ([wire], [wire[:1], wire[1:]]):
        site = QuietSite(_Describe(), reactor=Clock())
        channel = site.buildProtocol(None)
        transport = _HalfClosingTransport()
        channel.makeConnection(transport)
        for piece in reads:
            channel.dataReceived(piece)
        answers.append(re.sub(rb"Date: [^\r]*", b"Date: -", transport.value()))
    assert answers[0] == answers[1]


# -- sizes ---------------------------------------------------------------------------


def test_a_head_within_the_limits_is_served() -> None:
    channel, transport = _connect()
    big = [b"X-Big-%d: %s" % (i, b"v" * (MAX_LINE - 20)) for i in range(3)]
    channel.dataReceived(_head(b"/" + b"a" * (MAX_LINE - 100), big))
    status, _, body = _answer(transport.value())
    assert (status, body[-2:]) == (200, b"ok"[-2:])
    assert not transport.disconnecting


def test_a_request_line_over_the_limit_gets_414() -> None:
    channel, transport = _connect()
    channel.dataReceived(_head(b"/" + b"a" * MAX_LINE))
    status, error = _error(transport.value())
    assert status == 414
    assert error["type"] == "request_line_too_long"
    assert str(MAX_LINE) in error["message"]


def test_a_request_line_still_arriving_past_the_limit_gets_414() -> None:
    # no line end yet: Twisted gives up on the line once it is too long
    channel, transport = _connect()
    channel.dataReceived(b"GET /" + b"a" * (MAX_LINE + 10))
    assert _error(transport.value())[0] == 414


def test_a_header_line_over_the_limit_gets_431() -> None:
    channel, transport = _connect()
    channel.dataReceived(_head(headers=[b"X-Huge: " + b"v" * (MAX_LINE + 1)]))
    status, error = _error(transport.value())
    assert status == 431
    assert error["type"] == "request_header_too_large"


def test_a_head_over_the_total_limit_gets_431() -> None:
    channel, transport = _connect()
    count = MAX_HEAD // (MAX_LINE - 100) + 1
    headers = [b"X-Big-%d: %s" % (i, b"v" * (MAX_LINE - 200)) for i in range(count)]
    channel.dataReceived(_head(headers=headers))
    status, error = _error(transport.value())
    assert status == 431
    assert str(MAX_HEAD) in error["message"]


def test_too_many_headers_get_431() -> None:
    channel, transport = _connect()
    channel.dataReceived(_head(headers=[b"X-H%d: 1" % i for i in range(MAX_HEADERS + 1)]))
    status, error = _error(transport.value())
    assert status == 431
    assert str(MAX_HEADERS) in error["message"]


def test_a_malformed_header_gets_400_with_a_reason() -> None:
    channel, transport = _connect()
    channel.dataReceived(_head(headers=[b"no colon here"]))
    status, error = _error(transport.value())
    assert (status, error["type"]) == (400, "bad_request")


def test_a_bad_content_length_gets_400_with_a_reason() -> None:
    channel, transport = _connect()
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ten\r\n\r\n")
    assert _error(transport.value())[0] == 400


def test_after_a_refusal_the_connection_half_closes_and_discards_the_rest() -> None:
    clock = Clock()
    channel, transport = _connect(clock, transport=_HalfClosingTransport())
    channel.dataReceived(_head(headers=[b"X-Huge: " + b"v" * (MAX_LINE + 1)]))
    answer = transport.value()
    assert _error(answer)[0] == 431
    assert transport.write_closed  # type: ignore[attr-defined]
    assert not transport.disconnecting
    # the client is still sending its headers and another request: ignored
    channel.dataReceived(b"v" * 100_000 + b"\r\n\r\n" + _head())
    assert transport.value() == answer
    clock.advance(LINGER)
    assert transport.disconnecting  # aborted once the linger is over


# -- the head deadline ---------------------------------------------------------------


def test_a_trickled_head_is_dropped_at_the_deadline_with_408() -> None:
    clock = Clock()
    channel, transport = _connect(clock, header_timeout=30.0)
    head = _head(headers=[b"X-Slow: " + b"s" * 100])
    for byte in head[:40]:
        channel.dataReceived(bytes([byte]))
        clock.advance(1.0)  # one byte a second: each byte restarts the idle timer
    status, error = _error(transport.value())
    assert status == 408
    assert error["type"] == "request_timeout"
    assert "30 s" in error["message"]
    assert transport.disconnecting


def test_a_slow_head_that_makes_the_deadline_is_served() -> None:
    clock = Clock()
    channel, transport = _connect(clock, header_timeout=30.0)
    head = _head()
    for byte in head:
        channel.dataReceived(bytes([byte]))
        clock.advance(29.0 / len(head))
    assert _answer(transport.value())[0] == 200
    clock.advance(60)
    assert b"408" not in transport.value()


def test_the_deadline_starts_at_each_requests_first_byte() -> None:
    clock = Clock()
    channel, transport = _connect(clock, header_timeout=30.0)
    channel.dataReceived(_head())
    assert _answer(transport.value())[0] == 200
    transport.clear()
    clock.advance(25)  # idle between requests: the idle timeout's business
    channel.dataReceived(_head()[:10])
    clock.advance(20)
    assert transport.value() == b""
    channel.dataReceived(_head()[10:])
    assert _answer(transport.value())[0] == 200
    clock.advance(29)
    assert transport.value().count(b"HTTP/1.1") == 1


def test_a_body_is_not_bound_by_the_head_deadline() -> None:
    clock = Clock()
    channel, transport = _connect(clock, header_timeout=30.0)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\n")
    for byte in b"abcd":
        clock.advance(20)
        channel.dataReceived(bytes([byte]))
    assert _answer(transport.value())[0] == 200


def test_closing_the_connection_cancels_the_deadline() -> None:
    clock = Clock()
    channel, _ = _connect(clock)
    channel.dataReceived(b"GET / HT")
    channel.connectionLost(Failure(Exception("gone")))
    assert [c for c in clock.getDelayedCalls() if c.active()] == []


# -- fuzzing the limits --------------------------------------------------------------

_sizes = st.integers(min_value=1, max_value=MAX_LINE + 64)


@st.composite
def _heads(draw: st.DrawFn) -> tuple[bytes, int, list[int]]:
    target = draw(st.sampled_from([8, 100, MAX_LINE - 20, MAX_LINE - 13, MAX_LINE - 12,
                                   MAX_LINE + 1]) | st.integers(1, MAX_LINE + 50))
    header_sizes = draw(st.lists(_sizes | st.integers(1, 40), max_size=12))
    many = draw(st.sampled_from([0, 0, MAX_HEADERS - 2, MAX_HEADERS + 3]))
    header_sizes += [8] * many
    cuts = draw(st.lists(st.integers(1, 9000), max_size=8))
    return _compose(target, header_sizes), target, [*cuts]


def _compose(target: int, header_sizes: list[int]) -> bytes:
    lines = [b"GET /" + b"t" * target + b" HTTP/1.1"]
    for i, size in enumerate(header_sizes):
        name = b"X-%d" % i
        lines.append(name + b": " + b"v" * max(0, size - len(name) - 2))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _expected(head: bytes) -> int:
    lines = head[:-4].split(b"\r\n")
    if len(lines[0]) > MAX_LINE:
        return 414
    total = 0
    for line in lines:
        if len(line) > MAX_LINE:
            return 431
        total += len(line)
        if total > MAX_HEAD:
            return 431
    if len(lines) - 1 > MAX_HEADERS:
        return 431
    return 200


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_heads())
def test_fuzzed_heads_get_the_answer_their_size_calls_for(
    case: tuple[bytes, int, list[int]],
) -> None:
    head, _, cuts = case
    channel, transport = _connect()
    # however the bytes are split into reads, the answer is the same
    start = 0
    for cut in cuts:
        channel.dataReceived(head[start:start + cut])
        start += cut
    channel.dataReceived(head[start:])
    expected = _expected(head)
    raw = transport.value()
    assert raw, "no answer at all"
    if expected == 200:
        assert _answer(raw)[0] == 200
    else:
        assert _error(raw)[0] == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_arbitrary_bytes_get_an_answer_or_wait_for_more(data: bytes, finish: bool) -> None:
    channel, transport = _connect()
    channel.dataReceived(data + (b"\r\n\r\n" if finish else b""))
    raw = transport.value()
    if raw:
        assert raw.startswith(b"HTTP/1.1 ")
        status, headers, body = _answer(raw)
        if status >= 400 and headers.get("connection") == "close":
            assert json.loads(body)["error"]["type"]


# -- over a real socket, through the daemon --------------------------------------------


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (_head(b"/v1/responses?q=" + b"a" * (100 * 1024)), 414),
        (_head(headers=[b"X-Huge: " + b"v" * (20 * 1024)]), 431),
        (_head(headers=[b"X-H%d: %s" % (i, b"v" * 8000) for i in range(10)]), 431),
    ],
    ids=["long-target", "long-header", "big-head"],
)
@pytest_twisted.ensureDeferred
async def test_the_daemon_answers_oversized_heads_over_tcp(
    tmp_path: Path, payload: bytes, status: int
) -> None:
    running = await start_daemon(make_config(tmp_path, None, None))
    try:
        raw = await send_raw(running.port, payload)
        assert raw, "empty reply"
        assert _error(raw)[0] == status
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_the_daemon_drops_a_trickled_head_after_its_header_timeout(
    tmp_path: Path,
) -> None:
    running = await start_daemon(make_config(tmp_path, None, None, header_timeout=0.3))
    try:
        # the head never ends: only the deadline can answer
        raw = await send_raw(running.port, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1")
        assert _error(raw)[0] == 408
    finally:
        await running.stop()


class _Args(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return json.dumps({"args": len(request.args), "body": request.content.read().decode()}
                          ).encode()


def test_a_form_body_is_forwarded_as_it_is_never_parsed() -> None:
    site = QuietSite(_Args(), reactor=Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: 7\r\n\r\na=1&b=2")
    status, _, body = _answer(transport.value())
    assert status == 200
    assert json.loads(body) == {"args": 0, "body": "a=1&b=2"}


class _Addresses(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        host, peer = request.getHost(), request.getClientAddress()
        return b"%s:%d %s:%d" % (host.host.encode(), host.port, peer.host.encode(), peer.port)


class _CountingTransport(StringTransport):
    """
    A transport that counts how often each end of the connection is asked for
    (on TCP, the local end costs a system call).
    """

    def __init__(self) -> None:
        super().__init__(hostAddress=IPv4Address("TCP", "127.0.0.1", 31415),
                         peerAddress=IPv4Address("TCP", "127.0.0.1", 50123))
        self.asked = {"host": 0, "peer": 0}

    def getHost(self) -> IPv4Address:
        self.asked["host"] += 1
        return super().getHost()  # type: ignore[no-any-return]

    def getPeer(self) -> IPv4Address:
        self.asked["peer"] += 1
        return super().getPeer()  # type: ignore[no-any-return]


def test_a_connections_addresses_are_looked_up_once_for_all_its_requests() -> None:
    site = QuietSite(_Addresses(), reactor=Clock())
    channel = site.buildProtocol(None)
    transport = _CountingTransport()
    channel.makeConnection(transport)
    for _ in range(3):
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answers = transport.value().split(b"HTTP/1.1 200 OK")[1:]
    assert [a.rpartition(b"\r\n\r\n")[2] for a in answers] == [
        b"127.0.0.1:31415 127.0.0.1:50123"
    ] * 3
    assert transport.asked == {"host": 1, "peer": 1}


@pytest.mark.parametrize("pieces", [1, 2, 3])
def test_a_body_read_whole_with_its_head_is_the_requests_content(pieces: int) -> None:
    # one read (taken at once), or the body in pieces (Twisted's decoder);
    # the same answers either way, and the connection goes on to the next
    site = QuietSite(_Echo(), reactor=Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    body = bytes(range(256)) * 240
    wire = b"POST /a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)
    step = -(-len(wire) // pieces)
    for start in range(0, len(wire), step):
        channel.dataReceived(wire[start:start + step])
    channel.dataReceived(b"POST /b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc")
    answers = transport.value().split(b"HTTP/1.1 200 OK")[1:]
    assert [a.rpartition(b"\r\n\r\n")[2] for a in answers] == [
        b"/a %d %08x" % (len(body), zlib.crc32(body)),
        b"/b 3 %08x" % zlib.crc32(b"abc"),
    ]


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(
        st.one_of(st.binary(max_size=300), st.integers(60_000, 70_000).map(lambda n: b"b" * n)),
        min_size=1, max_size=4,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=150_000), max_size=3),
)
def test_pipelined_requests_with_bodies_arrive_whole_however_the_reads_fall(
    bodies: list[bytes], cuts: list[int]
) -> None:
    # a body may come whole with its head (taken at once), in pieces, or
    # together with the next request: each request sees exactly its body
    site = QuietSite(_Echo(), reactor=Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    wire = b"".join(
        b"POST /%d HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
        % (i, len(body), body) for i, body in enumerate(bodies)
    )
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    for start, end in itertools.pairwise(points):
        channel.dataReceived(wire[start:end])
    answers = transport.value().split(b"HTTP/1.1 200 OK")[1:]
    assert [a.rpartition(b"\r\n\r\n")[2] for a in answers] == [
        b"/%d %d %08x" % (i, len(body), zlib.crc32(body)) for i, body in enumerate(bodies)
    ]


class _Tree(Resource):
    """
    A two-level tree that records how each request was traversed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[list[bytes], list[bytes], bytes]] = []
        self.putChild(b"a b", _Leaf(self.seen))
        self.putChild(b"", _Leaf(self.seen))


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, seen: list[tuple[list[bytes], list[bytes], bytes]]) -> None:
        super().__init__()
        self._seen = seen

    def render(self, request: Request) -> bytes:
        self._seen.append((list(request.prepath), list(request.postpath), request.method))
        return b"leaf"


@pytest.mark.parametrize(
    ("target", "prepath", "postpath"),
    [
        (b"/a%20b/x%2Fy/z", [b"a b"], [b"x/y", b"z"]),
        (b"/a%20b", [b"a b"], []),
        (b"/", [b""], []),
        (b"/a%20b/", [b"a b"], [b""]),
    ],
)
def test_traversal_is_twisteds(target: bytes, prepath: list[bytes], postpath: list[bytes]) -> None:
    """
    The site's cheaper ``process`` traverses as Twisted's does: segments
    unquoted, the leaf given what is left, ``Server`` and ``Date`` set.
    """
    tree = _Tree()
    site = QuietSite(tree, reactor=Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert tree.seen == [(prepath, postpath, b"GET")]
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert re.search(rb"\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n", answer)
    assert b"\r\nServer: TwistedWeb/" in answer
    assert answer.endswith(b"leaf") or answer.endswith(b"0\r\n\r\n")


def test_date_is_made_once_a_second() -> None:
    from subrouter.web.root import http_date

    assert http_date(784111777.2) == b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert http_date(784111777.9) is http_date(784111777.2)
    assert http_date(784111778.0) == b"Sun, 06 Nov 1994 08:49:38 GMT"


class _Held(Resource):
    """
    Keeps each request open and records what ``when_over`` reports.
    """

    isLeaf = True

    def __init__(self, seen: list[Any], broken: bool = False) -> None:
        super().__init__()
        self.seen = seen
        self.broken = broken
        self.requests: list[Any] = []

    def render(self, request: Any) -> object:
        from twisted.web.server import NOT_DONE_YET

        if self.broken:
            request.when_over(lambda result: 1 / 0)
        request.when_over(self.seen.append)
        request.notifyFinish().addBoth(lambda result: self.seen.append(("deferred", result)))
        self.requests.append(request)
        return NOT_DONE_YET


def test_when_over_is_called_once_when_the_answer_is_finished() -> None:
    seen: list[Any] = []
    held = _Held(seen)
    site = QuietSite(held, reactor=Clock())
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    channel.dataReceived(_head(b"/a"))
    assert seen == []
    held.requests[0].finish()
    assert seen == [("deferred", None), None]
    channel.connectionLost(Failure(ConnectionError("later")))
    assert seen == [("deferred", None), None]


@pytest.mark.logged_failures_expected
def test_when_over_is_called_with_the_reason_when_the_connection_is_lost(
    observe_errors: list[dict[str, Any]],
) -> None:
    seen: list[Any] = []
    held = _Held(seen, broken=True)
    site = QuietSite(held, reactor=Clock())
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    channel.dataReceived(_head(b"/a"))
    channel.connectionLost(Failure(ConnectionError("gone")))
    # the Deferred's errback, then the calls: a fault in one is logged, the next still called
    assert [type(x) for x in seen] == [tuple, Failure]
    assert seen[1].check(ConnectionError)
    assert [e["log_failure"].type for e in observe_errors] == [ZeroDivisionError]
    held.requests[0].connectionLost(Failure(ConnectionError("again")))
    assert len(seen) == 2


def test_the_idle_timeout_counts_from_the_end_of_the_last_answer_with_one_timer() -> None:
    """
    While a request is handled the connection is not idle, however long the
    answer takes; once it is done, the idle timeout runs again. One timer
    does it all: none is made and cancelled per request.
    """
    clock = Clock()
    seen: list[Any] = []
    held = _Held(seen)
    site = QuietSite(held, reactor=clock, timeout=10)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    [timer] = clock.getDelayedCalls()
    for _ in range(3):
        channel.dataReceived(_head(b"/a"))
        clock.advance(5)
        held.requests[-1].finish()
        assert clock.getDelayedCalls() == [timer]  # moved on, not remade
        clock.advance(9)
        assert not transport.disconnecting
    channel.dataReceived(_head(b"/a"))
    clock.advance(25)  # an answer longer than the idle timeout: not idle
    assert not transport.disconnecting
    held.requests[-1].finish()
    clock.advance(9)
    assert not transport.disconnecting
    clock.advance(1)  # 10 s after the last answer
    assert transport.disconnecting


def test_a_lost_connection_leaves_no_idle_timer_behind() -> None:
    clock = Clock()
    site = QuietSite(_Held([]), reactor=clock, timeout=10)
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    channel.dataReceived(_head(b"/a"))  # the timer set aside meanwhile
    channel.connectionLost(Failure(ConnectionError("gone")))
    assert clock.getDelayedCalls() == []


def test_a_connection_handed_to_a_websocket_leaves_no_idle_timer_behind() -> None:
    clock = Clock()
    site = QuietSite(_Held([]), reactor=clock, timeout=10)
    channel = site.buildProtocol(None)
    assert isinstance(channel, SubrouterChannel)
    channel.makeConnection(StringTransport())
    channel.dataReceived(_head(b"/a"))
    channel.cancel_idle_timer()
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("cookie", [None, b"a=1; b=2", b"junk"])
def test_cookies_are_parsed_as_twisted_parses_them(cookie: bytes | None) -> None:
    seen: list[Any] = []
    held = _Held(seen)
    site = QuietSite(held, reactor=Clock())
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    channel.dataReceived(_head(b"/a", [b"Cookie: " + cookie] if cookie else None))
    [ours] = held.requests
    theirs = Request(channel)
    if cookie:
        theirs.requestHeaders.setRawHeaders(b"cookie", [cookie])
    Request.parseCookies(theirs)
    assert ours.received_cookies == theirs.received_cookies
