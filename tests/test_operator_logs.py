"""
The log an operator reads: one line per request (a warning when it failed),
``-`` for no account, real byte counts, the conversation and agent, and the
pay-per-token warning once per conversation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted

from tests.support.daemon import Daemon, make_config, read_all, start_daemon
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream, json_response, write_apikey_account


@pytest_twisted.async_yield_fixture
async def daemon(tmp_path: Path, upstream: FakeUpstream, ca: TestCA) -> AsyncIterator[Daemon]:
    running = await start_daemon(make_config(tmp_path, upstream, ca))
    yield running
    await running.stop()


def _text(event: dict[str, Any]) -> str:
    from twisted.logger import formatEvent

    return formatEvent(event)


@pytest_twisted.ensureDeferred
async def test_a_failed_request_is_one_line_with_no_account_and_its_real_size(
    daemon: Daemon,
) -> None:
    before = len(daemon.log)
    response = await daemon.request("POST", "/v1/responses", data=b"{}",
                                    headers={"session-id": ["conv-1"]})
    body = await read_all(response)
    assert response.code == 503
    lines = [e for e in daemon.log[before:] if "POST /v1/responses" in _text(e)]
    assert len(lines) == 1, [_text(e) for e in lines]
    (line,) = lines
    text = _text(line)
    assert line["log_level"].name == "warn"
    assert "account=- " in text and "None" not in text
    assert f"out={len(body)}B" in text and len(body) > 0
    assert "agent=codex" in text and "conversation=" in text and "why=" in text
    assert "cx add" in text  # the error, once


@pytest_twisted.ensureDeferred
async def test_a_conversation_on_an_api_key_warns_once(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    write_apikey_account(daemon.accounts_dir, "work", "sk-work-1")
    upstream.script(b"/v1/responses", json_response(200, {"ok": True}))
    await daemon.wait_for_accounts(1)  # the rescan
    before = len(daemon.log)
    for _ in range(3):
        response = await daemon.request("POST", "/v1/responses", data=b"{}",
                                        headers={"session-id": ["conv-2"]})
        assert response.code == 200
        await read_all(response)
    warnings = [e for e in daemon.log[before:] if "pay-per-token" in _text(e)]
    assert len(warnings) == 1 and warnings[0]["log_level"].name == "warn"
    requests = [e for e in daemon.log[before:] if e.get("log_category") == "request"]
    assert len(requests) == 3
    assert all(r["log_level"].name == "info" for r in requests)
    assert json.dumps([r["account"] for r in requests]) == json.dumps(["apikey:work"] * 3)
