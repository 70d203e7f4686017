# -*- test-case-name: tests.test_claude_accounts -*-
"""
Claude profiles as accounts: each profile's ``CLAUDE_CONFIG_DIR/.credentials.json``
read into an :class:`~subrouter.accounts.store.Account`, and refreshed tokens
put back into it.

The file is Claude Code's own (``claudeAiOauth{accessToken, refreshToken,
expiresAt (ms), scopes, subscriptionType, rateLimitTier}``, see
``claude-code.md``); Subrouter only ever replaces the token fields and keeps
everything else. The profile registry (``<store>/claude.json``) says which
folders are profiles; a profile is the account ``claude:<name>``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from subrouter.accounts.model import (
    Account,
    AccountFileError,
    AccountKind,
    ScannedFile,
    header_value_problem,
)
from subrouter.upstream.routing import ANTHROPIC

CREDENTIALS_FILE = ".credentials.json"
ID_PREFIX = "claude:"
#: the OAuth client Claude Code refreshes its tokens as (the CLI's public
#: client id, used by every third-party tool that refreshes Claude Code
#: logins; the endpoint is ``config.DEFAULT_ANTHROPIC_TOKEN_URL``)
CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"


def dir_name(name: str) -> str:
    """
    The folder ``cx claude add <name>`` makes for a named profile.
    """
    return re.sub(r"[^A-Za-z0-9_-]", "-", name).lower()


def config_dir(store: str, profile: dict[str, Any]) -> str:
    """
    A profile's ``CLAUDE_CONFIG_DIR``: ``<store>/claude/<dir>``.
    """
    return os.path.join(store, "claude", str(profile.get("dir") or dir_name(profile["name"])))


def account_id(name: str) -> str:
    return ID_PREFIX + name


def _oauth_block(document: object) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise AccountFileError("not a JSON object")
    block = document.get("claudeAiOauth")
    if not isinstance(block, dict):
        raise AccountFileError('has no "claudeAiOauth" object (not signed in to Claude)')
    return block


def parse_credentials(raw: bytes, source: str, name: str) -> Account:
    """
    The account of a Claude profile from its ``.credentials.json`` bytes.

    :param name: the profile's name in the registry.
    :raises AccountFileError: when the content is not Claude Code's credentials.
    """
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise AccountFileError(f"not valid JSON ({type(e).__name__})") from None
    block = _oauth_block(document)
    access = block.get("accessToken")
    access = access if isinstance(access, str) else ""
    refresh = block.get("refreshToken")
    expires_ms = block.get("expiresAt")
    expires = (
        float(expires_ms) / 1000.0
        if isinstance(expires_ms, (int, float)) and not isinstance(expires_ms, bool)
        else None
    )
    plan = block.get("subscriptionType")
    return Account(
        id=account_id(name),
        kind=AccountKind.OAUTH,
        source=source,
        provider=ANTHROPIC,
        email=name if "@" in name.strip("@") else None,
        plan=plan if isinstance(plan, str) and plan else None,
        expires_at=expires,
        secret=access,
        refresh_token=refresh if isinstance(refresh, str) else "",
        problem=_token_problem(access),
    )


def _token_problem(access: str) -> str | None:
    if not access:
        return "the profile has no access token (run `cx claude add`)"
    unsendable = header_value_problem(access)
    if unsendable is not None:
        return (f"the access token holds {unsendable}, which cannot go into an HTTP header "
                "(run `cx claude add` again)")
    return None


def apply_new_tokens(document: dict[str, Any], new: dict[str, Any], now: float) -> None:
    """
    Put a token endpoint's answer into a ``.credentials.json`` document,
    keeping every field it does not replace.

    :param new: ``access_token``, and when given ``refresh_token``,
        ``expires_in`` (seconds) and ``scope`` (space separated).
    """
    block = _oauth_block(document)
    block["accessToken"] = new["access_token"]
    if new.get("refresh_token"):
        block["refreshToken"] = new["refresh_token"]
    expires_in = new.get("expires_in")
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool):
        block["expiresAt"] = int((now + float(expires_in)) * 1000)
    scope = new.get("scope")
    if isinstance(scope, str) and scope.strip():
        block["scopes"] = scope.split()


def read_registry(store: str) -> dict[str, dict[str, Any]]:
    """
    The profiles of ``<store>/claude.json`` by name; a missing or unreadable
    registry has none. Blocking.
    """
    try:
        with open(os.path.join(store, "claude.json"), "rb") as f:
            document = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    profiles = document.get("profiles") if isinstance(document, dict) else None
    if not isinstance(profiles, dict):
        return {}
    return {
        str(name): dict(profile, name=str(profile.get("name") or name))
        for name, profile in profiles.items()
        if isinstance(profile, dict)
    }


def scan_profiles(store: str, previous: dict[str, ScannedFile]) -> dict[str, ScannedFile]:
    """
    Read every registered profile's credentials, reusing ``previous`` results
    for files that did not change. A profile without a credentials file is an
    account with a problem (so it is listed with the reason), not an error.
    Blocking: call it off the reactor thread.
    """
    found: dict[str, ScannedFile] = {}
    for name, profile in sorted(read_registry(store).items()):
        try:
            folder = config_dir(store, profile)
        except (KeyError, TypeError):
            continue
        path = os.path.join(folder, CREDENTIALS_FILE)
        try:
            stat = os.stat(path)
        except OSError:
            found[path] = ScannedFile(path, (0, 0, 0), Account(
                id=account_id(name), kind=AccountKind.OAUTH, source=path, provider=ANTHROPIC,
                problem=f"no {CREDENTIALS_FILE} in {folder}: the profile is not signed in "
                "(or its login is in the macOS Keychain, which Subrouter does not read)",
            ), None)
            continue
        version = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        known = previous.get(path)
        if (
            known is not None
            and known.version == version
            and known.account is not None
            and known.account.id == account_id(name)
        ):
            found[path] = known
            continue
        try:
            with open(path, "rb") as f:
                raw = f.read()
            found[path] = ScannedFile(path, version, parse_credentials(raw, path, name), None)
        except AccountFileError as e:
            found[path] = ScannedFile(path, version, None, f"Claude profile {name}: {e}")
        except OSError as e:
            found[path] = ScannedFile(
                path, version, None, f"Claude profile {name}: cannot be read: {e.strerror or e}"
            )
    return found
