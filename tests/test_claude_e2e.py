"""
The real Claude Code CLI through Subrouter: ``subrouter claude -p ...`` in a
network namespace with only loopback, reaching a daemon whose Anthropic
upstream is the fake Anthropic API (TLS, test CA).

The CLI runs signed in with its own (fake) subscription; Subrouter must swap
in a Claude profile's token. The CLI (pinned, see
:mod:`tests.support.claude_cli`) is installed from the npm registry on first
use.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.protocols.portforward import ProxyFactory

from tests.support.anthropic_backend import FakeAnthropicBackend, write_claude_profile
from tests.support.claude_cli import (
    ClaudeResult,
    claude_binary,
    netns_problem,
    run_claude,
    write_claude_home,
)
from tests.support.daemon import Daemon, make_config, reactor, start_daemon
from tests.support.tlsca import TestCA

TOKENS = {"claude:alpha": "sk-ant-oat01-pool-alpha", "claude:beta": "sk-ant-oat01-pool-beta"}
CLIENT_TOKEN = "sk-ant-oat01-the-clis-own"
#: where the CLI looks for Subrouter inside its namespace (the default)
PORT = 31415


@pytest.fixture(scope="module")
def cli() -> str:
    problem = netns_problem()
    if problem is not None:
        # kept on loopback or not run at all: never let the CLI reach out
        pytest.fail(f"the Claude Code end-to-end tests need a network namespace: {problem}")
    return claude_binary()


@pytest_twisted.async_yield_fixture
async def backend(ca: TestCA) -> AsyncIterator[FakeAnthropicBackend]:
    fake = FakeAnthropicBackend(reactor, ca=ca)
    # no unified headers: both profiles stay equal, so live conversations
    # alone decide where a new one goes
    fake.unified_headers = False
    await fake.start()
    yield fake
    await fake.stop()


@pytest_twisted.async_yield_fixture
async def daemon(tmp_path: Path, backend: FakeAnthropicBackend, ca: TestCA,
                 cli: str) -> AsyncIterator[tuple[Daemon, str]]:
    store = tmp_path / "accounts-store"
    for account_id, token in TOKENS.items():
        write_claude_profile(store, account_id.removeprefix("claude:"), token)
    running = await start_daemon(make_config(
        tmp_path, None, ca, anthropic_upstream=backend.base_url,
        anthropic_token_url=backend.token_url, anthropic_usage_url=backend.usage_url,
    ))
    await running.wait_for_accounts(len(TOKENS))
    # the namespace's one door: a Unix socket forwarded to the daemon's port
    socket_path = str(tmp_path / "subrouter.sock")
    door = await UNIXServerEndpoint(reactor, socket_path).listen(
        ProxyFactory("127.0.0.1", running.port))
    yield running, socket_path
    await door.stopListening()
    await running.stop()


async def claude(tmp_path: Path, socket_path: str, cli: str, *args: str,
                 home: str = "home") -> ClaudeResult:
    config_dir = tmp_path / home / ".claude-config"
    if not (config_dir / ".credentials.json").exists():
        write_claude_home(config_dir, access_token=CLIENT_TOKEN, email="client@example.com")
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return await run_claude(
        args, unix_socket=socket_path, port=PORT, config_dir=config_dir,
        home=tmp_path / home, cwd=work,
        env={"SUBROUTER_CLAUDE_BIN": cli,
             "SUBROUTER_CLAUDE_BASE_URL": f"http://127.0.0.1:{PORT}"},
    )


def profiles_used(backend: FakeAnthropicBackend) -> list[str]:
    by_token = {v: k for k, v in TOKENS.items()}
    return [by_token.get(r.credential or "", f"?{r.credential}") for r in backend.messages()]


@pytest_twisted.ensureDeferred
async def test_a_turn_completes_with_the_profiles_credentials(
    tmp_path: Path, daemon: tuple[Daemon, str], backend: FakeAnthropicBackend, cli: str
) -> None:
    running, socket_path = daemon
    result = await claude(tmp_path, socket_path, cli, "-p", "say hi")
    assert result.exit_code == 0, result.output
    assert "hello from fake claude" in result.stdout
    messages = backend.messages()
    assert messages, "nothing reached the backend"
    for seen in messages:
        assert seen.bearer in TOKENS.values(), seen.headers
        assert seen.api_key is None
        assert "oauth-2025-04-20" in (seen.header("anthropic-beta") or "")
        assert seen.header("x-claude-code-session-id")
        assert (seen.header("user-agent") or "").startswith("claude-cli/")
    assert all(CLIENT_TOKEN not in str(r.headers) for r in backend.requests)
    # the profile the conversation was placed on is the one whose token went out
    (session,) = [s for s in await running.get_json("/_subrouter/sessions")
                  if s["agent"] == "claude" and not s["fallback"]]
    assert session["session"] == messages[-1].header("x-claude-code-session-id")
    assert profiles_used(backend) == [session["account"]] * len(messages)


@pytest_twisted.ensureDeferred
async def test_two_conversations_land_on_two_profiles(
    tmp_path: Path, daemon: tuple[Daemon, str], backend: FakeAnthropicBackend, cli: str
) -> None:
    running, socket_path = daemon
    first = await claude(tmp_path, socket_path, cli, "-p", "task one")
    second = await claude(tmp_path, socket_path, cli, "-p", "task two", home="home2")
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    sessions = [s for s in await running.get_json("/_subrouter/sessions")
                if s["agent"] == "claude" and not s["fallback"]]
    assert len(sessions) == 2
    assert sorted(s["account"] for s in sessions) == sorted(TOKENS)
    assert set(profiles_used(backend)) == set(TOKENS)


@pytest_twisted.ensureDeferred
async def test_a_usage_limit_moves_the_conversation(
    tmp_path: Path, daemon: tuple[Daemon, str], backend: FakeAnthropicBackend, cli: str
) -> None:
    running, socket_path = daemon
    session = str(uuid.uuid4())
    first = await claude(tmp_path, socket_path, cli, "-p", "first", "--session-id", session)
    assert first.exit_code == 0, first.output
    (used,) = set(profiles_used(backend))
    backend.usage_limit_for = {TOKENS[used]}
    second = await claude(tmp_path, socket_path, cli, "-p", "again", "--resume", session)
    assert second.exit_code == 0, second.output
    assert "hello from fake claude" in second.stdout
    later = [r for r in backend.messages() if r.header("x-claude-code-session-id") == session]
    assert profiles_used(backend)[-1] != used
    assert {r.status for r in later} >= {429, 200}
    rows = {r["id"]: r for r in (await running.get_json("/_subrouter/accounts"))["accounts"]}
    assert rows[used]["exhausted_until"] is not None
    (moved,) = [s for s in await running.get_json("/_subrouter/sessions")
                if s["session"] == session]
    assert moved["account"] != used
