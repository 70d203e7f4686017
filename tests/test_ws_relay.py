"""
The WebSocket relay over real sockets: a client WebSocket to the daemon, a
fake ``wss://`` upstream behind it trusted through the test CA.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted

from subrouter.ws.relay import client_close_code
from tests.support.daemon import Daemon, make_config, sleep, start_daemon
from tests.support.tlsca import TestCA
from tests.support.upstream import write_oauth_account
from tests.support.websocket import WSBackend, connect, messages

FAR = time.time() + 30 * 86400


@pytest_twisted.async_yield_fixture
async def backend(ca: TestCA) -> AsyncIterator[WSBackend]:
    fake = WSBackend(ca)
    await fake.start()
    yield fake
    await fake.stop()


@pytest_twisted.async_yield_fixture
async def daemon(tmp_path: Path, backend: WSBackend, ca: TestCA) -> AsyncIterator[Daemon]:
    config = make_config(tmp_path, None, ca, codex_upstream=backend.codex_url)
    write_oauth_account(tmp_path / "accounts-store", "a@example.com", exp=FAR, account_id="ws-a")
    write_oauth_account(tmp_path / "accounts-store", "b@example.com", exp=FAR, account_id="ws-b")
    running = await start_daemon(config)
    await running.wait_for_accounts(2)
    yield running
    await running.stop()


def test_close_codes_are_mapped_to_ones_autobahn_may_send() -> None:
    assert client_close_code(None) == 1000
    assert client_close_code(1000) == 1000
    assert client_close_code(4123) == 4123
    assert client_close_code(1011) == 4011
    assert client_close_code(1006) == 4006
    assert client_close_code(2500) == 1000


@pytest_twisted.ensureDeferred
async def test_messages_relay_both_ways_with_the_accounts_credentials(
    daemon: Daemon, backend: WSBackend
) -> None:
    client, factory = await connect(
        daemon,
        headers={"session-id": "thread-1", "x-codex-window-id": "thread-1:0",
                 "Authorization": "Bearer client-dummy", "OpenAI-Beta": "responses_websockets=2026",
                 "X-Subrouter-User-Email": "dev@example.com", "originator": "codex_cli_rs"},
        protocols=["responses"],
    )
    assert factory.response.protocol == "responses"
    assert factory.response.headers.get("x-codex-turn-state") == "turn-1"
    client.sendMessage(json.dumps({"type": "response.create", "input": []}).encode())
    client.sendMessage(b"\x00\x01binary", True)
    got = await messages(factory, 5)
    assert [json.loads(p)["type"] for p, _ in got[:4]] == [
        "response.output_text.delta"] * 3 + ["response.completed"]
    assert got[4] == (b"yranib\x01\x00", True)
    (handshake,) = backend.handshakes
    assert handshake["authorization"].startswith("Bearer ey")
    account = handshake["chatgpt-account-id"]
    assert account in ("ws-a", "ws-b")
    assert handshake["openai-beta"] == "responses_websockets=2026"
    assert handshake["session-id"] == "thread-1"
    assert not any(name.startswith("x-subrouter-") for name in handshake)
    assert "origin" not in handshake
    sessions = await daemon.get_json("/_subrouter/sessions")
    assert sessions[0]["session"] == "thread-1" and sessions[0]["user_email"] == "dev@example.com"
    client.sendClose(1000)
    await factory.closed
    deadline = time.monotonic() + 5
    while not backend.closed:
        assert time.monotonic() < deadline
        await sleep(0.02)
    assert backend.closed == [1000]


@pytest_twisted.ensureDeferred
async def test_each_completed_response_on_the_websocket_is_counted_once(
    daemon: Daemon, backend: WSBackend, tmp_path: Path
) -> None:
    client, factory = await connect(
        daemon, headers={"session-id": "ws-thread", "X-Subrouter-User-Email": "dev@example.com"})
    for turn in (1, 2):
        client.sendMessage(json.dumps({"type": "response.create", "input": []}).encode())
        await messages(factory, 4 * turn)
    client.sendClose(1000)
    await factory.closed
    deadline = time.monotonic() + 5
    while True:
        usage = await daemon.get_json("/_subrouter/token-usage?since=1h&by=conversation,user")
        if usage["totals"]["requests"] >= 2 or time.monotonic() > deadline:
            break
        await sleep(0.1)
    assert usage["totals"]["requests"] == 2
    assert usage["totals"]["total_tokens"] == 2060
    assert usage["totals"]["cache_hit_ratio"] == 0.6
    assert usage["by"]["conversation"]["rows"][0]["key"] == "codex/ws-thread"
    assert usage["by"]["user"]["rows"][0]["key"] == "dev@example.com"


@pytest_twisted.ensureDeferred
async def test_a_refused_upgrade_gives_the_client_the_same_status(
    daemon: Daemon, backend: WSBackend
) -> None:
    backend.refuse = True
    with pytest.raises(Exception, match="426"):
        await connect(daemon, headers={"session-id": "t"})


@pytest_twisted.ensureDeferred
async def test_an_upgrade_refused_as_overloaded_is_waited_out_on_the_same_account(
    daemon: Daemon, backend: WSBackend
) -> None:
    backend.refuse_with = [529]
    started = time.monotonic()
    client, factory = await connect(daemon, headers={"session-id": "busy"})
    # accepted after one pause, on the account the refusal came from
    assert time.monotonic() - started >= 0.9
    (refused,) = backend.refused
    assert backend.handshakes[-1]["authorization"] == refused["authorization"]
    assert backend.handshakes[-1]["chatgpt-account-id"] == refused["chatgpt-account-id"]
    client.sendMessage(json.dumps({"type": "response.create"}).encode())
    got = await messages(factory, 4)
    assert json.loads(got[-1][0])["type"] == "response.completed"
    client.sendClose(1000)


@pytest_twisted.ensureDeferred
async def test_an_upgrade_refused_for_another_reason_is_passed_on_at_once(
    daemon: Daemon, backend: WSBackend
) -> None:
    backend.refuse_with = [503]  # no word of an overload: not waited out
    started = time.monotonic()
    with pytest.raises(Exception, match="503"):
        await connect(daemon, headers={"session-id": "down"})
    assert time.monotonic() - started < 0.9
    assert len(backend.refused) == 1


@pytest_twisted.ensureDeferred
async def test_browser_origins_are_refused(daemon: Daemon, backend: WSBackend) -> None:
    with pytest.raises(Exception, match="403"):
        await connect(daemon, headers={"session-id": "t", "Origin": "https://evil.example"})
    assert backend.handshakes == []


@pytest_twisted.ensureDeferred
async def test_upstream_close_codes_reach_the_client(daemon: Daemon, backend: WSBackend) -> None:
    client, factory = await connect(daemon, headers={"session-id": "c1"})
    client.sendMessage(json.dumps({"type": "close-with", "code": 4001}).encode())
    code, reason = await factory.closed
    assert code == 4001 and reason == "bye"


@pytest_twisted.ensureDeferred
async def test_a_usage_limit_closes_after_the_response_and_the_next_connection_moves(
    daemon: Daemon, backend: WSBackend
) -> None:
    client, factory = await connect(daemon, headers={"session-id": "move-me"})
    client.sendMessage(json.dumps({"type": "response.create"}).encode())
    first = json.loads((await messages(factory, 4))[3][0])["account"]
    backend.exhausted.add(first)
    client.sendMessage(json.dumps({"type": "response.create"}).encode())
    code, _ = await factory.closed
    assert code == 1000
    types = [json.loads(p).get("type") for p, _ in factory.messages[4:]]
    assert types[0] == "error"  # the client sees why, then the connection ends
    client2, factory2 = await connect(daemon, headers={"session-id": "move-me"})
    client2.sendMessage(json.dumps({"type": "response.create"}).encode())
    second = json.loads((await messages(factory2, 4))[3][0])["account"]
    assert second != first
    client2.sendClose(1000)
    await factory2.closed


@pytest_twisted.ensureDeferred
async def test_permessage_deflate_is_negotiated_with_the_client(
    daemon: Daemon, backend: WSBackend
) -> None:
    client, factory = await connect(daemon, headers={"session-id": "z"}, deflate=True)
    assert "permessage-deflate" in factory.response.headers.get("sec-websocket-extensions", "")
    client.sendMessage(json.dumps({"type": "response.create", "pad": "x" * 10000}).encode())
    got = await messages(factory, 4)
    assert json.loads(got[3][0])["type"] == "response.completed"
    client.sendClose(1000)
    await factory.closed


@pytest_twisted.ensureDeferred
async def test_websocket_messages_are_recorded_both_ways(
    tmp_path: Path, backend: WSBackend, ca: TestCA
) -> None:
    config = make_config(tmp_path, None, ca, codex_upstream=backend.codex_url,
                         transcripts=str(tmp_path / "tx"))
    write_oauth_account(tmp_path / "accounts-store", "a@example.com", exp=FAR, account_id="ws-a")
    running = await start_daemon(config)
    try:
        await running.wait_for_accounts(1)
        client, factory = await connect(running, headers={"session-id": "wsrec"})
        client.sendMessage(json.dumps({"type": "response.create"}).encode())
        await messages(factory, 4)
        client.sendClose(1000)
        await factory.closed
        path = tmp_path / "tx" / "by-agent" / "codex" / "by-session" / "wsrec.jsonl"
        deadline = time.monotonic() + 5
        while not path.exists() or path.read_text().count("websocket_message") < 5:
            assert time.monotonic() < deadline
            await sleep(0.02)
    finally:
        await running.stop()
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert events[0]["type"] == "subrouter_meta"
    assert events[0]["payload"]["transport"] == "websocket"
    assert events[0]["payload"]["upstream_url"].startswith("wss://localhost:")
    messages_ = [e["payload"] for e in events if e["type"] == "websocket_message"]
    assert [m["direction"] for m in messages_] == ["client_to_upstream"] + [
        "upstream_to_client"] * 4
    first = base64.b64decode(messages_[0]["body_base64"])
    assert json.loads(first) == {"type": "response.create"}
    assert messages_[0]["sha256"] == hashlib.sha256(first).hexdigest()


@pytest_twisted.ensureDeferred
async def test_the_close_line_counts_both_ways_and_a_client_leaving_is_no_error(
    daemon: Daemon, backend: WSBackend
) -> None:
    from twisted.logger import LogLevel, globalLogPublisher

    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        client, factory = await connect(daemon, headers={"session-id": "thread-close"},
                                        protocols=["responses"])
        client.sendMessage(json.dumps({"type": "response.create", "input": []}).encode())
        client.sendMessage(b"\x00\x01binary", True)
        await messages(factory, 5)
        # an agent that exits drops the connection without a close frame
        client.transport.abortConnection()
        deadline = time.monotonic() + 5
        while not [e for e in events if "up_messages" in e]:
            assert time.monotonic() < deadline, "no close line"
            await sleep(0.05)
    finally:
        globalLogPublisher.removeObserver(events.append)
    (line,) = [e for e in events if "up_messages" in e]
    assert line["how"] == "the client left"
    assert line["log_level"] == LogLevel.info
    assert (line["up_messages"], line["down_messages"]) == (2, 5)
    assert line["up_bytes"] == len(json.dumps({"type": "response.create", "input": []})) + 8
    assert isinstance(line["seconds"], float)


_UPGRADE = (b"GET /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n")
_KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


def _refusal(raw: bytes) -> tuple[bytes, dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    return head.split(b"\r\n")[0], json.loads(body)["error"]


@pytest.mark.parametrize(
    ("extra", "status", "kind"),
    [
        (b"", b"400", "bad_websocket_handshake"),  # no key: autobahn's own refusal
        (b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n", b"400",
         "bad_websocket_handshake"),
        (_KEY + b"X-Subrouter-Account-ID: " + b"a" * 300 + b"\r\n", b"400",
         "invalid_account_selector"),
        (_KEY + b"X-Subrouter-Account-ID: nobody\r\n", b"503", "unknown_account"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_refused_upgrade_says_why_in_its_status_line_and_a_json_error(
    daemon: Daemon, backend: WSBackend, extra: bytes, status: bytes, kind: str
) -> None:
    from tests.support.raw_http import send_raw

    line, error = _refusal(await send_raw(daemon.port, _UPGRADE + extra + b"\r\n"))
    assert line.startswith(b"HTTP/1.1 " + status + b" ") and len(line) > 13
    assert error["type"] == kind and error["message"]
    assert line.endswith(error["message"].encode("latin-1", "replace")[-20:])
    assert backend.handshakes == []


@pytest_twisted.ensureDeferred
async def test_an_upgrade_the_upstream_refuses_is_a_json_upstream_refusal(
    daemon: Daemon, backend: WSBackend
) -> None:
    from tests.support.raw_http import send_raw

    backend.refuse_with = [404]
    line, error = _refusal(await send_raw(daemon.port, _UPGRADE + _KEY + b"\r\n"))
    assert line.startswith(b"HTTP/1.1 404 ")
    assert error["type"] == "upstream_refused" and "account" in error["message"]
