"""
Reading the cx store: both account kinds, corrupt files, changes on disk, and
the foundation's account choice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from subrouter.accounts import tokens
from subrouter.accounts.pool import AccountPool
from subrouter.accounts.refresh import TokenRefresher
from subrouter.accounts.store import (
    AccountKind,
    AccountStore,
    filename_for_id,
    header_value_problem,
)
from tests.support.store import jwt, oauth_document, write


def sync(f: Any) -> Deferred[Any]:
    return succeed(f())


def test_reads_oauth_and_api_key_accounts(tmp_path: Path) -> None:
    write(tmp_path, "a@example.com.json", oauth_document("a@example.com", workspace="ws-1"))
    write(
        tmp_path,
        "apikey_work.json",
        {"email": "apikey:work", "auth": {"auth_mode": "apikey", "OPENAI_API_KEY": "sk-w"}},
    )
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    oauth, key = store.accounts()
    assert (oauth.id, oauth.kind, oauth.plan) == ("a@example.com", AccountKind.OAUTH, "pro")
    assert oauth.chatgpt_account_id == "ws-1"  # the stored one wins over the claim
    assert oauth.expires_at == 2_000_000_000
    assert oauth.problem is None
    assert (key.id, key.kind, key.secret) == ("apikey:work", AccountKind.APIKEY, "sk-w")


def test_workspace_falls_back_to_the_token_claim(tmp_path: Path) -> None:
    write(tmp_path, "a.json", oauth_document("a@example.com"))
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    assert store.accounts()[0].chatgpt_account_id == "ws-from-claim"


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    write(tmp_path, "a.json", oauth_document("a@example.com"))
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    account = store.accounts()[0]
    assert account.secret not in repr(account)
    assert "rt-1" not in repr(account)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"auth": {}}', 'no "email"'),
        (b'{"email": "x@y"}', 'no "auth"'),
    ],
)
def test_corrupt_files_are_skipped_by_name_and_left_unchanged(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    write(tmp_path, "good.json", oauth_document("good@example.com"))
    bad = write(tmp_path, "bad.json", content)
    before = (bad.read_bytes(), bad.stat().st_mtime_ns)
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    assert [a.id for a in store.accounts()] == ["good@example.com"]
    assert reason in store.skipped_files()[str(bad)]
    assert (bad.read_bytes(), bad.stat().st_mtime_ns) == before


def test_dot_files_and_other_names_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, ".a.json.lock", b"")
    write(tmp_path, "._a.json", b"\x00\x01")
    write(tmp_path, ".a.json.tmp-1234", b"{")
    write(tmp_path, "notes.txt", b"hello")
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    assert store.accounts() == [] and store.skipped_files() == {}


def test_accounts_added_and_removed_on_disk_are_seen_on_rescan(tmp_path: Path) -> None:
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    assert store.accounts() == []
    path = write(tmp_path, "a.json", oauth_document("a@example.com"))
    store.rescan()
    assert [a.id for a in store.accounts()] == ["a@example.com"]
    os.unlink(path)
    store.rescan()
    assert store.accounts() == []


def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    path = write(tmp_path, "a.json", oauth_document("a@example.com"))
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    first = store.accounts()[0]
    store.rescan()
    assert store.accounts()[0] is first
    document = oauth_document("a@example.com", exp=2_100_000_000)
    path.write_text(json.dumps(document) + "  ")  # a different size: a new version
    store.rescan()
    assert store.accounts()[0].expires_at == 2_100_000_000


def test_duplicate_ids_keep_the_first_file(tmp_path: Path) -> None:
    write(tmp_path, "a.json", oauth_document("a@example.com"))
    write(tmp_path, "b.json", oauth_document("a@example.com"))
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    assert [a.source for a in store.accounts()] == [str(tmp_path / "accounts" / "a.json")]
    assert "duplicate" in store.skipped_files()[str(tmp_path / "accounts" / "b.json")]


def test_missing_store_is_empty(tmp_path: Path) -> None:
    store = AccountStore(str(tmp_path / "nowhere"), sync)
    store.scan_now()
    assert store.accounts() == []


def test_oauth_without_access_token_is_listed_but_unusable(tmp_path: Path) -> None:
    document = oauth_document("a@example.com")
    document["auth"]["tokens"]["access_token"] = ""
    write(tmp_path, "a.json", document)
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    assert "no access token" in (store.accounts()[0].problem or "")


def test_file_names_follow_cx() -> None:
    assert filename_for_id("a.b+c@example.com") == "a.b_c@example.com.json"
    assert filename_for_id("apikey:work") == "apikey_work.json"


def test_claims_helpers() -> None:
    token = jwt({"email": "top@x", "exp": 5, "organizations": [{"id": "org-1"}]})
    assert tokens.email_from_id_token(token) == "top@x"
    assert tokens.chatgpt_account_id(None, token) == "org-1"
    assert tokens.expires_at(token) == 5.0
    assert tokens.jwt_claims("not.a.jwt!") == {}
    assert tokens.expires_at("opaque") is None


def _pool(tmp_path: Path) -> AccountPool:
    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    refresher = TokenRefresher(
        store=store, http=None, token_url="https://t", clock=Clock(), run_blocking=sync,
        codex_auth=str(tmp_path / "auth.json"),
    )
    return AccountPool(store, refresher)


def test_describe_never_shows_a_secret(tmp_path: Path) -> None:
    document = oauth_document("a@example.com")
    write(tmp_path, "a.json", document)
    write(tmp_path, "k.json", {"email": "apikey:k", "auth": {"OPENAI_API_KEY": "sk-SECRET1"}})
    text = json.dumps(_pool(tmp_path).describe())
    assert "sk-SECRET1" not in text
    assert document["auth"]["tokens"]["access_token"] not in text
    assert "rt-1" not in text
    assert '"usable": true' in text


# -- credentials that cannot go into a header --------------------------------------


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("sk-ключ-weird", "outside Latin-1"),
        ("sk-abc\r\nX-Evil: 1", "line break"),
        ("sk-abc\n", "line break"),
        ("sk-a\x00b", "control characters"),
        ("sk-a\x7fb", "control characters"),
        ("sk-caf\u00e9", "non-ASCII"),
        ("sk-a b", "a space"),
    ],
)
def test_an_api_key_that_cannot_go_into_a_header_is_unusable_with_a_reason(
    tmp_path: Path, key: str, words: str
) -> None:
    write(tmp_path, "k.json", {"email": "apikey:k", "auth": {"OPENAI_API_KEY": key}})
    pool = _pool(tmp_path)
    account = pool.store.accounts()[0]
    reason = pool.why_unusable(account) or ""
    assert words in reason and "HTTP header" in reason and "cx add-key" in reason
    row = pool.describe()["accounts"][0]
    assert row["usable"] is False and row["why_not"] == reason
    assert key not in json.dumps(pool.describe())


def test_an_access_token_or_workspace_that_cannot_go_into_a_header_is_unusable(
    tmp_path: Path,
) -> None:
    bad_token = oauth_document("a@example.com")
    bad_token["auth"]["tokens"]["access_token"] += "\r\n"
    write(tmp_path, "a.json", bad_token)
    write(tmp_path, "b.json", oauth_document("b@example.com", workspace="ws-\u2603"))
    write(tmp_path, "c.json", oauth_document("c@example.com"))
    pool = _pool(tmp_path)
    reasons = {a.id: pool.why_unusable(a) for a in pool.store.accounts()}
    assert "access token holds a line break" in (reasons["a@example.com"] or "")
    assert "ChatGPT account id holds" in (reasons["b@example.com"] or "")
    assert reasons["c@example.com"] is None


@given(st.text(max_size=60))
def test_every_credential_called_sendable_encodes_as_a_clean_header_value(value: str) -> None:
    if header_value_problem(value) is None:
        raw = ("Bearer " + value).encode("latin-1")
        assert b"\r" not in raw and b"\n" not in raw and b"\x00" not in raw
        assert all(0x21 <= b <= 0x7E for b in value.encode("ascii"))
    else:
        assert value  # the empty string is never refused here


def test_an_anthropic_key_that_cannot_go_into_a_header_is_unusable(tmp_path: Path) -> None:
    write(tmp_path, "a.json", {"email": "apikey:a", "provider": "anthropic",
                               "auth": {"ANTHROPIC_API_KEY": "sk-ant-ключ"}})
    pool = _pool(tmp_path)
    reason = pool.why_unusable(pool.store.accounts()[0]) or ""
    assert "outside Latin-1" in reason and "HTTP header" in reason


def test_an_account_directory_that_cannot_be_listed_is_said_once_and_its_return_too(
    tmp_path: Path,
) -> None:
    from twisted.logger import globalLogPublisher

    from subrouter.accounts.store import scan_directory

    folder = tmp_path / "accounts"
    folder.write_text("a file where the folder should be")  # NotADirectoryError
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(5):  # five rescans
            assert scan_directory(str(folder), {}) == {}
        folder.unlink()
        folder.mkdir()
        scan_directory(str(folder), {})
        scan_directory(str(folder), {})
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [e["log_format"] for e in events if "account directory" in e.get("log_format", "")]
    assert len(said) == 2
    assert said[0].startswith("cannot list the account directory")
    assert said[1].endswith("can be listed again")
