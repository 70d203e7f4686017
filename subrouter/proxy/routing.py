# -*- test-case-name: tests.test_routing -*-
"""
Where a client path goes upstream, per account kind. Pure functions.

- ChatGPT (OAuth) logins go to the Codex backend with a leading ``/v1``
  removed: ``/v1/responses`` becomes ``<codex>/responses``.
- API keys go to the OpenAI API with ``/v1`` ensured: ``/responses`` becomes
  ``<openai>/v1/responses``.
- ``/backend-api/...`` (Codex Desktop's ChatGPT base URL) goes to the Codex
  backend's parent, for OAuth logins only.

The query string is kept byte for byte.
"""

from __future__ import annotations

import attrs

from subrouter.accounts.store import AccountKind

_BACKEND = b"/backend-api"


@attrs.frozen
class Upstreams:
    """
    The upstream base URLs, without a trailing slash.
    """

    codex: bytes
    openai: bytes

    @classmethod
    def from_text(cls, codex: str, openai: str) -> Upstreams:
        return cls(codex.rstrip("/").encode("ascii"), openai.rstrip("/").encode("ascii"))

    @property
    def backend(self) -> bytes:
        """
        The ChatGPT backend root: the Codex upstream without its ``/codex``.
        """
        if self.codex.endswith(b"/codex"):
            return self.codex[: -len(b"/codex")]
        return self.codex


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
    Whether ``path`` addresses the ChatGPT backend itself (``/backend-api/...``).
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


def upstream_url(upstreams: Upstreams, kind: AccountKind, path: bytes, query: bytes) -> bytes:
    """
    The full upstream URL for a client request.

    :param upstreams: the configured base URLs.
    :param kind: the kind of the chosen account.
    :param path: the client's path, starting with ``/``.
    :param query: the client's query string, without ``?``.
    """
    if kind is AccountKind.OAUTH:
        if is_backend_path(path):
            base, rest = upstreams.backend, path[len(_BACKEND) :] or b"/"
        else:
            base, rest = upstreams.codex, strip_v1(path)
    else:
        base, rest = upstreams.openai, ensure_v1(path)
    url = base + rest
    if query:
        url += b"?" + query
    return url
