"""
Token accounting and the dashboard's endpoints over real sockets: every
answer shape counted once with recording off, written within seconds, kept
across a restart (even one right after the answer), summed per conversation;
``account-status``; the dashboard's files served self-contained.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.web.http_headers import Headers

from tests.support.daemon import Daemon, make_config, read_all, sleep, start_daemon
from tests.support.tlsca import TestCA
from tests.support.upstream import (
    FakeUpstream,
    json_response,
    sse,
    write_apikey_account,
    write_oauth_account,
)

FAR = time.time() + 30 * 86400
EMAIL = "alice@example.com"


def responses_usage(inp: int, cached: int, out: int, reasoning: int = 0) -> dict[str, Any]:
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": inp + out}


def completed_stream(inp: int, cached: int, out: int, reasoning: int = 0,
                     model: str = "gpt-5-codex") -> list[str]:
    created = {"type": "response.created", "response": {"id": "r", "usage": None,
                                                        "instructions": "be brief " * 200}}
    deltas = [{"type": "response.output_text.delta", "delta": 'the "usage": {} key'}] * 3
    done = {"type": "response.completed", "response": {
        "id": "r", "model": model, "usage": responses_usage(inp, cached, out, reasoning)}}
    return [json.dumps(e) for e in (created, *deltas, done)]


async def started(tmp_path: Path, upstream: FakeUpstream, ca: TestCA, **kw: Any) -> Daemon:
    daemon = await start_daemon(make_config(tmp_path, upstream, ca, **kw))
    deadline = time.monotonic() + 5
    while not (await daemon.get_json("/_subrouter/accounts"))["accounts"]:
        assert time.monotonic() < deadline
        await sleep(0.02)
    return daemon


async def post(daemon: Daemon, path: str, session: str, body: bytes = b'{"model":"x"}',
               **headers: str) -> int:
    response = await daemon.request(
        "POST", path, data=body,
        headers=Headers({b"session-id": [session.encode()],
                         **{k.replace("_", "-").encode(): [v.encode()]
                            for k, v in headers.items()}}))
    await read_all(response)
    return int(response.code)


async def usage_when(daemon: Daemon, requests: int, query: str = "since=1h") -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        usage: dict[str, Any] = await daemon.get_json("/_subrouter/token-usage?" + query)
        if usage["totals"]["requests"] >= requests or time.monotonic() > deadline:
            return usage
        await sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_every_answer_shape_is_counted_once_with_recording_off(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    write_oauth_account(tmp_path / "accounts-store", EMAIL, exp=FAR)
    write_apikey_account(tmp_path / "accounts-store", "team", "sk-test-key-0000000000")
    daemon = await started(tmp_path, upstream, ca)
    try:
        upstream.script(b"/backend-api/codex/responses", sse(completed_stream(1000, 800, 50, 20)))
        upstream.script(b"/v1/chat/completions", sse([
            json.dumps({"model": "gpt-4o", "choices": [{"delta": {"content": "hi"}}],
                        "usage": None}),
            json.dumps({"model": "gpt-4o", "choices": [], "usage": {
                "prompt_tokens": 40, "completion_tokens": 8, "total_tokens": 48,
                "prompt_tokens_details": {"cached_tokens": 0}}}),
            "[DONE]"]))
        upstream.script(b"/v1/embeddings", json_response(400, {"error": {"message": "no"}}))
        assert await post(daemon, "/v1/responses", "conv-sse", X_Subrouter_User_Email=EMAIL) \
            == 200
        # a pretty-printed whole JSON answer
        upstream.script(b"/backend-api/codex/responses", json_response(200, {
            "id": "r2", "model": "gpt-5-codex", "usage": responses_usage(300, 0, 30)}))
        assert await post(daemon, "/v1/responses", "conv-json") == 200
        assert await post(daemon, "/v1/chat/completions", "conv-chat",
                          X_Subrouter_Account_ID="team") == 200
        assert await post(daemon, "/v1/embeddings", "conv-err",
                          X_Subrouter_Account_ID="team") == 400
        models = await daemon.request("GET", "/v1/models")
        await read_all(models)
        usage = await usage_when(daemon, 3, "since=1h&by=user,account,model,agent,conversation")
        totals = usage["totals"]
        assert totals["requests"] == 3
        assert totals["input_tokens"] == 1340 and totals["cached_input_tokens"] == 800
        assert totals["output_tokens"] == 88 and totals["reasoning_tokens"] == 20
        assert totals["total_tokens"] == 1428
        assert totals["cache_hit_ratio"] == round(800 / 1340, 4)
        by = {name: {r["key"]: r["usage"]["total_tokens"] for r in group["rows"]}
              for name, group in usage["by"].items()}
        assert by["model"] == {"gpt-5-codex": 1380, "gpt-4o": 48}
        assert by["account"] == {EMAIL: 1380, "apikey:team": 48}
        assert by["user"] == {EMAIL: 1050, None: 378}
        assert by["agent"] == {"codex": 1428}
        assert set(by["conversation"]) == {"codex/conv-sse", "codex/conv-json",
                                           "codex/conv-chat"}
        assert sum(b["usage"]["requests"] for b in usage["buckets"]) == 3
        assert not (tmp_path / "tx").exists()  # recording was off all along
        listing = await daemon.get_json("/_subrouter/conversations")
        assert listing["recording"] is False
        rows = {c["session"]: c for c in listing["conversations"]}
        assert rows["conv-sse"]["usage"]["cache_hit_ratio"] == 0.8
        assert rows["conv-sse"]["account"] == EMAIL and rows["conv-sse"]["live"] is True
        assert rows["conv-sse"]["transcript"] is None
        # conv-err was placed but spent nothing: listed, without usage
        assert rows["conv-err"]["usage"] is None
        bad = await daemon.request("GET", "/_subrouter/token-usage?bucket=fortnight")
        assert bad.code == 400
        assert "bucket" in json.loads(await read_all(bad))["error"]["message"]
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_usage_written_just_before_a_shutdown_is_there_after_the_restart(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    write_oauth_account(tmp_path / "accounts-store", EMAIL, exp=FAR)
    daemon = await started(tmp_path, upstream, ca, transcripts=str(tmp_path / "tx"))
    upstream.script(b"/backend-api/codex/responses", sse(completed_stream(500, 100, 10)))
    try:
        assert await post(daemon, "/v1/responses", "conv-1") == 200
    finally:
        await daemon.stop()  # at once: the ledger's batch had not been written yet
    again = await started(tmp_path, upstream, ca, transcripts=str(tmp_path / "tx"))
    try:
        usage = await again.get_json("/_subrouter/token-usage?since=1h")
        assert usage["totals"]["requests"] == 1 and usage["totals"]["total_tokens"] == 510
        listing = await again.get_json("/_subrouter/conversations")
        (row,) = [c for c in listing["conversations"] if c["session"] == "conv-1"]
        assert row["transcript"] == {"events": "/_subrouter/transcripts/codex/conv-1",
                                     "raw": "/_subrouter/transcripts/codex/conv-1/raw"}
        transcripts = await again.get_json("/_subrouter/transcripts")
        assert transcripts["sessions"][0]["usage"]["total_tokens"] == 510
    finally:
        await again.stop()


@pytest_twisted.ensureDeferred
async def test_account_status_refreshes_expired_tokens_and_post_forces_all(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    store = tmp_path / "accounts-store"
    write_oauth_account(store, "old@example.com", exp=time.time() + 10, refresh_token="rt-old")
    write_oauth_account(store, "new@example.com", exp=FAR, refresh_token="rt-new")
    write_apikey_account(store, "team", "sk-test-key-0000000000")
    upstream.refresh_emails.update({"rt-old": "old@example.com", "rt-new": "new@example.com"})
    daemon = await started(tmp_path, upstream, ca)
    try:
        status = {a["id"]: a for a in
                  (await daemon.get_json("/_subrouter/account-status"))["accounts"]}
        assert status["old@example.com"]["refreshed"] is True
        assert status["old@example.com"]["auth_valid"] is True
        assert status["new@example.com"]["refreshed"] is False
        assert status["apikey:team"]["auth_checked"] is False
        assert len(upstream.token_requests) == 1
        response = await daemon.request("POST", "/_subrouter/account-status")
        forced = {a["id"]: a for a in json.loads(await read_all(response))["accounts"]}
        assert forced["old@example.com"]["refreshed"] and forced["new@example.com"]["refreshed"]
        assert len(upstream.token_requests) == 3
        text = json.dumps(forced)
        assert "rt-" not in text and "eyJ" not in text  # no token in the answer
        response = await daemon.request("DELETE", "/_subrouter/account-status")
        assert response.code == 405
        await read_all(response)
    finally:
        await daemon.stop()


@pytest_twisted.async_yield_fixture
async def daemon(tmp_path: Path, upstream: FakeUpstream, ca: TestCA) -> AsyncIterator[Daemon]:
    """
    A daemon with one ChatGPT login, started and seen.
    """
    write_oauth_account(tmp_path / "accounts-store", EMAIL, exp=FAR)
    running = await started(tmp_path, upstream, ca)
    yield running
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_the_dashboard_is_self_contained_and_locked_down(daemon: Daemon) -> None:
    response = await daemon.request("GET", "/_subrouter/dashboard")
    html = (await read_all(response)).decode()
    assert response.code == 200
    headers = response.headers
    assert headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    policy = headers.getRawHeaders(b"content-security-policy")[0].decode()
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "connect-src 'self'" in policy
    total = len(html)
    for name in ("dashboard.js", "dashboard.css"):
        part = await daemon.request("GET", "/_subrouter/" + name)
        text = (await read_all(part)).decode()
        assert part.code == 200
        total += len(text)
        # nothing from elsewhere: no absolute URL, no font or script host
        assert not re.search(r"(?:src|href|url)\s*[=(]\s*['\"]?(?:https?:)?//", text)
        assert "innerHTML" not in text
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html)
    assert total < 64 * 1024


@pytest_twisted.ensureDeferred
async def test_every_admin_endpoint_refuses_other_methods_with_a_json_405(
    daemon: Daemon,
) -> None:
    paths = ["/_subrouter/transcripts", "/_subrouter/transcripts/codex/s1",
             "/_subrouter/accounts", "/_subrouter/token-usage", "/_subrouter/account-status"]
    for path in paths:
        for method in ("PUT", "DELETE", "PATCH", "FOO"):
            response = await daemon.request(method, path)
            assert response.code == 405, (method, path)
            assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
            assert response.headers.getRawHeaders(b"allow")
            error = json.loads(await read_all(response))["error"]
            assert error == {"type": "method_not_allowed",
                             "message": f"{method} is not allowed here"}
