"""
The fake Codex backend against the real Codex CLI, with no proxy between
them: proof that the CLI accepts the backend's turns over the WebSocket and
over SSE, carries a conversation across two processes, and reports the
backend's usage-limit error as an error. Later end-to-end tests put the proxy
in the middle and rely on exactly this.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint

from tests.support.codex_backend import BackendRequest, FakeCodexBackend, turn_events
from tests.support.codex_cli import (
    CodexResult,
    builtin_provider_args,
    custom_provider_args,
    run_codex,
    write_codex_home,
)
from tests.support.daemon import reactor
from tests.support.tlsca import TestCA
from tests.support.upstream import decode_jwt

EMAIL = "dev@example.com"
ACCOUNT = "acct-cli"
REPLY = "pong from the fake backend"


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    (tmp_path / "ca").mkdir()
    return TestCA(tmp_path / "ca")


@pytest_twisted.async_yield_fixture
async def backend(ca: TestCA) -> AsyncIterator[FakeCodexBackend]:
    # TLS: the CLI's built-in ChatGPT provider only routes to HTTPS origins
    fake = FakeCodexBackend(reactor, ca=ca, reply_text=REPLY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest_twisted.async_yield_fixture
async def plain_backend() -> AsyncIterator[FakeCodexBackend]:
    fake = FakeCodexBackend(reactor, reply_text=REPLY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def codex_home(tmp_path: Path) -> Path:
    home = tmp_path / "codex-home"
    write_codex_home(home, email=EMAIL, account_id=ACCOUNT)
    return home


async def codex_exec(
    backend: FakeCodexBackend, codex_home: Path, *args: str, provider: list[str] | None = None
) -> CodexResult:
    """``codex exec`` against ``backend`` (the built-in provider unless given)."""
    work = codex_home.parent / "work"
    work.mkdir(exist_ok=True)
    env = {"CODEX_CA_CERTIFICATE": backend.ca_pem_path} if backend.ca_pem_path else {}
    config = builtin_provider_args(backend.codex_url) if provider is None else provider
    return await run_codex(
        ["exec", "--skip-git-repo-check", *config, *args],
        codex_home=codex_home,
        cwd=work,
        env=env,
        timeout=20,
    )


def assert_signed_in(request: BackendRequest) -> None:
    """The request carries the written home's ChatGPT credentials."""
    scheme, _, token = (request.header("authorization") or "").partition(" ")
    assert scheme == "Bearer"
    claims = decode_jwt(token)
    assert claims["https://api.openai.com/profile"]["email"] == EMAIL
    assert claims["https://api.openai.com/auth"]["chatgpt_account_id"] == ACCOUNT
    assert request.header("chatgpt-account-id") == ACCOUNT
    assert request.header("originator") == "codex_exec"


def sockets(backend: FakeCodexBackend) -> list[BackendRequest]:
    return backend.requests_to("/responses", transport="websocket")


def posts(backend: FakeCodexBackend) -> list[BackendRequest]:
    return [r for r in backend.requests_to("/responses", transport="http") if r.method == "POST"]


@pytest_twisted.ensureDeferred
async def test_a_turn_over_the_websocket_completes_and_prints_the_reply(
    backend: FakeCodexBackend, codex_home: Path
) -> None:
    result = await codex_exec(backend, codex_home, "say hi")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == REPLY, result.output
    [socket] = sockets(backend)
    assert socket.status == 101
    assert (socket.header("openai-beta") or "").startswith("responses_websockets=")
    assert socket.header("session-id")
    assert_signed_in(socket)
    # a prewarm first ("generate": false), then the turn, on one connection
    [prewarm] = [t for t in socket.turns(prewarm=True) if t.get("generate") is False]
    assert prewarm["input"] == []
    [(transport, turn)] = backend.turns()
    assert transport == "websocket"
    assert turn["type"] == "response.create"
    assert any(
        item.get("role") == "user" and "say hi" in str(item.get("content"))
        for item in turn["input"]
    )
    assert posts(backend) == []
    assert all(account == ACCOUNT for _, account in backend.credentials)


@pytest_twisted.ensureDeferred
async def test_a_custom_provider_speaks_plain_ws_with_the_chatgpt_credentials(
    plain_backend: FakeCodexBackend, codex_home: Path
) -> None:
    provider = custom_provider_args(plain_backend.codex_url)
    result = await codex_exec(plain_backend, codex_home, "say hi", provider=provider)

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == REPLY, result.output
    [socket] = sockets(plain_backend)
    assert_signed_in(socket)
    assert [transport for transport, _ in plain_backend.turns()] == ["websocket"]


@pytest_twisted.ensureDeferred
async def test_a_refused_websocket_falls_back_to_sse_at_once(
    backend: FakeCodexBackend, codex_home: Path
) -> None:
    backend.refuse_websocket = True  # with 426 Upgrade Required
    started = time.monotonic()
    result = await codex_exec(backend, codex_home, "say hi")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == REPLY, result.output
    assert [s.status for s in sockets(backend)] == [426]  # no retries after a 426
    [post] = posts(backend)
    assert post.status == 200
    assert post.header("accept") == "text/event-stream"
    assert post.header("session-id") == sockets(backend)[0].header("session-id")
    assert_signed_in(post)
    assert [transport for transport, _ in backend.turns()] == ["http"]
    assert post.json()["stream"] is True
    assert time.monotonic() - started < 10


@pytest_twisted.ensureDeferred
async def test_a_resumed_conversation_keeps_its_session_and_history(
    backend: FakeCodexBackend, codex_home: Path
) -> None:
    first = await codex_exec(backend, codex_home, "say hi")
    assert first.exit_code == 0, first.output
    backend.reply_text = "second reply"
    second = await codex_exec(backend, codex_home, "resume", "--last", "again")

    assert second.exit_code == 0, second.output
    assert second.stdout.strip() == "second reply", second.output
    one, two = sockets(backend)
    for name in ("session-id", "thread-id", "x-codex-window-id"):
        assert one.header(name) is not None
        assert one.header(name) == two.header(name), name
    [(_, turn_one), (_, turn_two)] = backend.turns()
    said = [(item.get("role"), str(item.get("content"))) for item in turn_two["input"]]
    assert any(role == "assistant" and REPLY in text for role, text in said)
    assert said[-1][0] == "user" and "again" in said[-1][1]
    assert len(turn_two["input"]) > len(turn_one["input"])


@pytest.mark.parametrize("refuse_websocket", [False, True], ids=["websocket", "sse"])
@pytest_twisted.ensureDeferred
async def test_a_usage_limit_is_reported_as_an_error(
    backend: FakeCodexBackend, codex_home: Path, refuse_websocket: bool
) -> None:
    backend.usage_limit_for = {ACCOUNT}
    backend.refuse_websocket = refuse_websocket
    result = await codex_exec(backend, codex_home, "say hi")

    assert result.exit_code != 0, result.output
    assert REPLY not in result.stdout
    assert "hit your usage limit" in result.stderr, result.output
    if refuse_websocket:
        assert [p.status for p in posts(backend)] == [429]
    else:
        assert posts(backend) == []
        assert all(s.status == 101 for s in sockets(backend))
        assert backend.messages_received >= 1


class _SocketClient(WebSocketClientProtocol):
    """A bare Responses WebSocket client: collects events, says when it closes."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self.opened: Deferred[None] = Deferred()
        self.closed: Deferred[bool] = Deferred()
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.events.append(json.loads(payload))
        self._fire()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed.callback(wasClean)

    def completions(self, count: int) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._waiting.append((count, waiter))
        self._fire()
        return waiter.addTimeout(5, reactor)

    def _fire(self) -> None:
        done = sum(e["type"] == "response.completed" for e in self.events)
        for count, waiter in list(self._waiting):
            if done >= count:
                self._waiting.remove((count, waiter))
                waiter.callback(None)


@pytest_twisted.ensureDeferred
async def test_one_socket_serves_several_turns_and_stop_closes_it(
    plain_backend: FakeCodexBackend,
) -> None:
    factory = WebSocketClientFactory(plain_backend.ws_url)
    factory.protocol = _SocketClient
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", plain_backend.port)
    client = await endpoint.connect(factory)
    await client.opened.addTimeout(5, reactor)
    for n in range(2):
        client.sendMessage(json.dumps({"type": "response.create", "model": f"m{n}"}).encode())
    await client.completions(2)

    types = [e["type"] for e in client.events]
    assert types == 2 * [e["type"] for e in turn_events(REPLY)]
    done = [e for e in client.events if e["type"] == "response.completed"]
    assert [e["response"]["model"] for e in done] == ["m0", "m1"]
    assert done[0]["response"]["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}
    assert plain_backend.websocket_connections == 1
    [socket] = plain_backend.requests
    assert [m["model"] for m in socket.messages] == ["m0", "m1"]

    await plain_backend.stop()  # with the socket still open
    assert await client.closed.addTimeout(5, reactor) is False
