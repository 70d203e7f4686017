# -*- test-case-name: tests.test_accounts -*-
"""
What an account is, as every reader of the store sees it: :class:`Account`
(immutable, secrets kept out of ``repr``), its kind, the error a file that
cannot be used raises, a scanned file's result, and the check that a
credential can go into an HTTP header.
"""

from __future__ import annotations

from enum import StrEnum

import attrs

from subrouter.upstream.routing import OPENAI

#: what tells a changed file: its size, mtime (ns) and inode
FileVersion = tuple[int, int, int]


class AccountKind(StrEnum):
    """
    The two kinds of account: a subscription login (OAuth) or an API key.
    """

    OAUTH = "oauth"
    APIKEY = "apikey"


@attrs.frozen
class Account:
    """
    One account, as read from its file. Secrets are kept out of ``repr`` so an
    account can be logged or shown in a traceback safely.

    :ivar id: the ``cx`` id: the email for ChatGPT logins, ``apikey:<label>``
        for API keys, ``claude:<profile>`` for Claude profiles.
    :ivar provider: whose credential it is: ``openai`` (ChatGPT logins and
        OpenAI keys) or ``anthropic`` (Claude profiles and Anthropic keys).
    :ivar secret: the OAuth access token or the API key.
    :ivar problem: why the file's content cannot be used, or None.
    """

    id: str
    kind: AccountKind
    source: str
    provider: str = OPENAI
    email: str | None = None
    plan: str | None = None
    chatgpt_account_id: str | None = None
    expires_at: float | None = None
    secret: str = attrs.field(default="", repr=False)
    refresh_token: str = attrs.field(default="", repr=False)
    id_token: str = attrs.field(default="", repr=False)
    problem: str | None = None

    @property
    def is_oauth(self) -> bool:
        return self.kind is AccountKind.OAUTH

    @property
    def is_codex_login(self) -> bool:
        """
        A ChatGPT login: what ``wham/usage``, ``cx switch`` and Codex's own
        ``auth.json`` deal with.
        """
        return self.kind is AccountKind.OAUTH and self.provider == OPENAI


class AccountFileError(Exception):
    """
    An account file that cannot be used; the message names the reason but
    never any of the file's content.
    """


def header_value_problem(value: str) -> str | None:
    """
    What keeps ``value`` (a token, a key, a workspace id) from being sent as
    an HTTP header value, in words that never quote it; None when nothing.

    Credentials are visible ASCII (JWTs, ``sk-...`` keys, ids): anything else
    would fail to encode, split the header, or be mangled on the way.
    """
    if value.isascii() and value.isprintable() and " " not in value:
        return None
    if any(c in "\r\n" for c in value):
        return "a line break"
    if any(ord(c) > 0xFF for c in value):
        return "characters outside Latin-1"
    if not value.isprintable():
        return "control characters"
    if not value.isascii():
        return "non-ASCII characters"
    return "a space"


@attrs.frozen
class ScannedFile:
    """
    What one scan found in one file: its version, and an account or an error.
    """

    path: str
    version: FileVersion
    account: Account | None
    error: str | None
