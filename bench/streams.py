#!/usr/bin/env python3
"""
The streaming workload that ``proxy_bench.py`` and ``transcript_bench.py``
measure: a fake Responses upstream, a raw HTTP/1.1 client, Codex-like
requests, the checks every response passes, and the interleaved rounds that
compare two targets (say a direct connection and Subrouter, or Subrouter
without and with transcripts).

The upstream runs in its own process (this file, with ``--upstream-server``):
an asyncio HTTP/1.1 keep-alive server answering ``POST .../responses`` with
:data:`EVENTS` SSE ``response.output_text.delta`` events :data:`EVENT_INTERVAL`
apart, chunked, each stamped with the upstream's ``time.monotonic()`` at send,
then ``data: [DONE]``; and ``.../small`` with a small JSON body. It echoes what
it received (body length and CRC-32, credentials, session, arrival time) in an
``X-Bench-Request`` header, so the client can check every request arrived
whole and as Subrouter should send it.

The client: one persistent connection per concurrent stream ("lane") to
each target, timestamps taken as bytes arrive, before any parsing. In a round
every lane of one target starts one request at the same instant; the targets
take turns, the order swapped every round. Both are warmed up first.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, cast

from harness import (
    BAD_LOG_LEVEL,
    CODEX_PREFIX,
    HOST,
    MAX_HEAD,
    SETTLE,
    describe_error,
    interleaved,
    log_text,
    process_cpu_seconds,
    run_upstream,
    serve_upstream,
)

#: the paths of the two answers, straight on the upstream and through Subrouter
UPSTREAM_STREAM_PATH = CODEX_PREFIX + "/responses"
UPSTREAM_SMALL_PATH = CODEX_PREFIX + "/small"
PROXIED_STREAM_PATH = "/v1/responses"
PROXIED_SMALL_PATH = "/v1/small"

EVENTS = 20
EVENT_INTERVAL = 0.005
BODY_SIZE = 60 * 1024
SMALL_BODY = b'{"object":"bench.small","ok":true}'
DONE_EVENT = b"data: [DONE]\n\n"

#: every single request gives up after this long
REQUEST_TIMEOUT = 30.0
SMALL_LANES = 8


@dataclass(frozen=True)
class Plan:
    """
    How much to measure.

    :ivar rounds: rounds per target, by number of concurrent streams.
    :ivar small_slices: alternating slices per target for the small requests.
    :ivar small_slice_seconds: the length of one such slice.
    :ivar warmup_rounds: rounds per target at the highest concurrency, not measured.
    :ivar deadline: measuring stops (with what it has) after this long.
    """

    rounds: dict[int, int]
    small_slices: int
    small_slice_seconds: float
    warmup_rounds: int
    deadline: float


@dataclass(frozen=True)
class Target:
    """
    Where one compared path sends its requests, and what the upstream
    should see of them.

    :ivar port: the port on 127.0.0.1.
    :ivar stream_path: the streamed request's path.
    :ivar small_path: the small request's path.
    :ivar token: the bearer token the upstream should receive.
    :ivar account: the ``ChatGPT-Account-ID`` it should receive (``-``: none).
    :ivar pid: the Subrouter process behind the port, for its CPU time; None
        for the upstream itself.
    """

    port: int
    stream_path: str
    small_path: str
    token: str
    account: str
    pid: int | None = None


def streams_label(streams: int) -> str:
    return f"{streams} stream" + ("s" if streams > 1 else "")


# -- the fake upstream (runs in its own process) -----------------------------------------


class _UpstreamProtocol(asyncio.Protocol):
    """
    One keep-alive connection to the fake upstream: requests one after the
    other, a streamed answer for ``.../responses`` and a small one for
    ``.../small``.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._head: tuple[str, str, dict[str, str], int] | None = None
        self._busy = False
        self._close_after = False
        self._timers: list[asyncio.TimerHandle] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        while not self._busy and self._transport is not None:
            if self._head is None:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEAD:
                        self._transport.close()
                    return
                lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
                del self._buf[: end + 4]
                request_line = lines[0].split(" ")
                if len(request_line) != 3:
                    self._transport.close()
                    return
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                if "transfer-encoding" in headers:
                    # nobody in this bench sends chunked requests; say so loudly
                    self._write_fixed(411, b'{"error":"chunked request"}', "-", close=True)
                    return
                length = int(headers.get("content-length") or 0)
                self._head = (request_line[0], request_line[1], headers, length)
            method, target, headers, length = self._head
            if len(self._buf) < length:
                return
            received = time.monotonic()
            body = bytes(self._buf[:length])
            del self._buf[:length]
            self._head = None
            self._handle(method, target, headers, body, received)

    def _handle(self, method: str, target: str, headers: dict[str, str], body: bytes,
                received: float) -> None:
        path = target.partition("?")[0]
        if path.startswith(CODEX_PREFIX + "/"):
            path = path[len(CODEX_PREFIX) :]
        self._close_after = headers.get("connection", "").lower() == "close"
        authorization = headers.get("authorization", "")
        token = authorization[7:] if authorization.startswith("Bearer ") else authorization
        echo = (
            f"len={len(body)};crc={zlib.crc32(body):08x};auth={token[:12] or '-'};"
            f"acct={headers.get('chatgpt-account-id', '-')};"
            f"sid={headers.get('session-id', '-')};orig={headers.get('originator', '-')};"
            f"rx={received!r}"
        )
        if path == "/responses" and method == "POST":
            self._start_stream(echo)
        elif path == "/small" and method in ("GET", "POST"):
            self._write_fixed(200, SMALL_BODY, echo, close=self._close_after)
        else:
            self._write_fixed(404, b'{"error":"not found"}', echo, close=self._close_after)

    def _write_fixed(self, status: int, body: bytes, echo: str, *, close: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        reason = {200: "OK", 404: "Not Found", 411: "Length Required"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Bench-Request: {echo}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        )
        transport.write(head.encode("latin-1") + body)
        if close:
            transport.close()

    def _start_stream(self, echo: str) -> None:
        transport = self._transport
        if transport is None:
            return
        self._busy = True
        transport.write(
            (
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
                f"X-Bench-Request: {echo}\r\n\r\n"
            ).encode("latin-1")
        )
        start = self._loop.time()  # time.monotonic() on the default loop
        self._timers = [
            self._loop.call_at(start + (seq + 1) * EVENT_INTERVAL, self._send_event, seq)
            for seq in range(EVENTS)
        ]

    def _send_event(self, seq: int) -> None:
        transport = self._transport
        if transport is None:
            return
        stamp = repr(time.monotonic()).encode("ascii")
        payload = b'data: {"type":"response.output_text.delta","seq":%d,"t":%s}\n\n' % (
            seq,
            stamp,
        )
        out = b"%x\r\n%s\r\n" % (len(payload), payload)
        if seq < EVENTS - 1:
            transport.write(out)
            return
        transport.write(out + b"%x\r\n%s\r\n0\r\n\r\n" % (len(DONE_EVENT), DONE_EVENT))
        self._timers.clear()
        self._busy = False
        if self._close_after:
            transport.close()
            return
        self._serve_buffered()


async def _serve_upstream() -> None:
    await serve_upstream(_UpstreamProtocol)


# -- the client -------------------------------------------------------------------------


@dataclass
class Reply:
    """
    One response, as the client saw it.
    """

    status: int
    headers: dict[str, str]
    #: when the client started writing the request
    sent_at: float
    ttfb: float
    keep_alive: bool
    body: bytearray = field(default_factory=bytearray)
    latencies: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    done: bool = False
    problems: list[str] = field(default_factory=list)


class ProtocolViolation(Exception):
    """
    The server's bytes are not valid HTTP/1.1 framing.
    """


_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _FIXED, _UNTIL_CLOSE = range(7)


class _ClientConnection(asyncio.Protocol):
    """
    A persistent client connection, one request at a time. Timestamps are
    taken as bytes arrive, before any parsing.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._events = bytearray()
        self._future: asyncio.Future[Reply] | None = None
        self._reply: Reply | None = None
        self._state = _HEAD
        self._remaining = 0
        self._sse = False
        self._t0 = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, raw: bytes, sse: bool) -> asyncio.Future[Reply]:
        """
        Write one request; the future fires with the whole response.
        """
        if self.transport is None or self._future is not None:
            raise RuntimeError("connection not ready for a request")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._future = future
        self._reply = None
        self._sse = sse
        self._state = _HEAD
        self._events.clear()
        self._t0 = time.monotonic()
        self.transport.write(raw)
        return future

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self._future is None or self._future.done():
            # bytes nobody asked for
            self.abort()
            return
        self._buf += data
        try:
            self._parse(now)
        except ProtocolViolation as e:
            self._fail(e)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        future = self._future
        if future is None or future.done():
            return
        if self._state == _UNTIL_CLOSE and self._reply is not None:
            self._finish()
            return
        why = f": {exc}" if exc is not None else ""
        future.set_exception(ConnectionError(f"connection closed mid-response{why}"))
        self._future = None

    def _fail(self, error: Exception) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_exception(error)
        self.abort()

    def _parse(self, now: float) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise ProtocolViolation("response head too long")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._start_reply(head, now)
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise ProtocolViolation("chunk size line too long")
                    return
                text = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    size = int(text, 16)
                except ValueError:
                    raise ProtocolViolation(f"bad chunk size {text[:20]!r}") from None
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA or state == _FIXED:
                if state == _FIXED and self._remaining == 0:
                    self._finish()
                    return
                if not buf:
                    return
                n = min(self._remaining, len(buf))
                self._body(bytes(buf[:n]), now)
                del buf[:n]
                self._remaining -= n
                if self._remaining == 0 and state == _CHUNK_DATA:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ProtocolViolation("chunk data not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._finish()
                    return
            else:  # _UNTIL_CLOSE
                if buf:
                    self._body(bytes(buf), now)
                    buf.clear()
                return

    def _start_reply(self, head: bytes, now: float) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolViolation(f"bad status line {lines[0][:60]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolViolation(f"bad header line {line[:60]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        keep_alive = parts[0] == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        reply = Reply(status=int(parts[1]), headers=headers, sent_at=self._t0,
                      ttfb=now - self._t0, keep_alive=keep_alive)
        self._reply = reply
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            try:
                self._remaining = int(headers["content-length"])
            except ValueError:
                raise ProtocolViolation("bad Content-Length") from None
            self._state = _FIXED
        else:
            reply.keep_alive = False
            self._state = _UNTIL_CLOSE

    def _body(self, data: bytes, now: float) -> None:
        reply = self._reply
        assert reply is not None
        if not self._sse:
            reply.body += data
            return
        events = self._events
        events += data
        while True:
            end = events.find(b"\n\n")
            if end < 0:
                return
            event = bytes(events[:end])
            del events[: end + 2]
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    reply.done = True
                    continue
                try:
                    decoded = json.loads(payload)
                    stamp = float(decoded["t"])
                    seq = int(decoded["seq"])
                except (ValueError, KeyError, TypeError):
                    reply.problems.append("malformed SSE event")
                    continue
                if reply.done:
                    reply.problems.append("event after [DONE]")
                reply.latencies.append(now - stamp)
                reply.seqs.append(seq)

    def _finish(self) -> None:
        future, reply = self._future, self._reply
        self._future = None
        self._reply = None
        self._state = _HEAD
        if future is None or reply is None or future.done():
            return
        if self._events:
            reply.problems.append("an unterminated SSE event at the end of the body")
        if self._buf:
            reply.problems.append("bytes after the end of the response")
            reply.keep_alive = False
        future.set_result(reply)


class Lane:
    """
    One concurrent stream's persistent connection to one port, reopened only
    when the server closes it.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.connects = 0
        self._conn: _ClientConnection | None = None

    async def call(self, raw: bytes, sse: bool) -> Reply:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        future = conn.send(raw, sse)
        try:
            reply: Reply = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except BaseException:
            conn.abort()
            self._conn = None
            raise
        if not reply.keep_alive:
            conn.abort()
            self._conn = None
        return reply

    async def _connect(self) -> _ClientConnection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(_ClientConnection, HOST, self.port), REQUEST_TIMEOUT
        )
        self._conn = conn
        self.connects += 1
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.abort()
            self._conn = None


# -- requests and checks ----------------------------------------------------------------

_WORDS = (
    "def", "return", "self", "import", "patch", "the", "test", "fails", "because", "reactor",
    "Deferred", "callback", "na\u00efve", "caf\u00e9", "fixture", "assert", "diff", "--git",
    "a/src/main.rs", "b/src/main.rs", "@@", "-1,4", "+1,6", "fn", "main()", "{", "}", "let",
    "mut", "Ok(())", "error:", "expected", "found", "\u03bb", "\u2192", "cargo", "build",
)


def codex_body(session_id: str, size: int = BODY_SIZE) -> bytes:
    """
    A Responses request body like one Codex sends for a turn, of at least
    ``size`` bytes of UTF-8 JSON.
    """
    document: dict[str, Any] = {
        "model": "gpt-5-codex",
        "instructions": "You are Codex, a coding agent running in the Codex CLI. " * 40,
        "input": [],
        "tools": [
            {
                "type": "function",
                "name": "shell",
                "description": "Runs a shell command and returns its output.",
                "strict": False,
                "parameters": {
                    "type": "object",
                    "properties": {
                        "command": {"type": "array", "items": {"type": "string"}},
                        "workdir": {"type": "string"},
                        "timeout_ms": {"type": "number"},
                    },
                    "required": ["command"],
                    "additionalProperties": False,
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": session_id,
    }
    items: list[dict[str, Any]] = document["input"]
    n = 0
    while True:
        encoded = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        if len(encoded) >= size:
            return encoded
        user = n % 2 == 0
        text = " ".join(_WORDS[(n * 7 + k * 3) % len(_WORDS)] for k in range(200))
        items.append(
            {
                "type": "message",
                "role": "user" if user else "assistant",
                "content": [{"type": "input_text" if user else "output_text",
                             "text": f"[{n}] {text}"}],
            }
        )
        n += 1


def stream_request(path: str, port: int, session_id: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        "Authorization: Bearer dummy\r\n"
        "Content-Type: application/json\r\n"
        "Accept: text/event-stream\r\n"
        "OpenAI-Beta: responses=experimental\r\n"
        "originator: codex_cli_rs\r\n"
        f"session-id: {session_id}\r\n"
        "version: 0.50.0\r\n"
        "User-Agent: codex_cli_rs/0.50.0 (Linux; x86_64) subrouter-bench\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


def small_request(path: str, port: int) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        "Authorization: Bearer dummy\r\n"
        "Accept: application/json\r\n"
        "originator: codex_cli_rs\r\n"
        "\r\n"
    ).encode("latin-1")


def expected_echo(body: bytes, token: str, account: str, session_id: str) -> dict[str, str]:
    """
    What the upstream should report about a request it received.
    """
    return {
        "len": str(len(body)),
        "crc": f"{zlib.crc32(body):08x}",
        "auth": token[:12],
        "acct": account,
        "sid": session_id,
        "orig": "codex_cli_rs",
    }


def parse_echo(value: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in value.split(";") if item)
    return {key: val for key, _, val in pairs}


def upstream_received(reply: Reply) -> float | None:
    """
    When the upstream had the whole request, by its clock (the system's).
    """
    try:
        return float(parse_echo(reply.headers.get("x-bench-request", ""))["rx"])
    except (KeyError, ValueError):
        return None


def check_stream(reply: Reply, expected: dict[str, str]) -> list[str]:
    """
    What is wrong with a streamed answer, if anything.
    """
    if reply.status != 200:
        return [f"status {reply.status}: {bytes(reply.body[:120])!r}"]
    problems = list(reply.problems)
    content_type = reply.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        problems.append(f"Content-Type {content_type!r}")
    if reply.seqs != list(range(EVENTS)):
        problems.append(f"events {reply.seqs[:5]}... ({len(reply.seqs)}), not 0..{EVENTS - 1}")
    if not reply.done:
        problems.append("no [DONE]")
    echo = parse_echo(reply.headers.get("x-bench-request", ""))
    for key, want in expected.items():
        got = echo.get(key)
        if got != want:
            problems.append(f"upstream saw {key}={got!r}, expected {want!r}")
    return problems


def check_small(reply: Reply) -> list[str]:
    if reply.status != 200:
        return [f"status {reply.status}: {bytes(reply.body[:120])!r}"]
    problems = list(reply.problems)
    if bytes(reply.body) != SMALL_BODY:
        problems.append(f"body {bytes(reply.body[:60])!r} is not the upstream's")
    return problems


# -- measuring ----------------------------------------------------------------------------


@dataclass
class StreamSamples:
    ttfb: list[float] = field(default_factory=list)
    #: the TTFB in two legs: until the upstream has the whole request, and back
    request_leg: list[float] = field(default_factory=list)
    response_leg: list[float] = field(default_factory=list)
    events: list[float] = field(default_factory=list)
    #: the same latencies by the event's place in its stream: the first, the
    #: last (which comes with the end of the answer), and those between
    first_events: list[float] = field(default_factory=list)
    middle_events: list[float] = field(default_factory=list)
    last_events: list[float] = field(default_factory=list)
    requests: int = 0
    problems: Counter[str] = field(default_factory=Counter)


@dataclass
class SmallSamples:
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    problems: Counter[str] = field(default_factory=Counter)


@dataclass
class Results:
    """
    Every sample of a run, by number of streams (or scenario) and target name.

    :ivar cpu: each Subrouter target's CPU seconds per request, by scenario.
    :ivar connects: the connections each target's lanes opened.
    """

    streams: dict[int, dict[str, StreamSamples]] = field(default_factory=dict)
    small: dict[str, SmallSamples] = field(default_factory=dict)
    warmup_problems: dict[str, Counter[str]] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    connects: dict[str, int] = field(default_factory=dict)
    cut_short: list[str] = field(default_factory=list)


class Bench:
    """
    The client side of one run: the same requests to each target, in
    interleaved rounds.

    :param plan: how much to measure.
    :param targets: the targets, by name, in the order of the first round.
    :param progress: where progress lines go.
    """

    def __init__(self, plan: Plan, targets: dict[str, Target], progress: IO[str]) -> None:
        self.plan = plan
        self.targets = targets
        self.modes = tuple(targets)
        self.progress = progress
        self.results = Results(cpu={mode: {} for mode, t in targets.items() if t.pid})
        self.deadline = time.monotonic() + plan.deadline
        lanes = max(max(plan.rounds), SMALL_LANES)
        self.lanes = {mode: [Lane(t.port) for _ in range(lanes)] for mode, t in targets.items()}
        # the same conversations go to both targets
        sessions = [f"bench-{i:02d}-{uuid.uuid4()}" for i in range(lanes)]
        bodies = [codex_body(session) for session in sessions]
        self.requests = {
            mode: [stream_request(t.stream_path, t.port, s, b)
                   for s, b in zip(sessions, bodies, strict=True)]
            for mode, t in targets.items()
        }
        self.echoes = {
            mode: [expected_echo(b, t.token, t.account, s)
                   for s, b in zip(sessions, bodies, strict=True)]
            for mode, t in targets.items()
        }
        self.small_requests = {mode: small_request(t.small_path, t.port)
                               for mode, t in targets.items()}

    def say(self, text: str) -> None:
        self.progress.write(text + "\n")
        self.progress.flush()

    async def run(self) -> Results:
        try:
            await self._warm_up()
            for streams, rounds in sorted(self.plan.rounds.items()):
                await self._streams(streams, rounds)
            await self._small()
        finally:
            for mode in self.modes:
                self.results.connects[mode] = sum(lane.connects for lane in self.lanes[mode])
                for lane in self.lanes[mode]:
                    lane.close()
        return self.results

    async def _round(self, mode: str, streams: int, into: StreamSamples) -> None:
        lanes = self.lanes[mode][:streams]
        outcomes = await asyncio.gather(
            *(lane.call(raw, True) for lane, raw in zip(lanes, self.requests[mode], strict=False)),
            return_exceptions=True,
        )
        for outcome, expected in zip(outcomes, self.echoes[mode], strict=False):
            into.requests += 1
            if isinstance(outcome, BaseException):
                into.problems[describe_error(outcome)] += 1
                continue
            for problem in check_stream(outcome, expected):
                into.problems[problem] += 1
            if outcome.status == 200:
                into.ttfb.append(outcome.ttfb)
                into.events.extend(outcome.latencies)
                if len(outcome.latencies) > 2:
                    into.first_events.append(outcome.latencies[0])
                    into.middle_events.extend(outcome.latencies[1:-1])
                    into.last_events.append(outcome.latencies[-1])
                received = upstream_received(outcome)
                if received is not None:
                    into.request_leg.append(received - outcome.sent_at)
                    into.response_leg.append(outcome.sent_at + outcome.ttfb - received)

    async def _warm_up(self) -> None:
        top = max(self.plan.rounds)
        self.say(f"warming up both paths ({self.plan.warmup_rounds} rounds of {top} streams)")
        for mode in self.modes:
            samples = StreamSamples()
            for _ in range(self.plan.warmup_rounds):
                await self._round(mode, top, samples)
                await asyncio.sleep(SETTLE)
            small = SmallSamples()
            await self._hammer(mode, 0.2, small)
            problems = samples.problems + small.problems
            self.results.warmup_problems[mode] = problems
            if problems:
                self.say(f"  {mode} warm-up problems: {dict(problems)}")

    def _cpu(self) -> dict[str, float | None]:
        return {mode: process_cpu_seconds(cast(int, self.targets[mode].pid))
                for mode in self.results.cpu}

    def _note_cpu(self, label: str, before: dict[str, float | None],
                  requests: dict[str, int]) -> None:
        after = self._cpu()
        for mode, was in before.items():
            now = after[mode]
            if was is not None and now is not None and requests[mode]:
                self.results.cpu[mode][label] = (now - was) / requests[mode]

    async def _streams(self, streams: int, rounds: int) -> None:
        label = streams_label(streams)
        self.say(f"{label}: {rounds} interleaved rounds per path")
        samples = {mode: StreamSamples() for mode in self.modes}
        self.results.streams[streams] = samples
        cpu_before = self._cpu()
        for number in range(rounds):
            if time.monotonic() > self.deadline:
                self.results.cut_short.append(f"{label}: stopped after {number} rounds")
                break
            for mode in interleaved(self.modes, number):
                await self._round(mode, streams, samples[mode])
                await asyncio.sleep(SETTLE)
        self._note_cpu(label, cpu_before, {m: s.requests for m, s in samples.items()})

    async def _hammer(self, mode: str, seconds: float, into: SmallSamples) -> None:
        raw = self.small_requests[mode]
        started = time.monotonic()
        end = started + seconds

        async def lane_loop(lane: Lane) -> None:
            while True:
                t0 = time.monotonic()
                if t0 >= end:
                    return
                try:
                    reply = await lane.call(raw, False)
                except Exception as e:
                    into.problems[describe_error(e)] += 1
                    await asyncio.sleep(0.01)
                    continue
                problems = check_small(reply)
                for problem in problems:
                    into.problems[problem] += 1
                if not problems:
                    into.latencies.append(time.monotonic() - t0)

        await asyncio.gather(*(lane_loop(lane) for lane in self.lanes[mode][:SMALL_LANES]))
        into.seconds += time.monotonic() - started

    async def _small(self) -> None:
        slices, length = self.plan.small_slices, self.plan.small_slice_seconds
        self.say(f"small requests: {SMALL_LANES} lanes, {slices} slices of {length:g} s per path")
        samples = {mode: SmallSamples() for mode in self.modes}
        self.results.small = samples
        cpu_before = self._cpu()
        for number in range(slices):
            if time.monotonic() > self.deadline:
                self.results.cut_short.append(f"small requests: stopped after {number} slices")
                break
            for mode in interleaved(self.modes, number):
                await self._hammer(mode, length, samples[mode])
                await asyncio.sleep(SETTLE)
        self._note_cpu("small requests", cpu_before,
                       {m: len(s.latencies) for m, s in samples.items()})


def problems_by_place(results: Results, names: dict[str, str]) -> dict[str, dict[str, int]]:
    """
    The PROBLEMS counters of a run, by where they came (targets named by ``names``).
    """
    problems: dict[str, dict[str, int]] = {}
    for streams, samples in sorted(results.streams.items()):
        for mode, s in samples.items():
            if s.problems:
                problems[f"{streams_label(streams)}, {names[mode]}"] = dict(s.problems)
    for mode, hammered in results.small.items():
        if hammered.problems:
            problems[f"small requests, {names[mode]}"] = dict(hammered.problems)
    for mode, counter in results.warmup_problems.items():
        if counter:
            problems[f"warm-up, {names[mode]}"] = dict(counter)
    return problems


def requests_per_second(results: Results) -> dict[str, float]:
    """
    Each target's small requests per second, over its slices.
    """
    return {mode: len(h.latencies) / h.seconds if h.seconds else 0.0
            for mode, h in results.small.items()}


_REQUEST_LINE = re.compile(r"\] (GET|POST) (\S+) (\d{3}|None) (\S+) account=")


def summarize_log(path: str) -> dict[str, Any]:
    """
    What Subrouter logged: its request lines by outcome, and its warnings.
    """
    outcomes: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    lines = 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                lines += 1
                match = _REQUEST_LINE.search(line)
                if match:
                    outcomes[" ".join(match.groups())] += 1
                elif BAD_LOG_LEVEL.search(line):
                    warnings[log_text(line)] += 1
    except OSError as e:
        return {"error": str(e)}
    return {"lines": lines, "requests": dict(outcomes), "warnings": dict(warnings)}


if __name__ == "__main__":
    if sys.argv[1:] != ["--upstream-server"]:
        sys.exit("streams.py is the benchmarks' fake upstream: run proxy_bench.py or "
                 "transcript_bench.py")
    sys.exit(run_upstream(_serve_upstream))
