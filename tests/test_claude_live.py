"""
Claude Code's requests through the real daemon, over loopback, against a fake
Anthropic API (TLS with the test CA): credentials replaced both ways, sticky
conversations, placement by headroom, a refresh shared by concurrent
requests, a usage limit moving the conversation, overloads waited out on the
same account, and Codex and Claude conversations side by side never crossing
providers.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from tests.support.anthropic_backend import (
    FakeAnthropicBackend,
    write_anthropic_key,
    write_claude_profile,
)
from tests.support.codex_backend import FakeCodexBackend
from tests.support.daemon import Daemon, make_config, reactor, read_all, sleep, start_daemon
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream, json_response, write_oauth_account

CLIENT_TOKEN = "sk-ant-oat01-the-clients-own"
TOKENS = {"claude:alpha": "sk-ant-oat01-alpha", "claude:beta": "sk-ant-oat01-beta"}


@pytest_twisted.async_yield_fixture
async def backend(ca: TestCA) -> AsyncIterator[FakeAnthropicBackend]:
    fake = FakeAnthropicBackend(reactor, ca=ca)
    await fake.start()
    yield fake
    await fake.stop()


def store(tmp_path: Path) -> Path:
    return tmp_path / "accounts-store"


def profiles(tmp_path: Path, **expiry: float) -> None:
    for account_id, token in TOKENS.items():
        name = account_id.removeprefix("claude:")
        write_claude_profile(store(tmp_path), name, token, refresh=f"rt-{name}",
                             expires_at=expiry.get(name))


async def daemon_for(tmp_path: Path, ca: TestCA, backend: FakeAnthropicBackend, count: int,
                     **overrides: Any) -> Daemon:
    settings: dict[str, Any] = {
        "anthropic_upstream": backend.base_url,
        "anthropic_token_url": backend.token_url,
        "anthropic_usage_url": backend.usage_url,
    }
    settings.update(overrides)
    running = await start_daemon(make_config(tmp_path, None, ca, **settings))
    await running.wait_for_accounts(count)
    return running


def claude_headers(session: str, **extra: str) -> dict[str, list[str]]:
    """What Claude Code sends in OAuth mode (claude-code.md)."""
    headers = {
        "user-agent": "claude-cli/2.1.332 (external, sdk-cli)",
        "x-app": "cli",
        "x-claude-code-session-id": session,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,oauth-2025-04-20,interleaved-thinking-2025-05-14",
        "authorization": f"Bearer {CLIENT_TOKEN}",
        "content-type": "application/json",
    }
    headers.update(extra)
    return {k: [v] for k, v in headers.items()}


async def turn(daemon: Daemon, session: str, *, stream: bool = True,
               **extra: str) -> tuple[int, bytes]:
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": stream,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    response = await daemon.request("POST", "/v1/messages?beta=true",
                                    headers=claude_headers(session, **extra), data=body)
    return response.code, await read_all(response)


def text_of(body: bytes) -> str:
    """The assistant's text in a streamed answer."""
    text = ""
    for line in body.split(b"\n"):
        if line.startswith(b"data:"):
            event = json.loads(line[5:])
            if event.get("type") == "content_block_delta":
                text += event["delta"].get("text", "")
    return text


def account_of(backend: FakeAnthropicBackend, request_index: int = -1) -> str:
    token = backend.messages()[request_index].credential
    return {v: k for k, v in TOKENS.items()}.get(token or "", token or "")


@pytest_twisted.ensureDeferred
async def test_a_subscription_turn_goes_out_with_the_profiles_credentials(
    tmp_path: Path, ca: TestCA, backend: FakeAnthropicBackend
) -> None:
    profiles(tmp_path)
    daemon = await daemon_for(tmp_path, ca, backend, 2, transcripts=str(tmp_path / "tr"))
    try:
        status, body = await turn(daemon, "s-1", **{"x-api-key": "sk-ant-api03-client"})
        assert status == 200
        assert b"event: message_stop" in body and text_of(body) == "hello from fake claude"
        (seen,) = backend.messages()
        assert seen.query == "beta=true"
        assert seen.bearer in TOKENS.values() and seen.api_key is None
        assert seen.header("anthropic-beta") == (
            "claude-code-20250219,oauth-2025-04-20,interleaved-thinking-2025-05-14")
        assert seen.header("x-claude-code-session-id") == "s-1"
        assert CLIENT_TOKEN not in json.dumps(seen.headers)
        # the unified headers fed the usage book
        listing = await daemon.get_json("/_subrouter/accounts")
        row = next(r for r in listing["accounts"] if r["id"] == account_of(backend))
        assert row["provider"] == "anthropic" and row["usage_source"] == "headers"
        assert {w["name"] for w in row["windows"]} == {"five_hour", "seven_day"}
    finally:
        await daemon.stop()
    # the transcript holds the exchange, Subrouter's credentials redacted
    (transcript,) = (tmp_path / "tr").glob("by-agent/claude/by-session/*.jsonl")
    text = transcript.read_text()
    assert "message_stop" in text or "bWVzc2FnZV9zdG9w" in text
    assert "sk-ant-oat01-alpha" not in text and "sk-ant-oat01-beta" not in text


@pytest_twisted.ensureDeferred
async def test_an_anthropic_key_goes_in_x_api_key_without_the_oauth_flag(
    tmp_path: Path, ca: TestCA, backend: FakeAnthropicBackend
) -> None:
    write_anthropic_key(store(tmp_path), "team", "sk-ant-api03-team")
    daemon = await daemon_for(tmp_path, ca, backend, 1)
    try:
        status, body = await turn(daemon, "s-key", stream=False)
        assert status == 200 and json.loads(body)["type"] == "message"
        (seen,) = backend.messages()
        assert seen.api_key == "sk-ant-api03-team" and seen.header("authorization") is None
        assert seen.header("anthropic-beta") == (
            "claude-code-20250219,interleaved-thinking-2025-05-14")
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_each_conversation_stays_on_its_profile(
    tmp_path: Path, ca: TestCA, backend: FakeAnthropicBackend
) -> None:
    profiles(tmp_path)
    daemon = await daemon_for(tmp_path, ca, backend, 2)
    try:
        for session in ("one", "two", "one", "two", "one"):
            status, _ = await turn(daemon, session)
            assert status == 200
        by_session: dict[str, set[str]] = {}
        for seen in backend.messages():
            by_session.setdefault(seen.header("x-claude-code-session-id") or "", set()).add(
                seen.credential or "")
        assert all(len(tokens) == 1 for tokens in by_session.values()), by_session
        sessions = await daemon.get_json("/_subrouter/sessions")
        assert sorted((s["agent"], s["session"]) for s in sessions) == [
            ("claude", "one"), ("claude", "two")]
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_new_conversations_go_where_the_headroom_is(
    tmp_path: Path, ca: TestCA, backend: FakeAnthropicBackend
) -> None:
    profiles(tmp_path)
    backend.utilization = {TOKENS["claude:alpha"]: (0.85, 0.3),
                           TOKENS["claude:beta"]: (0.2, 0.1)}
    daemon = await daemon_for(tmp_path, ca, backend, 2, fetch_usage=True)
    try:
        deadline = time.monotonic() + 5
        while True:  # the first poll (at start) reads the OAuth usage endpoint
            rows = (await daemon.get_json("/_subrouter/accounts"))["accounts"]
            if all(r["usage_source"] == "poll" for r in rows):
                break
            assert time.monotonic() < deadline
            await sleep(0.02)
        polls = [r for r in backend.requests if r.path == "/api/oauth/usage"]
        assert {r.bearer for r in polls} == set(TOKENS.values())
        assert all(r.header("anthropic-beta") == "oauth-2025-04-20" for r in polls)
        for i in range(3):
            assert (await turn(daemon, f"new-{i}"))[0] == 200
            assert account_of(backend) == "claude:beta"
        # beta's answers now say it is nearly spent: the next one goes to alpha
        backend.utilization[TOKENS["claude:beta"]] = (0.95, 0.1)
        assert (await turn(daemon, "new-2"))[0] == 200  # sticky, and it learns
        assert (await turn(daemon, "new-3"))[0] == 200
        assert account_of(backend) == "claude:alpha"
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_share_one_refresh_of_an_expiring_profile(
    tmp_path: Path, ca: TestCA, backend: FakeAnthropicBackend
) -> None:
    write_claude_profile(store(tmp_path), "alpha", TOKENS["claude:alpha"], refresh="rt-alpha",
                         expires_at=time.time() + 20)
    daemon = await daemon_for(tmp_path, ca, backend, 1)
    try:
        backend.token_gate = Deferred()
        turns = [Deferred.fromCoroutine(turn(daemon, f"c-{i}")) for i in range(3)]
        deadline = time.monotonic() + 5
        while not backend.refreshes:
            assert time.monotonic() < deadline
            await sleep(0.02)
        await sleep(0.2)
        gate, backend.token_gate = backend.token_gate, None
        gate.callback(None)
        results = await gatherResults(turns)
        assert [status for status, _ in results] == [200, 200, 200]
        assert backend.refreshes == ["rt-alpha"]
        credentials = json.loads(
            (store(tmp_path) / "claude" / "alpha" / ".credentials.json").read_text())
        new = credentials["claudeAiOauth"]["accessToken"]
        assert new != TOKENS["claude:alpha"] and credentials["someOtherTool"] == {"kept": True}
        assert backend.message_credentials() == [new, new, new]
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_rejected_refresh_leaves_the_profile_out_with_the_reason(
    tmp_path: Path, ca: TestCA, backend: FakeAnthropicBackend
) -> None:
    profiles(tmp_path, alpha=time.time() + 20)
    backend.reject_refresh = {"rt-alpha"}
    daemon = await daemon_for(tmp_path, ca, backend, 2)
    try:
        for i in range(3):
            status, _ = await turn(daemon, f"r-{i}")
            assert status == 200
        assert set(backend.message_credentials()) == {TOKENS["claude:beta"]}
        rows = {r["id"]: r for r in (await daemon.get_json("/_subrouter/accounts"))["accounts"]}
        assert not rows["claude:alpha"]["usable"]
        assert "cx claude add" in rows["claude:alpha"]["why_not"]
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_usage_limit_replays_the_turn_on_the_next_profile(
    tmp_path: Path, ca: TestCA, backend: FakeAnthropicBackend
) -> None:
    profiles(tmp_path)
    daemon = await daemon_for(tmp_path, ca, backend, 2)
    try:
        assert (await turn(daemon, "moving"))[0] == 200
        first = account_of(backend)
        backend.usage_limit_for = {TOKENS[first]}
        status, body = await turn(daemon, "moving")
        assert status == 200 and text_of(body) == "hello from fake claude"
        assert [account_of(backend, i) for i in (-2, -1)] == [
            first, next(a for a in TOKENS if a != first)]
        assert backend.messages()[-2].status == 429
        sessions = await daemon.get_json("/_subrouter/sessions")
        assert [s["account"] for s in sessions] == [account_of(backend)]
        rows = {r["id"]: r for r in (await daemon.get_json("/_subrouter/accounts"))["accounts"]}
        until = rows[first]["exhausted_until"]
        assert until is not None and abs(until - (time.time() + 3600)) < 60
        # with every profile out, the client gets the upstream's own 429
        backend.usage_limit_for = set(TOKENS.values())
        status, body = await turn(daemon, "moving")
        assert status == 429 and b"rate_limit_error" in body
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_an_overload_is_waited_out_on_the_same_profile(
    tmp_path: Path, ca: TestCA, backend: FakeAnthropicBackend
) -> None:
    profiles(tmp_path)
    daemon = await daemon_for(tmp_path, ca, backend, 2, overload_wait=5.0)
    try:
        assert (await turn(daemon, "busy"))[0] == 200
        used = account_of(backend)
        backend.overload_next, backend.overload_retry_after = 2, 0
        started = time.monotonic()
        status, body = await turn(daemon, "busy")
        assert status == 200 and text_of(body) == "hello from fake claude"
        assert time.monotonic() - started >= 1.0  # two pauses of at least 0.5 s
        assert [account_of(backend, i) for i in (-3, -2, -1)] == [used] * 3
        assert [r.status for r in backend.messages()[-3:]] == [529, 529, 200]
        waits = [e for e in daemon.log if "is overloaded" in str(e.get("log_format", ""))]
        assert len(waits) == 2 and waits[0]["account"] == used
        rows = (await daemon.get_json("/_subrouter/accounts"))["accounts"]
        assert all(r["exhausted_until"] is None for r in rows)
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_after_the_overload_budget_the_client_gets_the_upstreams_error(
    tmp_path: Path, ca: TestCA, backend: FakeAnthropicBackend
) -> None:
    profiles(tmp_path)
    daemon = await daemon_for(tmp_path, ca, backend, 2, overload_wait=1.0)
    try:
        backend.overload_next, backend.overload_retry_after = 100, 0
        status, body = await turn(daemon, "busy")
        assert status == 529 and json.loads(body)["error"]["type"] == "overloaded_error"
        assert len(backend.messages()) == 3  # the first try and two after 0.5 s pauses
        assert len({r.credential for r in backend.messages()}) == 1
        rows = (await daemon.get_json("/_subrouter/accounts"))["accounts"]
        assert all(r["exhausted_until"] is None for r in rows)
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_codex_and_claude_side_by_side_never_cross(
    tmp_path: Path, ca: TestCA, backend: FakeAnthropicBackend
) -> None:
    codex = FakeCodexBackend(reactor, ca=ca)
    await codex.start()
    write_oauth_account(store(tmp_path), "c@example.com", exp=time.time() + 86400,
                        account_id="ws-c")
    write_claude_profile(store(tmp_path), "alpha", TOKENS["claude:alpha"])
    daemon = await daemon_for(tmp_path, ca, backend, 2, codex_upstream=codex.codex_url)
    try:
        results: list[Any] = await gatherResults([
            Deferred.fromCoroutine(turn(daemon, f"claude-{i}")) for i in range(3)
        ] + [
            Deferred.fromCoroutine(codex_turn(daemon, f"codex-{i}")) for i in range(3)
        ])
        assert [status for status, _ in results] == [200] * 6
        assert set(backend.message_credentials()) == {TOKENS["claude:alpha"]}
        assert {r.header("chatgpt-account-id") for r in codex.requests} == {"ws-c"}
        assert all("sk-ant" not in (r.header("authorization") or "") for r in codex.requests)
        sessions = {s["session"]: s["account"] for s in await daemon.get_json(
            "/_subrouter/sessions")}
        assert {k: v for k, v in sessions.items() if k.startswith("claude")} == {
            f"claude-{i}": "claude:alpha" for i in range(3)}
        assert {k: v for k, v in sessions.items() if k.startswith("codex")} == {
            f"codex-{i}": "c@example.com" for i in range(3)}
    finally:
        await daemon.stop()
        await codex.stop()


async def codex_turn(daemon: Daemon, session: str) -> tuple[int, bytes]:
    body = json.dumps({"model": "gpt-5-codex", "input": [], "stream": True}).encode()
    response = await daemon.request("POST", "/v1/responses", data=body, headers={
        "session-id": [session], "content-type": ["application/json"],
        "authorization": ["Bearer client-own"]})
    return response.code, await read_all(response)


@pytest_twisted.ensureDeferred
async def test_an_agent_with_no_account_of_its_kind_gets_a_clear_503(
    tmp_path: Path, ca: TestCA, backend: FakeAnthropicBackend
) -> None:
    write_oauth_account(store(tmp_path), "c@example.com", exp=time.time() + 86400)
    daemon = await daemon_for(tmp_path, ca, backend, 1)
    try:
        status, body = await turn(daemon, "lonely")
        assert status == 503
        message = json.loads(body)["error"]["message"]
        assert message == ("no Claude profile or Anthropic key: run `cx claude add` or "
                           "`cx add-key --provider anthropic`")
        assert backend.messages() == []
        # forcing the Codex login on a Claude conversation is refused too
        status, body = await turn(daemon, "lonely", **{"x-subrouter-account-id": "c@example.com"})
        assert status == 503 and "cannot use" in json.loads(body)["error"]["message"]
    finally:
        await daemon.stop()
    write_claude_profile(store(tmp_path), "alpha", TOKENS["claude:alpha"])
    (store(tmp_path) / "accounts" / "c@example.com.json").unlink()
    daemon = await daemon_for(tmp_path, ca, backend, 1)
    try:
        status, body = await codex_turn(daemon, "codex-lonely")
        assert status == 503 and "cx add" in json.loads(body)["error"]["message"]
        assert backend.messages() == []
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_codex_at_capacity_is_waited_out_on_the_same_login(
    tmp_path: Path, ca: TestCA, upstream: FakeUpstream
) -> None:
    for email in ("a@example.com", "b@example.com"):
        write_oauth_account(store(tmp_path), email, exp=time.time() + 86400, account_id=email)
    capacity = {"error": {"type": "server_is_overloaded",
                          "message": "Selected model is at capacity. Please try a different "
                                     "model."}}
    answers = [json_response(503, capacity, headers={b"retry-after": b"1"}),
               json_response(200, {"ok": 1})]

    async def handler(exchange: Any) -> None:
        await answers.pop(0)(exchange)

    upstream.script(b"/backend-api/codex/responses", handler)
    running = await start_daemon(make_config(tmp_path, upstream, ca, overload_wait=5.0))
    try:
        await running.wait_for_accounts(2)
        started = time.monotonic()
        status, body = await codex_turn(running, "busy")
        assert status == 200 and json.loads(body) == {"ok": 1}
        assert time.monotonic() - started >= 1.0  # the Retry-After was honoured
        turns = [r for r in upstream.requests if r.path == b"/backend-api/codex/responses"]
        assert len(turns) == 2
        assert len({r.header(b"chatgpt-account-id") for r in turns}) == 1
        rows = (await running.get_json("/_subrouter/accounts"))["accounts"]
        assert all(r["exhausted_until"] is None for r in rows)
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_claude_turns_are_counted_in_the_token_ledger(
    tmp_path: Path, ca: TestCA, backend: FakeAnthropicBackend
) -> None:
    profiles(tmp_path)
    daemon = await daemon_for(tmp_path, ca, backend, 2)
    try:
        assert (await turn(daemon, "s-led"))[0] == 200
        assert (await turn(daemon, "s-led", stream=False))[0] == 200
        deadline = time.monotonic() + 5
        while True:
            usage = await daemon.get_json("/_subrouter/token-usage?since=1h&by=agent,provider")
            if usage["totals"]["requests"] >= 2 or time.monotonic() > deadline:
                break
            await sleep(0.05)
        totals = usage["totals"]
        # per answer: 20 fresh + 1000 read from the cache + 300 written to it; 7 out
        assert totals["requests"] == 2
        assert totals["input_tokens"] == 2 * 1320 and totals["cached_input_tokens"] == 2000
        assert totals["cache_write_tokens"] == 600 and totals["output_tokens"] == 14
        assert usage["by"]["agent"]["rows"][0]["key"] == "claude"
        assert usage["by"]["provider"]["rows"][0]["key"] == "anthropic"
    finally:
        await daemon.stop()
