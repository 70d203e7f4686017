# -*- test-case-name: tests.test_routing -*-
"""
The providers: where each kind of credential sends a request, and the headers
that carry the credential.

A provider is one small object: its base URL, its path rules and its
credential headers. The proxy and the relay ask
``Upstreams.provider(account.kind, account.provider)`` for the one that
matches the chosen account and never look at the kind themselves, so a new
provider is one new class here and one line in ``Upstreams``.
"""

from __future__ import annotations

from typing import Protocol

import attrs

_BACKEND = b"/backend-api"

#: the account kinds, as the store spells them (``AccountKind`` values)
OAUTH = "oauth"
APIKEY = "apikey"
#: the providers, as accounts name them (``Account.provider``)
OPENAI = "openai"
ANTHROPIC = "anthropic"

#: the beta flag Anthropic's API wants with a subscription's OAuth token
#: (``claude-code.md``: the CLI adds it in OAuth mode; the Go original
#: appends it the same way)
ANTHROPIC_OAUTH_BETA = b"oauth-2025-04-20"


class Provider(Protocol):
    """
    What the proxy needs of an upstream provider.
    """

    @property
    def name(self) -> str:
        """
        The provider's name, as logs and transcripts show it.
        """

    @property
    def root(self) -> bytes:
        """
        The base URL, as configured (without a trailing slash).
        """

    def url(self, path: bytes, query: bytes) -> bytes:
        """
        The full upstream URL for a client's path (starting with ``/``) and
        query (without ``?``).
        """

    def credential_headers(self, secret: str, workspace: str | None) -> list[tuple[bytes, bytes]]:
        """
        The headers that carry an account's credentials upstream.

        :raises UnicodeEncodeError: when the secret cannot go into a header.
        """


def _join(base: bytes, rest: bytes, query: bytes) -> bytes:
    url = base + rest
    if query:
        url += b"?" + query
    return url


@attrs.frozen
class ChatGPTBackend:
    """
    ChatGPT logins: the Codex backend (``/v1`` stripped) and, for
    ``/backend-api/...``, the ChatGPT backend root; the workspace id travels in
    ``ChatGPT-Account-ID``.
    """

    codex: bytes
    name: str = "chatgpt"

    @property
    def root(self) -> bytes:
        return self.codex

    @property
    def backend(self) -> bytes:
        """
        The ChatGPT backend root: the Codex upstream without its ``/codex``.
        """
        if self.codex.endswith(b"/codex"):
            return self.codex[: -len(b"/codex")]
        return self.codex

    def url(self, path: bytes, query: bytes) -> bytes:
        if is_backend_path(path):
            return _join(self.backend, path[len(_BACKEND) :] or b"/", query)
        return _join(self.codex, strip_v1(path), query)

    def credential_headers(self, secret: str, workspace: str | None) -> list[tuple[bytes, bytes]]:
        out = [(b"authorization", b"Bearer " + secret.encode("latin-1"))]
        if workspace:
            out.append((b"chatgpt-account-id", workspace.encode("latin-1")))
        return out


@attrs.frozen
class OpenAIAPI:
    """
    OpenAI API keys: the public API, always under ``/v1``.
    """

    base: bytes
    name: str = "openai"

    @property
    def root(self) -> bytes:
        return self.base

    def url(self, path: bytes, query: bytes) -> bytes:
        return _join(self.base, ensure_v1(path), query)

    def credential_headers(self, secret: str, workspace: str | None) -> list[tuple[bytes, bytes]]:
        return [(b"authorization", b"Bearer " + secret.encode("latin-1"))]


@attrs.frozen
class AnthropicAPI:
    """
    Anthropic's API (``/v1/messages``), for Claude subscriptions (OAuth) and
    Anthropic API keys; paths pass as the client sent them.

    A subscription's access token goes in ``Authorization: Bearer`` with
    :data:`ANTHROPIC_OAUTH_BETA` added to ``anthropic-beta`` (which
    :func:`~subrouter.upstream.headers.upstream_request_headers` adds to the
    client's list rather than replacing it); a key goes in ``x-api-key``,
    and that flag is taken out of the list (a Claude Code signed in with a
    subscription sends it, and it belongs to OAuth requests only). The
    client's ``Authorization`` and ``x-api-key`` are dropped for every
    provider, so its own credentials never pass.
    """

    base: bytes
    oauth: bool
    name: str = "anthropic"

    @property
    def root(self) -> bytes:
        return self.base

    def url(self, path: bytes, query: bytes) -> bytes:
        return _join(self.base, path, query)

    def credential_headers(self, secret: str, workspace: str | None) -> list[tuple[bytes, bytes]]:
        if self.oauth:
            return [
                (b"authorization", b"Bearer " + secret.encode("latin-1")),
                (b"anthropic-beta", ANTHROPIC_OAUTH_BETA),
            ]
        return [
            (b"x-api-key", secret.encode("latin-1")),
            (b"anthropic-beta", b"-" + ANTHROPIC_OAUTH_BETA),
        ]


@attrs.frozen
class Upstreams:
    """
    The configured providers, by the provider and kind of account each serves.
    """

    chatgpt: ChatGPTBackend
    openai: OpenAIAPI
    claude: AnthropicAPI = AnthropicAPI(b"https://api.anthropic.com", oauth=True)
    anthropic_key: AnthropicAPI = AnthropicAPI(b"https://api.anthropic.com", oauth=False)

    @classmethod
    def from_text(
        cls, codex: str, openai: str, anthropic: str = "https://api.anthropic.com"
    ) -> Upstreams:
        base = anthropic.rstrip("/").encode("ascii")
        return cls(
            ChatGPTBackend(codex.rstrip("/").encode("ascii")),
            OpenAIAPI(openai.rstrip("/").encode("ascii")),
            AnthropicAPI(base, oauth=True),
            AnthropicAPI(base, oauth=False),
        )

    def provider(self, kind: str, provider: str) -> Provider:
        """
        The provider for an account of ``kind`` (``oauth`` or ``apikey``)
        from ``provider`` (``openai`` or ``anthropic``).
        """
        if provider == ANTHROPIC:
            return self.claude if kind == OAUTH else self.anthropic_key
        if kind == OAUTH:
            return self.chatgpt
        return self.openai


def split_uri(uri: bytes) -> tuple[bytes, bytes]:
    """
    Split a request target into its path and its query (without ``?``).
    An absolute-form target keeps only its path.
    """
    path, _, query = uri.partition(b"?")
    if b"://" in path[:16]:
        rest = path.split(b"://", 1)[1]
        slash = rest.find(b"/")
        path = rest[slash:] if slash >= 0 else b"/"
    if not path.startswith(b"/"):
        path = b"/" + path
    return path, query


def is_backend_path(path: bytes) -> bool:
    """
    Whether ``path`` addresses the ChatGPT backend itself (``/backend-api/...``),
    which only ChatGPT logins can serve.
    """
    return path == _BACKEND or path.startswith(_BACKEND + b"/")


def strip_v1(path: bytes) -> bytes:
    if path == b"/v1":
        return b"/"
    if path.startswith(b"/v1/"):
        return path[3:]
    return path


def ensure_v1(path: bytes) -> bytes:
    if path == b"/v1" or path.startswith(b"/v1/"):
        return path
    if path == b"/":
        return b"/v1"
    return b"/v1" + path
