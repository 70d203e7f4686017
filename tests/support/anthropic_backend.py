"""
A fake Anthropic API that the real Claude Code CLI accepts, for end-to-end
tests on 127.0.0.1 (TLS with the test CA, or plain HTTP).

:class:`FakeAnthropicBackend` serves on one port:

- ``POST /v1/messages`` (any query, e.g. Claude Code's ``?beta=true``): a
  Messages answer, streamed as Server-Sent Events when the body asks for
  ``"stream": true`` (``message_start`` with ``usage``,
  ``content_block_start``, ``ping``, ``content_block_delta``,
  ``content_block_stop``, ``message_delta`` with ``usage``, ``message_stop``)
  or as one JSON ``message`` otherwise. Subscription (OAuth) answers carry the
  ``anthropic-ratelimit-unified-*`` headers.
- ``GET /api/oauth/usage``: the OAuth usage document (``five_hour``,
  ``seven_day``) of the bearer's subscription.
- ``POST /v1/oauth/token``: the refresh grant, rotating both tokens.

On demand: a usage limit for chosen credentials (429 ``rate_limit_error``
with the unified status ``rejected``), overloads (529 ``overloaded_error``,
for the next N messages, with an optional ``retry-after``), a token endpoint
that rejects chosen refresh tokens or waits on a gate. Every request is
recorded with its credentials.

What the real CLI (2.1.332) sends is described in
``/work/shared/reference/claude-code.md``; the event shapes follow Anthropic's
streaming Messages documentation.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.web.server import NOT_DONE_YET, Request, Site

from .fakeserver import FakeServer, QuietSite, Root
from .tlsca import TestCA

DEFAULT_REPLY = "hello from fake claude"
DEFAULT_MODEL = "claude-sonnet-4-5"
USAGE_LIMIT_MESSAGE = "Claude AI usage limit reached"


def sse(event: dict[str, Any]) -> bytes:
    """One event as the API frames it: ``event: <type>`` and one ``data:`` line."""
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def message_events(
    text: str = DEFAULT_REPLY,
    *,
    model: str = DEFAULT_MODEL,
    input_tokens: int = 20,
    cache_creation: int = 300,
    cache_read: int = 1000,
    output_tokens: int = 7,
) -> list[dict[str, Any]]:
    """
    The events of one streamed assistant message saying ``text``.
    """
    message_id = f"msg_{secrets.token_hex(12)}"
    half = max(len(text) // 2, 1)
    return [
        {"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens,
                      "cache_creation_input_tokens": cache_creation,
                      "cache_read_input_tokens": cache_read, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": text[:half]}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": text[half:]}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": output_tokens}},
        {"type": "message_stop"},
    ]


def message_json(text: str = DEFAULT_REPLY, *, model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """One non-streamed assistant message."""
    return {
        "id": f"msg_{secrets.token_hex(12)}", "type": "message", "role": "assistant",
        "model": model, "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 20, "cache_creation_input_tokens": 300,
                  "cache_read_input_tokens": 1000, "output_tokens": 7},
    }


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message},
            "request_id": f"req_{secrets.token_hex(8)}"}


@attrs.define
class SeenRequest:
    """
    One request as the backend saw it.

    :ivar bearer: the ``Authorization: Bearer`` token, or None.
    :ivar api_key: the ``x-api-key``, or None.
    """

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    status: int = 0

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    @property
    def bearer(self) -> str | None:
        value = self.header("authorization")
        if value is None or not value.lower().startswith("bearer "):
            return None
        return value[7:].strip()

    @property
    def api_key(self) -> str | None:
        return self.header("x-api-key")

    @property
    def credential(self) -> str | None:
        """The bearer token or the key, whichever came."""
        return self.bearer or self.api_key

    def json(self) -> Any:
        return json.loads(self.body)


class _Root(Root):
    """
    Hands every request to the backend (a resource tests can also drive in
    memory with ``StubTreq``).
    """

    def __init__(self, backend: FakeAnthropicBackend) -> None:
        super().__init__(backend._dispatch)
        self.backend = backend


class FakeAnthropicBackend(FakeServer):
    """
    Anthropic's Messages API, OAuth usage and token endpoints on 127.0.0.1.

    Settings (plain attributes; change them at any time):

    :ivar reply_text: the assistant's text.
    :ivar usage_limit_for: bearer tokens and API keys whose messages get the
        usage-limit 429.
    :ivar resets_in_seconds: when that limit resets.
    :ivar overload_next: how many of the next messages get a 529.
    :ivar overload_retry_after: the ``retry-after`` of those 529s (None: none).
    :ivar utilization: per bearer token, ``(five_hour, seven_day)`` used
        fractions (0 to 1) for headers and the usage endpoint; others 0.1.
    :ivar reject_refresh: refresh tokens the token endpoint refuses (400
        ``invalid_grant``).
    :ivar token_gate: when set, the token endpoint waits for it to fire.
    :ivar unified_headers: whether subscription answers carry the
        ``anthropic-ratelimit-unified-*`` headers (a 429 always does).

    Records:

    :ivar requests: every request, in order.
    :ivar refreshes: the refresh tokens the token endpoint was given.
    """

    def __init__(self, reactor: Any, *, ca: TestCA | None = None,
                 reply_text: str = DEFAULT_REPLY, usage_limit_for: Iterable[str] = ()) -> None:
        super().__init__(reactor, ca.server_options() if ca is not None else None)
        self.reply_text = reply_text
        self.usage_limit_for: set[str] = set(usage_limit_for)
        self.resets_in_seconds = 3600
        self.overload_next = 0
        self.overload_retry_after: int | None = None
        self.utilization: dict[str, tuple[float, float]] = {}
        self.reject_refresh: set[str] = set()
        self.token_gate: Deferred[None] | None = None
        self.unified_headers = True
        self.requests: list[SeenRequest] = []
        self.refreshes: list[str] = []

    # -- lifecycle

    def make_site(self) -> Site:
        return QuietSite(_Root(self))

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return self.base_url + "/v1/oauth/token"

    @property
    def usage_url(self) -> str:
        return self.base_url + "/api/oauth/usage"

    # -- records

    def messages(self) -> list[SeenRequest]:
        """The ``POST /v1/messages`` requests, in order."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    def message_credentials(self) -> list[str | None]:
        """The credential (bearer or key) of each message request."""
        return [r.credential for r in self.messages()]

    # -- answers

    def _windows(self, token: str | None) -> tuple[float, float]:
        return self.utilization.get(token or "", (0.1, 0.1))

    def _unified_headers(self, request: Request, token: str, rejected: bool) -> None:
        now = int(time.time())
        five, seven = self._windows(token)
        if rejected:
            five = 1.0
        five_reset = now + (self.resets_in_seconds if rejected else 18000)
        values = {
            "status": "rejected" if rejected else "allowed",
            "5h-status": "rejected" if rejected else "allowed",
            "5h-utilization": f"{five:g}",
            "5h-reset": str(five_reset),
            "7d-status": "allowed",
            "7d-utilization": f"{seven:g}",
            "7d-reset": str(now + 6 * 86400),
            "representative-claim": "five_hour",
            "fallback-percentage": "0.5",
            "reset": str(five_reset),
            "overage-status": "rejected",
            "overage-disabled-reason": "org_level_disabled",
        }
        for suffix, value in values.items():
            request.setHeader(f"anthropic-ratelimit-unified-{suffix}", value)

    def _dispatch(self, request: Request) -> int | bytes:
        assert request.content is not None
        seen = SeenRequest(
            method=request.method.decode("ascii"),
            path=request.path.decode("latin-1"),
            query=request.uri.partition(b"?")[2].decode("latin-1"),
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1"))
                     for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs],
            body=request.content.read(),
        )
        self.requests.append(seen)
        if seen.method == "POST" and seen.path == "/v1/messages":
            return self._message(request, seen)
        if seen.method == "GET" and seen.path == "/api/oauth/usage":
            if seen.bearer is None:
                return self._json(request, seen, 401, error_body("authentication_error", "no"))
            five, seven = self._windows(seen.bearer)
            now = time.time()

            def at(seconds: float) -> str:
                return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now + seconds))

            return self._json(request, seen, 200, {
                "five_hour": {"utilization": five * 100, "resets_at": at(18000)},
                "seven_day": {"utilization": seven * 100, "resets_at": at(6 * 86400)},
                "seven_day_opus": None,
                "extra_usage": {"is_enabled": False},
            })
        if seen.method == "POST" and seen.path == "/v1/oauth/token":
            return self._token(request, seen)
        return self._json(request, seen, 404, error_body("not_found_error", "Not Found"))

    def _json(self, request: Request, seen: SeenRequest, status: int, body: Any) -> bytes:
        seen.status = status
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"request-id", f"req_{secrets.token_hex(8)}".encode())
        return json.dumps(body).encode()

    def _message(self, request: Request, seen: SeenRequest) -> int | bytes:
        token = seen.credential
        oauth = seen.bearer is not None
        if token is None:
            return self._json(request, seen, 401, error_body(
                "authentication_error", "x-api-key header is required"))
        if self.overload_next > 0:
            self.overload_next -= 1
            if self.overload_retry_after is not None:
                request.setHeader(b"retry-after", str(self.overload_retry_after).encode())
            return self._json(request, seen, 529, error_body("overloaded_error", "Overloaded"))
        if token in self.usage_limit_for:
            if oauth:
                self._unified_headers(request, token, rejected=True)
            request.setHeader(b"retry-after", str(self.resets_in_seconds).encode())
            return self._json(request, seen, 429, error_body(
                "rate_limit_error",
                f"{USAGE_LIMIT_MESSAGE}|{int(time.time()) + self.resets_in_seconds}"))
        if oauth and self.unified_headers:
            self._unified_headers(request, token, rejected=False)
        try:
            document = seen.json()
        except ValueError:
            document = {}
        model = document.get("model") if isinstance(document, dict) else None
        model = model if isinstance(model, str) and model else DEFAULT_MODEL
        if isinstance(document, dict) and document.get("stream"):
            seen.status = 200
            request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            request.setHeader(b"cache-control", b"no-cache")
            return b"".join(sse(e) for e in message_events(self.reply_text, model=model))
        return self._json(request, seen, 200, message_json(self.reply_text, model=model))

    def _token(self, request: Request, seen: SeenRequest) -> int:
        try:
            grant = seen.json()
        except ValueError:
            grant = {}
        refresh = grant.get("refresh_token") if isinstance(grant, dict) else None
        self.refreshes.append(str(refresh))

        def answer(_: object = None) -> None:
            if not isinstance(refresh, str) or refresh in self.reject_refresh or grant.get(
                "grant_type") != "refresh_token":
                body = self._json(request, seen, 400, {
                    "error": "invalid_grant", "error_description": "Refresh token not found"})
            else:
                body = self._json(request, seen, 200, {
                    "token_type": "Bearer",
                    "access_token": f"sk-ant-oat01-{secrets.token_hex(16)}",
                    "refresh_token": f"sk-ant-ort01-{secrets.token_hex(16)}",
                    "expires_in": 28800,
                    "scope": "user:inference user:profile",
                })
            request.write(body)
            request.finish()

        if self.token_gate is not None:
            self.token_gate.addCallback(answer)
        else:
            answer()
        return NOT_DONE_YET


def write_claude_profile(store: Any, name: str, access: str, *, refresh: str = "",
                         expires_at: float | None = None, plan: str = "max",
                         active: bool = False) -> Any:
    """
    Register a Claude profile in a ``cx`` store (``claude.json``) with a
    signed-in ``.credentials.json``; returns the profile's config folder.
    """
    import os
    import pathlib

    store = pathlib.Path(store)
    registry_path = store / "claude.json"
    try:
        registry = json.loads(registry_path.read_text())
    except (OSError, ValueError):
        registry = {"profiles": {}}
    folder_name = name.lower().replace("@", "-").replace(".", "-")
    registry["profiles"][name] = {"name": name, "createdAt": "2026-01-01T00:00:00Z",
                                  "dir": folder_name}
    if active or "active" not in registry:
        registry["active"] = name
    store.mkdir(parents=True, exist_ok=True)
    registry_path.write_text(json.dumps(registry))
    folder = store / "claude" / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    expires = expires_at if expires_at is not None else time.time() + 30 * 86400
    credentials = {
        "claudeAiOauth": {
            "accessToken": access,
            "refreshToken": refresh or f"sk-ant-ort01-{secrets.token_hex(8)}",
            "expiresAt": int(expires * 1000),
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": plan,
            "rateLimitTier": "default_claude_max_5x",
        },
        "someOtherTool": {"kept": True},
    }
    path = folder / ".credentials.json"
    path.write_text(json.dumps(credentials))
    os.chmod(path, 0o600)
    return folder


def write_anthropic_key(store: Any, label: str, key: str) -> Any:
    """An Anthropic API-key account file, as ``cx add-key --provider anthropic`` writes it."""
    import pathlib

    folder = pathlib.Path(store) / "accounts"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"apikey_{label}.json"
    path.write_text(json.dumps({
        "email": f"apikey:{label}", "provider": "anthropic", "addedAt": "2026-01-01T00:00:00Z",
        "auth": {"auth_mode": "apikey", "ANTHROPIC_API_KEY": key},
    }))
    return path
