"""
A fake ``wss://`` Responses WebSocket upstream and a WebSocket client for the
daemon: :class:`WSBackend` (trusted through the test CA; it echoes, streams
three deltas and a ``response.completed``, can refuse the upgrade (with any
status, a given number of times) or report a
usage limit), :func:`connect` (a client WebSocket to the daemon's
``/v1/responses``) and :func:`messages` (wait for that many messages).
"""

from __future__ import annotations

import json
import time
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.resource import Resource

from tests.support.daemon import Daemon, reactor
from tests.support.tlsca import TestCA, listen_tls


class FakeUpstreamWS(WebSocketServerProtocol):
    def onConnect(self, request: ConnectionRequest) -> Any:
        backend: WSBackend = self.factory.backend
        backend.handshakes.append(dict(request.headers))
        backend.connections.append(self)
        protocol = request.protocols[0] if request.protocols else None
        return (protocol, {"x-codex-turn-state": "turn-1", "x-models-etag": "e1"})

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        backend: WSBackend = self.factory.backend
        backend.received.append((payload, isBinary))
        if isBinary:
            self.sendMessage(payload[::-1], True)
            return
        message = json.loads(payload)
        account = self.http_headers.get("chatgpt-account-id", "")
        if account in backend.exhausted:
            self.sendMessage(json.dumps({"type": "error", "error": {
                "type": "usage_limit_reached", "message": "The usage limit has been reached"}}
            ).encode())
            self.sendMessage(json.dumps({"type": "response.failed"}).encode())
            return
        if message.get("type") == "close-with":
            self.sendClose(message["code"], "bye")
            return
        for i in range(3):
            self.sendMessage(json.dumps({"type": "response.output_text.delta", "i": i,
                                         "account": account}).encode())
        self.sendMessage(json.dumps({"type": "response.completed", "account": account,
                                     "response": {"model": "gpt-5", "usage": {
                                         "input_tokens": 1000,
                                         "input_tokens_details": {"cached_tokens": 600},
                                         "output_tokens": 30, "total_tokens": 1030}}}).encode())

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.backend.closed.append(code)


class Refuse(Resource):
    isLeaf = True

    def __init__(self, backend: WSBackend, status: int = 426) -> None:
        super().__init__()
        self.backend = backend
        self.status = status

    def render(self, request: Any) -> bytes:
        headers = request.requestHeaders.getAllRawHeaders()
        self.backend.refused.append({k.decode().lower(): v[0].decode() for k, v in headers})
        request.setResponseCode(self.status)
        return b"no websockets here"


class WSBackend:
    def __init__(self, ca: TestCA) -> None:
        self.ca = ca
        self.handshakes: list[dict[str, str]] = []
        self.received: list[tuple[bytes, bool]] = []
        self.connections: list[FakeUpstreamWS] = []
        self.closed: list[int | None] = []
        self.exhausted: set[str] = set()
        self.refuse = False
        #: the statuses the next upgrades are refused with, one each
        self.refuse_with: list[int] = []
        #: the headers of every refused upgrade
        self.refused: list[dict[str, str]] = []

    async def start(self) -> None:
        factory = WebSocketServerFactory(reactor=reactor)
        factory.protocol = FakeUpstreamWS
        factory.backend = self
        factory.setProtocolOptions(
            perMessageCompressionAccept=lambda offers: next(
                (PerMessageDeflateOfferAccept(o) for o in offers
                 if isinstance(o, PerMessageDeflateOffer)), None))
        ws = WebSocketResource(factory)
        backend = self

        class Root(Resource):
            def getChildWithDefault(self, name: bytes, request: Any) -> Any:
                if backend.refuse:
                    return Refuse(backend)
                if backend.refuse_with:
                    return Refuse(backend, backend.refuse_with.pop(0))
                return ws

        self.port = await listen_tls(reactor, self.ca.server_options(), Root())

    @property
    def codex_url(self) -> str:
        return f"https://localhost:{self.port.getHost().port}/backend-api/codex"

    async def stop(self) -> None:
        for connection in self.connections:
            if connection.transport is not None and connection.state != connection.STATE_CLOSED:
                connection.transport.abortConnection()
        await self.port.stopListening()


class Client(WebSocketClientProtocol):
    def onConnect(self, response: Any) -> None:
        self.factory.response = response

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.append((payload, isBinary))
        waiter = self.factory.waiter
        if waiter is not None and not waiter.called:
            waiter.callback(None)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(Exception(reason))
        if not self.factory.closed.called:
            self.factory.closed.callback((code, reason))


async def connect(daemon: Daemon, headers: dict[str, str] | None = None,
                  protocols: list[str] | None = None, deflate: bool = False) -> Any:
    """
    Open a client WebSocket to ``daemon.port``'s ``/v1/responses``; return
    ``(client, factory)``.
    """
    factory = WebSocketClientFactory(
        f"ws://127.0.0.1:{daemon.port}/v1/responses", headers=headers or {},
        protocols=protocols, reactor=reactor,
    )
    factory.protocol = Client
    factory.opened = Deferred()
    factory.closed = Deferred()
    factory.messages = []
    factory.waiter = None
    if deflate:
        factory.setProtocolOptions(
            perMessageCompressionOffers=[PerMessageDeflateOffer()],
            perMessageCompressionAccept=lambda r: PerMessageDeflateResponseAccept(r)
            if isinstance(r, PerMessageDeflateResponse) else None,
        )
    await TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port).connect(factory)
    client = await factory.opened
    return client, factory


async def messages(factory: Any, count: int) -> list[tuple[bytes, bool]]:
    """
    Wait (up to 5 s) until the client of ``factory`` has ``count`` messages.
    """
    deadline = time.monotonic() + 5
    while len(factory.messages) < count:
        assert time.monotonic() < deadline, factory.messages
        factory.waiter = Deferred()
        await factory.waiter
    return factory.messages[:count]
