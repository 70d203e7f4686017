"""
Account files written raw into a ``cx`` store, for tests of how the store
reads what it finds (including files no tool of ours would write: corrupt
JSON, unknown fields, missing tokens). For well-formed accounts as ``cx``
writes them, see :func:`tests.support.upstream.write_oauth_account`.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any


def jwt(claims: dict[str, Any]) -> str:
    """
    An unsigned JWT carrying ``claims`` (header ``{"alg":"none"}``).
    """
    def enc(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    return ".".join([enc(b'{"alg":"none"}'), enc(json.dumps(claims).encode()), enc(b"sig")])


def oauth_document(email: str, exp: int = 2_000_000_000,
                   workspace: str | None = None) -> dict[str, Any]:
    """
    A ChatGPT login's store document, with an unknown top-level field that
    must survive a rewrite.

    :param exp: the access token's expiry.
    :param workspace: the stored account id; without it, only the token's
        claim (``ws-from-claim``) names the workspace.
    """
    access = jwt(
        {
            "exp": exp,
            "https://api.openai.com/auth": {
                "chatgpt_account_id": "ws-from-claim",
                "chatgpt_plan_type": "pro",
            },
        }
    )
    token_block = {
        "access_token": access,
        "refresh_token": "rt-1",
        "id_token": jwt({"https://api.openai.com/profile": {"email": email}}),
    }
    if workspace:
        token_block["account_id"] = workspace
    return {
        "email": email,
        "addedAt": "2026-04-28T00:00:00Z",
        "auth": {"auth_mode": "chatgpt", "tokens": token_block, "last_refresh": "x"},
        "unknownField": {"kept": True},
    }


def write(directory: Path, name: str, content: bytes | dict[str, Any]) -> Path:
    """
    Write ``accounts/<name>`` under the store ``directory``, as given: the
    bytes, or the document as JSON.
    """
    accounts = directory / "accounts"
    accounts.mkdir(parents=True, exist_ok=True)
    path = accounts / name
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path
