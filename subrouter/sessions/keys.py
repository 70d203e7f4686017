# -*- test-case-name: tests.test_session_keys -*-
"""
Which conversation a request belongs to, which agent sent it, who the user
is, and whether it forces an account. Pure functions over headers and bytes.

The session key comes from the first of: Subrouter's own header, the Codex
headers (``x-codex-window-id`` reduced to its thread, ``session-id``,
``thread-id``, ...), the other agents' session headers, the query string, and
only when no header matched, a scan of a JSON body (up to 1 MiB) for
``session_id``, ``conversation_id``, ``thread_id`` or ``prompt_cache_key``.
The body is scanned, not parsed: a Codex turn is 60 KB or more of JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from email.utils import parseaddr
from urllib.parse import parse_qs

import attrs
from twisted.web.http_headers import Headers

from subrouter.upstream.headers import canonical_name, raw_values

#: session headers, lower-case, in the order they are trusted
SESSION_HEADERS: tuple[bytes, ...] = (
    b"x-subrouter-session",
    b"x-codex-window-id",
    b"session-id",
    b"session_id",
    b"thread-id",
    b"x-codex-turn-state",
    b"x-codex-parent-thread-id",
    b"x-session-id",
    b"x-conversation-id",
    b"x-codex-session-id",
    b"x-claude-session-id",
    b"x-claude-code-session-id",
    b"x-gemini-session-id",
    b"x-gemini-conversation-id",
    b"openai-conversation-id",
    b"anthropic-conversation-id",
    b"google-conversation-id",
)
QUERY_KEYS: tuple[bytes, ...] = (b"session_id", b"conversation_id", b"thread_id")
BODY_KEYS: tuple[bytes, ...] = (
    b"session_id",
    b"conversation_id",
    b"thread_id",
    b"prompt_cache_key",
)
MAX_BODY_SCAN = 1 << 20
MAX_KEY_LENGTH = 256

_CLAUDE_HEADERS = (
    b"x-claude-session-id",
    b"x-claude-code-session-id",
    b"anthropic-conversation-id",
)
_GEMINI_HEADERS = (b"x-gemini-session-id", b"x-gemini-conversation-id", b"google-conversation-id")
_AGENT_NAME = re.compile(r"^[a-z0-9._-]{1,64}$")
_WINDOW_SUFFIX = re.compile(r"^(.+):\d+$")
_BODY_KEY = re.compile(
    rb'"(session_id|conversation_id|thread_id|prompt_cache_key)"\s*:\s*"((?:[^"\\]|\\.){1,512})"'
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

EMAIL_HEADERS = (b"x-subrouter-user-email", b"x-subrouter-user", b"x-user-email")
ACCOUNT_HEADERS = (b"x-subrouter-account-id", b"x-subrouter-account")


@attrs.frozen
class SessionKey:
    """
    A conversation's identity.

    :ivar agent: ``codex``, ``claude``, ``gemini`` or a name the client gave.
    :ivar key: the conversation id (a Codex window id reduced to its thread).
    :ivar source: where it came from: ``header:<name>``, ``query:<name>``,
        ``body:<name>`` or ``fallback``.
    """

    agent: str
    key: str
    source: str

    @property
    def fallback(self) -> bool:
        return self.source == "fallback"


def _first(headers: Headers, name: bytes) -> str | None:
    values = raw_values(headers, name)
    if not values:
        return None
    for value in values:
        text = value.decode("utf-8", "replace").strip()
        if text:
            return text
    return None


def canonical_thread(value: str) -> str:
    """
    Reduce a Codex window id ``<thread>:<window>`` to its thread, so every
    window of a thread shares one account.
    """
    match = _WINDOW_SUFFIX.match(value)
    return match.group(1) if match else value


def _clean(value: str) -> str | None:
    value = value.strip()
    if not value or len(value) > MAX_KEY_LENGTH or _CONTROL.search(value):
        return None
    return value


def key_from_headers(headers: Headers) -> tuple[str, str] | None:
    """
    The session key carried by a header, with its source, or None.

    One pass over the request's own header names (a dozen or so) picks out
    the session headers present, usually none or one, which are then tried
    in the order they are trusted: the same answer as asking for each of the
    seventeen names in turn, at a fraction of the lookups.
    """
    present: list[tuple[int, bytes]] | None = None
    for canonical in headers._rawHeaders:
        known = _SESSION_RANKS.get(canonical)
        if known is not None:
            if present is None:
                present = [known]
            else:
                present.append(known)
    if present is None:
        return None
    if len(present) > 1:
        present.sort()
    for _, name in present:
        value = _first(headers, name)
        if value is None:
            continue
        if name == b"x-codex-window-id":
            value = canonical_thread(value)
        cleaned = _clean(value)
        if cleaned is not None:
            return cleaned, "header:" + name.decode()
    return None


def key_from_query(query: bytes) -> tuple[str, str] | None:
    if not query:
        return None
    params = parse_qs(query, keep_blank_values=False)
    for name in QUERY_KEYS:
        for value in params.get(name, ()):
            cleaned = _clean(value.decode("utf-8", "replace"))
            if cleaned is not None:
                return cleaned, "query:" + name.decode()
    return None


def key_from_body(body: bytes, content_type: bytes | None) -> tuple[str, str] | None:
    """
    Scan a JSON body for a conversation id, without parsing it.
    ``session_id`` beats ``conversation_id``, which beats ``thread_id``, which
    beats ``prompt_cache_key``; among equals the first in the body wins.
    """
    if not body or len(body) > MAX_BODY_SCAN:
        return None
    if content_type is not None and b"json" not in content_type.lower():
        return None
    best: tuple[int, int, str] | None = None
    for match in _BODY_KEY.finditer(body):
        rank = BODY_KEYS.index(match.group(1))
        if best is not None and rank >= best[0]:
            continue
        try:
            value = json.loads(b'"' + match.group(2) + b'"')
        except ValueError:
            continue
        if not isinstance(value, str):
            continue
        cleaned = _clean(value)
        if cleaned is None:
            continue
        best = (rank, match.start(), cleaned)
        if rank == 0:
            break
    if best is None:
        return None
    return best[2], "body:" + BODY_KEYS[best[0]].decode()


def fallback_key(remote: str, user_agent: str, method: str, path: str) -> str:
    """
    The key of a request that names no conversation: the same client, agent,
    method and path share one.
    """
    digest = hashlib.sha256("\0".join((remote, user_agent, method, path)).encode()).hexdigest()
    return "fallback:" + digest[:24]


def agent_type(headers: Headers) -> str:
    """
    Which agent sent the request: ``X-Subrouter-Agent`` when valid, else
    inferred from the user agent and provider headers; ``codex`` by default.
    """
    named = _first(headers, b"x-subrouter-agent")
    if named is not None:
        lowered = named.lower()
        if _AGENT_NAME.match(lowered):
            return lowered
    user_agent = (_first(headers, b"user-agent") or "").lower()
    if "claude-cli" in user_agent or "claude-code" in user_agent:
        return "claude"
    if _any_header(headers, _CLAUDE_NAMES):
        return "claude"
    if _any_header(headers, _GEMINI_NAMES):
        return "gemini"
    return "codex"


def _canonical_names(names: Iterable[bytes]) -> frozenset[bytes]:
    return frozenset(canonical_name(name) for name in names)


def _any_header(headers: Headers, canonical: frozenset[bytes]) -> bool:
    # one set operation: nearly every request has none of them
    return not canonical.isdisjoint(headers._rawHeaders)


_CLAUDE_NAMES = _canonical_names(_CLAUDE_HEADERS)
#: a session header's canonical name: its rank among them and its own name
_SESSION_RANKS: dict[bytes, tuple[int, bytes]] = {
    canonical_name(name): (rank, name) for rank, name in enumerate(SESSION_HEADERS)
}
_GEMINI_NAMES = _canonical_names(_GEMINI_HEADERS)


def normalise_email(value: str) -> str | None:
    """
    The address in an RFC 5322 mailbox (``Alice <A@X.com>`` gives
    ``a@x.com``), lower-cased, or None when it is not an address.
    """
    value = value.strip()
    if not value or len(value) > 320:
        return None
    _, address = parseaddr(value)
    address = address.strip()
    if address.count("@") != 1 or _CONTROL.search(address) or " " in address:
        return None
    local, domain = address.split("@")
    if not local or not domain or "." not in domain.strip("."):
        return None
    return address.lower()


def user_email(headers: Headers) -> str | None:
    """
    The first valid address among the user-email headers; else the name of
    the client token the request came with (``X-Subrouter-Client``, set only
    by the guard, which removes any a client sends).
    """
    if not _any_header(headers, _EMAIL_OR_CLIENT_NAMES):
        return None
    for name in EMAIL_HEADERS:
        for raw in raw_values(headers, name) or ():
            email = normalise_email(raw.decode("utf-8", "replace"))
            if email is not None:
                return email
    client = raw_values(headers, b"x-subrouter-client")
    if client:
        return client[0].decode("utf-8", "replace")
    return None


_EMAIL_OR_CLIENT_NAMES = _canonical_names((*EMAIL_HEADERS, b"x-subrouter-client"))
_ACCOUNT_NAMES = _canonical_names(ACCOUNT_HEADERS)


class BadAccountSelector(ValueError):
    """
    ``X-Subrouter-Account-ID`` is present but unusable.
    """


def forced_account(headers: Headers) -> str | None:
    """
    The account a request forces with ``X-Subrouter-Account-ID`` (or
    ``X-Subrouter-Account``), trimmed; None when there is none.

    :raises BadAccountSelector: when the header is empty, too long, holds
        control characters, or appears twice with different values.
    """
    if not _any_header(headers, _ACCOUNT_NAMES):
        return None
    values: list[str] = []
    for name in ACCOUNT_HEADERS:
        for raw in raw_values(headers, name) or ():
            values.append(raw.decode("utf-8", "replace").strip())
    if not values:
        return None
    distinct = {v for v in values}
    if len(distinct) > 1:
        raise BadAccountSelector("X-Subrouter-Account-ID is given twice with different values")
    (value,) = distinct
    if not value:
        raise BadAccountSelector("X-Subrouter-Account-ID is empty")
    if len(value) > MAX_KEY_LENGTH or _CONTROL.search(value):
        raise BadAccountSelector("X-Subrouter-Account-ID is not a valid account id")
    return value


def match_account(selector: str, candidates: Iterable[tuple[str, str | None]]) -> str | None:
    """
    The id of the account a selector names: its id, its email, or for API
    keys the label without ``apikey:``, case-insensitively.

    :param candidates: ``(id, email)`` pairs.
    """
    wanted = selector.lower()
    for account_id, email in candidates:
        lowered = account_id.lower()
        if wanted == lowered or (email is not None and wanted == email.lower()):
            return account_id
        if lowered.startswith("apikey:") and wanted == lowered[len("apikey:") :]:
            return account_id
    return None
