"""
OAuth token refresh: when it happens, what it writes, how concurrent callers
share one refresh, and what a failure does.
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
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from subrouter.accounts.refresh import CLIENT_ID, RefreshFailed, TokenRefresher
from subrouter.accounts.store import AccountStore
from tests.support.store import jwt, oauth_document, write

NOW = 1_900_000_000.0


class TokenEndpoint(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []
        self.held: list[Request] = []
        self.hold = False
        self.status = 200
        self.answer: dict[str, Any] | None = None

    def render_POST(self, request: Request) -> bytes | int:
        self.bodies.append(json.loads(request.content.read()))
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return self._answer(request)

    def _answer(self, request: Request) -> bytes:
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        if self.answer is not None:
            return json.dumps(self.answer).encode()
        n = len(self.bodies)
        return json.dumps(
            {
                "access_token": jwt({"exp": int(NOW) + 3600, "n": n}),
                "refresh_token": f"rt-new-{n}",
                "id_token": jwt({"email": "a@example.com", "n": n}),
            }
        ).encode()

    def release(self) -> None:
        for request in self.held:
            request.write(self._answer(request))
            request.finish()
        self.held = []


def sync(f: Any) -> Deferred[Any]:
    return succeed(f())


@pytest.fixture
def setup(tmp_path: Path) -> tuple[TokenRefresher, AccountStore, TokenEndpoint, StubTreq, Path]:
    write(tmp_path, "a@example.com.json", oauth_document("a@example.com", exp=int(NOW) + 30))
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    endpoint = TokenEndpoint()
    http = StubTreq(endpoint)
    clock = Clock()
    clock.advance(NOW)
    refresher = TokenRefresher(
        store=store, http=http, token_url="https://auth.example/oauth/token", clock=clock,
        run_blocking=sync, codex_auth=str(tmp_path / "codex" / "auth.json"),
    )
    return refresher, store, endpoint, http, tmp_path


def result_of(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def test_a_token_expiring_within_a_minute_is_refreshed_and_written_back(setup: Any) -> None:
    refresher, store, endpoint, _http, tmp_path = setup
    account = store.accounts()[0]
    assert refresher.needs_refresh(account)
    refreshed = result_of(refresher.ensure_fresh(account))
    assert endpoint.bodies == [
        {"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": "rt-1"}
    ]
    assert refreshed.expires_at == NOW + 3600
    assert store.get("a@example.com") == refreshed
    path = tmp_path / "accounts" / "a@example.com.json"
    document = json.loads(path.read_text())
    assert document["auth"]["tokens"]["refresh_token"] == "rt-new-1"
    assert document["auth"]["tokens"]["access_token"] == refreshed.secret
    assert document["auth"]["last_refresh"] == "2030-03-17T17:46:40Z"
    # every field Subrouter does not manage is kept
    assert document["unknownField"] == {"kept": True}
    assert document["addedAt"] == "2026-04-28T00:00:00Z"
    assert document["auth"]["auth_mode"] == "chatgpt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().endswith("}\n")


def test_a_fresh_token_is_left_alone(setup: Any) -> None:
    refresher, store, endpoint, *_ = setup
    refresher._clock.advance(-100)  # 130 s before expiry
    account = store.accounts()[0]
    assert result_of(refresher.ensure_fresh(account)) is account
    assert endpoint.bodies == []


def test_concurrent_callers_share_one_refresh(setup: Any) -> None:
    refresher, store, endpoint, http, _ = setup
    endpoint.hold = True
    account = store.accounts()[0]
    first = refresher.ensure_fresh(account)
    second = refresher.ensure_fresh(account)
    third = refresher.refresh_rejected(account)
    http.flush()
    assert len(endpoint.bodies) == 1
    endpoint.release()
    http.flush()
    a, b, c = result_of(first), result_of(second), result_of(third)
    assert a == b == c
    assert len(endpoint.bodies) == 1


def test_rejected_token_already_replaced_is_not_refreshed_again(setup: Any) -> None:
    refresher, store, endpoint, *_ = setup
    old = store.accounts()[0]
    new = result_of(refresher.ensure_fresh(old))
    assert result_of(refresher.refresh_rejected(old)) == new
    assert len(endpoint.bodies) == 1


def test_the_active_codex_login_follows_the_refresh(setup: Any) -> None:
    refresher, store, _endpoint, _, tmp_path = setup
    auth = tmp_path / "codex" / "auth.json"
    auth.parent.mkdir()
    active = oauth_document("a@example.com")["auth"]
    active["OPENAI_API_KEY"] = None
    auth.write_text(json.dumps(active))
    refreshed = result_of(refresher.ensure_fresh(store.accounts()[0]))
    mirrored = json.loads(auth.read_text())
    assert mirrored["tokens"]["access_token"] == refreshed.secret
    assert mirrored["tokens"]["refresh_token"] == "rt-new-1"
    assert "OPENAI_API_KEY" in mirrored  # other fields kept
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600


def test_another_logins_codex_file_is_not_touched(setup: Any) -> None:
    refresher, store, _, _, tmp_path = setup
    auth = tmp_path / "codex" / "auth.json"
    auth.parent.mkdir()
    other = json.dumps(oauth_document("other@example.com")["auth"])
    auth.write_text(other)
    result_of(refresher.ensure_fresh(store.accounts()[0]))
    assert auth.read_text() == other


def test_a_refresh_done_elsewhere_is_picked_up_instead(setup: Any) -> None:
    refresher, store, endpoint, _, tmp_path = setup
    stale = store.accounts()[0]
    # cx refreshed the account meanwhile
    document = oauth_document("a@example.com", exp=int(NOW) + 7200)
    document["auth"]["tokens"]["refresh_token"] = "rt-by-cx"
    (tmp_path / "accounts" / "a@example.com.json").write_text(json.dumps(document))
    got = result_of(refresher.ensure_fresh(stale))
    assert endpoint.bodies == []
    assert got.refresh_token == "rt-by-cx"


@pytest.mark.parametrize("status", [400, 401])
def test_a_rejected_refresh_token_makes_the_account_unusable_until_relogin(
    setup: Any, status: int
) -> None:
    refresher, store, endpoint, _, tmp_path = setup
    endpoint.status = status
    endpoint.answer = {"error": {"message": "refresh token already used", "code": "invalid_grant"}}
    account = store.accounts()[0]
    with pytest.raises(RefreshFailed) as caught:
        result_of(refresher.ensure_fresh(account))
    assert caught.value.terminal
    why = refresher.why_unusable(account)
    assert why is not None and "invalid_grant" in why and "cx add" in why
    refresher._clock.advance(3600)
    assert refresher.why_unusable(account) is not None  # still, until a new login
    relogin = oauth_document("a@example.com", exp=int(NOW) + 7200)
    relogin["auth"]["tokens"]["refresh_token"] = "rt-relogin"
    (tmp_path / "accounts" / "a@example.com.json").write_text(json.dumps(relogin))
    store.rescan()
    assert refresher.why_unusable(store.accounts()[0]) is None


def test_a_server_error_sets_the_account_aside_briefly(setup: Any) -> None:
    refresher, store, endpoint, *_ = setup
    endpoint.status = 503
    endpoint.answer = {}
    account = store.accounts()[0]
    with pytest.raises(RefreshFailed) as caught:
        result_of(refresher.ensure_fresh(account))
    assert not caught.value.terminal
    assert "HTTP 503" in (refresher.why_unusable(account) or "")
    refresher._clock.advance(31)
    assert refresher.why_unusable(account) is None


def test_an_answer_without_all_tokens_is_a_failure_and_writes_nothing(setup: Any) -> None:
    refresher, store, endpoint, _, tmp_path = setup
    endpoint.answer = {"access_token": "x", "refresh_token": "y"}
    path = tmp_path / "accounts" / "a@example.com.json"
    before = path.read_bytes()
    with pytest.raises(RefreshFailed, match="lacks"):
        result_of(refresher.ensure_fresh(store.accounts()[0]))
    assert path.read_bytes() == before


def test_failure_messages_never_carry_tokens(setup: Any) -> None:
    refresher, store, endpoint, *_ = setup
    endpoint.status = 400
    account = store.accounts()[0]
    endpoint.answer = {
        "error": "invalid_grant",
        "error_description": f"token rt-1 and {account.secret} and sk-abcdefgh12345 refused",
    }
    with pytest.raises(RefreshFailed) as caught:
        result_of(refresher.ensure_fresh(account))
    message = str(caught.value) + (refresher.why_unusable(account) or "")
    for secret in ("rt-1", account.secret, "sk-abcdefgh12345"):
        assert secret not in message
    assert "invalid_grant" in message


def test_no_lock_file_is_left_unprotected(setup: Any) -> None:
    refresher, store, _, _, tmp_path = setup
    result_of(refresher.ensure_fresh(store.accounts()[0]))
    lock = tmp_path / "accounts" / ".a@example.com.json.lock"
    assert lock.exists() and stat.S_IMODE(os.stat(lock).st_mode) == 0o600
