"""
A scriptable fake upstream for end-to-end tests: real HTTP/1.1 (over TLS by
default) on 127.0.0.1, built on ``twisted.web``.

One :class:`FakeUpstream` plays three parts at once: the ChatGPT Codex backend
(``/backend-api/...``), the OpenAI API (``/v1/...``) and the OAuth token
endpoint (``/oauth/token``). Tests script answers per path with the handlers
below (:func:`sse`, :func:`json_response`, :func:`hang`, :func:`echo_body`,
:func:`status_then`), then read back what arrived (:attr:`FakeUpstream.requests`,
:attr:`FakeUpstream.token_requests`) and which clients went away
(:attr:`FakeUpstream.disconnects`).

Every handler is cancel-safe: when the client disconnects, the handler stops
writing and its timers are cancelled, and :meth:`FakeUpstream.stop` aborts
every open connection, so a test leaves no connection or timer behind.

The module also holds the credential helpers tests share (:func:`make_jwt`,
:func:`access_token_for`, :func:`id_token_for`, :func:`write_oauth_account`,
:func:`write_apikey_account`) and :class:`StreamReader`, a body protocol for
watching a streamed response arrive.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import pathlib
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import IO, Any, TypeAlias, cast
from urllib.parse import parse_qsl

import attrs
from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request, Site

from .fakeserver import FakeServer, QuietSite, Root
from .tlsca import TestCA

_log = Logger()

TOKEN_PATH = b"/oauth/token"
#: Paths under these prefixes need a valid bearer token when
#: :attr:`FakeUpstream.valid_tokens` is set.
AUTHENTICATED_PREFIXES = (b"/backend-api/", b"/v1/")
#: Request bodies up to this size are kept in :attr:`SeenRequest.body`.
KEEP_BODY_LIMIT = 1 << 20
_READ_SIZE = 1 << 20
_ADDED_AT = "2026-01-01T00:00:00Z"
_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._@-]")
#: How long :meth:`Exchange.abort` waits for written bytes to leave the socket
#: buffer before it aborts anyway, and how often it looks.
_FLUSH_LIMIT = 2.0
_FLUSH_POLL = 0.002
_FLUSH_FALLBACK = 0.05

Headerish: TypeAlias = Mapping[str, str] | Mapping[bytes, bytes] | None


# --------------------------------------------------------------------------
# Credentials


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _compact_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def make_jwt(claims: Mapping[str, Any]) -> str:
    """
    An unsigned JWT carrying ``claims``, good enough for code that only
    decodes the payload.

    :param claims: the payload claims.
    :return: ``base64url(header).base64url(claims).base64url(b"sig")`` with the
        header ``{"alg": "none", "typ": "JWT"}``. The same claims always give
        the same string.
    """
    header = {"alg": "none", "typ": "JWT"}
    return ".".join(
        [_b64url(_compact_json(header)), _b64url(_compact_json(dict(claims))), _b64url(b"sig")]
    )


def decode_jwt(token: str) -> dict[str, Any]:
    """
    The payload claims of a JWT, without checking anything.

    :param token: a token made by :func:`make_jwt` (or any JWT).
    """
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def access_token_for(
    email: str,
    *,
    exp: float,
    account_id: str = "acct-1",
    plan: str = "plus",
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """
    A Codex OAuth access token for ``email``, shaped like the real ones.

    The result is deterministic, so a test can compute the token a file written
    by :func:`write_oauth_account` holds by calling this with the same
    arguments.

    :param email: the profile email claim.
    :param exp: the expiry, in seconds since the epoch (truncated to an int).
    :param account_id: the ChatGPT account (workspace) id claim.
    :param plan: the ChatGPT plan type claim.
    :param extra_claims: more top-level claims (e.g. a ``jti`` to make tokens
        issued in the same second differ).
    """
    claims: dict[str, Any] = {
        "exp": int(exp),
        "https://api.openai.com/auth": {
            "chatgpt_account_id": account_id,
            "chatgpt_plan_type": plan,
        },
        "https://api.openai.com/profile": {"email": email},
    }
    claims.update(extra_claims or {})
    return make_jwt(claims)


def id_token_for(email: str, *, account_id: str = "acct-1", plan: str = "plus") -> str:
    """
    A Codex OAuth id token for ``email``.

    :param email: the ``email`` claim (what the account store keys on).
    :param account_id: the ChatGPT account (workspace) id claim.
    :param plan: the ChatGPT plan type claim.
    """
    return make_jwt(
        {
            "email": email,
            "https://api.openai.com/auth": {
                "chatgpt_account_id": account_id,
                "chatgpt_plan_type": plan,
            },
        }
    )


def _write_account(accounts_dir: pathlib.Path, account_id: str, document: object) -> pathlib.Path:
    """
    Write one ``cx`` account file, private and atomically (a reader scanning the
    directory never sees half a file).

    :param accounts_dir: the store root; files go in its ``accounts/`` folder.
    :param account_id: the account id, sanitised into the file name.
    :param document: the JSON document.
    """
    folder = accounts_dir / "accounts"
    for directory in (accounts_dir, folder):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
    path = folder / (_UNSAFE_FILENAME_CHARS.sub("_", account_id) + ".json")
    temporary = folder / f".{path.name}.tmp-{secrets.token_hex(4)}"
    data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    return path


def write_oauth_account(
    accounts_dir: pathlib.Path,
    email: str,
    *,
    exp: float,
    refresh_token: str = "rt-0",
    account_id: str = "acct-1",
    plan: str = "plus",
    extra: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """
    Write an OAuth (ChatGPT) account in the ``cx`` store format.

    :param accounts_dir: the store root (``~/.codex-accounts``); the file is
        ``accounts/<sanitised email>.json`` under it, mode ``0600`` in ``0700``
        folders.
    :param email: the account id and token email.
    :param exp: the access token's expiry, seconds since the epoch.
    :param refresh_token: the stored refresh token.
    :param account_id: the ChatGPT account id, in the tokens and the claims.
    :param plan: the ChatGPT plan type claim.
    :param extra: top-level fields merged over the document.
    :return: the path written.
    """
    document: dict[str, Any] = {
        "email": email,
        "addedAt": _ADDED_AT,
        "auth": {
            "auth_mode": "chatgpt",
            "tokens": {
                "access_token": access_token_for(email, exp=exp, account_id=account_id, plan=plan),
                "refresh_token": refresh_token,
                "id_token": id_token_for(email, account_id=account_id, plan=plan),
                "account_id": account_id,
            },
            "last_refresh": _ADDED_AT,
        },
    }
    document.update(extra or {})
    return _write_account(accounts_dir, email, document)


def write_apikey_account(accounts_dir: pathlib.Path, label: str, key: str) -> pathlib.Path:
    """
    Write an API-key account (id ``apikey:<label>``) in the ``cx`` store format.

    :param accounts_dir: the store root; the file is
        ``accounts/apikey_<label>.json`` under it.
    :param label: the key's label.
    :param key: the ``sk-...`` key.
    :return: the path written.
    """
    account_id = f"apikey:{label}"
    document = {
        "email": account_id,
        "addedAt": _ADDED_AT,
        "auth": {"auth_mode": "apikey", "OPENAI_API_KEY": key},
    }
    return _write_account(accounts_dir, account_id, document)


# --------------------------------------------------------------------------
# What arrived


@attrs.define
class SeenRequest:
    """
    One request as the fake upstream received it.

    :ivar method: the request method.
    :ivar path: the path, without the query.
    :ivar query: the raw query string without ``?``; ``b""`` if none.
    :ivar headers: every header line as ``(lower-cased name, value)``, in
        arrival order, repeated headers repeated.
    :ivar body_length: the body's length in bytes.
    :ivar body_sha256: the body's SHA-256, hex.
    :ivar body: the body if it is at most 1 MiB, else ``None``.
    """

    method: bytes
    path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body_length: int
    body_sha256: str
    body: bytes | None

    def header(self, name: bytes) -> bytes | None:
        """
        The first value of header ``name`` (any case), or ``None``.
        """
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: bytes) -> list[bytes]:
        """
        Every value of header ``name`` (any case), in arrival order.
        """
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]

    def json(self) -> Any:
        """
        The body parsed as JSON (the body must have been kept).
        """
        assert self.body is not None, "body over 1 MiB was not kept"
        return json.loads(self.body)


class _ArrivalOrderHeaders(Headers):
    """
    Request headers that also remember every line in the order it arrived,
    which ``Headers`` (grouped by name) forgets.
    """

    __slots__ = ("arrival",)

    def __init__(self) -> None:
        super().__init__()
        self.arrival: list[tuple[bytes, bytes]] = []

    def addRawHeader(self, name: str | bytes, value: str | bytes) -> None:
        super().addRawHeader(name, value)
        raw_name = name.encode("latin-1") if isinstance(name, str) else name
        raw_value = value.encode("latin-1") if isinstance(value, str) else value
        self.arrival.append((raw_name.lower(), raw_value))


class _RecordingRequest(Request):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requestHeaders = _ArrivalOrderHeaders()


def _hash_content(content: IO[bytes]) -> tuple[int, str, bytes | None]:
    """
    Length, SHA-256 and (if small) the bytes of a request body, read in chunks
    from the start; leaves the file at the start again.
    """
    content.seek(0)
    digest = hashlib.sha256()
    length = 0
    kept: list[bytes] | None = []
    while chunk := content.read(_READ_SIZE):
        digest.update(chunk)
        length += len(chunk)
        if kept is not None:
            kept.append(chunk)
            if length > KEEP_BODY_LIMIT:
                kept = None
    content.seek(0)
    return length, digest.hexdigest(), None if kept is None else b"".join(kept)


def _seen(request: Request) -> SeenRequest:
    headers = request.requestHeaders
    if isinstance(headers, _ArrivalOrderHeaders):
        lines = list(headers.arrival)
    else:
        lines = [
            (name.lower(), value) for name, values in headers.getAllRawHeaders() for value in values
        ]
    assert request.content is not None
    length, sha256, body = _hash_content(request.content)
    return SeenRequest(
        method=request.method,
        path=request.path,
        query=request.uri.partition(b"?")[2],
        headers=lines,
        body_length=length,
        body_sha256=sha256,
        body=body,
    )


# --------------------------------------------------------------------------
# One request in flight


def _unsent_bytes(transport: object) -> int | None:
    """
    How many written bytes the transports under ``transport`` (the TLS layer's
    write aggregator and application buffer, the socket's buffer) have not yet
    handed to the kernel; ``None`` if it cannot tell.

    This peeks at Twisted internals: there is no public way to learn that a
    write has been flushed, and aborting a connection drops unflushed bytes.
    """
    held = 0
    for _ in range(4):
        if transport is None:
            return None
        aggregator = getattr(transport, "_aggregator", None)
        held += sum(map(len, getattr(aggregator, "_buffer", ())))
        held += sum(map(len, getattr(transport, "_appSendBuffer", ())))
        if hasattr(transport, "_tempDataLen") and hasattr(transport, "dataBuffer"):
            buffered: bytes = transport.dataBuffer
            offset: int = getattr(transport, "offset", 0)
            pending: int = transport._tempDataLen
            return held + len(buffered) - offset + pending
        transport = getattr(transport, "transport", None)
    return None


class Exchange:
    """
    One request being answered, handed to a :data:`Handler`.

    A handler answers through :attr:`request` (a ``twisted.web`` request) or
    the helpers here, which do nothing once the client has gone. It must
    finish the response, abort the connection, or deliberately leave it open.

    :ivar upstream: the fake upstream answering.
    :ivar request: the ``twisted.web`` request.
    :ivar seen: what was recorded about the request.
    :ivar gone: the client disconnected or the upstream is stopping; writes
        are dropped.
    """

    def __init__(self, upstream: FakeUpstream, request: Request, seen: SeenRequest) -> None:
        self.upstream = upstream
        self.request = request
        self.seen = seen
        self.gone = False
        self._ours = False  # we are closing the connection: not a client disconnect
        self._task: Deferred[None] | None = None

    @property
    def path(self) -> bytes:
        """The request path, without the query."""
        return self.seen.path

    def write(self, data: bytes) -> None:
        """
        Write part of the body (sending the headers first if they have not gone).

        :param data: the bytes; ``b""`` just sends the headers.
        """
        if not self.gone and not self.request.finished:
            self.request.write(data)

    def finish(self) -> None:
        """End the response cleanly."""
        if not self.gone and not self.request.finished:
            self.request.finish()

    def respond(self, status: int, body: bytes, headers: Headerish = None) -> None:
        """
        Send a whole response with a ``Content-Length``.

        :param status: the status code.
        :param body: the body.
        :param headers: headers to set (replacing any of the same name).
        """
        if self.gone or self.request.finished:
            return
        self.request.setResponseCode(status)
        _set_headers(self.request, headers)
        self.request.setHeader(b"content-length", b"%d" % (len(body),))
        self.request.write(body)
        self.request.finish()

    def respond_json(self, status: int, body: object, headers: Headerish = None) -> None:
        """
        Send a whole JSON response.

        :param status: the status code.
        :param body: the JSON document.
        :param headers: more headers to set.
        """
        self.request.setHeader(b"content-type", b"application/json")
        self.respond(status, json.dumps(body).encode("utf-8"), headers)

    async def sleep(self, seconds: float) -> None:
        """
        Wait on the upstream's reactor; cancelled with the handler.

        :param seconds: how long.
        """
        await deferLater(self.upstream.reactor, seconds, lambda: None)

    async def abort(self) -> None:
        """
        Abort the TCP connection (no clean end of the response), once the bytes
        already written have left for the client.
        """
        waited = 0.0
        while not self.gone and self.request.channel is not None and waited < _FLUSH_LIMIT:
            unsent = _unsent_bytes(self.request.channel.transport)
            if unsent == 0:
                break
            if unsent is None:
                # Cannot see the socket buffer: give it a moment instead.
                await self.sleep(_FLUSH_FALLBACK)
                break
            await self.sleep(_FLUSH_POLL)
            waited += _FLUSH_POLL
        if self.gone or self.request.channel is None:
            return
        self._ours = True
        _abort_connection(self.request)

    def _start(self, handler: Handler) -> None:
        self.request.notifyFinish().addErrback(self._client_gone)
        self.upstream._exchanges.add(self)

        async def drive() -> None:
            await handler(self)

        task = Deferred.fromCoroutine(drive())
        if not task.called:
            self._task = task
        task.addBoth(self._handler_done)

    def _client_gone(self, reason: Failure) -> None:
        ours = self._ours or self.upstream._stopping
        self._cancel()  # first: recording wakes tests that may check the timers
        if not ours:
            self.upstream._record_disconnect(self.path)

    def _cancel(self) -> None:
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def _handler_done(self, result: Failure | None) -> None:
        self.upstream._exchanges.discard(self)
        self._task = None
        if not isinstance(result, Failure):
            return
        if result.check(CancelledError) and self.gone:
            return
        _log.failure("fake upstream handler failed on {path!r}", result, path=self.path)
        if self.gone or self.request.finished or self.request.channel is None:
            return
        if not self.request.startedWriting:
            self.respond_json(500, {"error": {"message": "fake upstream handler failed"}})
        else:
            self._ours = True
            _abort_connection(self.request)


def _abort_connection(request: Request) -> None:
    channel = request.channel
    transport = channel.transport if channel is not None else None
    if transport is not None:
        cast(ITCPTransport, transport).abortConnection()


def _set_headers(request: Request, headers: Headerish) -> None:
    for name, value in (headers or {}).items():
        raw_name = name.encode("latin-1") if isinstance(name, str) else name
        raw_value = value.encode("latin-1") if isinstance(value, str) else value
        request.responseHeaders.setRawHeaders(raw_name, [raw_value])


#: A scripted answer: an async callable given the :class:`Exchange`.
Handler: TypeAlias = Callable[[Exchange], Awaitable[None]]


# --------------------------------------------------------------------------
# Handlers


class Gate:
    """
    Lets a test release a scripted stream one event at a time.

    A gate serves one stream. The first ``free`` events go without waiting;
    each later event waits for one :meth:`release`.

    :ivar written: how many events the stream has written so far.
    """

    def __init__(self, free: int = 1) -> None:
        """
        :param free: how many events may go before any release.
        """
        self._allowed = free
        self.written = 0
        self._turns: list[tuple[int, Deferred[None]]] = []
        self._sent: list[tuple[int, Deferred[None]]] = []

    def release(self, n: int = 1) -> None:
        """
        Let ``n`` more events go (the stream writes them at once if it is
        waiting).

        :param n: how many.
        """
        self._allowed += n
        ready = [d for number, d in self._turns if number <= self._allowed]
        self._turns = [(number, d) for number, d in self._turns if number > self._allowed]
        for d in ready:
            d.callback(None)

    def sent(self, k: int) -> Deferred[None]:
        """
        Fires once the stream has written event ``k`` (1-based).

        :param k: the event number.
        """
        if self.written >= k:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._sent.append((k, d))
        return d

    def _turn(self, number: int) -> Deferred[None]:
        if number <= self._allowed:
            return succeed(None)

        def forget(d: Deferred[None]) -> None:
            self._turns = [(n, waiting) for n, waiting in self._turns if waiting is not d]

        d: Deferred[None] = Deferred(forget)
        self._turns.append((number, d))
        return d

    def _wrote(self, number: int) -> None:
        self.written = number
        ready = [d for k, d in self._sent if k <= number]
        self._sent = [(k, d) for k, d in self._sent if k > number]
        for d in ready:
            d.callback(None)


def _sse_frame(event: bytes | str) -> bytes:
    raw = event.encode("utf-8") if isinstance(event, str) else event
    if raw.startswith((b"event:", b"data:", b":")):
        return raw + b"\n\n"
    return b"data: " + raw + b"\n\n"


@attrs.frozen(eq=False)
class _ServerSentEvents:
    frames: tuple[bytes, ...]
    gaps: float
    gate: Gate | None
    die_after: int | None
    headers: Headerish

    async def __call__(self, exchange: Exchange) -> None:
        request = exchange.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        _set_headers(request, self.headers)
        exchange.write(b"")  # the headers go now, before any event
        if self.die_after == 0:
            await exchange.abort()
            return
        for number, frame in enumerate(self.frames, start=1):
            if self.gate is not None:
                await self.gate._turn(number)
            if number > 1 and self.gaps > 0:
                await exchange.sleep(self.gaps)
            exchange.write(frame)
            if self.gate is not None:
                self.gate._wrote(number)
            if number == self.die_after:
                await exchange.abort()
                return
        exchange.finish()


def sse(
    events: Sequence[bytes | str],
    *,
    gaps: float = 0.0,
    gate: Gate | None = None,
    die_after: int | None = None,
    headers: Headerish = None,
) -> Handler:
    """
    Answer with a ``text/event-stream`` of ``events``.

    Each event is written as ``data: <event>\\n\\n``, or as-is plus ``\\n\\n``
    if it already starts with ``event:``, ``data:`` or ``:`` (a comment).

    :param events: the events, in order.
    :param gaps: seconds to wait before each event after the first.
    :param gate: if given, each event waits for the gate as well (after any
        free ones); see :class:`Gate`.
    :param die_after: abort the connection right after this many events
        (``0``: right after the headers) instead of ending the response.
    :param headers: more response headers (replacing defaults of the same name).
    """
    if die_after is not None and not 0 <= die_after <= len(events):
        raise ValueError(f"die_after={die_after} is outside 0..{len(events)}")
    return _ServerSentEvents(tuple(map(_sse_frame, events)), gaps, gate, die_after, headers)


def json_response(status: int, body: object, headers: Headerish = None) -> Handler:
    """
    Answer with one JSON document.

    :param status: the status code.
    :param body: the JSON document.
    :param headers: more response headers.
    """

    async def handler(exchange: Exchange) -> None:
        exchange.respond_json(status, body, headers)

    return handler


def hang() -> Handler:
    """
    Never answer; the disconnect is recorded when the client gives up.
    """

    async def handler(exchange: Exchange) -> None:
        await Deferred[None]()

    return handler


def echo_body() -> Handler:
    """
    Answer ``{"length": n, "sha256": hex}`` for the request body. The digest
    is the one taken on arrival, reading the body in chunks from
    ``twisted.web``'s buffer file, so a 64 MiB upload is never held whole.
    """

    async def handler(exchange: Exchange) -> None:
        seen = exchange.seen
        exchange.respond_json(200, {"length": seen.body_length, "sha256": seen.body_sha256})

    return handler


INVALID_TOKEN_BODY: dict[str, Any] = {
    "error": {
        "message": "invalid token",
        "type": "invalid_request_error",
        "code": "token_expired",
    }
}


def error_body(status: int) -> dict[str, Any]:
    """
    The JSON error body the fake upstream sends with ``status``.

    :param status: an HTTP status code.
    """
    if status == 401:
        return copy.deepcopy(INVALID_TOKEN_BODY)
    return {
        "error": {
            "message": f"fake upstream error {status}",
            "type": "fake_upstream_error",
            "code": None,
        }
    }


def status_then(statuses: Sequence[int], then: Handler) -> Handler:
    """
    Answer the first ``len(statuses)`` requests with those statuses (JSON error
    bodies from :func:`error_body`), then hand every later request to ``then``.

    :param statuses: the statuses, in order.
    :param then: the handler for the requests after those.
    """
    remaining = list(statuses)

    async def handler(exchange: Exchange) -> None:
        if remaining:
            status = remaining.pop(0)
            exchange.respond_json(status, error_body(status))
            return
        await then(exchange)

    return handler


async def _answer_ok(exchange: Exchange) -> None:
    exchange.respond_json(200, {"ok": True, "path": exchange.path.decode("latin-1")})


async def _answer_invalid_token(exchange: Exchange) -> None:
    exchange.respond_json(401, error_body(401))


def _follow(gate: Deferred[Any]) -> Deferred[None]:
    """
    A Deferred that fires when ``gate`` does, and that can be cancelled without
    touching ``gate`` (which other waiters may share).
    """
    follower: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        if not follower.called:
            follower.callback(None)
        return result

    gate.addBoth(fire)
    return follower


def _parse_token_body(raw: bytes) -> dict[str, Any]:
    """The token request as a dict: a JSON object, else a form body."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    return dict(parse_qsl(raw.decode("utf-8", "replace")))


# --------------------------------------------------------------------------
# The server


TokenAnswer: TypeAlias = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


class FakeUpstream(FakeServer):
    """
    The Codex backend, the OpenAI API and the OAuth token endpoint, on one
    listening port on 127.0.0.1.

    :ivar port: the port, once started.
    :ivar base_url: ``https://localhost:<port>`` (``http://127.0.0.1:<port>``
        without TLS); ``localhost`` so the certificate's SAN matches.
    :ivar codex_url: the Codex backend base, ``base_url + "/backend-api/codex"``.
    :ivar openai_url: the OpenAI API base (the proxy appends ``/v1/...``).
    :ivar token_url: the OAuth token endpoint.
    :ivar requests: every request to a path other than the token endpoint.
    :ivar token_requests: every request to the token endpoint.
    :ivar disconnects: the path of every request whose client went away before
        the answer was finished.
    :ivar valid_tokens: if not ``None``, requests under ``/backend-api/`` or
        ``/v1/`` whose bearer token is not in it get a 401 ``token_expired``.
    :ivar token_answer: answers a token request, given its parsed body; the
        default is :meth:`issue_tokens`.
    :ivar token_gate: if set, the token endpoint waits for it to fire before
        answering.
    :ivar refresh_emails: refresh token to email, for :meth:`issue_tokens`.
    :ivar account_ids: email to ChatGPT account id, for :meth:`issue_tokens`
        (default ``acct-1``).
    :ivar issued: every token response :meth:`issue_tokens` made, in order.
    """

    def __init__(
        self,
        reactor: Any,
        ca: TestCA | None,
        *,
        tls: bool = True,
        tls_options: ssl.CertificateOptions | None = None,
    ) -> None:
        """
        :param reactor: a reactor providing ``IReactorTCP`` and ``IReactorTime``.
        :param ca: the test CA that signs the server certificate (may be
            ``None`` when ``tls`` is false or ``tls_options`` is given).
        :param tls: serve HTTPS (else plain HTTP).
        :param tls_options: serve these TLS options instead of a leaf from
            ``ca`` (e.g. ``ca.untrusted_server_options()``).
        """
        if tls and tls_options is None:
            assert ca is not None, "TLS needs a CA or tls_options"
            tls_options = ca.server_options()
        super().__init__(reactor, tls_options if tls else None)
        self._scripts: dict[bytes, Handler] = {}
        self._exchanges: set[Exchange] = set()
        self._stopping = False
        self._request_waiters: list[tuple[int, Deferred[SeenRequest]]] = []
        self._disconnect_waiters: list[tuple[int, Deferred[bytes]]] = []
        self._issued_count = 0
        self.requests: list[SeenRequest] = []
        self.token_requests: list[SeenRequest] = []
        self.disconnects: list[bytes] = []
        self.valid_tokens: set[str] | None = None
        self.token_answer: TokenAnswer = self.issue_tokens
        self.token_gate: Deferred[Any] | None = None
        self.refresh_emails: dict[str, str] = {}
        self.account_ids: dict[str, str] = {}
        self.issued: list[dict[str, Any]] = []

    # -- lifecycle

    def make_site(self) -> Site:
        def render(request: Request) -> int:
            self._dispatch(request)
            return NOT_DONE_YET

        return QuietSite(Root(render), requestFactory=_RecordingRequest)

    async def start(self) -> None:
        """Listen on 127.0.0.1 on a free port."""
        self._stopping = False
        await super().start()

    def stopping(self) -> None:
        """
        Stop every handler (cancelling its timers) before :meth:`stop`
        aborts every open connection.
        """
        self._stopping = True
        for exchange in list(self._exchanges):
            exchange._ours = True
            exchange._cancel()

    @property
    def base_url(self) -> str:
        if self.tls:
            return f"https://localhost:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    @property
    def codex_url(self) -> str:
        return self.base_url + "/backend-api/codex"

    @property
    def openai_url(self) -> str:
        return self.base_url

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH.decode("ascii")

    # -- scripting

    def script(self, path: bytes, handler: Handler) -> None:
        """
        Answer requests for exactly ``path`` (no query) with ``handler``.
        Unscripted paths get ``200 {"ok": true, "path": "<path>"}``.

        :param path: the path, e.g. ``b"/backend-api/codex/responses"``.
        :param handler: the handler, e.g. from :func:`sse`.
        """
        self._scripts[path] = handler

    def seen(self, count: int) -> Deferred[SeenRequest]:
        """
        Fires with the ``count``-th (1-based) request to a non-token path once
        it has arrived.

        :param count: which request.
        """
        if len(self.requests) >= count:
            return succeed(self.requests[count - 1])
        d: Deferred[SeenRequest] = Deferred()
        self._request_waiters.append((count, d))
        return d

    def disconnected(self, count: int = 1) -> Deferred[bytes]:
        """
        Fires with the path of the ``count``-th recorded client disconnect.

        :param count: which disconnect (1-based).
        """
        if len(self.disconnects) >= count:
            return succeed(self.disconnects[count - 1])
        d: Deferred[bytes] = Deferred()
        self._disconnect_waiters.append((count, d))
        return d

    # -- the token endpoint

    def issue_tokens(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """
        The default token answer: fresh tokens for the email that
        :attr:`refresh_emails` maps the request's refresh token to
        (``unknown@example.com`` if none), with an access token valid for an
        hour, and a new refresh token ``rt-<n>`` mapped to the same email.

        :param body: the parsed token request.
        """
        refresh = body.get("refresh_token")
        email = "unknown@example.com"
        if isinstance(refresh, str):
            email = self.refresh_emails.get(refresh, email)
        account_id = self.account_ids.get(email, "acct-1")
        self._issued_count += 1
        number = self._issued_count
        access = access_token_for(
            email,
            exp=self.reactor.seconds() + 3600,
            account_id=account_id,
            extra_claims={"jti": f"at-{number}"},
        )
        new_refresh = f"rt-{number}"
        self.refresh_emails[new_refresh] = email
        if self.valid_tokens is not None:
            self.valid_tokens.add(access)
        answer = {
            "access_token": access,
            "refresh_token": new_refresh,
            "id_token": id_token_for(email, account_id=account_id),
            "token_type": "Bearer",
            "expires_in": 3600,
        }
        self.issued.append(answer)
        return 200, answer

    async def _token_endpoint(self, exchange: Exchange) -> None:
        if self.token_gate is not None:
            await _follow(self.token_gate)
        body = _parse_token_body(exchange.seen.body or b"")
        status, answer = self.token_answer(body)
        exchange.respond_json(status, answer)

    # -- dispatch

    def _authorized(self, seen: SeenRequest) -> bool:
        if self.valid_tokens is None or not seen.path.startswith(AUTHENTICATED_PREFIXES):
            return True
        authorization = seen.header(b"authorization") or b""
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return token.strip().decode("latin-1") in self.valid_tokens

    def _dispatch(self, request: Request) -> None:
        seen = _seen(request)
        handler: Handler
        if seen.path == TOKEN_PATH:
            self.token_requests.append(seen)
            handler = self._token_endpoint
        else:
            self.requests.append(seen)
            self._fire_waiters(self._request_waiters, self.requests)
            if self._authorized(seen):
                handler = self._scripts.get(seen.path, _answer_ok)
            else:
                handler = _answer_invalid_token
        Exchange(self, request, seen)._start(handler)

    def _record_disconnect(self, path: bytes) -> None:
        self.disconnects.append(path)
        self._fire_waiters(self._disconnect_waiters, self.disconnects)

    @staticmethod
    def _fire_waiters(waiters: list[tuple[int, Deferred[Any]]], items: Sequence[Any]) -> None:
        ready = [(count, d) for count, d in waiters if count <= len(items)]
        for entry in ready:
            waiters.remove(entry)
        for count, d in ready:
            d.callback(items[count - 1])


# --------------------------------------------------------------------------
# Reading a streamed response


class StreamReader(Protocol):
    """
    A body protocol for ``response.deliverBody`` that keeps what arrives and
    lets a test wait for particular bytes.

    :ivar chunks: every ``dataReceived`` chunk, in order.
    :ivar done: fires when the body ends: with ``None`` after a clean
        ``ResponseDone``, else with the reason's exception (e.g. a
        ``ResponseFailed``). (A Deferred cannot fire *with* a ``Failure``.)
    :ivar reason: the ``Failure`` of an unclean end, else ``None``.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[BaseException | None] = Deferred()
        self.reason: Failure | None = None
        self._received = bytearray()
        self._waiters: list[tuple[bytes, Deferred[None]]] = []
        self._ended = False

    @property
    def received(self) -> bytes:
        """Everything received so far."""
        return bytes(self._received)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self._received += data
        ready = [(needle, d) for needle, d in self._waiters if needle in self._received]
        for entry in ready:
            self._waiters.remove(entry)
        for _, d in ready:
            d.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._ended = True
        value: BaseException | None = None
        if not reason.check(ResponseDone):
            self.reason = reason
            value = reason.value
        waiters, self._waiters = self._waiters, []
        for needle, d in waiters:
            d.errback(self._missing(needle))
        self.done.callback(value)

    def _missing(self, needle: bytes) -> AssertionError:
        return AssertionError(
            f"body ended ({self.reason or 'cleanly'}) without {needle!r}; got {self.received!r}"
        )

    async def wait_for(self, needle: bytes) -> None:
        """
        Return once the bytes received so far contain ``needle``; raise
        ``AssertionError`` if the body ends without it.

        :param needle: the bytes to wait for.
        """
        if needle in self._received:
            return
        if self._ended:
            raise self._missing(needle)
        d: Deferred[None] = Deferred()
        self._waiters.append((needle, d))
        await d


__all__ = [
    "AUTHENTICATED_PREFIXES",
    "INVALID_TOKEN_BODY",
    "Exchange",
    "FakeUpstream",
    "Gate",
    "Handler",
    "SeenRequest",
    "StreamReader",
    "access_token_for",
    "decode_jwt",
    "echo_body",
    "error_body",
    "hang",
    "id_token_for",
    "json_response",
    "make_jwt",
    "sse",
    "status_then",
    "write_apikey_account",
    "write_oauth_account",
]
