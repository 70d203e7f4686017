"""
The test fakes themselves work: a client trusting the test CA talks straight to
:class:`FakeUpstream` over real TLS on 127.0.0.1 (no proxy in between).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import stat
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from tests.support.tlsca import TestCA
from tests.support.upstream import (
    FakeUpstream,
    Gate,
    StreamReader,
    decode_jwt,
    echo_body,
    hang,
    json_response,
    sse,
    status_then,
    write_apikey_account,
    write_oauth_account,
)

RESPONSES = b"/backend-api/codex/responses"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _timers_and_sockets() -> tuple[set[Any], set[Any]]:
    reactor = _reactor()
    sockets = {*reactor.getReaders(), *reactor.getWriters()}
    return (
        {call for call in reactor.getDelayedCalls() if call.active()},
        {s for s in sockets if isinstance(s, tcp.Connection | tcp.Port)},
    )


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """
    After the upstream and client fixtures are torn down (this one is set up
    first, so torn down last), the test has left no timer and no TCP
    connection or port behind. (Only new ones count: the reactor is shared
    with every other test in the run.)
    """
    timers, sockets = _timers_and_sockets()
    yield
    timers_after, sockets_after = _timers_and_sockets()
    assert timers_after - timers == set()
    assert sockets_after - sockets == set()


@pytest.fixture
def ca(tmp_path: pathlib.Path) -> TestCA:
    return TestCA(tmp_path)


@pytest_twisted.async_yield_fixture
async def upstream(ca: TestCA) -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(_reactor(), ca)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest_twisted.async_yield_fixture
async def client(ca: TestCA) -> AsyncIterator[HTTPClient]:
    pool = HTTPConnectionPool(_reactor(), persistent=False)
    agent = Agent(
        _reactor(),
        contextFactory=BrowserLikePolicyForHTTPS(trustRoot=ca.trust_root()),
        pool=pool,
    )
    try:
        yield HTTPClient(agent)
    finally:
        await pool.closeCachedConnections()


async def _stream(client: HTTPClient, url: str) -> tuple[IResponse, StreamReader]:
    response: IResponse = await client.post(url, data=b"{}", unbuffered=True)
    reader = StreamReader()
    response.deliverBody(reader)
    return response, reader


async def _json(response: IResponse) -> Any:
    reader = StreamReader()
    response.deliverBody(reader)
    assert await reader.done is None
    return json.loads(reader.received)


@pytest_twisted.ensureDeferred
async def test_gate_holds_later_events_until_released(
    upstream: FakeUpstream, client: HTTPClient
) -> None:
    gate = Gate()
    upstream.script(RESPONSES, sse(['{"n":1}', b'{"n":2}', "event: done\ndata: [DONE]"], gate=gate))

    response, reader = await _stream(client, upstream.codex_url + "/responses")

    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
    assert response.headers.getRawHeaders(b"cache-control") == [b"no-cache"]
    await reader.wait_for(b'data: {"n":1}\n\n')
    assert gate.written == 1
    assert b'"n":2' not in reader.received
    gate.release()
    await gate.sent(2)
    await reader.wait_for(b'data: {"n":2}\n\n')
    assert b"[DONE]" not in reader.received
    gate.release()
    assert await reader.done is None
    assert reader.received == (b'data: {"n":1}\n\ndata: {"n":2}\n\nevent: done\ndata: [DONE]\n\n')
    assert upstream.disconnects == []


@pytest_twisted.ensureDeferred
async def test_die_after_aborts_the_connection_after_sending_the_events(
    upstream: FakeUpstream, client: HTTPClient
) -> None:
    upstream.script(RESPONSES, sse(["one", "two", "three"], die_after=2))

    _, reader = await _stream(client, upstream.codex_url + "/responses")

    failure = await reader.done
    assert isinstance(failure, ResponseFailed)
    assert reader.received == b"data: one\n\ndata: two\n\n"
    assert upstream.disconnects == []


@pytest_twisted.ensureDeferred
async def test_client_disconnect_is_recorded_and_stops_the_stream(
    upstream: FakeUpstream, client: HTTPClient
) -> None:
    reactor = _reactor()
    upstream.script(RESPONSES, sse(["one", "two"], gaps=30.0))

    _, reader = await _stream(client, upstream.codex_url + "/responses")
    await reader.wait_for(b"data: one\n\n")
    assert reader.transport is not None
    cast(IPushProducer, reader.transport).stopProducing()

    assert await upstream.disconnected() == RESPONSES
    assert upstream.disconnects == [RESPONSES]
    assert await reader.done is not None
    far = reactor.seconds() + 10
    assert [call for call in reactor.getDelayedCalls() if call.getTime() > far] == []


@pytest_twisted.ensureDeferred
async def test_hang_records_the_disconnect_when_the_client_gives_up(
    upstream: FakeUpstream, client: HTTPClient
) -> None:
    upstream.script(b"/v1/responses", hang())

    pending: Deferred[Any] = client.post(upstream.openai_url + "/v1/responses", data=b"x")
    seen = await upstream.seen(1)
    assert seen.path == b"/v1/responses"
    pending.cancel()
    with pytest.raises(ResponseNeverReceived) as caught:
        await pending
    assert caught.value.reasons[0].check(CancelledError)

    assert await upstream.disconnected() == b"/v1/responses"


@pytest_twisted.ensureDeferred
async def test_token_endpoint_issues_tokens_the_backend_accepts(
    upstream: FakeUpstream, client: HTTPClient
) -> None:
    reactor = _reactor()
    upstream.valid_tokens = set()
    upstream.refresh_emails["rt-0"] = "a@example.com"
    refresh = {"grant_type": "refresh_token", "refresh_token": "rt-0", "client_id": "c"}

    first = await _json(await client.post(upstream.token_url, json=refresh))
    second = await _json(
        await client.post(upstream.token_url, json={**refresh, "refresh_token": "rt-1"})
    )

    assert first["refresh_token"] == "rt-1"
    assert second["refresh_token"] == "rt-2"
    assert first["access_token"] != second["access_token"]
    claims = decode_jwt(first["access_token"])
    assert claims["https://api.openai.com/profile"]["email"] == "a@example.com"
    assert abs(claims["exp"] - (reactor.seconds() + 3600)) < 60
    assert decode_jwt(second["id_token"])["email"] == "a@example.com"
    assert upstream.valid_tokens == {first["access_token"], second["access_token"]}
    assert [r.json()["refresh_token"] for r in upstream.token_requests] == ["rt-0", "rt-1"]
    assert upstream.requests == []

    bearer: dict[bytes | str, bytes | str] = {"authorization": "Bearer " + first["access_token"]}
    ok = await client.post(upstream.codex_url + "/responses", data=b"{}", headers=bearer)
    assert ok.code == 200
    assert await _json(ok) == {"ok": True, "path": "/backend-api/codex/responses"}
    wrong = await client.get(
        upstream.openai_url + "/v1/models", headers=Headers({b"authorization": [b"Bearer x"]})
    )
    assert wrong.code == 401
    assert (await _json(wrong))["error"]["code"] == "token_expired"
    assert [r.path for r in upstream.requests] == [RESPONSES, b"/v1/models"]


@pytest_twisted.ensureDeferred
async def test_token_gate_holds_every_refresh_until_it_fires(
    upstream: FakeUpstream, client: HTTPClient
) -> None:
    gate: Deferred[None] = Deferred()
    upstream.token_gate = gate
    body = {"refresh_token": "rt-0"}

    answers = [client.post(upstream.token_url, json=body) for _ in range(2)]
    answered: list[IResponse] = []

    def note(response: IResponse) -> IResponse:
        answered.append(response)
        return response

    for answer in answers:
        answer.addCallback(note)
    while len(upstream.token_requests) < 2:
        await client.get(upstream.base_url + "/ping")
    assert answered == []
    assert upstream.issued == []
    gate.callback(None)

    codes = [(await answer).code for answer in answers]
    assert codes == [200, 200]
    assert len(upstream.issued) == 2


@pytest_twisted.ensureDeferred
async def test_requests_are_recorded_with_every_header_and_a_body_digest(
    upstream: FakeUpstream, client: HTTPClient
) -> None:
    upstream.script(b"/v1/files", echo_body())
    big = bytes(range(256)) * 8192  # 2 MiB, over the keep limit

    response = await client.post(
        upstream.openai_url + "/v1/files?purpose=x",
        data=big,
        headers=Headers({b"x-multi": [b"a", b"b"], b"x-single": [b"c"]}),
    )

    assert await _json(response) == {
        "length": len(big),
        "sha256": hashlib.sha256(big).hexdigest(),
    }
    seen = upstream.requests[0]
    assert (seen.method, seen.path, seen.query) == (b"POST", b"/v1/files", b"purpose=x")
    assert seen.header_values(b"X-Multi") == [b"a", b"b"]
    assert seen.header(b"x-single") == b"c"
    assert seen.body is None
    assert seen.body_length == len(big)
    assert seen.body_sha256 == hashlib.sha256(big).hexdigest()


@pytest_twisted.ensureDeferred
async def test_status_then_answers_errors_first(upstream: FakeUpstream, client: HTTPClient) -> None:
    upstream.script(RESPONSES, status_then([401, 429], json_response(201, {"fine": True})))
    url = upstream.codex_url + "/responses"

    codes = []
    for _ in range(3):
        response = await client.post(url, data=b"{}")
        await _json(response)
        codes.append(response.code)

    assert codes == [401, 429, 201]


@pytest_twisted.ensureDeferred
async def test_a_server_the_ca_did_not_sign_is_refused(ca: TestCA, client: HTTPClient) -> None:
    rogue = FakeUpstream(_reactor(), ca, tls_options=ca.untrusted_server_options())
    await rogue.start()
    try:
        with pytest.raises(ResponseNeverReceived) as caught:
            await client.get(rogue.base_url + "/v1/models")
        assert "certificate verify failed" in str(caught.value.reasons[0].value)
        assert rogue.requests == []
    finally:
        await rogue.stop()


@pytest_twisted.ensureDeferred
async def test_stop_aborts_open_requests_without_calling_them_disconnects(
    upstream: FakeUpstream, client: HTTPClient
) -> None:
    gate = Gate()
    upstream.script(RESPONSES, sse(["one", "two"], gate=gate))
    upstream.script(b"/v1/responses", hang())
    _, reader = await _stream(client, upstream.codex_url + "/responses")
    hanging: Deferred[Any] = client.post(upstream.openai_url + "/v1/responses", data=b"x")
    await reader.wait_for(b"data: one\n\n")
    await upstream.seen(2)

    await upstream.stop()

    assert isinstance(await reader.done, ResponseFailed)
    with pytest.raises(ResponseNeverReceived):
        await hanging
    assert upstream.disconnects == []
    assert gate.written == 1


@pytest_twisted.ensureDeferred
async def test_plain_http_mode(client: HTTPClient) -> None:
    plain = FakeUpstream(_reactor(), None, tls=False)
    await plain.start()
    try:
        assert plain.base_url == f"http://127.0.0.1:{plain.port}"
        response = await client.get(plain.codex_url + "/models?client_version=1")
        assert await _json(response) == {"ok": True, "path": "/backend-api/codex/models"}
        assert plain.requests[0].query == b"client_version=1"
    finally:
        await plain.stop()


def test_account_files_are_private_and_in_the_cx_format(tmp_path: pathlib.Path) -> None:
    oauth = write_oauth_account(tmp_path, "a+b@example.com", exp=2_000_000_000, extra={"x": 1})
    apikey = write_apikey_account(tmp_path, "work", "sk-test")

    assert oauth == tmp_path / "accounts" / "a_b@example.com.json"
    assert apikey == tmp_path / "accounts" / "apikey_work.json"
    assert stat.S_IMODE(oauth.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "accounts").stat().st_mode) == 0o700
    assert oauth.read_text().endswith("}\n")
    document = json.loads(oauth.read_text())
    assert document["x"] == 1
    assert document["auth"]["auth_mode"] == "chatgpt"
    claims = decode_jwt(document["auth"]["tokens"]["access_token"])
    assert claims["exp"] == 2_000_000_000
    assert json.loads(apikey.read_text())["auth"] == {
        "auth_mode": "apikey",
        "OPENAI_API_KEY": "sk-test",
    }
    assert sorted(p.name for p in (tmp_path / "accounts").iterdir()) == [
        "a_b@example.com.json",
        "apikey_work.json",
    ]
