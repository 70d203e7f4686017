#!/usr/bin/env python3
"""
The WebSocket workload ``ws_bench.py`` measures: the wire (RFC 6455 frames,
written here on plain asyncio so neither end is the code under test), the
fake Responses upstream, and the client with its jobs.

The upstream runs in its own process (this file, with ``--upstream-server``):
it accepts ``ws://`` upgrades on ``/backend-api/codex/responses`` (declining
permessage-deflate), echoes what it saw of the handshake in ``X-Bench-*``
headers of its ``101``, answers every ``response.create`` message at once
with a ``response.completed`` carrying the same ``seq`` and ``t``, and answers
a ``bench.burst`` trigger with N small ``response.output_text.delta`` messages
as fast as its socket takes them (with flow control), then a
``response.completed``. It counts what it saw and writes the counters to the
file named by ``--upstream-stats`` as it exits.

The client: :class:`WsClient` opens a WebSocket (masked frames, as RFC 6455
wants of clients) and runs one :class:`Job` at a time on it, timestamps taken
as bytes arrive, before any parsing: :class:`PingPong` (closed-loop round
trips) or :class:`Burst` (one trigger, a counted burst back).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import struct
import sys
import time
from collections import Counter, deque
from typing import cast

from harness import CODEX_PREFIX, MAX_HEAD, run_upstream, serve_upstream

UPSTREAM_PATH = CODEX_PREFIX + "/responses"

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
#: the largest message either end of this benchmark accepts
MAX_MESSAGE = 16 * 1024 * 1024

#: the text of one burst message: a typical small output_text delta
DELTA_TEXT = b"lorem ipsum dolor sit amet, consectetur"
DELTA_PREFIX = b'{"type":"response.output_text.delta","seq":'
MESSAGE_BYTES = len(b'%s%d,"delta":"%s"}' % (DELTA_PREFIX, 10000, DELTA_TEXT))
#: burst messages written per socket write by the upstream
BURST_BATCH = 64

#: how much of the bearer token the upstream echoes
TOKEN_ECHO = 24


class WsError(Exception):
    """
    The peer broke the WebSocket protocol.
    """


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


def main() -> int:
    parser = argparse.ArgumentParser(description="The WebSocket benchmark's fake upstream.")
    parser.add_argument("--upstream-server", action="store_true", required=True)
    parser.add_argument("--upstream-stats", help="write the counters here on exit")
    args = parser.parse_args()
    return run_upstream(lambda: _serve_upstream(args.upstream_stats))


if __name__ == "__main__":
    sys.exit(main())
