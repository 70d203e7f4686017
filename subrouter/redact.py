# -*- test-case-name: tests.test_redact -*-
"""
Keeping secrets out of everything Subrouter prints, logs or serves.

Tokens are referred to by :func:`fingerprint`; free text that might carry a
secret (an upstream's error message, a traceback) goes through
:func:`scrub_text` first.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

_SECRET_PATTERNS = [
    # Authorization-style values
    re.compile(r"(?i)\b((?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}"),
    # OpenAI-style keys: sk-..., sk-proj-..., sk-admin-...
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
    # JWTs (OAuth access and id tokens)
    re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
    # "name": "value" secrets in JSON, and name=value in query or form text
    re.compile(
        r'(?i)("(?:access_token|refresh_token|id_token|api_key|openai_api_key|client_secret|'
        r'password)"\s*:\s*")[^"]*'
    ),
    re.compile(
        r"(?i)(\b(?:access_token|refresh_token|id_token|api_key|client_secret|password)=)"
        r"[^&\s]+"
    ),
]

#: cheap first look: text without any of these holds nothing the patterns match
_MAYBE_SECRET_WORDS = (
    "bearer", "basic", "sk-", "eyj", "access_token", "refresh_token", "id_token", "api_key",
    "client_secret", "password",
)
_MAYBE_SECRET = re.compile("(?i)" + "|".join(re.escape(w) for w in _MAYBE_SECRET_WORDS))

REDACTED = "<redacted>"

#: header names whose values are credentials, lower-case
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "openai-api-key",
        "x-subrouter-admin-token",
        "x-subrouter-token",
    }
)


def fingerprint(secret: str) -> str:
    """
    A short, stable, non-reversible name for a secret: the first 16 hex
    characters of its SHA-256. The empty secret has the fingerprint ``""``.
    """
    if not secret:
        return ""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]


def scrub_text(text: str, known: Iterable[str] = ()) -> str:
    """
    Replace anything in ``text`` that looks like a credential with
    ``<redacted>``.

    :param known: secrets to remove wherever they appear, whatever they look
        like (an opaque refresh token matches no pattern).
    """
    for secret in known:
        if len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    if not _maybe_secret(text):
        return text
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


def _maybe_secret(text: str) -> bool:
    """
    Whether ``text`` holds any of the words every pattern needs, in any case.
    ASCII text (nearly every log line) is lower-cased and searched word by
    word, many times faster than the case-insensitive regular expression,
    which still decides for any other text (its case folding knows letters
    such as the dotless i or the long s that ``str.lower`` leaves alone).
    """
    if text.isascii():
        lowered = text.lower()
        return any(word in lowered for word in _MAYBE_SECRET_WORDS)
    return _MAYBE_SECRET.search(text) is not None
