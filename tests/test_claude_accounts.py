"""
Anthropic credentials as accounts: Claude profiles (their
``.credentials.json``) and Anthropic API keys in the store, the Anthropic
provider's headers, and refreshing a profile's OAuth token (single flight,
written back in place keeping unknown fields, a rejected refresh makes the
profile unusable with the reason).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from subrouter.accounts.claude_credentials import CLIENT_ID
from subrouter.accounts.refresh import RefreshFailed, TokenRefresher
from subrouter.accounts.store import AccountKind, AccountStore, parse_account
from subrouter.upstream.headers import upstream_request_headers
from subrouter.upstream.routing import ANTHROPIC, OPENAI, Upstreams
from tests.support.anthropic_backend import (
    FakeAnthropicBackend,
    _Root,
    write_anthropic_key,
    write_claude_profile,
)
from tests.support.store import oauth_document, write

NOW = 1_900_000_000.0


def sync(f: Any) -> Deferred[Any]:
    return succeed(f())


def test_claude_profiles_and_anthropic_keys_are_accounts_with_their_provider(
    tmp_path: Path,
) -> None:
    write(tmp_path, "a@example.com.json", oauth_document("a@example.com", exp=int(NOW) + 3600))
    write_claude_profile(tmp_path, "work", "sk-ant-oat01-work", plan="max",
                         expires_at=NOW + 3600)
    write_anthropic_key(tmp_path, "team", "sk-ant-api03-team")
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    by_id = {a.id: a for a in store.accounts()}
    assert set(by_id) == {"a@example.com", "claude:work", "apikey:team"}
    codex, claude, key = by_id["a@example.com"], by_id["claude:work"], by_id["apikey:team"]
    assert (codex.provider, codex.kind, codex.is_codex_login) == (OPENAI, AccountKind.OAUTH, True)
    assert (claude.provider, claude.kind, claude.is_codex_login) == (
        ANTHROPIC, AccountKind.OAUTH, False)
    assert claude.secret == "sk-ant-oat01-work" and claude.plan == "max"
    assert claude.expires_at == pytest.approx(NOW + 3600)
    assert "sk-ant" not in repr(claude)
    assert (key.provider, key.kind, key.secret) == (ANTHROPIC, AccountKind.APIKEY,
                                                    "sk-ant-api03-team")


def test_a_profile_that_is_not_signed_in_is_listed_with_the_reason(tmp_path: Path) -> None:
    folder = write_claude_profile(tmp_path, "empty", "x")
    os.unlink(folder / ".credentials.json")
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    (account,) = store.accounts()
    assert account.id == "claude:empty"
    assert account.problem is not None and "not signed in" in account.problem


def test_a_corrupt_profile_file_is_skipped_by_name_and_left_alone(tmp_path: Path) -> None:
    folder = write_claude_profile(tmp_path, "broken", "x")
    (folder / ".credentials.json").write_text("{not json")
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    assert store.accounts() == []
    (reason,) = store.skipped_files().values()
    assert "broken" in reason and "JSON" in reason
    assert (folder / ".credentials.json").read_text() == "{not json"


def test_an_unknown_provider_is_refused_not_mistaken_for_codex(tmp_path: Path) -> None:
    raw = json.dumps({"email": "apikey:k", "provider": "kimi",
                      "auth": {"auth_mode": "apikey", "OPENAI_API_KEY": "sk-x"}}).encode()
    with pytest.raises(Exception, match="kimi"):
        parse_account(raw, "/x")


# -- the provider's headers ---------------------------------------------------

CLIENT = Headers({
    b"authorization": [b"Bearer sk-ant-oat01-the-users-own"],
    b"x-api-key": [b"sk-ant-api03-the-users-own"],
    b"anthropic-beta": [b"claude-code-20250219,oauth-2025-04-20,fine-grained-tool-streaming"],
    b"anthropic-version": [b"2023-06-01"],
    b"x-claude-code-session-id": [b"s-1"],
})


def test_a_subscription_replaces_the_bearer_and_keeps_the_beta_list() -> None:
    upstreams = Upstreams.from_text("https://c/x", "https://o", "https://a.example")
    provider = upstreams.provider("oauth", ANTHROPIC)
    assert provider.url(b"/v1/messages", b"beta=true") == b"https://a.example/v1/messages?beta=true"
    headers = upstream_request_headers(CLIENT, provider.credential_headers("sk-ant-oat01-pool",
                                                                            None))
    assert headers.getRawHeaders(b"authorization") == [b"Bearer sk-ant-oat01-pool"]
    assert headers.getRawHeaders(b"x-api-key") is None
    assert headers.getRawHeaders(b"anthropic-beta") == [
        b"claude-code-20250219,oauth-2025-04-20,fine-grained-tool-streaming"]
    without = Headers({b"anthropic-beta": [b"claude-code-20250219"]})
    headers = upstream_request_headers(without, provider.credential_headers("t", None))
    assert headers.getRawHeaders(b"anthropic-beta") == [b"claude-code-20250219,oauth-2025-04-20"]
    bare = upstream_request_headers(Headers(), provider.credential_headers("t", None))
    assert bare.getRawHeaders(b"anthropic-beta") == [b"oauth-2025-04-20"]
    assert headers.getRawHeaders(b"x-claude-code-session-id") is None  # `without` had none


def test_a_key_sets_x_api_key_and_drops_the_bearer_and_the_oauth_flag() -> None:
    provider = Upstreams.from_text("https://c/x", "https://o").provider("apikey", ANTHROPIC)
    headers = upstream_request_headers(CLIENT, provider.credential_headers("sk-ant-api03-pool",
                                                                            None))
    assert headers.getRawHeaders(b"x-api-key") == [b"sk-ant-api03-pool"]
    assert headers.getRawHeaders(b"authorization") is None
    assert headers.getRawHeaders(b"anthropic-beta") == [
        b"claude-code-20250219,fine-grained-tool-streaming"]
    assert headers.getRawHeaders(b"anthropic-version") == [b"2023-06-01"]
    only_oauth = Headers({b"anthropic-beta": [b"oauth-2025-04-20"]})
    headers = upstream_request_headers(only_oauth, provider.credential_headers("k", None))
    assert headers.getRawHeaders(b"anthropic-beta") is None


def test_openai_providers_never_pass_a_client_x_api_key() -> None:
    upstreams = Upstreams.from_text("https://c/x", "https://o")
    for kind in ("oauth", "apikey"):
        provider = upstreams.provider(kind, OPENAI)
        headers = upstream_request_headers(CLIENT, provider.credential_headers("t", "ws"))
        assert headers.getRawHeaders(b"x-api-key") is None
        assert headers.getRawHeaders(b"authorization") == [b"Bearer t"]


# -- refreshing a profile -------------------------------------------------------


@pytest.fixture
def refreshing(tmp_path: Path) -> tuple[TokenRefresher, AccountStore, FakeAnthropicBackend, Path]:
    folder = write_claude_profile(tmp_path, "work", "sk-ant-oat01-old", refresh="rt-old",
                                  expires_at=NOW + 30)
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    from twisted.internet import reactor

    backend = FakeAnthropicBackend(reactor)
    clock = Clock()
    clock.advance(NOW)
    stub = StubTreq(_Root(backend))
    backend.flush = stub.flush  # type: ignore[attr-defined]
    refresher = TokenRefresher(
        store=store, http=stub, token_url="https://codex.invalid/token",
        clock=clock, run_blocking=sync, codex_auth=str(tmp_path / "codex" / "auth.json"),
        anthropic_token_url="https://127.0.0.1:9/v1/oauth/token",
    )
    return refresher, store, backend, folder / ".credentials.json"


def test_a_profile_near_expiry_is_refreshed_once_for_concurrent_callers(
    refreshing: tuple[TokenRefresher, AccountStore, FakeAnthropicBackend, Path],
) -> None:
    refresher, store, backend, path = refreshing
    account = store.get("claude:work")
    assert account is not None and refresher.needs_refresh(account)
    backend.token_gate = Deferred()
    first = refresher.ensure_fresh(account)
    second = refresher.ensure_fresh(account)
    assert not first.called and not second.called
    backend.token_gate.callback(None)
    backend.flush()  # type: ignore[attr-defined]
    refreshed = [first.result, second.result]  # type: ignore[attr-defined]
    assert backend.refreshes == ["rt-old"]
    assert refreshed[0] is refreshed[1]
    grant = json.loads(backend.requests[-1].body)
    assert grant == {"client_id": CLIENT_ID, "grant_type": "refresh_token",
                     "refresh_token": "rt-old"}
    document = json.loads(path.read_text())
    oauth = document["claudeAiOauth"]
    assert oauth["accessToken"] == refreshed[0].secret != "sk-ant-oat01-old"
    assert oauth["refreshToken"].startswith("sk-ant-ort01-")
    assert oauth["expiresAt"] == int((NOW + 28800) * 1000)
    assert oauth["subscriptionType"] == "max" and oauth["rateLimitTier"]  # kept
    assert document["someOtherTool"] == {"kept": True}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert store.get("claude:work") == refreshed[0]
    assert not refresher.needs_refresh(refreshed[0])


def test_a_rejected_refresh_makes_the_profile_unusable_with_the_reason(
    refreshing: tuple[TokenRefresher, AccountStore, FakeAnthropicBackend, Path],
) -> None:
    refresher, store, backend, path = refreshing
    backend.reject_refresh = {"rt-old"}
    before = path.read_bytes()
    account = store.get("claude:work")
    assert account is not None
    failure = refresher.ensure_fresh(account)
    error = failure.result.value  # type: ignore[attr-defined]
    failure.addErrback(lambda _: None)
    assert isinstance(error, RefreshFailed) and error.terminal
    reason = refresher.why_unusable(account)
    assert reason is not None and "HTTP 400" in reason and "cx claude add" in reason
    assert "rt-old" not in reason
    assert path.read_bytes() == before
