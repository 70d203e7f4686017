"""
A fake ChatGPT Codex backend that the real Codex CLI accepts, for end-to-end
tests on 127.0.0.1.

:class:`FakeCodexBackend` serves, on one port and under one base path (by
default ``/backend-api/codex``, like the real backend), the two transports the
CLI speaks for a model turn:

- ``POST <base>/responses``: a Server-Sent Events stream of one complete
  Responses turn (:func:`turn_events`);
- ``GET <base>/responses`` with ``Upgrade: websocket``: the Responses
  WebSocket, answering every ``response.create`` text message with the same
  events as JSON text messages, any number of turns per connection.

It can refuse the WebSocket upgrade (the CLI then falls back to SSE) and
answer chosen credentials with a usage-limit error on either transport. Every
request, every WebSocket message and every credential is recorded for the
test to read back. The CLI's side requests get small plausible answers: the
model list (``<base>/models``), the workspace discovery the CLI will not start
a turn without (``/backend-api/wham/accounts/check``) and the usage endpoint
(``/backend-api/wham/usage``); anything else is a JSON 404.

What the real CLI (0.169.0) needs, found by running it against this backend:

- A turn ends only at ``response.completed``; without it the CLI waits for
  its stream idle timeout. The text it prints is the message item of
  ``response.output_item.done``; deltas alone print nothing.
- On a new WebSocket the CLI first sends a *prewarm* ``response.create`` with
  ``"generate": false`` and empty ``input``; it is answered with
  ``response.created`` and an empty ``response.completed``.
- A refused upgrade with status 426 makes the CLI fall back to SSE at once;
  any other status (e.g. 404) is retried five times with backoff first
  (about six seconds).
- The usage-limit error on the WebSocket is a message
  ``{"type": "error", "status": 429, "error": {...}}``: the CLI maps it to
  the HTTP error that ``status`` names. (A ``response.failed`` is a
  retryable stream error to the CLI, not a usage limit.)

:meth:`FakeCodexBackend.stop` aborts every open connection, HTTP and
WebSocket, so a test leaves nothing behind.
"""

from __future__ import annotations

import gzip
import json
import secrets
import shutil
import subprocess
import time
import zlib
from collections.abc import Iterable
from typing import Any, cast

import attrs
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.web.server import Request, Site

from .fakeserver import FakeServer, QuietSite, Root
from .tlsca import TestCA

DEFAULT_BASE_PATH = "/backend-api/codex"
DEFAULT_REPLY = "hello from fake codex"
#: The model named in the events when the request names none.
DEFAULT_MODEL = "gpt-5-codex"
USAGE_LIMIT_MESSAGE = "The usage limit has been reached"
USAGE_PATH = "/backend-api/wham/usage"
#: Where the CLI discovers the workspace it routes to; it will not start a
#: turn until this answers with the signed-in account.
ACCOUNTS_CHECK_PATH = "/backend-api/wham/accounts/check"


# --------------------------------------------------------------------------
# Event shapes


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str | None) -> dict[str, Any]:
    """An assistant message item; in progress and empty while ``text`` is ``None``."""
    return {
        "id": item_id,
        "type": "message",
        "status": "in_progress" if text is None else "completed",
        "role": "assistant",
        "content": [] if text is None else [_text_part(text)],
    }


def usage_block(
    *,
    input_tokens: int = 12,
    cached_tokens: int = 0,
    output_tokens: int = 5,
    reasoning_tokens: int = 0,
) -> dict[str, Any]:
    """
    A ``response.usage`` object as ``response.completed`` carries it.

    :param input_tokens: prompt tokens, cached ones included.
    :param cached_tokens: how many of ``input_tokens`` came from the cache.
    :param output_tokens: completion tokens, reasoning ones included.
    :param reasoning_tokens: how many of ``output_tokens`` were reasoning.
    """
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


class _ResponseShell:
    """The ``response`` object of one turn at its successive states."""

    def __init__(self, response_id: str | None, model: str) -> None:
        self.id = response_id or f"resp_{secrets.token_hex(12)}"
        self.model = model
        self.created_at = int(time.time())

    def at(
        self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": False,
            "usage": usage,
        }


def _numbered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


def turn_events(
    reply_text: str = DEFAULT_REPLY,
    *,
    model: str = DEFAULT_MODEL,
    response_id: str | None = None,
    usage: dict[str, Any] | None = None,
    deltas: int = 3,
) -> list[dict[str, Any]]:
    """
    The events of one complete Responses turn whose output is one assistant
    message, in order: ``response.created``, ``response.in_progress``,
    ``response.output_item.added``, ``response.content_part.added``,
    ``response.output_text.delta`` (``deltas`` pieces),
    ``response.output_text.done``, ``response.content_part.done``,
    ``response.output_item.done``, ``response.completed``.

    :param reply_text: the assistant's text.
    :param model: the model the response names.
    :param response_id: the response id; a fresh ``resp_...`` if ``None``.
    :param usage: ``response.usage`` for ``response.completed``; a small
        :func:`usage_block` if ``None``.
    :param deltas: into how many delta events the text is cut (at least one).
    """
    shell = _ResponseShell(response_id, model)
    item_id = f"msg_{secrets.token_hex(12)}"
    usage = usage if usage is not None else usage_block()
    step = max(1, -(-len(reply_text) // max(1, deltas)))
    pieces = [reply_text[i : i + step] for i in range(0, len(reply_text), step)] or [""]
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": shell.at("in_progress", [], None)},
        {"type": "response.in_progress", "response": shell.at("in_progress", [], None)},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": _message_item(item_id, None),
        },
        {"type": "response.content_part.added", **where, "part": _text_part("")},
    ]
    events += [
        {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
        for piece in pieces
    ]
    events += [
        {"type": "response.output_text.done", **where, "text": reply_text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": _text_part(reply_text)},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": _message_item(item_id, reply_text),
        },
        {
            "type": "response.completed",
            "response": shell.at("completed", [_message_item(item_id, reply_text)], usage),
        },
    ]
    return _numbered(events)


def prewarm_events(*, model: str = DEFAULT_MODEL) -> list[dict[str, Any]]:
    """
    The answer to a ``"generate": false`` request (the CLI's WebSocket
    prewarm): ``response.created`` and a ``response.completed`` with no output.

    :param model: the model the response names.
    """
    shell = _ResponseShell(None, model)
    empty = usage_block(input_tokens=0, output_tokens=0)
    return _numbered(
        [
            {"type": "response.created", "response": shell.at("in_progress", [], None)},
            {"type": "response.completed", "response": shell.at("completed", [], empty)},
        ]
    )


def usage_limit_body(resets_in_seconds: int = 600, plan_type: str = "plus") -> dict[str, Any]:
    """
    The JSON body of the backend's HTTP 429 for an exhausted plan, which the
    CLI reports as "You've hit your usage limit".

    :param resets_in_seconds: when the limit resets, from now.
    :param plan_type: the ChatGPT plan the error names.
    """
    return {
        "error": {
            "type": "usage_limit_reached",
            "message": USAGE_LIMIT_MESSAGE,
            "plan_type": plan_type,
            "resets_at": int(time.time()) + resets_in_seconds,
            "resets_in_seconds": resets_in_seconds,
        }
    }


def usage_limit_event(resets_in_seconds: int = 600, plan_type: str = "plus") -> dict[str, Any]:
    """
    The same error as a Responses WebSocket message. The CLI maps
    ``{"type": "error", "status": <HTTP status>, ...}`` to the HTTP error that
    ``status`` names (it ignores an ``error`` message without ``status``), and
    applies ``headers`` as if they were response headers.

    :param resets_in_seconds: when the limit resets, from now.
    :param plan_type: the ChatGPT plan the error names.
    """
    return {
        "type": "error",
        "status": 429,
        **usage_limit_body(resets_in_seconds, plan_type),
        "headers": {
            "x-codex-primary-used-percent": "100.0",
            "x-codex-primary-window-minutes": "300",
            "x-codex-primary-reset-after-seconds": str(resets_in_seconds),
        },
    }


def sse_frame(event: dict[str, Any]) -> bytes:
    """
    One Server-Sent Event as the backend frames it: ``event: <type>`` and one
    ``data:`` line of compact JSON.
    """
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


# --------------------------------------------------------------------------
# What arrived


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """
    A request body without its ``Content-Encoding``. The CLI compresses
    request bodies with zstd when it signs in with ChatGPT (unless the
    ``enable_request_compression`` feature is off); Python 3.11 has no zstd,
    so that takes the ``zstandard`` package or the ``zstd`` command.

    :param body: the body as it arrived.
    :param content_encoding: the ``Content-Encoding`` header, if any.
    :raises ValueError: for an encoding it cannot undo.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "zstd":
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            command = shutil.which("zstd")
            if command is None:
                raise ValueError("a zstd body, and neither zstandard nor zstd is here") from None
            done = subprocess.run(
                [command, "-d", "-c", "-q"], input=body, capture_output=True, check=True
            )
            return done.stdout
        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(body))
    raise ValueError(f"cannot decode a {encoding!r} body")


@attrs.define
class BackendRequest:
    """
    One HTTP request, or one WebSocket connection, as the backend saw it.

    :ivar transport: ``"http"`` or ``"websocket"``.
    :ivar method: the request method (``"GET"`` for a WebSocket handshake).
    :ivar path: the path, without the query.
    :ivar query: the raw query string without ``?``; ``""`` if none.
    :ivar headers: every header as ``(lower-cased name, value)``.
    :ivar body: the HTTP request body as it arrived, maybe compressed (see
        :meth:`json`); ``b""`` for a WebSocket.
    :ivar messages: for a WebSocket, every text message received, parsed as
        JSON (the raw text if it was not JSON), in order.
    :ivar status: the HTTP status the backend answered with (``101`` for an
        accepted WebSocket).
    """

    transport: str
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    messages: list[Any] = attrs.field(factory=list)
    status: int = 0

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or ``None``."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case)."""
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]

    def json(self) -> Any:
        """The HTTP body, decompressed (see :func:`decode_body`), parsed as JSON."""
        return json.loads(decode_body(self.body, self.header("content-encoding")))

    def turns(self, *, prewarm: bool = False) -> list[dict[str, Any]]:
        """
        The ``response.create`` requests this request carried: the JSON body
        of a ``POST .../responses``, or each ``response.create`` message of a
        WebSocket.

        :param prewarm: include the CLI's ``"generate": false`` prewarms.
        """
        if self.transport == "websocket":
            found = [
                m
                for m in self.messages
                if isinstance(m, dict) and m.get("type") == "response.create"
            ]
        elif self.method == "POST" and self.path.endswith("/responses"):
            found = [self.json()]
        else:
            return []
        return [t for t in found if prewarm or t.get("generate") is not False]


def _headers_of(request: Request) -> list[tuple[str, str]]:
    return [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
    ]


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


# --------------------------------------------------------------------------
# The WebSocket


class _ResponsesSocket(WebSocketServerProtocol):
    """
    One Responses WebSocket: each ``response.create`` gets one turn's events
    (or the usage-limit error), as text messages.
    """

    backend: FakeCodexBackend
    record: BackendRequest
    limited: bool

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        text = payload.decode("utf-8", "replace")
        try:
            message: Any = json.loads(text)
        except ValueError:
            message = text
        self.record.messages.append(message)
        self.backend.messages_received += 1
        if not isinstance(message, dict) or message.get("type") != "response.create":
            return
        if self.limited:
            self._send_event(self.backend.usage_limit_event())
            return
        for event in self.backend.events_for(message):
            self._send_event(event)

    def _send_event(self, event: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(event, separators=(",", ":")).encode("utf-8"))


class _SocketFactory(WebSocketServerFactory):
    """
    Builds :class:`_ResponsesSocket` protocols; the backend hands over the
    handshake's record just before autobahn asks for the protocol.
    """

    protocol = _ResponsesSocket

    def __init__(self, backend: FakeCodexBackend) -> None:
        super().__init__()
        self.backend = backend
        self.pending: tuple[BackendRequest, bool] | None = None

    def buildProtocol(self, addr: Any) -> _ResponsesSocket:
        protocol = cast(_ResponsesSocket, super().buildProtocol(addr))
        assert self.pending is not None, "a WebSocket without a handshake record"
        protocol.backend = self.backend
        protocol.record, protocol.limited = self.pending
        self.pending = None
        return protocol


# --------------------------------------------------------------------------
# The HTTP side


class FakeCodexBackend(FakeServer):
    """
    The Codex backend's Responses endpoint over HTTP/SSE and WebSocket, on
    one listening port on 127.0.0.1.

    Settings (plain attributes; change them at any time):

    :ivar reply_text: the assistant's text in every turn.
    :ivar refuse_websocket: answer WebSocket upgrades with
        :attr:`refuse_status` instead of accepting them.
    :ivar refuse_status: the status a refused upgrade gets; 426 (the default)
        makes the CLI fall back to SSE at once, others after five retries.
    :ivar usage_limit_for: bearer tokens and ``ChatGPT-Account-ID`` values
        whose turns get the usage-limit error (HTTP 429, or an ``error``
        message on the WebSocket).
    :ivar resets_in_seconds: when the usage-limit error says the limit resets.
    :ivar workspace_backend_origin: the workspace origin the accounts check
        names. The CLI's built-in provider sends its turns to that origin and
        insists it is HTTPS; ``NO_CONSTRAINT`` (the default) keeps the origin
        of the CLI's ``chatgpt_base_url``, which must then be HTTPS itself.

    Records:

    :ivar requests: every HTTP request and WebSocket handshake, in order.
    :ivar credentials: ``(Authorization, ChatGPT-Account-ID)`` of each, in
        the same order (``None`` for a missing header).
    :ivar websocket_connections: WebSocket upgrades seen (accepted or not).
    :ivar http_posts: HTTP ``POST`` requests seen (any path).
    :ivar messages_received: WebSocket text messages received, all told.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        base_path: str = DEFAULT_BASE_PATH,
        reply_text: str = DEFAULT_REPLY,
        ca: TestCA | None = None,
        refuse_websocket: bool = False,
        refuse_status: int = 426,
        usage_limit_for: Iterable[str] = (),
    ) -> None:
        """
        :param reactor: a reactor providing ``IReactorTCP`` and ``IReactorTime``.
        :param base_path: where the backend lives; ``/responses`` and
            ``/models`` are under it.
        :param reply_text: see :attr:`reply_text`.
        :param ca: serve TLS (``https://``, ``wss://``) with a certificate from
            this CA for ``localhost`` and ``127.0.0.1``; plain HTTP if ``None``.
        :param refuse_websocket: see :attr:`refuse_websocket`.
        :param refuse_status: see :attr:`refuse_status`.
        :param usage_limit_for: see :attr:`usage_limit_for`.
        """
        super().__init__(reactor, ca.server_options() if ca is not None else None)
        stripped = base_path.strip("/")
        self.base_path = "/" + stripped if stripped else ""
        self.reply_text = reply_text
        self.refuse_websocket = refuse_websocket
        self.refuse_status = refuse_status
        self.usage_limit_for: set[str] = set(usage_limit_for)
        self.resets_in_seconds = 600
        self.workspace_backend_origin = "NO_CONSTRAINT"
        self.requests: list[BackendRequest] = []
        self.credentials: list[tuple[str | None, str | None]] = []
        self.websocket_connections = 0
        self.http_posts = 0
        self.messages_received = 0
        self._ca = ca
        self._socket_factory = _SocketFactory(self)
        self._socket_resource = WebSocketResource(self._socket_factory)

    # -- lifecycle

    def make_site(self) -> Site:
        return QuietSite(Root(self._dispatch))

    # -- addresses

    @property
    def ca_pem_path(self) -> str | None:
        """The CA certificate to trust (``CODEX_CA_CERTIFICATE``), with TLS."""
        return self._ca.ca_pem_path if self._ca is not None else None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (``https://`` with TLS)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def codex_url(self) -> str:
        """The Codex backend: :attr:`base_url` + the base path."""
        return self.base_url + self.base_path

    @property
    def chatgpt_url(self) -> str:
        """The ChatGPT backend root the CLI's ``chatgpt_base_url`` takes."""
        return self.base_url + "/backend-api/"

    @property
    def ws_url(self) -> str:
        """The Responses WebSocket: ``ws(s)://127.0.0.1:<port><base>/responses``."""
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://127.0.0.1:{self.port}{self.base_path}/responses"

    # -- reading the records

    def turns(self, *, prewarm: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """
        Every turn asked for, in order, as ``(transport, request JSON)``.

        :param prewarm: include the CLI's ``"generate": false`` prewarms.
        """
        return [(r.transport, t) for r in self.requests for t in r.turns(prewarm=prewarm)]

    def requests_to(self, path_suffix: str, transport: str | None = None) -> list[BackendRequest]:
        """
        The recorded requests whose path ends with ``path_suffix``.

        :param transport: only ``"http"`` or only ``"websocket"`` ones.
        """
        return [
            r
            for r in self.requests
            if r.path.endswith(path_suffix) and transport in (None, r.transport)
        ]

    # -- answers

    def events_for(self, turn: dict[str, Any]) -> list[dict[str, Any]]:
        """
        The events answering one ``response.create`` (HTTP body or WebSocket
        message): a complete turn with :attr:`reply_text`, or an empty one for
        a prewarm, naming the model the request asked for.
        """
        model = turn.get("model")
        model = model if isinstance(model, str) and model else DEFAULT_MODEL
        if turn.get("generate") is False:
            return prewarm_events(model=model)
        return turn_events(self.reply_text, model=model)

    def usage_limit_event(self) -> dict[str, Any]:
        """The WebSocket usage-limit message, with :attr:`resets_in_seconds`."""
        return usage_limit_event(self.resets_in_seconds)

    def _limited(self, authorization: str | None, account_id: str | None) -> bool:
        token = _bearer(authorization)
        return (token is not None and token in self.usage_limit_for) or (
            account_id is not None and account_id in self.usage_limit_for
        )

    def _dispatch(self, request: Request) -> int | bytes:
        assert request.content is not None
        method = request.method.decode("ascii")
        path = request.path.decode("latin-1")
        upgrade = (request.getHeader(b"upgrade") or b"").lower() == b"websocket"
        record = BackendRequest(
            transport="websocket" if upgrade else "http",
            method=method,
            path=path,
            query=request.uri.partition(b"?")[2].decode("latin-1"),
            headers=_headers_of(request),
            body=b"" if upgrade else request.content.read(),
        )
        self.requests.append(record)
        authorization = record.header("authorization")
        account_id = record.header("chatgpt-account-id")
        self.credentials.append((authorization, account_id))
        limited = self._limited(authorization, account_id)
        responses_path = self.base_path + "/responses"

        if upgrade:
            self.websocket_connections += 1
            if path != responses_path:
                return _answer_json(request, record, 404, {"detail": "Not Found"})
            if self.refuse_websocket:
                error = {"type": "invalid_request_error", "message": "WebSocket refused"}
                return _answer_json(request, record, self.refuse_status, {"error": error})
            record.status = 101
            self._socket_factory.pending = (record, limited)
            request.content.seek(0)
            rendered: int = self._socket_resource.render(request)
            # The WebSocket owns the connection now; the HTTP channel would
            # otherwise keep its idle timer running for the Site's timeout.
            request.channel.setTimeout(None)
            return rendered

        if method == "POST":
            self.http_posts += 1
        if path == responses_path and method == "POST":
            if limited:
                body = usage_limit_body(self.resets_in_seconds)
                return _answer_json(request, record, 429, body)
            try:
                turn = record.json()
            except ValueError:
                turn = {}
            events = self.events_for(turn if isinstance(turn, dict) else {})
            record.status = 200
            request.setHeader(b"content-type", b"text/event-stream")
            request.setHeader(b"cache-control", b"no-cache")
            return b"".join(sse_frame(event) for event in events)
        if path == self.base_path + "/models" and method == "GET":
            return _answer_json(request, record, 200, {"models": []})
        if path == ACCOUNTS_CHECK_PATH and method == "GET":
            return _answer_json(request, record, 200, self._accounts_document(account_id))
        if path == USAGE_PATH and method == "GET":
            return _answer_json(request, record, 200, _usage_document())
        return _answer_json(request, record, 404, {"detail": "Not Found"})

    def _accounts_document(self, account_id: str | None) -> dict[str, Any]:
        """
        A ``/wham/accounts/check`` answer: the caller's own personal
        workspace, routed to :attr:`workspace_backend_origin`.
        """
        account_id = account_id or "acct-fake"
        entry = {
            "id": account_id,
            "name": None,
            "structure": "personal",
            "plan_type": "plus",
            "is_deactivated": False,
            "can_access_with_session": True,
            "is_fedramp_compliant_workspace": False,
            "sso_connection_name": None,
            "workspace_backend_origin": self.workspace_backend_origin,
            "account_routing_override": "NO_CONSTRAINT",
            "profile_picture_url": None,
        }
        return {"accounts": [entry], "account_ordering": [account_id]}


def _answer_json(request: Request, record: BackendRequest, status: int, body: Any) -> bytes:
    record.status = status
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode("utf-8")


def _usage_document() -> dict[str, Any]:
    """A ``/wham/usage`` answer: a Plus plan with plenty left."""
    now = int(time.time())
    return {
        "plan_type": "plus",
        "rate_limit": {
            "allowed": True,
            "limit_reached": False,
            "primary_window": {
                "used_percent": 1,
                "limit_window_seconds": 18000,
                "reset_after_seconds": 18000,
                "reset_at": now + 18000,
            },
            "secondary_window": {
                "used_percent": 1,
                "limit_window_seconds": 604800,
                "reset_after_seconds": 604800,
                "reset_at": now + 604800,
            },
        },
        "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
    }
