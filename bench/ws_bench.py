#!/usr/bin/env python3
"""
A loopback benchmark of Subrouter's WebSocket relay, against a direct
WebSocket to the same upstream, in one run.

What is measured
----------------
The run starts two subprocesses on 127.0.0.1: a fake Responses upstream (this
file again, with ``--upstream-server``: a lean WebSocket server written on
plain asyncio, speaking ``ws://`` on ``/backend-api/codex/responses``), and
Subrouter itself (``twistd -n subrouter``, started by ``harness.py`` as for
every benchmark: every URL on loopback, every folder temporary, one ChatGPT
login whose token does not expire during the run, so no refresh happens). The
benchmark process is the client: a minimal WebSocket client on asyncio (masked
frames, as RFC 6455 wants of clients), opening either
``ws://127.0.0.1:U/backend-api/codex/responses`` on the upstream ("direct") or
``ws://127.0.0.1:P/v1/responses`` on Subrouter ("proxied"), which relays it to
that same upstream path with the login's credentials.

For every ``{"type":"response.create","seq":N,"t":T}`` text message the
upstream answers at once with ``{"type":"response.completed","seq":N,"t":T}``;
``T`` is the client's ``time.monotonic()`` just before sending. The scenarios:

- handshake: the time to open a WebSocket, from starting the TCP connect to
  having the whole ``101`` response. Through Subrouter it includes the relay's
  own connect and handshake to the upstream, which it completes before it
  accepts the client. Every handshake is a new connection with a new
  ``session_id`` (a new conversation), closed cleanly after it is timed;
- round trip over 1 and over 8 concurrent connections: each connection sends
  its next message the moment the reply to the previous one arrives (closed
  loop), and a sample is reply arrival minus ``T``. With 8 connections the
  machine's cores are busy, so this shows how the relay's cost per message
  turns into queueing;
- round trip over 1 connection with a 64 KB request, as Codex's
  ``response.create`` messages carry the conversation;
- one-way burst, over 1 and over 8 connections at once: the client sends one
  trigger per connection, the upstream answers with N small
  ``response.output_text.delta`` messages as fast as its socket takes them
  (with flow control), then a ``response.completed``; the rate is all the
  messages over the time from sending the first trigger to the arrival of the
  last message.

Each scenario runs in rounds. Direct and proxied rounds alternate, swapping
which goes first each round, so machine noise falls on both alike; both paths
are warmed up first. "added" is the proxied percentile minus the direct one.
Every reply is checked (type, ``seq``, ``T`` echoed exactly; burst messages
counted and in order), and so is each handshake (``Sec-WebSocket-Accept``,
and the path, bearer token, account and ``session_id`` the upstream saw,
which it echoes in ``X-Bench-*`` headers of its ``101``); anything wrong,
missing or late is counted and printed, as are the upstream's own counters,
Subrouter's warnings (with the scenario they came in) and its CPU time per
handshake, round trip and burst message.

Running it
----------
From the repository root, in the project's virtualenv::

    python bench/ws_bench.py                  # the full run, about a minute on 2 cores
    python bench/ws_bench.py --quick          # a smoke run, 10 to 15 s
    python bench/ws_bench.py --json out.json  # also write the numbers as JSON
    python bench/ws_bench.py --log sr.log     # keep Subrouter's log

``SUBROUTER_BENCH_PROFILE=FILE`` runs Subrouter under cProfile (see
``harness.twistd_command``).

It prints Markdown tables on stdout (progress goes to stderr) and exits 0; 1
when it could not run, 2 when anything listed under PROBLEMS went wrong (or
Subrouter exited), 130 on Ctrl-C. Subprocesses and temporary folders are
removed however the run ends, Ctrl-C and SIGTERM included. No traffic leaves
127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import struct
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, cast

from harness import (
    BAD_LOG_LEVEL,
    CHATGPT_ACCOUNT_ID,
    CODEX_PREFIX,
    HOST,
    MAX_HEAD,
    SETTLE,
    BenchError,
    Processes,
    comparison_row,
    comparison_table,
    describe_error,
    exit_on_sigterm,
    interleaved,
    log_text,
    machine_info,
    machine_line,
    percentile,
    private_folder,
    problem_lines,
    process_cpu_seconds,
    run_upstream,
    serve_upstream,
    write_account,
    write_json,
)

DIRECT = "direct"
PROXIED = "proxied"
MODES = (DIRECT, PROXIED)

UPSTREAM_PATH = CODEX_PREFIX + "/responses"
PATHS = {DIRECT: UPSTREAM_PATH, PROXIED: "/v1/responses"}

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
#: the largest message either end of this benchmark accepts
MAX_MESSAGE = 16 * 1024 * 1024

#: the padded request of the "64 KB request" scenario
BIG_REQUEST = 64 * 1024
#: the text of one burst message: a typical small output_text delta
DELTA_TEXT = b"lorem ipsum dolor sit amet, consectetur"
DELTA_PREFIX = b'{"type":"response.output_text.delta","seq":'
MESSAGE_BYTES = len(b'%s%d,"delta":"%s"}' % (DELTA_PREFIX, 10000, DELTA_TEXT))
#: burst messages written per socket write by the upstream
BURST_BATCH = 64

#: a round of any scenario gives up after this long
ROUND_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0

#: what the client puts in Authorization when it goes through Subrouter (it is replaced)
CLIENT_PLACEHOLDER_KEY = "sk-bench-client-placeholder"
#: how much of the bearer token the upstream echoes
TOKEN_ECHO = 24


class WsError(Exception):
    """
    The peer broke the WebSocket protocol.
    """


@dataclass(frozen=True)
class Latency:
    """
    A round-trip scenario: ``lanes`` connections, each doing ``per_lane``
    request/replies per round, requests padded to ``size`` bytes (0: bare).
    """

    name: str
    lanes: int
    size: int
    rounds: int
    per_lane: int


@dataclass(frozen=True)
class Bursts:
    """
    A burst scenario: ``lanes`` connections bursting at once, ``rounds``
    rounds of ``messages`` messages per connection.
    """

    name: str
    lanes: int
    rounds: int
    messages: int


@dataclass(frozen=True)
class Plan:
    """
    How much to measure.

    :ivar handshake_rounds: alternating rounds per path, each of
        ``handshakes_per_round`` handshakes one after the other.
    :ivar latency: the round-trip scenarios.
    :ivar bursts: the one-way burst scenarios.
    :ivar warmup: request/replies per lane per path before measuring anything.
    :ivar deadline: measuring stops (with what it has) after this long.
    """

    handshake_rounds: int
    handshakes_per_round: int
    latency: tuple[Latency, ...]
    bursts: tuple[Bursts, ...]
    warmup: int
    deadline: float


FULL = Plan(
    handshake_rounds=20,
    handshakes_per_round=50,
    latency=(
        Latency("round trip, 1 connection", 1, 0, 40, 500),
        Latency("round trip, 8 connections", 8, 0, 30, 100),
        Latency("round trip, 1 connection, 64 KB request", 1, BIG_REQUEST, 20, 100),
    ),
    bursts=(
        Bursts("one-way burst, 1 connection", 1, 16, 50000),
        Bursts("one-way burst, 8 connections", 8, 8, 10000),
    ),
    warmup=500,
    deadline=100.0,
)
QUICK = Plan(
    handshake_rounds=6,
    handshakes_per_round=20,
    latency=(
        Latency("round trip, 1 connection", 1, 0, 10, 300),
        Latency("round trip, 8 connections", 8, 0, 8, 60),
        Latency("round trip, 1 connection, 64 KB request", 1, BIG_REQUEST, 6, 50),
    ),
    bursts=(
        Bursts("one-way burst, 1 connection", 1, 4, 25000),
        Bursts("one-way burst, 8 connections", 8, 3, 5000),
    ),
    warmup=100,
    deadline=25.0,
)


# -- the wire ------------------------------------------------------------------------------


def mask_payload(data: bytes, key: bytes) -> bytes:
    """
    ``data`` XOR the repeated 4-byte ``key`` (masking and unmasking alike).
    """
    n = len(data)
    if n == 0:
        return b""
    keys = key * ((n + 3) // 4)
    if len(keys) != n:
        keys = keys[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(
        n, "little"
    )


def encode_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """
    One final frame; a client masks with a fresh random key, a server does not mask.
    """
    n = len(payload)
    first = 0x80 | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, bit | n))
    elif n < 0x10000:
        head = struct.pack("!BBH", first, bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + mask_payload(payload, key)


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


class FrameReader:
    """
    Incremental RFC 6455 frame parser: whole messages and control frames out,
    fragments joined, no extensions.

    :param masked: whether the peer must mask (it is a client) or must not.
    """

    def __init__(self, *, masked: bool) -> None:
        self._buf = bytearray()
        self._masked = masked
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = 0
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b0 & 0x70:
                raise WsError("reserved bits set without an extension")
            masked = bool(b1 & 0x80)
            if masked != self._masked:
                raise WsError("masked frame from the server" if masked
                              else "unmasked frame from a client")
            n = b1 & 0x7F
            head = pos + 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = pos + 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = pos + 10
            if n > MAX_MESSAGE:
                raise WsError(f"frame of {n} bytes")
            start = head + 4 if masked else head
            if end - start < n:
                break
            payload = bytes(buf[start : start + n])
            if masked:
                payload = mask_payload(payload, bytes(buf[head:start]))
            pos = start + n
            opcode = b0 & 0x0F
            final = b0 & 0x80
            if opcode >= OP_CLOSE:
                if not final or n > 125 or opcode > OP_PONG:
                    raise WsError(f"bad control frame (opcode {opcode})")
                out.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                if self._fragments is None:
                    raise WsError("continuation without a message")
                self._fragments.append(payload)
                self._fragment_size += n
                if self._fragment_size > MAX_MESSAGE:
                    raise WsError("message too large")
                if final:
                    out.append((self._fragment_opcode, b"".join(self._fragments)))
                    self._fragments = None
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._fragments is not None:
                    raise WsError("new message inside a fragmented one")
                if final:
                    out.append((opcode, payload))
                else:
                    self._fragments = [payload]
                    self._fragment_opcode = opcode
                    self._fragment_size = n
            else:
                raise WsError(f"unknown opcode {opcode}")
        if pos:
            del buf[:pos]
        return out


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """
    The first line and the (lower-cased, last-wins) headers of an HTTP head.
    """
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


# -- the fake upstream (runs in its own process) ----------------------------------------------


class UpstreamStats:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()


class _UpstreamConnection(asyncio.Protocol):
    """
    One connection to the fake upstream: an HTTP/1.1 upgrade, then replies to
    ``response.create`` and bursts on ``bench.burst``.
    """

    def __init__(self, stats: UpstreamStats) -> None:
        self._stats = stats.counts
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._reader: FrameReader | None = None
        self._pending: deque[bytes] = deque()
        self._burst: tuple[int, int, int] | None = None  # next seq, count, trigger seq
        self._paused = False
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._stats["tcp connections"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._reader is not None and not self._closing:
            self._stats["connections lost without a close frame"] += 1
        if self._burst is not None:
            self._stats["bursts cut short"] += 1

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()

    def data_received(self, data: bytes) -> None:
        if self._reader is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD:
                    self._refuse(431, "head too large")
                return
            rest = bytes(self._head[end + 4 :])
            if not self._handshake(bytes(self._head[:end])):
                return
            self._head.clear()
            if not rest:
                return
            data = rest
        reader = self._reader
        assert reader is not None
        try:
            frames = reader.feed(data)
        except WsError as e:
            self._stats[f"protocol error: {e}"] += 1
            self._close(1002)
            return
        for opcode, payload in frames:
            self._frame(opcode, payload)

    def _refuse(self, status: int, why: str, what: str = "") -> None:
        self._stats[f"refused {status} {what}".rstrip()] += 1
        transport = self._transport
        if transport is None:
            return
        body = json.dumps({"error": why}).encode()
        transport.write(
            f"HTTP/1.1 {status} Refused\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1") + body
        )
        transport.close()

    def _handshake(self, head: bytes) -> bool:
        transport = self._transport
        if transport is None:
            return False
        first, headers = parse_head(head)
        parts = first.split(" ")
        if len(parts) != 3:
            self._refuse(400, "bad request line")
            return False
        method, target, _ = parts
        path = target.partition("?")[0]
        if "websocket" not in headers.get("upgrade", "").lower():
            self._refuse(404, f"not a WebSocket upgrade: {method} {path}", f"{method} {path}")
            return False
        key = headers.get("sec-websocket-key", "")
        if method != "GET" or headers.get("sec-websocket-version") != "13" or not key:
            self._refuse(400, "bad WebSocket handshake")
            return False
        if path != UPSTREAM_PATH:
            self._refuse(404, f"no WebSocket at {path}", f"upgrade at {path}")
            return False
        authorization = headers.get("authorization", "")
        token = authorization[7:] if authorization.startswith("Bearer ") else authorization
        echo = {
            "X-Bench-Path": path,
            "X-Bench-Auth": token[:TOKEN_ECHO] or "-",
            "X-Bench-Account": headers.get("chatgpt-account-id", "-"),
            "X-Bench-Session": headers.get("session_id", "-"),
            "X-Bench-Origin": headers.get("origin", "-"),
            "X-Bench-Extensions": headers.get("sec-websocket-extensions", "-"),
        }
        transport.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_key(key.encode('latin-1')).decode('ascii')}\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in echo.items())
                + "\r\n"
            ).encode("latin-1")
        )
        self._reader = FrameReader(masked=True)
        self._stats["handshakes"] += 1
        return True

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT:
            if self._burst is not None:
                self._pending.append(payload)
            else:
                self._message(payload)
        elif opcode == OP_PING:
            self._write(encode_frame(OP_PONG, payload, mask=False))
        elif opcode == OP_CLOSE:
            self._stats["close frames received"] += 1
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1000
            self._close(code)
        elif opcode == OP_BINARY:
            self._stats["binary messages"] += 1
            self._write(encode_frame(OP_BINARY, payload, mask=False))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._closing:
            self._transport.write(data)

    def _close(self, code: int) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        transport.write(encode_frame(OP_CLOSE, struct.pack("!H", code), mask=False))
        self._closing = True
        transport.close()

    def _message(self, payload: bytes) -> None:
        stats = self._stats
        try:
            message = json.loads(payload)
            kind = message["type"]
        except (ValueError, KeyError, TypeError):
            stats["unreadable messages"] += 1
            self._write(encode_frame(OP_TEXT, b'{"type":"bench.unreadable"}', mask=False))
            return
        if kind == "response.create":
            stats["requests"] += 1
            reply = json.dumps(
                {"type": "response.completed", "seq": message.get("seq"), "t": message.get("t")},
                separators=(",", ":"),
            ).encode()
            self._write(encode_frame(OP_TEXT, reply, mask=False))
        elif kind == "bench.burst":
            stats["bursts"] += 1
            self._burst = (0, int(message["n"]), int(message["seq"]))
            self._pump()
        else:
            stats[f"unknown message type {kind!r}"] += 1

    def _pump(self) -> None:
        transport = self._transport
        while self._burst is not None and not self._paused and transport is not None:
            seq, count, trigger = self._burst
            stop = min(seq + BURST_BATCH, count)
            chunk = b"".join(
                encode_frame(OP_TEXT, b'%s%d,"delta":"%s"}' % (DELTA_PREFIX, i, DELTA_TEXT),
                             mask=False)
                for i in range(seq, stop)
            )
            if stop == count:
                chunk += encode_frame(
                    OP_TEXT, b'{"type":"response.completed","seq":%d,"n":%d}' % (trigger, count),
                    mask=False,
                )
                self._burst = None
                self._stats["burst messages"] += count
            else:
                self._burst = (stop, count, trigger)
            transport.write(chunk)  # may pause us
        while self._burst is None and self._pending and self._transport is not None:
            self._message(self._pending.popleft())


async def _serve_upstream(stats_path: str | None) -> None:
    stats = UpstreamStats()

    def save() -> None:
        if stats_path:
            with open(stats_path, "w") as f:
                json.dump(dict(stats.counts), f)

    await serve_upstream(lambda: _UpstreamConnection(stats), save)


# -- the client -----------------------------------------------------------------------------


class HandshakeFailed(Exception):
    pass


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class Job:
    """
    What a connection is busy with; told of every message and of the end.
    """

    def __init__(self) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # a job abandoned on a time-out or an interrupt fails quietly
        self.future.add_done_callback(_retrieve)
        self.problems: Counter[str] = Counter()

    def start(self, conn: WsClient) -> None:
        raise NotImplementedError

    def on_message(self, conn: WsClient, payload: bytes, now: float) -> None:
        raise NotImplementedError

    def finish(self, conn: WsClient) -> None:
        if conn.job is self:
            conn.job = None
        if not self.future.done():
            self.future.set_result(None)

    def lost(self, why: str) -> None:
        if not self.future.done():
            self.future.set_exception(ConnectionError(why))


class PingPong(Job):
    """
    ``count`` request/replies, each request sent when the previous reply arrives.
    """

    def __init__(self, count: int, pad: bytes) -> None:
        super().__init__()
        self.count = count
        self.pad = pad
        self.latencies: list[float] = []
        self.replies = 0
        self._seq = 0
        self._t = 0.0
        self._t_text = b""

    def start(self, conn: WsClient) -> None:
        self._send(conn)

    def _send(self, conn: WsClient) -> None:
        self._seq = conn.next_seq()
        t = time.monotonic()
        self._t = t
        self._t_text = repr(t).encode("ascii")
        conn.send(b'{"type":"response.create","seq":%d,"t":%s%s}' % (self._seq, self._t_text,
                                                                       self.pad))

    def on_message(self, conn: WsClient, payload: bytes, now: float) -> None:
        try:
            reply = json.loads(payload)
        except ValueError:
            reply = None
        if (
            isinstance(reply, dict)
            and reply.get("type") == "response.completed"
            and reply.get("seq") == self._seq
            and reply.get("t") == self._t
        ):
            self.latencies.append(now - self._t)
        else:
            self.problems[f"unexpected reply: {payload[:120]!r}"] += 1
        self.replies += 1
        if self.replies >= self.count:
            self.finish(conn)
        else:
            self._send(conn)


class Burst(Job):
    """
    One trigger, then ``count`` deltas and a ``response.completed``, counted.
    """

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.received = 0
        self.disordered = 0
        self.sent_at = 0.0
        self.first_at: float | None = None
        self.done_at: float | None = None
        self._trigger = 0
        self._next = 0

    def start(self, conn: WsClient) -> None:
        self._trigger = conn.next_seq()
        self.sent_at = time.monotonic()
        conn.send(b'{"type":"bench.burst","seq":%d,"n":%d}' % (self._trigger, self.count))

    def on_message(self, conn: WsClient, payload: bytes, now: float) -> None:
        if payload.startswith(DELTA_PREFIX):
            comma = payload.find(b",", len(DELTA_PREFIX))
            try:
                seq = int(payload[len(DELTA_PREFIX) : comma])
            except ValueError:
                self.problems[f"unreadable delta: {payload[:120]!r}"] += 1
                return
            if seq != self._next:
                self.disordered += 1
            self._next = seq + 1
            self.received += 1
            if self.first_at is None:
                self.first_at = now
            return
        try:
            reply = json.loads(payload)
        except ValueError:
            reply = None
        if (
            isinstance(reply, dict)
            and reply.get("type") == "response.completed"
            and reply.get("seq") == self._trigger
        ):
            self.done_at = now
            if self.received != self.count:
                self.problems[f"burst: {self.received} of {self.count} deltas arrived"] += 1
            if self.disordered:
                self.problems["burst: deltas out of order"] += self.disordered
            self.finish(conn)
        else:
            self.problems[f"unexpected message in a burst: {payload[:120]!r}"] += 1

    @property
    def rate(self) -> float | None:
        if self.done_at is None or self.received != self.count:
            return None
        return self.count / (self.done_at - self.sent_at)


class WsClient(asyncio.Protocol):
    """
    A client WebSocket: the upgrade request on connect, then masked frames
    out; timestamps taken as bytes arrive, before any parsing.
    """

    def __init__(self, request: bytes, key: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[tuple[dict[str, str], float]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.job: Job | None = None
        self.unsolicited = 0
        self.close_received: int | None = None
        self.close_sent = False
        self.errors: list[str] = []
        self._request = request
        self._accept = accept_key(key).decode("ascii")
        self._head = bytearray()
        self._reader: FrameReader | None = None
        self._seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def send(self, payload: bytes, opcode: int = OP_TEXT) -> None:
        if self.transport is None:
            raise ConnectionError("the connection is gone")
        self.transport.write(encode_frame(opcode, payload, mask=True))

    def run(self, job: Job) -> asyncio.Future[None]:
        if self.job is not None:
            raise RuntimeError("the connection is busy")
        if self.transport is None or self.close_received is not None:
            job.lost("the connection is closed")
            return job.future
        self.job = job
        job.start(self)
        return job.future

    def start_close(self, code: int = 1000) -> None:
        if not self.close_sent and self.transport is not None:
            self.close_sent = True
            self.send(struct.pack("!H", code), OP_CLOSE)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self._reader is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD:
                    self._fail_handshake("response head too large")
                return
            first, headers = parse_head(bytes(self._head[:end]))
            rest = bytes(self._head[end + 4 :])
            self._head.clear()
            parts = first.split(" ", 2)
            if len(parts) < 2 or parts[1] != "101":
                self._fail_handshake(f"{first!r}: {rest[:200]!r}")
                return
            if (
                headers.get("upgrade", "").lower() != "websocket"
                or "upgrade" not in headers.get("connection", "").lower()
                or headers.get("sec-websocket-accept") != self._accept
            ):
                self._fail_handshake(f"bad 101 response headers: {headers}")
                return
            if "sec-websocket-extensions" in headers:
                self._fail_handshake("an extension nobody offered: "
                                     + headers["sec-websocket-extensions"])
                return
            self._reader = FrameReader(masked=False)
            self.handshake.set_result((headers, now))
            if not rest:
                return
            data = rest
        try:
            frames = self._reader.feed(data)
        except WsError as e:
            self.errors.append(f"protocol error from the server: {e}")
            self.abort()
            return
        for opcode, payload in frames:
            if opcode == OP_TEXT or opcode == OP_BINARY:
                job = self.job
                if job is None:
                    self.unsolicited += 1
                else:
                    job.on_message(self, payload, now)
            elif opcode == OP_PING:
                if not self.close_sent:
                    self.send(payload, OP_PONG)
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_received = code
                if not self.close_sent:
                    self.errors.append(f"the server closed the WebSocket ({code}: {payload[2:]!r})")
                    self.start_close(code if code != 1005 else 1000)
                if self.job is not None:
                    self.job.lost(f"close frame {code} in the middle of a job")

    def _fail_handshake(self, why: str) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeFailed(why))
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeFailed(f"connection lost: {exc}"))
        if self.job is not None:
            self.job.lost(f"connection lost in the middle of a job ({exc})")
            self.job = None
        if not self.closed.done():
            self.closed.set_result(None)


# -- the measurements -------------------------------------------------------------------------


@dataclass
class Samples:
    values: list[float] = field(default_factory=list)
    problems: Counter[str] = field(default_factory=Counter)


@dataclass
class Results:
    handshakes: dict[str, Samples] = field(default_factory=dict)
    latency: dict[str, dict[str, Samples]] = field(default_factory=dict)
    bursts: dict[str, dict[str, Samples]] = field(default_factory=dict)
    warmup_problems: dict[str, Counter[str]] = field(default_factory=dict)
    #: Subrouter CPU seconds and relayed messages, by scenario
    proxy_cpu: dict[str, tuple[float, int, str]] = field(default_factory=dict)
    #: what the upstream saw of the first proxied handshake (less the token)
    upstream_saw: dict[str, str] = field(default_factory=dict)
    cut_short: list[str] = field(default_factory=list)
    connections: Counter[str] = field(default_factory=Counter)
    #: (wall-clock start, what): to tell during what a Subrouter log line came
    timeline: list[tuple[float, str]] = field(default_factory=list)


class Bench:
    def __init__(self, plan: Plan, ports: dict[str, int], access_token: str, proxy_pid: int,
                 progress: IO[str]) -> None:
        self.plan = plan
        self.ports = ports
        self.access_token = access_token
        self.proxy_pid = proxy_pid
        self.progress = progress
        self.results = Results()
        self.deadline = 0.0
        self._open: set[WsClient] = set()

    def say(self, text: str) -> None:
        self.results.timeline.append((time.time(), text.split(":", 1)[0]))
        self.progress.write(text + "\n")
        self.progress.flush()

    def late(self) -> bool:
        return time.monotonic() > self.deadline

    # -- connections

    def _request(self, mode: str, key: bytes, session: str) -> bytes:
        port = self.ports[mode]
        if mode == DIRECT:
            # what Subrouter itself sends the upstream
            credentials = (f"Authorization: Bearer {self.access_token}\r\n"
                           f"ChatGPT-Account-ID: {CHATGPT_ACCOUNT_ID}\r\n")
        else:
            credentials = f"Authorization: Bearer {CLIENT_PLACEHOLDER_KEY}\r\n"
        return (
            f"GET {PATHS[mode]} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode('ascii')}\r\nSec-WebSocket-Version: 13\r\n"
            f"{credentials}originator: codex_cli_rs\r\nsession_id: {session}\r\n"
            "OpenAI-Beta: responses_websockets=2026-02-04\r\nUser-Agent: subrouter-ws-bench\r\n"
            "\r\n"
        ).encode("latin-1")

    def _check_echo(self, mode: str, headers: dict[str, str], session: str) -> list[str]:
        if mode == PROXIED and not self.results.upstream_saw:
            self.results.upstream_saw = {k[8:]: v for k, v in headers.items()
                                         if k.startswith("x-bench-") and k != "x-bench-auth"}
        problems = []
        expected = {
            "x-bench-path": UPSTREAM_PATH,
            "x-bench-auth": self.access_token[:TOKEN_ECHO],
            "x-bench-account": CHATGPT_ACCOUNT_ID,
            "x-bench-session": session,
            "x-bench-origin": "-",
        }
        for name, value in expected.items():
            if headers.get(name) != value:
                problems.append(f"handshake: upstream saw {name[8:]}={headers.get(name)!r}, "
                                f"not {value!r}")
        return problems

    async def connect(self, mode: str) -> tuple[WsClient, float, list[str]]:
        """
        Open a WebSocket; its opening time and what was wrong with the handshake.
        """
        loop = asyncio.get_running_loop()
        key = base64.b64encode(os.urandom(16))
        session = str(uuid.uuid4())
        request = self._request(mode, key, session)
        self.results.connections[mode] += 1
        started = time.monotonic()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: WsClient(request, key), HOST, self.ports[mode]),
            CONNECT_TIMEOUT,
        )
        self._open.add(conn)
        try:
            headers, opened = await asyncio.wait_for(asyncio.shield(conn.handshake),
                                                     CONNECT_TIMEOUT)
        except BaseException:
            self._open.discard(conn)
            conn.abort()
            raise
        return conn, opened - started, self._check_echo(mode, headers, session)

    async def close(self, conn: WsClient, problems: Counter[str]) -> None:
        """
        Close cleanly: our close frame, theirs, then the server closes TCP.
        """
        self._open.discard(conn)
        if conn.transport is not None:
            conn.start_close(1000)
            try:
                await asyncio.wait_for(asyncio.shield(conn.closed), CLOSE_TIMEOUT)
            except TimeoutError:
                problems[f"close: no TCP close within {CLOSE_TIMEOUT:g}s"] += 1
                conn.abort()
        if conn.close_received is None:
            problems["close: no close frame back"] += 1
        elif conn.close_received != 1000:
            problems[f"close: close code {conn.close_received} back"] += 1
        for error in conn.errors:
            problems[error] += 1
        if conn.unsolicited:
            problems["messages nobody asked for"] += conn.unsolicited

    def abort_all(self) -> None:
        for conn in list(self._open):
            conn.abort()
        self._open.clear()

    async def open_lanes(self, mode: str, count: int, problems: Counter[str]) -> list[WsClient]:
        lanes = []
        for _ in range(count):
            try:
                conn, _, echo = await self.connect(mode)
            except (OSError, TimeoutError, HandshakeFailed) as e:
                problems[f"connect: {describe_error(e)}"] += 1
                continue
            for text in echo:
                problems[text] += 1
            lanes.append(conn)
        return lanes

    async def close_lanes(self, lanes: Sequence[WsClient], problems: Counter[str]) -> None:
        await asyncio.gather(*(self.close(conn, problems) for conn in lanes))

    async def run_jobs(self, lanes: Sequence[WsClient], jobs: Sequence[Job],
                       problems: Counter[str]) -> bool:
        """
        One job per lane, all at once; False when any failed or timed out.
        """
        futures = [conn.run(job) for conn, job in zip(lanes, jobs, strict=True)]
        _, pending = await asyncio.wait(futures, timeout=ROUND_TIMEOUT)
        ok = not pending
        for future in pending:
            future.cancel()
        for conn, job in zip(lanes, jobs, strict=True):
            if job.future.cancelled():
                problems[f"timed out after {ROUND_TIMEOUT:g}s"] += 1
                conn.job = None
            elif job.future.exception() is not None:
                problems[describe_error(cast(BaseException, job.future.exception()))] += 1
                ok = False
            problems.update(job.problems)
        return ok

    # -- scenarios

    def _cpu(self) -> float | None:
        return process_cpu_seconds(self.proxy_pid)

    def _note_cpu(self, scenario: str, before: float | None, after: float | None,
                  count: int, per: str) -> None:
        if before is None or after is None:
            return
        seconds, total, _ = self.results.proxy_cpu.get(scenario, (0.0, 0, per))
        self.results.proxy_cpu[scenario] = (seconds + after - before, total + count, per)

    async def run(self) -> Results:
        self.deadline = time.monotonic() + self.plan.deadline
        try:
            await self._warm_up()
            await self._handshakes()
            for scenario in self.plan.latency:
                await self._latency(scenario)
            for bursts in self.plan.bursts:
                await self._bursts(bursts)
        finally:
            self.abort_all()
            self.results.timeline.append((time.time(), "after the measurements"))
        return self.results

    async def _warm_up(self) -> None:
        self.say("warming up")
        for mode in MODES:
            problems = self.results.warmup_problems.setdefault(mode, Counter())
            for _ in range(3):
                with contextlib.suppress(OSError, TimeoutError, HandshakeFailed):
                    conn, _, _ = await self.connect(mode)
                    await self.close(conn, problems)
            lanes = await self.open_lanes(mode, 8, problems)
            if not lanes:
                raise BenchError(f"cannot open a {mode} WebSocket: {dict(problems)}")
            await self.run_jobs(lanes, [PingPong(self.plan.warmup, b"") for _ in lanes],
                                problems)
            await self.run_jobs(lanes[:1], [PingPong(10, self._pad(BIG_REQUEST))], problems)
            await self.run_jobs(lanes, [Burst(1000) for _ in lanes], problems)
            await self.close_lanes(lanes, problems)

    async def _handshakes(self) -> None:
        plan = self.plan
        self.say(f"handshakes: {plan.handshake_rounds} rounds of {plan.handshakes_per_round} "
                 "per path")
        samples = {mode: Samples() for mode in MODES}
        self.results.handshakes = samples
        for number in range(plan.handshake_rounds):
            if self.late():
                self.results.cut_short.append(f"handshakes: stopped after {number} rounds")
                break
            for mode in interleaved(MODES, number):
                into = samples[mode]
                before = self._cpu() if mode == PROXIED else None
                for _ in range(plan.handshakes_per_round):
                    try:
                        conn, seconds, echo = await self.connect(mode)
                    except (OSError, TimeoutError, HandshakeFailed) as e:
                        into.problems[f"connect: {describe_error(e)}"] += 1
                        continue
                    into.values.append(seconds)
                    into.problems.update(echo)
                    await self.close(conn, into.problems)
                if mode == PROXIED:
                    self._note_cpu("handshake", before, self._cpu(),
                                   plan.handshakes_per_round, "WebSocket opened and closed")
                await asyncio.sleep(SETTLE)

    @staticmethod
    def _pad(size: int) -> bytes:
        if not size:
            return b""
        bare = len(b'{"type":"response.create","seq":1000000,"t":123456.12345678901}')
        return b',"pad":"%s"' % (b"x" * max(0, size - bare - len(b',"pad":""')))

    async def _latency(self, scenario: Latency) -> None:
        self.say(f"{scenario.name}: {scenario.rounds} rounds of {scenario.per_lane} "
                 "request/replies per connection per path")
        samples = {mode: Samples() for mode in MODES}
        self.results.latency[scenario.name] = samples
        lanes = {mode: await self.open_lanes(mode, scenario.lanes, samples[mode].problems)
                 for mode in MODES}
        pad = self._pad(scenario.size)
        try:
            for number in range(scenario.rounds):
                if self.late():
                    self.results.cut_short.append(
                        f"{scenario.name}: stopped after {number} rounds")
                    break
                for mode in interleaved(MODES, number):
                    into = samples[mode]
                    if len(lanes[mode]) < scenario.lanes:
                        # a connection was lost: top up
                        lanes[mode] += await self.open_lanes(
                            mode, scenario.lanes - len(lanes[mode]), into.problems)
                    jobs = [PingPong(scenario.per_lane, pad) for _ in lanes[mode]]
                    before = self._cpu() if mode == PROXIED else None
                    ok = await self.run_jobs(lanes[mode], jobs, into.problems)
                    if mode == PROXIED:
                        self._note_cpu(scenario.name, before, self._cpu(),
                                       sum(job.replies for job in jobs), "round trip")
                    for job in jobs:
                        into.values += job.latencies
                    if not ok:
                        for conn in lanes[mode]:
                            self._open.discard(conn)
                            conn.abort()
                        lanes[mode] = []
                    await asyncio.sleep(SETTLE)
        finally:
            for mode in MODES:
                await self.close_lanes(lanes[mode], samples[mode].problems)

    async def _bursts(self, scenario: Bursts) -> None:
        self.say(f"{scenario.name}: {scenario.rounds} rounds of {scenario.messages} messages "
                 "per connection per path")
        samples = {mode: Samples() for mode in MODES}
        self.results.bursts[scenario.name] = samples
        lanes = {mode: await self.open_lanes(mode, scenario.lanes, samples[mode].problems)
                 for mode in MODES}
        try:
            for number in range(scenario.rounds):
                if self.late():
                    self.results.cut_short.append(
                        f"{scenario.name}: stopped after {number} rounds")
                    break
                for mode in interleaved(MODES, number):
                    into = samples[mode]
                    if len(lanes[mode]) < scenario.lanes:
                        lanes[mode] += await self.open_lanes(
                            mode, scenario.lanes - len(lanes[mode]), into.problems)
                    jobs = [Burst(scenario.messages) for _ in lanes[mode]]
                    before = self._cpu() if mode == PROXIED else None
                    ok = await self.run_jobs(lanes[mode], jobs, into.problems)
                    if mode == PROXIED:
                        self._note_cpu(scenario.name, before, self._cpu(),
                                       sum(job.received + 1 for job in jobs), "message")
                    rate = aggregate_rate(jobs)
                    if rate is not None and len(jobs) == scenario.lanes:
                        into.values.append(rate)
                    if not ok:
                        for conn in lanes[mode]:
                            self._open.discard(conn)
                            conn.abort()
                        lanes[mode] = []
                    await asyncio.sleep(SETTLE)
        finally:
            for mode in MODES:
                await self.close_lanes(lanes[mode], samples[mode].problems)


def aggregate_rate(jobs: Sequence[Burst]) -> float | None:
    """
    All the bursts' messages over the time from the first trigger to the
    last message; None unless every burst arrived whole.
    """
    if not jobs or any(job.rate is None for job in jobs):
        return None
    first = min(job.sent_at for job in jobs)
    last = max(cast(float, job.done_at) for job in jobs)
    return sum(job.count for job in jobs) / (last - first)


# -- the processes --------------------------------------------------------------------------


def read_upstream_stats(path: str) -> dict[str, int]:
    try:
        with open(path) as f:
            return cast(dict[str, int], json.load(f))
    except (OSError, ValueError):
        return {}


_OPENED = re.compile(r"WebSocket \S+ opened via account")
_CLOSED = re.compile(r"WebSocket \S+ via account \S+ closed \((\S+)\)")
_FACTORY = re.compile(r"(Starting|Stopping) factory")


def _log_time(line: str) -> float | None:
    try:
        return datetime.fromisoformat(line.split(" ", 1)[0]).timestamp()
    except ValueError:
        return None


def during(when: float | None, timeline: Sequence[tuple[float, str]]) -> str:
    """
    What the benchmark was doing at ``when`` (log times are whole seconds).
    """
    if when is None:
        return "?"
    doing = [what for start, what in timeline if int(start) <= when]
    return doing[-1] if doing else "start-up"


def summarize_log(path: str, timeline: Sequence[tuple[float, str]]) -> dict[str, Any]:
    """
    What Subrouter logged: WebSockets opened and closed (by code), factory
    start/stop lines, warnings (with what the benchmark was doing then).
    """
    closed: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    factories = 0
    when: dict[str, list[str]] = {}
    opened = lines = 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                lines += 1
                match = _CLOSED.search(line)
                if match:
                    closed[match.group(1)] += 1
                elif _OPENED.search(line):
                    opened += 1
                elif _FACTORY.search(line):
                    factories += 1
                elif BAD_LOG_LEVEL.search(line):
                    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", log_text(line))
                    warnings[text] += 1
                    seen = when.setdefault(text, [])
                    phase = during(_log_time(line), timeline)
                    if phase not in seen:
                        seen.append(phase)
    except OSError as e:
        return {"error": str(e)}
    return {"lines": lines, "opened": opened, "closed": dict(closed),
            "factory_lines": factories,
            "warnings": [{"text": text, "count": count, "during": when[text]}
                         for text, count in warnings.items()]}


# -- the report -----------------------------------------------------------------------------


def build_report(results: Results, plan: Plan) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []

    def add_row(name: str, samples: dict[str, Samples]) -> None:
        rows.append(comparison_row(name, MODES, samples[DIRECT].values,
                                   samples[PROXIED].values))

    if results.handshakes:
        add_row("handshake (open a WebSocket)", results.handshakes)
    for name, samples in results.latency.items():
        add_row(name, samples)
    bursts: list[dict[str, Any]] = []
    for scenario in plan.bursts:
        by_mode = results.bursts.get(scenario.name)
        if by_mode is None:
            continue
        burst: dict[str, Any] = {"scenario": scenario.name, "connections": scenario.lanes,
                                 "messages_per_connection": scenario.messages}
        for mode in MODES:
            rates = by_mode[mode].values
            burst[mode] = {"median": percentile(rates, 50), "min": min(rates, default=0.0),
                           "max": max(rates, default=0.0), "n": len(rates)}
        bursts.append(burst)
    problems: dict[str, dict[str, int]] = {}

    def note(where: str, counter: Counter[str]) -> None:
        if counter:
            problems[where] = dict(counter)

    for mode, taken in results.handshakes.items():
        note(f"handshakes, {mode}", taken.problems)
    for name, by_mode in results.latency.items():
        for mode, taken in by_mode.items():
            note(f"{name}, {mode}", taken.problems)
    for name, by_mode in results.bursts.items():
        for mode, taken in by_mode.items():
            note(f"{name}, {mode}", taken.problems)
    for mode, counter in results.warmup_problems.items():
        note(f"warm-up, {mode}", counter)
    cpu = {name: {"us": seconds / count * 1e6 if count else float("nan"), "per": per}
           for name, (seconds, count, per) in results.proxy_cpu.items()}
    return {"rows": rows, "bursts": bursts, "problems": problems,
            "proxy_cpu_us": cpu, "upstream_saw": results.upstream_saw,
            "connections_opened": dict(results.connections), "cut_short": results.cut_short}


def _rate(value: float) -> str:
    return "n/a" if value != value else f"{value:,.0f}"


def render(report: dict[str, Any], machine: str) -> str:
    out = [machine, "", *comparison_table(report["rows"], MODES, digits=3)]
    if report["bursts"]:
        out += ["", f"one-way bursts of {MESSAGE_BYTES} B text messages, rate in messages/s "
                "over all connections, from the first trigger sent to the last message in",
                "", "| scenario | direct median | direct min | proxied median | proxied min "
                "| proxied / direct | rounds (direct/proxied) |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for burst in report["bursts"]:
            direct, proxied = burst[DIRECT], burst[PROXIED]
            ratio = (f"{proxied['median'] / direct['median'] * 100:.1f} %"
                     if direct["median"] == direct["median"] and direct["median"] else "n/a")
            out.append(
                f"| {burst['scenario']} ({burst['messages_per_connection']:,} messages each) "
                f"| {_rate(direct['median'])} | {_rate(direct['min'])} "
                f"| {_rate(proxied['median'])} | {_rate(proxied['min'])} | {ratio} "
                f"| {direct['n']}/{proxied['n']} |"
            )
    out += ["", "times in ms; added = proxied minus direct, percentile by percentile"]
    if report["bursts"]:
        out.append("direct burst rates are the ceiling of this benchmark's own client and "
                   "upstream (pure Python), not of loopback")
    cpu = report["proxy_cpu_us"]
    if cpu:
        out.append("Subrouter CPU time (its /proc/PID/stat, user+system, over the proxied "
                   "rounds): " + "; ".join(
                       f"{name} {value['us']:.0f} µs per {value['per']}"
                       for name, value in cpu.items()))
    if report["upstream_saw"]:
        out.append("the upstream saw Subrouter's handshake as: " + ", ".join(
            f"{k} {v!r}" for k, v in report["upstream_saw"].items())
            + " (the bench upstream declines permessage-deflate)")
    out.append("client connections opened: "
               + ", ".join(f"{k} {v}" for k, v in report["connections_opened"].items()))
    upstream = report.get("upstream", {})
    if upstream:
        out.append("upstream counters: " + ", ".join(f"{k} {v}" for k, v in upstream.items()))
    log = report.get("proxy_log", {})
    if log:
        out.append(f"Subrouter log: {log.get('lines', 0)} lines; WebSockets opened "
                   f"{log.get('opened', 0)}, closed by code {log.get('closed', {})}; "
                   f"{log.get('factory_lines', 0)} 'Starting/Stopping factory' lines")
        for warning in log.get("warnings", [])[:10]:
            expected = (" (expected: the bench upstream has no usage endpoint)"
                        if "fetching the usage" in warning["text"] else "")
            out.append(f"  log warning x{warning['count']} (during "
                       f"{', '.join(warning['during'])}): {warning['text']}{expected}")
    if report.get("proxy_exited_during_run") is not None:
        out.append(f"SUBROUTER EXITED during the run, status {report['proxy_exited_during_run']}")
    for note in report["cut_short"]:
        out.append(f"cut short by the time limit: {note}")
    if report["problems"]:
        out.append("PROBLEMS (messages or handshakes that were wrong, missing or late):")
        out += problem_lines(report["problems"])
    else:
        out.append("every handshake, reply and burst checked out (accept key, upstream echo "
                   "of path and credentials, seq and t, counts and order, clean close)")
    return "\n".join(out)


def autobahn_nvx() -> bool | None:
    """
    Whether autobahn uses its NVX (C) frame masking and UTF-8 checks here.
    """
    try:
        from autobahn.websocket import USES_NVX
    except ImportError:
        return None
    return bool(USES_NVX)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare a direct WebSocket to a fake upstream with the path through "
        "Subrouter's relay, on loopback.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds: a smoke run of about 15 s")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument("--log", metavar="FILE",
                        help="keep Subrouter's log here (default: a temporary file)")
    parser.add_argument("--upstream-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--upstream-stats", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, stdout: IO[str] = sys.stdout,
         progress: IO[str] = sys.stderr) -> int:
    args = parse_args(argv)
    if args.upstream_server:
        return run_upstream(lambda: _serve_upstream(args.upstream_stats))
    exit_on_sigterm()
    plan = QUICK if args.quick else FULL
    info = machine_info(("twisted", "autobahn"))
    info["autobahn_nvx"] = autobahn_nvx()
    processes = Processes()
    started = time.monotonic()
    with private_folder("subrouter-ws-bench-") as folder:
        stats_path = os.path.join(folder, "upstream-stats.json")
        log_path = os.path.abspath(args.log) if args.log else os.path.join(folder, "subrouter.log")
        try:
            access_token = write_account(folder)
            upstream_port = processes.start_upstream(folder, __file__, "--upstream-stats",
                                                     stats_path)
            proxy_port = processes.start_daemon(PROXIED, folder, upstream_port, log_path)
            progress.write(f"upstream on {HOST}:{upstream_port}, Subrouter on "
                           f"{HOST}:{proxy_port} (log: {log_path})\n")
            bench = Bench(plan, {DIRECT: upstream_port, PROXIED: proxy_port}, access_token,
                          processes.daemons[PROXIED].pid, progress)
            results = asyncio.run(bench.run())
            proxy_status = processes.exited()[PROXIED]
        except KeyboardInterrupt:
            progress.write("interrupted\n")
            return 130
        except BenchError as e:
            progress.write(f"ws_bench: {e}\n")
            return 1
        finally:
            # the upstream writes its counters as it exits
            processes.stop()
        report = build_report(results, plan)
        report["upstream"] = read_upstream_stats(stats_path)
        report["proxy_log"] = summarize_log(log_path, results.timeline)
        report["proxy_exited_during_run"] = proxy_status
    report["machine"] = info
    report["plan"] = {
        "handshakes": plan.handshake_rounds * plan.handshakes_per_round,
        "latency": [{"name": s.name, "connections": s.lanes, "request_bytes": s.size or None,
                     "rounds": s.rounds, "per_connection": s.per_lane} for s in plan.latency],
        "bursts": [{"name": b.name, "connections": b.lanes, "rounds": b.rounds,
                    "messages_per_connection": b.messages} for b in plan.bursts],
        "burst_message_bytes": MESSAGE_BYTES,
    }
    report["seconds"] = round(time.monotonic() - started, 1)
    versions = (f"Twisted {info['twisted']}, autobahn {info['autobahn']} "
                f"(NVX {info['autobahn_nvx']}), subrouter {info['subrouter']}")
    stdout.write(render(report, machine_line(info, versions)) + "\n")
    stdout.flush()
    progress.write(f"done in {report['seconds']:.0f} s\n")
    if args.json:
        write_json(args.json, report)
    return 2 if report["problems"] or report["proxy_exited_during_run"] is not None else 0


if __name__ == "__main__":
    sys.exit(main())
