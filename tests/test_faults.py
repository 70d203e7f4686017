"""
Faults a user or an upstream can cause, over real sockets: each gets an answer
with a reason, corrupts nothing and leaves no traceback in the log (the
``observe_errors`` fixture fails any test that logs one).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from tests.support.daemon import Daemon, make_config, read_all, sleep, start_daemon
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream, sse, write_apikey_account, write_oauth_account
from tests.support.websocket import WSBackend, connect, messages

FAR = time.time() + 30 * 86400
WEIRD_KEY = "sk-ключ-weird"


@pytest_twisted.async_yield_fixture
async def daemon(tmp_path: Path, upstream: FakeUpstream, ca: TestCA) -> AsyncIterator[Daemon]:
    running = await start_daemon(make_config(tmp_path, upstream, ca))
    yield running
    await running.stop()


async def accounts_seen(daemon: Daemon, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        rows: list[dict[str, Any]] = (await daemon.get_json("/_subrouter/accounts"))["accounts"]
        if len(rows) == count:
            return rows
        assert time.monotonic() < deadline, "the daemon never saw the accounts"
        await sleep(0.02)


def tracebacks(daemon: Daemon) -> list[dict[str, Any]]:
    return [e for e in daemon.log if "log_failure" in e or "Traceback" in str(e.get("log_text"))]


# -- credentials that cannot go into a header ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_request_skips_an_api_key_that_cannot_go_into_a_header(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    write_apikey_account(daemon.accounts_dir, "a-weird", WEIRD_KEY)
    write_apikey_account(daemon.accounts_dir, "b-good", "sk-good")
    rows = {r["id"]: r for r in await accounts_seen(daemon, 2)}
    assert rows["apikey:a-weird"]["usable"] is False
    assert "cannot go into an HTTP header" in rows["apikey:a-weird"]["why_not"]
    assert rows["apikey:b-good"]["usable"] is True
    upstream.script(b"/v1/responses", sse(["one", "two"]))
    for _ in range(3):
        response = await daemon.request("POST", "/v1/responses", data=b'{"stream":true}')
        assert response.code == 200
        await read_all(response)
    assert [r.header_values(b"authorization") for r in upstream.requests] == [
        [b"Bearer sk-good"]] * 3
    assert tracebacks(daemon) == []


@pytest_twisted.ensureDeferred
async def test_only_unsendable_credentials_give_503_with_the_reason_never_500(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    write_apikey_account(daemon.accounts_dir, "weird", WEIRD_KEY)
    await accounts_seen(daemon, 1)
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 503
    error = json.loads(await read_all(response))["error"]
    assert error["type"] == "no_usable_account"
    assert "apikey:weird" in error["message"] and "HTTP header" in error["message"]
    assert "ключ" not in error["message"]
    assert upstream.requests == []
    assert tracebacks(daemon) == []


@pytest_twisted.async_yield_fixture
async def ws_backend(ca: TestCA) -> AsyncIterator[WSBackend]:
    fake = WSBackend(ca)
    await fake.start()
    yield fake
    await fake.stop()


@pytest_twisted.ensureDeferred
async def test_a_websocket_skips_a_login_whose_token_cannot_go_into_a_header(
    tmp_path: Path, ws_backend: WSBackend, ca: TestCA
) -> None:
    store = tmp_path / "accounts-store"
    bad = write_oauth_account(store, "a@example.com", exp=FAR, account_id="ws-a")
    document = json.loads(bad.read_text())
    document["auth"]["tokens"]["access_token"] += "\r\nX-Injected: 1"
    bad.write_text(json.dumps(document))
    write_oauth_account(store, "b@example.com", exp=FAR, account_id="ws-b")
    config = make_config(tmp_path, None, ca, codex_upstream=ws_backend.codex_url)
    running = await start_daemon(config)
    try:
        rows = {r["id"]: r for r in await accounts_seen(running, 2)}
        assert "line break" in rows["a@example.com"]["why_not"]
        for session in ("s1", "s2"):
            client, factory = await connect(running, headers={"session-id": session})
            client.sendMessage(json.dumps({"type": "response.create"}).encode())
            got = await messages(factory, 4)
            assert json.loads(got[3][0])["account"] == "ws-b"
            client.sendClose(1000)
            await factory.closed
        assert all("x-injected" not in h for h in ws_backend.handshakes)
        assert tracebacks(running) == []
    finally:
        await running.stop()


# -- TLS failures in words ---------------------------------------------------------------


def test_tls_failures_are_described_in_words() -> None:
    from OpenSSL import SSL
    from service_identity.exceptions import DNSMismatch, IPAddressMismatch, VerificationError
    from service_identity.hazmat import DNS_ID, IPAddress_ID

    from subrouter.errors import describe_failure_reason

    mismatch = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("chatgpt.com"))])
    assert describe_failure_reason(mismatch) == (
        "the upstream's TLS certificate is not valid for chatgpt.com")
    by_ip = VerificationError(errors=[IPAddressMismatch(mismatched_id=IPAddress_ID("10.0.0.1"))])
    assert "not valid for 10.0.0.1" in describe_failure_reason(by_ip)
    untrusted = SSL.Error([("SSL routines", "", "certificate verify failed")])
    assert "not trusted" in describe_failure_reason(untrusted)
    other = SSL.Error([("SSL routines", "", "wrong version number")])
    assert describe_failure_reason(other) == (
        "the TLS handshake with the upstream failed (wrong version number)")


@pytest.mark.parametrize("case", ["untrusted", "wrong-host"])
@pytest_twisted.ensureDeferred
async def test_a_bad_upstream_certificate_gives_502_in_words(
    tmp_path: Path, ca: TestCA, case: str
) -> None:
    from tests.support.daemon import reactor

    options = (ca.untrusted_server_options() if case == "untrusted"
               else ca.server_options(("other.example",)))
    upstream = FakeUpstream(reactor, ca, tls_options=options)
    await upstream.start()
    running = await start_daemon(make_config(tmp_path, upstream, ca))
    try:
        write_oauth_account(running.accounts_dir, "a@example.com", exp=FAR)
        await accounts_seen(running, 1)
        response = await running.request("POST", "/v1/responses", data=b"{}")
        assert response.code == 502
        message = json.loads(await read_all(response))["error"]["message"]
        assert "a@example.com" in message and "TLS certificate" in message
        expected = "not trusted" if case == "untrusted" else "not valid for localhost"
        assert expected in message
        for python in ("Error(", "_ID(", "Mismatch", "b'"):
            assert python not in message
        assert upstream.requests == []
        assert tracebacks(running) == []
    finally:
        await running.stop()
        await upstream.stop()


# -- the resend rule -----------------------------------------------------------------------


def scripted(*steps: str) -> Any:
    """
    A handler answering each request with the next step: ``ok`` (a short SSE
    stream), ``close`` (take the whole request, then abort the connection
    without a byte of answer) or ``headers-then-close``.
    """
    from tests.support.upstream import Exchange

    remaining = list(steps)
    stream = sse(["one", "two"])

    async def handler(exchange: Exchange) -> None:
        step = remaining.pop(0) if remaining else "ok"
        if step == "close":
            await exchange.abort()
        elif step == "headers-then-close":
            exchange.request.setResponseCode(200)
            exchange.request.setHeader(b"content-type", b"text/event-stream")
            exchange.write(b"")
            await exchange.abort()
        else:
            await stream(exchange)

    return handler


PATH = b"/backend-api/codex/responses"


@pytest_twisted.ensureDeferred
async def test_a_post_that_dies_on_a_connection_opened_for_it_is_never_resent(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    write_oauth_account(daemon.accounts_dir, "a@example.com", exp=FAR)
    await accounts_seen(daemon, 1)
    upstream.script(PATH, scripted("close"))
    response = await daemon.request("POST", "/v1/responses", data=b'{"n": 1}')
    assert response.code == 502
    error = json.loads(await read_all(response))["error"]
    assert error["type"] == "upstream_error"
    assert len(upstream.requests) == 1  # sent once, never again
    assert tracebacks(daemon) == []


@pytest_twisted.ensureDeferred
async def test_a_post_that_dies_on_a_reused_connection_before_any_answer_is_resent_once(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    write_oauth_account(daemon.accounts_dir, "a@example.com", exp=FAR)
    await accounts_seen(daemon, 1)
    upstream.script(PATH, scripted("ok", "close", "ok"))
    first = await daemon.request("POST", "/v1/responses", data=b'{"n": 1}')
    assert first.code == 200
    await read_all(first)
    await sleep(0.05)  # the connection goes back to the pool
    second = await daemon.request("POST", "/v1/responses", data=b'{"n": 2}')
    assert second.code == 200
    assert b"two" in await read_all(second)
    assert [r.body for r in upstream.requests] == [b'{"n": 1}', b'{"n": 2}', b'{"n": 2}']
    assert tracebacks(daemon) == []


@pytest_twisted.ensureDeferred
async def test_a_reused_connection_that_answered_anything_is_never_resent(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    write_oauth_account(daemon.accounts_dir, "a@example.com", exp=FAR)
    await accounts_seen(daemon, 1)
    upstream.script(PATH, scripted("ok", "headers-then-close", "close", "close"))
    first = await daemon.request("POST", "/v1/responses", data=b'{"n": 1}')
    await read_all(first)
    await sleep(0.05)
    second = await daemon.request("POST", "/v1/responses", data=b'{"n": 2}')
    assert second.code == 200  # the headers came; then the stream was cut
    # the client connection is aborted: a cut stream never looks whole
    with pytest.raises(Exception):  # noqa: B017 - treq's wrapper of ResponseFailed
        await read_all(second)
    await sleep(0.05)
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("case", ["untrusted", "wrong-host"])
@pytest_twisted.ensureDeferred
async def test_a_bad_upstream_certificate_refuses_a_websocket_in_words(
    tmp_path: Path, ca: TestCA, case: str
) -> None:
    backend = WSBackend(ca)
    if case == "untrusted":
        backend.ca = _Untrusted(ca)  # type: ignore[assignment]
    else:
        backend.ca = _WrongHost(ca)  # type: ignore[assignment]
    await backend.start()
    config = make_config(tmp_path, None, ca, codex_upstream=backend.codex_url)
    write_oauth_account(tmp_path / "accounts-store", "a@example.com", exp=FAR)
    running = await start_daemon(config)
    try:
        await accounts_seen(running, 1)
        with pytest.raises(Exception) as refused:
            await connect(running, headers={"session-id": "tls"})
        text = str(refused.value)
        assert "502" in text and "TLS certificate" in text and "a@example.com" in text
        for python in ("Error(", "_ID(", "Mismatch", "b'"):
            assert python not in text
        assert backend.handshakes == []
        assert tracebacks(running) == []
        logged = " ".join(str(e.get("log_format", "")) + str(e.get("reason", ""))
                          for e in running.log)
        assert "Error(" not in logged and "_ID(" not in logged
    finally:
        await running.stop()
        await backend.stop()


class _Untrusted:
    def __init__(self, ca: TestCA) -> None:
        self._ca = ca

    def server_options(self) -> Any:
        return self._ca.untrusted_server_options()


class _WrongHost:
    def __init__(self, ca: TestCA) -> None:
        self._ca = ca

    def server_options(self) -> Any:
        return self._ca.server_options(("other.example",))


# -- a fault run: many faults at once, none reaches a healthy request ------------------------


@pytest_twisted.ensureDeferred
async def test_faults_at_once_leave_a_healthy_stream_whole_and_no_traceback(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    from twisted.internet.defer import DeferredList

    from tests.support.raw_http import send_raw
    from tests.support.upstream import hang, json_response

    running = await start_daemon(make_config(tmp_path, upstream, ca, idle_timeout=0.5,
                                             header_timeout=0.5))
    try:
        write_oauth_account(running.accounts_dir, "a@example.com", exp=FAR)
        write_apikey_account(running.accounts_dir, "weird", WEIRD_KEY)
        await accounts_seen(running, 2)
        events = [f"event-{i}" for i in range(20)]
        upstream.script(PATH, sse(events, gaps=0.02))
        upstream.script(b"/backend-api/codex/stall", hang())
        upstream.script(b"/backend-api/codex/dies", sse(["x"] * 5, die_after=2))
        upstream.script(b"/backend-api/codex/boom", json_response(503, {"error": "overloaded"}))

        async def healthy() -> bytes:
            response = await running.request("POST", "/v1/responses", data=b"{}")
            assert response.code == 200
            return await read_all(response)

        async def faulty(path: str) -> int:
            response = await running.request("POST", path, data=b"{}")
            try:
                await read_all(response)
            except Exception:
                return -1  # cut off on purpose: the upstream died mid-stream
            return int(response.code)

        async def client_leaves() -> None:
            d = running.request("POST", "/v1/stall", data=b"{}")
            d.addErrback(lambda _: None)  # the test client's own cancellation
            await sleep(0.2)
            d.cancel()

        results = await DeferredList([
            Deferred.fromCoroutine(healthy()),
            Deferred.fromCoroutine(faulty("/v1/stall")),
            Deferred.fromCoroutine(faulty("/v1/dies")),
            Deferred.fromCoroutine(faulty("/v1/boom")),
            Deferred.fromCoroutine(client_leaves()),
            Deferred.fromCoroutine(
                send_raw(running.port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")),
            Deferred.fromCoroutine(
                send_raw(running.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1")),
            Deferred.fromCoroutine(send_raw(running.port, b"BAD\r\n\r\n")),
        ], consumeErrors=True)
        body = results[0][1]
        assert results[0][0], body
        for event in events:
            assert f"data: {event}".encode() in body
        assert [r[1] for r in results[1:4]] == [504, -1, 503]
        assert all(ok for ok, _ in results)
        for raw, status in zip([r[1] for r in results[5:]], (414, 408, 400), strict=True):
            assert raw.startswith(b"HTTP/1.1 %d " % status)
        assert tracebacks(running) == []
    finally:
        await running.stop()


# -- a client that stops reading ---------------------------------------------------------------


class _PausingClient(Protocol):
    """
    Sends one request, stops reading at once, and reads everything later.
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)
        self.transport.pauseProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received.endswith(b"\r\n0\r\n\r\n"):
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.received))


def _dechunk(raw: bytes) -> bytes:
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"chunked" in head.lower()
    out = bytearray()
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        assert rest[size:size + 2] == b"\r\n"
        rest = rest[size + 2:]


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_gets_every_byte_in_order_later(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from tests.support.daemon import reactor

    write_oauth_account(daemon.accounts_dir, "a@example.com", exp=FAR)
    await accounts_seen(daemon, 1)
    # 8 MiB of events, far more than the socket buffers hold
    events = [json.dumps({"n": i, "pad": "p" * 65000}) for i in range(128)]
    upstream.script(PATH, sse(events))
    client = _PausingClient(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Content-Length: 2\r\nsession-id: slow-reader\r\n\r\n{}")
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port), client)
    await sleep(0.5)
    client.transport.resumeProducing()  # type: ignore[union-attr]
    raw = await client.done
    assert raw.startswith(b"HTTP/1.1 200 ")
    body = _dechunk(raw)
    frames = [f for f in body.split(b"\n\n") if f]
    assert [json.loads(f[len(b"data: "):])["n"] for f in frames] == list(range(128))
    assert tracebacks(daemon) == []


# -- upstream answers that break HTTP/1.1 ------------------------------------------------


class _RawUpstream(Protocol):
    """
    Answers every request it reads with the same bytes.
    """

    answer = b""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            assert self.transport is not None
            self.transport.write(self.answer)


async def _raw_upstream(answer: bytes) -> Any:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    class _Answer(_RawUpstream):
        pass

    _Answer.answer = answer
    return reactor.listenTCP(0, Factory.forProtocol(_Answer), interface="127.0.0.1")


@pytest_twisted.async_yield_fixture
async def raw_daemon(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Daemon]:
    """
    A daemon with one login whose upstream answers every request with the
    test's ``answer`` bytes.
    """
    port = await _raw_upstream(request.param)
    base = f"http://127.0.0.1:{port.getHost().port}"
    running = await start_daemon(make_config(tmp_path, None, None,
                                             codex_upstream=base + "/backend-api/codex"))
    try:
        write_oauth_account(running.accounts_dir, "a@example.com", exp=FAR)
        await accounts_seen(running, 1)
        yield running
    finally:
        await running.stop()
        await port.stopListening()


@pytest.mark.parametrize(("raw_daemon", "said"), [
    (b"HTTP/1.1 20 OK\r\n\r\n", "malformed status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "malformed Content-Length"),
    (b"HTTP/1.1 200 OK\r\nbroken header line\r\n\r\n", "malformed header line"),
], indirect=["raw_daemon"])
@pytest_twisted.ensureDeferred
async def test_an_answer_that_breaks_http_gets_502_with_the_reason(
    raw_daemon: Daemon, said: str
) -> None:
    response = await raw_daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 502
    error = json.loads(await read_all(response))["error"]
    assert error["type"] == "upstream_error" and said in error["message"]
    assert tracebacks(raw_daemon) == []


@pytest.mark.parametrize("raw_daemon", [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"f\r\ndata: one\r\n\r\n\r\nzz\r\nnot a chunk\r\n"
], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_broken_chunk_mid_stream_aborts_the_client_never_a_clean_end(
    raw_daemon: Daemon,
) -> None:
    response = await raw_daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 200
    with pytest.raises(Exception):  # noqa: B017 - treq's wrapper of ResponseFailed
        await read_all(response)
    assert tracebacks(raw_daemon) == []


def _exchange_until_closed(port: int, request: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


@pytest.mark.parametrize("raw_daemon", [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
    b'{"ok":true}',
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"d\r\ndata: one\r\n\r\n\r\n10\r\ndata: [DONE]\r\n\r\n\r\n0\r\n\r\n",
], indirect=True)
@pytest.mark.parametrize("close", [
    b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    b"GET /v1/models HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
])
@pytest_twisted.ensureDeferred
async def test_a_whole_answer_and_its_end_reach_a_client_that_closes_after_it(
    raw_daemon: Daemon, close: bytes
) -> None:
    # the head, the body and the end come in one read of the upstream and go
    # out together; the connection closing after them loses none of it
    from twisted.internet.threads import deferToThread

    got = await deferToThread(_exchange_until_closed, raw_daemon.port, close)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b" 200 OK")
    if b"transfer-encoding: chunked" in head.lower():
        assert body.endswith(b"\r\n0\r\n\r\n")  # the end is there
    if b"event-stream" in head:
        assert b"data: one" in body and b"data: [DONE]" in body
    else:
        assert b'{"ok":true}' in body
    assert tracebacks(raw_daemon) == []
