"""
The real Codex CLI through Subrouter: ``subrouter codex exec ...`` against a
daemon whose upstream is a fake Codex backend (HTTPS and WSS, test CA) that
speaks the Responses WebSocket and SSE.

The CLI comes from the npm registry (``.ci/run`` installs a pinned version);
without it these tests fail, saying how to install it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from tests.support.codex_backend import FakeCodexBackend
from tests.support.codex_cli import CodexResult, codex_binary, run_codex, write_codex_home
from tests.support.daemon import Daemon, make_config, reactor, sleep, start_daemon
from tests.support.tlsca import TestCA
from tests.support.upstream import decode_jwt, write_oauth_account

FAR = time.time() + 30 * 86400
SUBROUTER = os.path.join(os.path.dirname(sys.executable), "subrouter")
ACCOUNTS = {"alice@example.com": "ws-alice", "bob@example.com": "ws-bob"}


@pytest_twisted.async_yield_fixture
async def backend(ca: TestCA) -> AsyncIterator[FakeCodexBackend]:
    fake = FakeCodexBackend(reactor, ca=ca)
    await fake.start()
    yield fake
    await fake.stop()


@pytest_twisted.async_yield_fixture
async def daemon(tmp_path: Path, backend: FakeCodexBackend, ca: TestCA) -> AsyncIterator[Daemon]:
    codex_binary()  # fail at once, with instructions, when the CLI is missing
    for email, workspace in ACCOUNTS.items():
        write_oauth_account(tmp_path / "accounts-store", email, exp=FAR, account_id=workspace)
    running = await start_daemon(
        make_config(tmp_path, None, ca, codex_upstream=backend.codex_url,
                    openai_upstream=backend.base_url)
    )
    await running.wait_for_accounts(len(ACCOUNTS))
    yield running
    await running.stop()


async def codex(
    tmp_path: Path, daemon: Daemon, backend: FakeCodexBackend, ca: TestCA, *args: str,
    home: str = "home", env: dict[str, str] | None = None,
) -> CodexResult:
    codex_home = tmp_path / home / ".codex"
    if not (codex_home / "auth.json").exists():
        # the CLI's own login: Subrouter must replace it upstream
        write_codex_home(codex_home, email="client@example.com", account_id="client-ws")
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    subcommand, rest = args[0], list(args[1:])
    return await run_codex(
        ["codex", subcommand, "--skip-git-repo-check", "-c",
         f'chatgpt_base_url="{backend.chatgpt_url}"', *rest],
        executable=SUBROUTER,
        codex_home=codex_home,
        cwd=work,
        env={
            "SUBROUTER_CODEX_BIN": codex_binary(),
            "SUBROUTER_CODEX_BASE_URL": f"http://127.0.0.1:{daemon.port}/v1",
            "CODEX_CA_CERTIFICATE": ca.ca_pem_path,
            **(env or {}),
        },
        timeout=60,
    )


def turn_accounts(backend: FakeCodexBackend) -> list[str]:
    """The ChatGPT-Account-ID of every real turn the backend answered."""
    found = []
    for request in backend.requests:
        if request.path.endswith("/responses") and request.turns(prewarm=False):
            found.append(request.header("chatgpt-account-id") or "")
    return found


def assert_credentials_are_the_accounts(backend: FakeCodexBackend) -> None:
    # what came through Subrouter (the CLI's side calls to chatgpt_base_url,
    # such as the accounts check, go to the backend directly)
    proxied = [r for r in backend.requests if r.path.startswith("/backend-api/codex/")]
    assert proxied, "nothing reached the backend through Subrouter"
    for request in proxied:
        authorization = request.header("authorization")
        workspace = request.header("chatgpt-account-id")
        assert workspace in ACCOUNTS.values(), workspace
        token = (authorization or "").removeprefix("Bearer ")
        claims = decode_jwt(token)
        email = claims["https://api.openai.com/profile"]["email"]
        assert ACCOUNTS[email] == workspace
        assert email != "client@example.com"


@pytest_twisted.ensureDeferred
async def test_a_turn_over_the_websocket(
    tmp_path: Path, daemon: Daemon, backend: FakeCodexBackend, ca: TestCA
) -> None:
    result = await codex(tmp_path, daemon, backend, ca, "exec", "say hi")
    assert result.exit_code == 0, result.output
    assert "hello from fake codex" in result.stdout
    assert backend.websocket_connections >= 1
    assert backend.http_posts == 0
    assert_credentials_are_the_accounts(backend)


@pytest_twisted.ensureDeferred
async def test_the_same_turn_falls_back_to_sse_when_websockets_are_refused(
    tmp_path: Path, daemon: Daemon, backend: FakeCodexBackend, ca: TestCA
) -> None:
    backend.refuse_websocket = True
    result = await codex(tmp_path, daemon, backend, ca, "exec", "say hi")
    assert result.exit_code == 0, result.output
    assert "hello from fake codex" in result.stdout
    assert backend.http_posts >= 1
    assert_credentials_are_the_accounts(backend)


@pytest_twisted.ensureDeferred
async def test_a_multi_turn_conversation_stays_on_one_account(
    tmp_path: Path, daemon: Daemon, backend: FakeCodexBackend, ca: TestCA
) -> None:
    first = await codex(tmp_path, daemon, backend, ca, "exec", "first turn")
    assert first.exit_code == 0, first.output
    second = await codex(tmp_path, daemon, backend, ca, "exec", "resume", "--last", "again")
    assert second.exit_code == 0, second.output
    accounts = turn_accounts(backend)
    assert len(accounts) >= 2 and len(set(accounts)) == 1, accounts
    # the CLI's model-list request names no conversation: it has a fallback key
    sessions = [s for s in await daemon.get_json("/_subrouter/sessions") if not s["fallback"]]
    assert len(sessions) == 1 and sessions[0]["requests"] >= 2


@pytest_twisted.ensureDeferred
async def test_two_concurrent_conversations_go_to_different_accounts(
    tmp_path: Path, daemon: Daemon, backend: FakeCodexBackend, ca: TestCA
) -> None:
    results: list[Any] = await gatherResults([
        Deferred.fromCoroutine(
            codex(tmp_path, daemon, backend, ca, "exec", f"task {i}", home=f"home{i}")
        )
        for i in range(2)
    ])
    for result in results:
        assert result.exit_code == 0, result.output
    assert sorted(set(turn_accounts(backend))) == sorted(ACCOUNTS.values())
    sessions = [s for s in await daemon.get_json("/_subrouter/sessions") if not s["fallback"]]
    assert sorted(row["account"] for row in sessions) == sorted(ACCOUNTS)


@pytest_twisted.ensureDeferred
async def test_a_usage_limit_on_one_account_moves_the_conversation(
    tmp_path: Path, daemon: Daemon, backend: FakeCodexBackend, ca: TestCA
) -> None:
    first = await codex(tmp_path, daemon, backend, ca, "exec", "first turn")
    assert first.exit_code == 0, first.output
    (used,) = set(turn_accounts(backend))
    backend.usage_limit_for = {used}
    second = await codex(tmp_path, daemon, backend, ca, "exec", "resume", "--last", "again")
    assert second.exit_code == 0, second.output
    assert "hello from fake codex" in second.stdout
    assert turn_accounts(backend)[-1] != used
    listing = await daemon.get_json("/_subrouter/accounts")
    exhausted = [row["id"] for row in listing["accounts"] if row["exhausted_until"]]
    assert [ACCOUNTS[e] for e in exhausted] == [used]


@pytest_twisted.ensureDeferred
async def test_a_shared_server_takes_the_client_token_from_subrouter_token(
    tmp_path: Path, backend: FakeCodexBackend, ca: TestCA
) -> None:
    from subrouter.accounts import client_tokens

    codex_binary()
    for email, workspace in ACCOUNTS.items():
        write_oauth_account(tmp_path / "accounts-store", email, exp=FAR, account_id=workspace)
    tokens = str(tmp_path / "client-tokens")
    token = client_tokens.add(tokens, "dana")
    shared = await start_daemon(
        make_config(tmp_path, None, ca, codex_upstream=backend.codex_url,
                    openai_upstream=backend.base_url, client_tokens=tokens)
    )
    try:
        refused = await codex(tmp_path, shared, backend, ca, "exec", "say hi")
        assert refused.exit_code != 0
        assert not [r for r in backend.requests if r.path.startswith("/backend-api/codex/")]
        result = await codex(tmp_path, shared, backend, ca, "exec", "say hi",
                             env={"SUBROUTER_TOKEN": token})
        assert result.exit_code == 0, result.output
        assert "hello from fake codex" in result.stdout
        assert backend.websocket_connections >= 1
        assert_credentials_are_the_accounts(backend)
        for request in backend.requests:
            assert request.header("x-subrouter-token") is None
            assert token not in json.dumps(request.headers)
        deadline = time.monotonic() + 5
        while True:
            response = await shared.client.get(
                shared.url + "/_subrouter/token-usage?since=1h",
                headers={"X-Subrouter-Token": [token]})
            usage = await response.json()
            if usage["totals"]["requests"] or time.monotonic() > deadline:
                break
            await sleep(0.1)
        assert [r["key"] for r in usage["by"]["user"]["rows"]] == ["dana"]
        assert usage["totals"]["total_tokens"] > 0
    finally:
        await shared.stop()
