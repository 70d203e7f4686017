# -*- test-case-name: tests.test_accounts -*-
"""
Reading the claims of the OAuth tokens Codex stores, without verifying them.

Subrouter only needs the claims to know whose token it is (email, workspace,
plan) and when it expires; the upstream verifies the signature.
"""

from __future__ import annotations

import base64
import json
from typing import Any

_AUTH_CLAIM = "https://api.openai.com/auth"
_PROFILE_CLAIM = "https://api.openai.com/profile"


def jwt_claims(token: str | None) -> dict[str, Any]:
    """
    Decode the payload of a JWT without checking its signature.

    :return: the claims, or an empty dict when ``token`` is not a JWT.
    """
    if not token:
        return {}
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (ValueError, TypeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _nested(claims: dict[str, Any], outer: str, key: str) -> str | None:
    inner = claims.get(outer)
    if isinstance(inner, dict):
        value = inner.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _top(claims: dict[str, Any], key: str) -> str | None:
    value = claims.get(key)
    return value if isinstance(value, str) and value else None


def email_from_id_token(id_token: str | None) -> str | None:
    """
    The account email, as ``cx`` derives ids: the profile claim's email first,
    then the top-level ``email`` claim.
    """
    claims = jwt_claims(id_token)
    return _nested(claims, _PROFILE_CLAIM, "email") or _top(claims, "email")


def chatgpt_account_id(*tokens: str | None) -> str | None:
    """
    The ChatGPT workspace id carried by the first token that has one: the
    top-level ``chatgpt_account_id``, the auth claim's, then the first
    organization's id.
    """
    for token in tokens:
        claims = jwt_claims(token)
        found = _top(claims, "chatgpt_account_id") or _nested(
            claims, _AUTH_CLAIM, "chatgpt_account_id"
        )
        if found:
            return found
        orgs = claims.get("organizations")
        if isinstance(orgs, list) and orgs and isinstance(orgs[0], dict):
            org_id = orgs[0].get("id")
            if isinstance(org_id, str) and org_id:
                return org_id
    return None


def plan_type(*tokens: str | None) -> str | None:
    """
    The ChatGPT plan (``plus``, ``pro``, ...) named by the first token that
    names one.
    """
    for token in tokens:
        claims = jwt_claims(token)
        found = _top(claims, "chatgpt_plan_type") or _nested(
            claims, _AUTH_CLAIM, "chatgpt_plan_type"
        )
        if found:
            return found
    return None


def expires_at(token: str | None) -> float | None:
    """
    The ``exp`` claim of a JWT as POSIX seconds, or None when there is none.
    """
    exp = jwt_claims(token).get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)
