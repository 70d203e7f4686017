#!/usr/bin/env python3
"""
The least a relay on Twisted can do, as a reference for ``proxy_bench.py
--against floor``: what Python and Twisted cost on this machine before any of
Subrouter's own work.

For each client connection it opens one connection to the fake upstream and
relays, on plain ``Protocol`` objects and Twisted's own epoll reactor:

- towards the upstream, every request with its path moved under the Codex
  prefix (``/v1/x`` becomes ``/backend-api/codex/x``), ``Authorization``
  replaced by the bench account's token and ``ChatGPT-Account-ID`` added
  (what the upstream's echo checks), its ``Content-Length`` body passed on;
- towards the client, the upstream's bytes exactly as they come.

It chooses no account, keeps no conversation, parses no response, counts and
logs nothing, and assumes the well-formed requests the benchmark sends. Both
sockets have ``TCP_NODELAY``, as Subrouter's do. With ``--subrouter-loop``
it runs on Subrouter's reactor loop (:mod:`subrouter.loop`) and writes the way
Subrouter does (``send_now``): what is left between that and Subrouter is
Subrouter's own work per request and per event.

With ``--work-us N`` it also spends N µs of CPU on every request before
sending it upstream (a busy loop on the thread's CPU clock), standing in for
a proxy's own per-request work: a run at several values shows how much of it
a burst of new requests can take before the time to first byte misses its
aim, a budget for Subrouter's own. Only for benchmarks; it listens on
127.0.0.1 and prints its port when ready::

    python bench/floor_relay.py [--subrouter-loop] [--work-us N] UPSTREAM_PORT TOKEN ACCOUNT_ID
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from harness import CODEX_PREFIX, HOST
from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.python.failure import Failure

#: the client's path prefix, moved under the Codex prefix upstream
CLIENT_PREFIX = b"/v1"


def _plain_write(transport: Any, data: bytes) -> None:
    transport.write(data)


#: how bytes are written: Twisted's way, or Subrouter's (``--subrouter-loop``)
_write: Callable[[Any, bytes], None] = _plain_write


#: seconds of CPU spent on each request before it is sent (``--work-us``)
_work_seconds = 0.0


def _work() -> None:
    if _work_seconds:
        until = time.thread_time() + _work_seconds
        while time.thread_time() < until:
            pass


def _no_delay(transport: object) -> None:
    sock = getattr(transport, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Upstream(protocol.Protocol):
    """
    The upstream side of one client connection: its bytes go to the client
    as they are.
    """

    def __init__(self, client: _Client) -> None:
        self.client = client

    def connectionMade(self) -> None:
        _no_delay(self.transport)

    def dataReceived(self, data: bytes) -> None:
        _write(self.client.transport, data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.client.transport.loseConnection()  # type: ignore[union-attr]


class _Client(protocol.Protocol):
    """
    One client connection: request heads rewritten, bodies passed on.
    """

    def __init__(self, reactor: object, upstream_port: int, token: bytes,
                 account: bytes) -> None:
        self._reactor = reactor
        self._upstream_port = upstream_port
        self._credentials = (b"Authorization: Bearer " + token, b"ChatGPT-Account-ID: " + account)
        self._upstream: _Upstream | None = None
        self._waiting: list[bytes] = []
        self._buffer = b""
        self._body_left = 0

    def connectionMade(self) -> None:
        _no_delay(self.transport)
        endpoint = TCP4ClientEndpoint(self._reactor, HOST, self._upstream_port)
        connectProtocol(endpoint, _Upstream(self)).addCallbacks(
            self._connected, lambda _: self.transport.loseConnection()  # type: ignore[union-attr]
        )

    def _connected(self, upstream: _Upstream) -> None:
        self._upstream = upstream
        for data in self._waiting:
            _write(upstream.transport, data)
        self._waiting = []

    def _send(self, data: bytes) -> None:
        if self._upstream is None:
            self._waiting.append(data)
        else:
            _write(self._upstream.transport, data)

    def dataReceived(self, data: bytes) -> None:
        if self._body_left:
            taken = data[: self._body_left]
            self._body_left -= len(taken)
            self._send(taken)
            data = data[len(taken):]
        data = self._buffer + data
        while data:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                break
            lines = data[:end].split(b"\r\n")
            method, target, version = lines[0].split(b" ")
            if target.startswith(CLIENT_PREFIX):
                target = CODEX_PREFIX.encode() + target[len(CLIENT_PREFIX):]
            out = [b"%s %s %s" % (method, target, version)]
            length = 0
            for line in lines[1:]:
                name = line.partition(b":")[0].strip().lower()
                if name == b"authorization":
                    continue
                if name == b"content-length":
                    length = int(line.partition(b":")[2])
                out.append(line)
            out += self._credentials
            _work()
            start = end + 4
            body = data[start:start + length]
            self._body_left = length - len(body)
            self._send(b"\r\n".join(out) + b"\r\n\r\n" + body)
            data = data[start + len(body):]
        self._buffer = data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._upstream is not None:
            self._upstream.transport.loseConnection()  # type: ignore[union-attr]


class _Factory(protocol.ServerFactory):
    def __init__(self, reactor: object, upstream_port: int, token: bytes,
                 account: bytes) -> None:
        self._args = (reactor, upstream_port, token, account)

    def buildProtocol(self, addr: object) -> _Client:
        client = _Client(*self._args)
        client.factory = self
        return client


def main(argv: list[str]) -> int:
    from twisted.internet import reactor

    global _write, _work_seconds
    if argv[:1] == ["--subrouter-loop"]:
        # Subrouter's reactor loop and socket writes, none of its routing
        from subrouter.loop import direct_dispatch
        from subrouter.upstream.client import send_now

        direct_dispatch(reactor)
        _write = send_now
        argv = argv[1:]
    if argv[:1] == ["--work-us"]:
        _work_seconds = float(argv[1]) / 1e6
        argv = argv[2:]
    upstream_port, token, account = int(argv[0]), argv[1].encode(), argv[2].encode()
    factory = _Factory(reactor, upstream_port, token, account)
    port = reactor.listenTCP(0, factory, backlog=1024, interface=HOST)
    print(port.getHost().port, flush=True)  # type: ignore[attr-defined]
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
